//! The provided-buffer ring behind `recv_pooled` (IORING_REGISTER_PBUF_RING,
//! Linux 5.19; io_uring_provided_buffers.7).
//!
//! The kernel picks a buffer from the ring only when data is there to
//! receive, so an idle connection pins nothing (SEMANTICS O6). The driver
//! copies what landed into a pool `Vec` and puts the ring buffer back in the
//! same reap pass: the ring is never empty for longer than one pass, which
//! is what lets a receive that failed with ENOBUFS be re-armed without
//! spinning (LESSONS 4, SEMANTICS R3).

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

use super::raw::Mmap;

/// The buffer group id of the pool (one group per ring).
pub(super) const BGID: u16 = 0;

/// The kernel's limit on ring entries.
const MAX_ENTRIES: u32 = 1 << 15;

pub(super) struct BufRing {
    /// The ring of `BufRingEntry`s the kernel reads; page-aligned.
    ring: Mmap,
    /// `count` buffers of `size` bytes, back to back.
    bufs: Mmap,
    /// Ring entries: a power of two, at least `count`.
    entries: u16,
    count: u16,
    size: u32,
    /// Our tail; the kernel sees it only once published.
    tail: u16,
    unpublished: bool,
}

impl BufRing {
    /// `count` buffers of `size` bytes (count clamped to the kernel's 32768),
    /// all in the ring, not yet registered.
    pub(super) fn new(count: u16, size: usize) -> io::Result<BufRing> {
        let count = u32::from(count).clamp(1, MAX_ENTRIES);
        let entries = count.next_power_of_two();
        let size32 = u32::try_from(size).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "pool buffer size does not fit in 32 bits",
            )
        })?;
        let total = (count as usize).checked_mul(size).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "pool size overflows the address space",
            )
        })?;
        let ring = Mmap::anon(entries as usize * std::mem::size_of::<BufRingEntry>())?;
        let bufs = Mmap::anon(total)?;
        let mut r = BufRing {
            ring,
            bufs,
            entries: entries as u16,
            count: count as u16,
            size: size32,
            tail: 0,
            unpublished: false,
        };
        for bid in 0..r.count {
            r.put(bid);
        }
        r.publish();
        Ok(r)
    }

    /// Registers the ring as buffer group [`BGID`] of `ring`.
    pub(super) fn register(&self, ring: &IoUring) -> io::Result<()> {
        // SAFETY:
        // - the ring memory is page-aligned (mmap) and holds `entries`
        //   entries, a power of two;
        // - it stays mapped until the io_uring is closed: the driver drops
        //   its ring before this value, or leaks this value (driver `Drop`).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.ring.as_ptr() as u64,
                self.entries,
                BGID,
                0,
            )
        }
    }

    /// Whether `bid` names one of our buffers.
    pub(super) fn owns(&self, bid: u16) -> bool {
        bid < self.count
    }

    /// The first `len` bytes of buffer `bid`, which a reaped completion
    /// handed out.
    ///
    /// # Safety
    ///
    /// `bid` came from a reaped CQE and has not been [`put`](Self::put)
    /// back yet: the kernel neither writes it nor can hand it out again.
    pub(super) unsafe fn data(&self, bid: u16, len: usize) -> &[u8] {
        debug_assert!(self.owns(bid));
        let len = len.min(self.size as usize);
        let start = bid as usize * self.size as usize;
        // SAFETY:
        // - `start + len` is within the `count * size` mapping (`bid < count`,
        //   `len <= size`);
        // - the kernel is done writing this buffer (the caller's contract).
        unsafe { std::slice::from_raw_parts(self.bufs.as_ptr().add(start), len) }
    }

    /// Gives buffer `bid` back to the kernel (visible after `publish`).
    pub(super) fn put(&mut self, bid: u16) {
        debug_assert!(self.owns(bid));
        let idx = usize::from(self.tail & (self.entries - 1));
        let addr = self.bufs.as_ptr() as u64 + u64::from(bid) * u64::from(self.size);
        // SAFETY:
        // - `idx < entries`, so the entry is inside the ring mapping;
        // - the kernel reads only entries below the published tail, and this
        //   slot is at or past it (at most `count <= entries` buffers are in
        //   the ring at once), so nothing reads it concurrently;
        // - the `&mut` lives for three plain stores to addr/len/bid; the
        //   tail field that entry 0 overlaps is written only by `publish`,
        //   under the same lock.
        unsafe {
            let e = &mut *self.ring.as_ptr().cast::<BufRingEntry>().add(idx);
            e.set_addr(addr);
            e.set_len(self.size);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        self.unpublished = true;
    }

    /// Makes the buffers put back since the last call visible to the kernel.
    pub(super) fn publish(&mut self) {
        if !self.unpublished {
            return;
        }
        self.unpublished = false;
        // SAFETY:
        // - the ring mapping starts with a `BufRingEntry` (page-aligned, as
        //   `tail` requires);
        // - the tail is a naturally aligned u16 the kernel reads with an
        //   acquire load; we are its only writer, and the release store
        //   orders the entry writes of `put` before it.
        unsafe {
            let tail =
                BufRingEntry::tail(self.ring.as_ptr().cast::<BufRingEntry>()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}
