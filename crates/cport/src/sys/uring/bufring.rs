//! The provided-buffer ring behind `recv_pooled` and `recv_multi`
//! (IORING_REGISTER_PBUF_RING, Linux 5.19; io_uring_provided_buffers.7).
//!
//! The kernel picks a buffer from the ring only when data is there to
//! receive, so an idle connection pins nothing (SEMANTICS O6). Each buffer
//! is a `Vec<u8>` of its own: the one the kernel filled is handed to the
//! user as it is, with no copy, and its slot in the ring stays empty until
//! the driver refills it (`refill`) — with a recycled buffer, or a new one.
//! The driver refills only as many slots as completions with a buffer have
//! been delivered (`Driver::delivered`), so the filled buffers waiting in
//! the port's queue never outnumber the ring: a handler slower than its
//! peers leaves the ring empty, receives pause on ENOBUFS, and the data
//! waits in the kernel, under TCP's flow control (SEMANTICS O9, R3).

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

use super::raw::Mmap;
use crate::sys::FreeList;

/// The buffer group id of the pool (one group per ring).
pub(super) const BGID: u16 = 0;

/// The kernel's limit on ring entries.
const MAX_ENTRIES: u32 = 1 << 15;

pub(super) struct BufRing {
    /// The ring of `BufRingEntry`s the kernel reads; page-aligned.
    ring: Mmap,
    /// Buffer `bid`, while it is in the ring (the kernel may write into its
    /// spare capacity); `None` from when a CQE hands it out until a refill.
    bufs: Vec<Option<Vec<u8>>>,
    /// The slots handed out and not yet refilled.
    empty: Vec<u16>,
    /// Ring entries: a power of two, at least the buffer count.
    entries: u16,
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
        if u32::try_from(size).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "pool buffer size does not fit in 32 bits",
            ));
        }
        let ring = Mmap::anon(entries as usize * std::mem::size_of::<BufRingEntry>())?;
        let mut r = BufRing {
            ring,
            bufs: Vec::with_capacity(count as usize),
            empty: Vec::with_capacity(count as usize),
            entries: entries as u16,
            tail: 0,
            unpublished: false,
        };
        for bid in 0..count as u16 {
            r.bufs.push(Some(Vec::with_capacity(size)));
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

    /// Takes buffer `bid` out of the ring with the `len` bytes a reaped CQE
    /// says the kernel wrote into it. `None` if `bid` is not one of ours or
    /// was already taken (a kernel that misbehaves: logged by the caller).
    ///
    /// # Safety
    ///
    /// `bid` and `len` come from a reaped CQE: the kernel wrote `len` bytes
    /// at the start of that buffer and will not touch it again until it is
    /// put back.
    pub(super) unsafe fn take(&mut self, bid: u16, len: usize) -> Option<Vec<u8>> {
        let mut buf = self.bufs.get_mut(usize::from(bid))?.take()?;
        self.empty.push(bid);
        let len = len.min(buf.capacity());
        // SAFETY:
        // - `len` is within the capacity, and the kernel wrote those bytes
        //   (this function's contract).
        unsafe { buf.set_len(len) };
        Some(buf)
    }

    /// Puts buffer `bid` back unused: a CQE selected it but moved no data
    /// into it (end of stream, a request cancelled as its thread exited).
    pub(super) fn give_back(&mut self, bid: u16) {
        if matches!(self.bufs.get(usize::from(bid)), Some(Some(_))) {
            self.put(bid);
        }
    }

    /// Refills up to `n` empty slots, each with a buffer of `free` (buffers
    /// of the pool's size that users recycled) or a new one. Returns how
    /// many.
    pub(super) fn refill(&mut self, n: usize, free: &mut FreeList) -> usize {
        let mut done = 0;
        while done < n {
            let bid = match self.empty.pop() {
                Some(bid) => bid,
                None => break,
            };
            self.bufs[usize::from(bid)] = Some(free.take());
            self.put(bid);
            done += 1;
        }
        done
    }

    /// How many buffers the ring holds now.
    pub(super) fn available(&self) -> usize {
        self.bufs.len() - self.empty.len()
    }

    /// Makes buffer `bid` available to the kernel (visible after `publish`).
    fn put(&mut self, bid: u16) {
        let (addr, len) = match &mut self.bufs[usize::from(bid)] {
            Some(b) => (b.as_mut_ptr() as u64, b.capacity()),
            None => return,
        };
        let idx = usize::from(self.tail & (self.entries - 1));
        // SAFETY:
        // - `idx < entries`, so the entry is inside the ring mapping;
        // - the kernel reads only entries below the published tail, and this
        //   slot is at or past it (at most `bufs.len() <= entries` buffers
        //   are in the ring at once), so nothing reads it concurrently;
        // - the `&mut` lives for three plain stores to addr/len/bid; the
        //   tail field that entry 0 overlaps is written only by `publish`,
        //   under the same lock.
        unsafe {
            let e = &mut *self.ring.as_ptr().cast::<BufRingEntry>().add(idx);
            e.set_addr(addr);
            e.set_len(len as u32);
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
