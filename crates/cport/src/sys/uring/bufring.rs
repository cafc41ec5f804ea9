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
//!
//! The ring starts with [`FIRST_BUFFERS`] of the pool's buffers (or all,
//! if the pool is smaller) and doubles them, up to the pool's count,
//! whenever a receive meets it empty (`grow`), as the ring of uring-echo
//! (crates/bench/src/bin/uring-echo) does. The kernel takes buffers from
//! the ring's head and refills go to its tail, so a buffer comes back to
//! the kernel only after every other buffer in the ring has had its turn:
//! with the whole pool in it, a buffer the kernel writes into has waited
//! through as many receives as the pool has buffers, and is cold in the
//! cache and the TLB by then, and every buffer of the pool is made
//! resident. A ring no larger than the traffic needs keeps that round
//! short: the sharded echo server (a pool of 2048 × 16 KiB) at 50
//! connections × 128 B grows its ring to 128 buffers, and the whole server
//! is 6 MiB resident instead of 14 (`bench/runs/2026-12-07/bufring-grow`).
//! Growing costs a re-armed receive for each receive that met the ring
//! empty, during the first bursts only: the ring never shrinks.

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

/// Buffers a ring starts with, when the pool has that many; `grow` adds
/// more as receives need them.
pub(super) const FIRST_BUFFERS: u16 = 64;

pub(super) struct BufRing {
    /// The ring of `BufRingEntry`s the kernel reads; page-aligned.
    ring: Mmap,
    /// Buffer `bid`, while it is in the ring (the kernel may write into its
    /// spare capacity); `None` from when a CQE hands it out until a refill.
    /// Its length is the number of buffers in use, which `grow` raises up
    /// to `limit`.
    bufs: Vec<Option<Vec<u8>>>,
    /// The pool's count: the most buffers the ring may use.
    limit: u16,
    /// The slots handed out and not yet refilled.
    empty: Vec<u16>,
    /// Ring entries: a power of two, at least the buffer count.
    entries: u16,
    /// Our tail; the kernel sees it only once published.
    tail: u16,
    unpublished: bool,
}

impl BufRing {
    /// A ring for `count` buffers of `size` bytes (count clamped to the
    /// kernel's 32768), holding the first [`FIRST_BUFFERS`] of them, not
    /// yet registered.
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
            limit: count as u16,
            empty: Vec::with_capacity(count as usize),
            entries: entries as u16,
            tail: 0,
            unpublished: false,
        };
        for bid in 0..FIRST_BUFFERS.min(r.limit) {
            r.bufs.push(Some(Vec::with_capacity(size)));
            r.put(bid);
        }
        r.publish();
        Ok(r)
    }

    /// Doubles the buffers the ring uses, up to the pool's count, each new
    /// one from `free` (recycled, or allocated); they reach the kernel at
    /// the next `publish`. Returns how many were added: 0 once the ring
    /// uses the whole pool.
    pub(super) fn grow(&mut self, free: &mut FreeList) -> usize {
        let have = self.bufs.len();
        let add = have.max(1).min(usize::from(self.limit) - have);
        for bid in have..have + add {
            self.bufs.push(Some(free.take()));
            // `bid < limit <= u16::MAX`.
            self.put(bid as u16);
        }
        add
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

    /// How many of the pool's buffers the ring uses: in it, or handed out
    /// and not yet refilled.
    pub(super) fn in_use(&self) -> usize {
        self.bufs.len()
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
        //   slot is at or past it (at most `bufs.len() <= limit <= entries`
        //   buffers are in the ring at once), so nothing reads it
        //   concurrently;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The bids and lengths of ring entries `from..to` (our tail's count).
    fn entries(r: &BufRing, from: u16, to: u16) -> Vec<(u16, u32)> {
        (from..to)
            .map(|i| {
                let idx = usize::from(i & (r.entries - 1));
                // SAFETY:
                // - `idx < entries`, inside the ring mapping, which `r`
                //   keeps mapped; no kernel reads it (never registered), and
                //   nothing writes it while `r` is borrowed.
                let e = unsafe { &*r.ring.as_ptr().cast::<BufRingEntry>().add(idx) };
                (e.bid(), e.len())
            })
            .collect()
    }

    /// A ring for a pool larger than [`FIRST_BUFFERS`] starts with that
    /// many of its buffers and doubles them on each `grow`, up to the
    /// pool's count and never beyond; each new buffer goes into the ring
    /// once, with the pool's size.
    #[test]
    fn a_ring_grows_by_doubling_up_to_the_pool() {
        let first = FIRST_BUFFERS;
        assert_eq!(first, 64, "the figures below assume it");
        let mut free = FreeList::new(4, 64);
        let mut r = BufRing::new(200, 64).unwrap();
        assert_eq!((r.in_use(), r.available()), (64, 64));
        assert_eq!(r.tail, first);
        // The kernel hands out every buffer: the ring is dry.
        for bid in 0..first {
            // SAFETY: no kernel wrote into them; a length of 0 is within.
            assert!(unsafe { r.take(bid, 0) }.is_some());
        }
        assert_eq!(r.available(), 0);
        assert_eq!(r.grow(&mut free), 64);
        assert_eq!((r.in_use(), r.available()), (128, 64));
        assert_eq!(r.grow(&mut free), 72, "up to the pool's 200");
        assert_eq!((r.in_use(), r.available()), (200, 136));
        assert_eq!(r.grow(&mut free), 0, "never beyond the pool");
        let added = entries(&r, first, r.tail);
        let want: Vec<(u16, u32)> = (first..200).map(|bid| (bid, 64)).collect();
        assert_eq!(added, want, "each new buffer once, in bid order");
    }

    /// A pool no larger than the first ring is all in it from the start.
    #[test]
    fn a_small_pool_is_all_in_the_ring_at_once() {
        let mut r = BufRing::new(8, 64).unwrap();
        assert_eq!((r.in_use(), r.available()), (8, 8));
        assert_eq!(r.grow(&mut FreeList::new(8, 64)), 0);
        assert_eq!(
            entries(&r, 0, 8),
            (0..8).map(|bid| (bid, 64)).collect::<Vec<_>>()
        );
    }
}
