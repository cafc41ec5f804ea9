//! The buffers of pooled and multishot receives (O6, O9, R3).

use crate::sys::FreeList;

/// The buffers behind `recv_pooled` and `recv_multi`: at most `count` of
/// `size` bytes in the kernel or filled and not yet dequeued at once, as
/// io_uring's provided-buffer ring holds them. A buffer no longer counts
/// once the completion that carries it is dequeued (`delivered`);
/// `recycle` refills the free list up to `count`.
pub(super) struct Pool {
    pub(super) count: usize,
    pub(super) in_kernel: usize,
    /// Buffers filled and waiting in the port's queue.
    pub(super) undelivered: usize,
    pub(super) free: FreeList,
}

impl Pool {
    /// A buffer for a receive about to start, or `None`: the pool is dry.
    pub(super) fn take(&mut self) -> Option<Vec<u8>> {
        if self.in_kernel + self.undelivered >= self.count {
            return None;
        }
        self.in_kernel += 1;
        Some(self.free.take())
    }

    /// A receive that held a buffer finished.
    pub(super) fn done(&mut self) {
        self.in_kernel -= 1;
    }

    /// A receive that held a buffer finished with data: the buffer now
    /// waits in the port's queue.
    pub(super) fn filled(&mut self) {
        self.in_kernel -= 1;
        self.undelivered += 1;
    }

    /// `n` completions carrying a buffer were dequeued.
    pub(super) fn delivered(&mut self, n: usize) {
        self.undelivered = self.undelivered.saturating_sub(n);
    }

    /// Keeps a buffer for reuse; others are dropped.
    pub(super) fn give(&mut self, buf: Vec<u8>) {
        self.free.give(buf);
    }
}
