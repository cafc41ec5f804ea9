//! The buffers of pooled receives (O6, R3).

/// The buffers behind `recv_pooled`: at most `count` of `size` bytes in
/// the kernel at once, as io_uring's provided-buffer ring holds them. A
/// buffer handed to the user no longer counts (on io_uring the user gets a
/// copy); `recycle` refills the free list up to `count`.
pub(super) struct Pool {
    pub(super) size: usize,
    pub(super) count: usize,
    pub(super) in_kernel: usize,
    pub(super) free: Vec<Vec<u8>>,
}

impl Pool {
    /// A buffer for a receive about to start, or `None`: the pool is dry.
    pub(super) fn take(&mut self) -> Option<Vec<u8>> {
        if self.in_kernel >= self.count {
            return None;
        }
        self.in_kernel += 1;
        Some(
            self.free
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(self.size)),
        )
    }

    /// A receive that held a buffer finished.
    pub(super) fn done(&mut self) {
        self.in_kernel -= 1;
    }

    /// Keeps a buffer for reuse; others are dropped.
    pub(super) fn give(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == self.size && self.free.len() < self.count {
            buf.clear();
            self.free.push(buf);
        }
    }
}
