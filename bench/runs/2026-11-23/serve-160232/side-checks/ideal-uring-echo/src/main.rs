//! An experiment, not part of cport: the leanest io_uring TCP echo server
//! this machine allows, to bound what any io_uring design can cost per
//! message here. One thread, one ring with SINGLE_ISSUER + DEFER_TASKRUN
//! (no task-work IPIs, task work run only in our own enter), multishot
//! accept, multishot receive into a provided-buffer ring (no receive
//! request and no poll arm per message), the send straight from the
//! received buffer (no copy), the buffer given back when the send
//! completes. Correct for clients with one message in flight per
//! connection (cport load --depth 1), which is what the benchmark runs.
//!
//! usage: ideal-uring-echo [--plain]   (--plain: no SINGLE_ISSUER/DEFER_TASKRUN)
//!
//! Build: `cargo build --release` in this folder (a workspace of its own).
//! It never closes the listener or frees the buffers: it runs until killed.

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::net::TcpListener;
use std::os::fd::IntoRawFd;

const BGID: u16 = 7;
const NBUF: u16 = 4096;
const BUFSZ: usize = 16 * 1024;
const ACCEPT: u64 = 1 << 62;
const RECV: u64 = 2 << 62;
const SEND: u64 = 3 << 62;
const KIND: u64 = 3 << 62;

struct Ring {
    entries: *mut types::BufRingEntry,
    bufs: *mut u8,
    tail: u16,
}

impl Ring {
    fn put(&mut self, bid: u16) {
        // SAFETY: the ring mapping holds NBUF entries and the index is masked
        // to it; the slot is at or past the published tail, so the kernel
        // does not read it; bid < NBUF keeps the address inside `bufs`.
        unsafe {
            let e = &mut *self.entries.add((self.tail & (NBUF - 1)) as usize);
            e.set_addr(self.bufs.add(bid as usize * BUFSZ) as u64);
            e.set_len(BUFSZ as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }
    fn publish(&mut self) {
        // SAFETY: the tail is entry 0's aligned u16 `resv` field, which the
        // kernel reads with an acquire load; the release store orders the
        // entry writes of `put` before it.
        unsafe {
            let t = types::BufRingEntry::tail(self.entries) as *const std::sync::atomic::AtomicU16;
            (*t).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

fn mmap(len: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    assert!(p != libc::MAP_FAILED);
    p.cast()
}

fn main() {
    let plain = std::env::args().any(|a| a == "--plain");
    let mut b = IoUring::<squeue::Entry, cqueue::Entry>::builder();
    b.setup_submit_all().setup_cqsize(32768);
    if !plain {
        b.setup_single_issuer().setup_defer_taskrun();
    }
    let mut ring = b.build(4096).expect("io_uring");
    let entries = mmap(NBUF as usize * 16).cast::<types::BufRingEntry>();
    let bufs = mmap(NBUF as usize * BUFSZ);
    let mut br = Ring {
        entries,
        bufs,
        tail: 0,
    };
    for bid in 0..NBUF {
        br.put(bid);
    }
    br.publish();
    // SAFETY: the ring memory is page-aligned, holds NBUF (a power of two)
    // entries and stays mapped until the process exits.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(entries as u64, NBUF, BGID, 0)
    }
    .expect("buf ring");

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    println!(
        "listening on {} (ideal io_uring echo{})",
        l.local_addr().unwrap(),
        if plain { ", plain" } else { "" }
    );
    let lfd = l.into_raw_fd();
    // per buffer: (fd, len, sent)
    let mut sends = vec![(0i32, 0u32, 0u32); NBUF as usize];
    let mut sq: Vec<squeue::Entry> = Vec::new();
    sq.push(
        opcode::AcceptMulti::new(types::Fd(lfd))
            .build()
            .user_data(ACCEPT),
    );
    let recv = |fd: i32| {
        opcode::RecvMulti::new(types::Fd(fd), BGID)
            .build()
            .user_data(RECV | fd as u64)
    };
    let send = |fd: i32, bid: u16, p: *const u8, len: u32| {
        opcode::Send::new(types::Fd(fd), p, len)
            .build()
            .user_data(SEND | bid as u64)
    };
    loop {
        {
            let mut s = ring.submission();
            for e in sq.drain(..) {
                // SAFETY: every pointer an SQE carries is into `bufs`, mapped
                // until the process exits, and a buffer is given back to the
                // ring only after its send completed.
                unsafe { s.push(&e).expect("sq full") };
            }
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => panic!("enter: {e}"),
        }
        let mut returned = false;
        for c in ring.completion() {
            let ud = c.user_data();
            let res = c.result();
            match ud & KIND {
                ACCEPT => {
                    if res >= 0 {
                        let one: libc::c_int = 1;
                        // SAFETY: `res` is the accepted descriptor; the option
                        // value is a live c_int of the length passed.
                        unsafe {
                            libc::setsockopt(
                                res,
                                libc::IPPROTO_TCP,
                                libc::TCP_NODELAY,
                                (&one as *const libc::c_int).cast(),
                                4,
                            );
                        }
                        sq.push(recv(res));
                    }
                    if !cqueue::more(c.flags()) {
                        sq.push(
                            opcode::AcceptMulti::new(types::Fd(lfd))
                                .build()
                                .user_data(ACCEPT),
                        );
                    }
                }
                RECV => {
                    let fd = (ud & !KIND) as i32;
                    if res > 0 {
                        let bid = cqueue::buffer_select(c.flags()).expect("bid");
                        sends[bid as usize] = (fd, res as u32, 0);
                        // SAFETY: bid < NBUF, so the offset is inside `bufs`.
                        let p = unsafe { bufs.add(bid as usize * BUFSZ) };
                        sq.push(send(fd, bid, p, res as u32));
                        if !cqueue::more(c.flags()) {
                            sq.push(recv(fd));
                        }
                    } else if res == -libc::ENOBUFS {
                        sq.push(recv(fd));
                    } else {
                        // SAFETY: closes a descriptor this loop accepted and
                        // that nothing else refers to (its multishot receive
                        // has ended).
                        unsafe { libc::close(fd) };
                    }
                }
                SEND => {
                    let bid = (ud & !KIND) as u16;
                    let (fd, len, sent) = sends[bid as usize];
                    if res > 0 && sent + (res as u32) < len {
                        let sent = sent + res as u32;
                        sends[bid as usize].2 = sent;
                        // SAFETY: sent < len <= BUFSZ: inside buffer `bid`.
                        let p = unsafe { bufs.add(bid as usize * BUFSZ + sent as usize) };
                        sq.push(send(fd, bid, p, len - sent));
                    } else {
                        br.put(bid);
                        returned = true;
                    }
                }
                _ => {}
            }
        }
        if returned {
            br.publish();
        }
    }
}
