//! `uring-echo`: the leanest io_uring TCP echo server this project knows
//! how to write, the bound `cport serve` on io_uring is measured against
//! (`cport bench --servers uring-echo`). None of the port's semantics
//! (threads sharing a queue, one completion per operation, FIFO order,
//! laned sends) costs it anything, so what cport spends beyond it is the
//! price of those semantics.
//!
//! ```text
//! uring-echo [--port N] [--bind ADDR] [--threads N] [--buffer-size BYTES] [--buffers N]
//! ```
//!
//! Each thread owns one ring and one listener (SO_REUSEPORT, so the kernel
//! spreads connections over the threads and they share nothing):
//!
//! - the ring is set up with SINGLE_ISSUER and DEFER_TASKRUN, so completion
//!   work runs only inside this thread's own `io_uring_enter` and no
//!   task-work interrupt reaches it;
//! - one multishot accept, and per connection one multishot receive into a
//!   ring of provided buffers: no request and no poll arm per received
//!   message;
//! - the echo is sent straight from the buffer the data was received in
//!   (no copy), and the buffer goes back to the ring when its send is done:
//!   one request per message in steady state;
//! - a connection's received buffers wait in a queue threaded through the
//!   buffers themselves, one send in flight at a time, so its bytes are
//!   echoed in order however many messages are in flight; a short send is
//!   continued before the next buffer is sent.
//!
//! The pool starts with 256 buffers of `--buffer-size` (16 KiB by default)
//! and doubles each time a receive finds it empty, up to `--buffers`; past
//! that, starved connections wait until a send gives a buffer back (a
//! multishot receive ends with ENOBUFS when the ring is empty: that is not
//! an end of stream).
//!
//! The first line on stdout is `listening on ADDR (tcp) backend=uring
//! threads=N`. SIGTERM or SIGINT ends it with exit code 0; 1 means it could
//! not start (e.g. `cannot set up io_uring: ...` where the kernel refuses).

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::thread;

use clap::Parser;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

use cport_bench::peer::{self, PeerArgs};

#[derive(Parser, Debug)]
#[command(name = "uring-echo", about = "The leanest io_uring TCP echo server")]
struct Args {
    #[command(flatten)]
    peer: PeerArgs,

    /// Most receive buffers per thread (of `--buffer-size` each). The pool starts with
    /// 256 and doubles whenever a receive finds it empty, up to this.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u16).range(1..=32768))]
    buffers: u16,
}

/// The provided-buffer group of every receive.
const GROUP: u16 = 0;
const FIRST_BUFFERS: u16 = 256;
const SQ_ENTRIES: u32 = 4096;
const CQ_ENTRIES: u32 = 32768;
/// A failed multishot accept (EMFILE and the like) is re-armed after this
/// pause; at once, it would spin as long as the error lasts.
const ACCEPT_BACKOFF_NS: u32 = 10_000_000;

/// user_data: the operation in the top byte, the descriptor below.
const ACCEPT: u64 = 1 << 56;
const RECV: u64 = 2 << 56;
const SEND: u64 = 3 << 56;
const RETRY: u64 = 4 << 56;
const KIND: u64 = 0xff << 56;

/// No buffer: the end of a connection's queue.
const NONE: u16 = u16::MAX;

pub fn main() -> ExitCode {
    let args = Args::parse();
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uring-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &Args) -> io::Result<()> {
    peer::exit_on_panic();
    peer::exit_on_signal()?;
    let p = &args.peer;
    let listeners = peer::listeners(p.bind, p.port, p.threads)?;
    let addr = listeners[0].local_addr()?;
    // Each thread reports once when its ring is ready (or why not), and
    // again if it ever stops.
    let (tx, rx) = mpsc::channel();
    for (i, listener) in listeners.into_iter().enumerate() {
        let tx = tx.clone();
        let (max, size) = (args.buffers, args.peer.buffer_size as usize);
        thread::Builder::new()
            .name(format!("ring-{i}"))
            .spawn(move || {
                // Built on the thread that uses it: SINGLE_ISSUER ties a
                // ring to the task that created it.
                let echo = match Echo::new(listener, max, size) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.send(Err(io::Error::new(
                            e.kind(),
                            format!("cannot set up io_uring: {e}"),
                        )));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                let end = echo.run();
                let _ =
                    tx.send(end.map_err(|e| io::Error::new(e.kind(), format!("ring {i}: {e}"))));
            })?;
    }
    drop(tx);
    for _ in 0..p.threads {
        rx.recv()
            .map_err(|_| io::Error::other("a ring thread ended"))??;
    }
    peer::announce(addr, "uring", p.threads)?;
    // The threads run until the process ends; one that stops is a failure.
    match rx.recv() {
        Ok(Err(e)) => Err(e),
        _ => Err(io::Error::other("a ring thread ended")),
    }
}

/// A connection's state, indexed by its descriptor.
#[derive(Clone, Copy, Debug)]
struct Conn {
    /// Received buffers not yet echoed, oldest first; the head is being
    /// sent.
    head: u16,
    tail: u16,
    /// A multishot receive is in flight.
    armed: bool,
    /// Its receive ended for want of buffers; re-armed when some return.
    starved: bool,
    /// Nothing more will be received (end of stream, error) or sent (the
    /// peer is gone): the descriptor closes once nothing is in flight.
    done: bool,
}

impl Conn {
    const IDLE: Conn = Conn {
        head: NONE,
        tail: NONE,
        armed: false,
        starved: false,
        done: false,
    };
}

/// A received buffer waiting in its connection's queue.
#[derive(Clone, Copy, Debug)]
struct Held {
    len: u32,
    sent: u32,
    next: u16,
}

/// The receive buffers and the ring through which they are lent to the
/// kernel. Both mappings live until the process exits: a ring being torn
/// down may still write into them, and a peer never needs them back.
struct Pool {
    slots: *mut types::BufRingEntry,
    /// Ring slots, a power of two.
    entries: u16,
    bufs: *mut u8,
    /// Bytes per buffer.
    size: usize,
    max: u16,
    /// Buffers `0..registered` have been given to the ring.
    registered: u16,
    /// Of those, how many the kernel has filled and the server holds.
    lent: u16,
    tail: u16,
    unpublished: bool,
}

impl Pool {
    fn new(max: u16, size: usize) -> io::Result<Pool> {
        let entries = max.next_power_of_two();
        let slots = map(usize::from(entries) * size_of::<types::BufRingEntry>())?;
        // Reserved, not committed: only buffers the ring has cycled
        // through are ever touched.
        let bufs = map(usize::from(max) * size)?;
        Ok(Pool {
            slots: slots.cast(),
            entries,
            bufs: bufs.cast(),
            size,
            max,
            registered: 0,
            lent: 0,
            tail: 0,
            unpublished: false,
        })
    }

    fn buf(&self, bid: u16, from: u32) -> *const u8 {
        debug_assert!(bid < self.registered && (from as usize) < self.size);
        // SAFETY: bid < max and from < size, so the address lies in the
        // `max × size` mapping.
        unsafe { self.bufs.add(usize::from(bid) * self.size + from as usize) }
    }

    /// Gives buffer `bid` to the ring (seen by the kernel once published).
    fn put(&mut self, bid: u16) {
        // SAFETY:
        // - the slot index is masked to the `entries` slots mapped;
        // - the slot is at the unpublished tail, which the kernel does not
        //   read;
        // - bid < max keeps the address inside `bufs`.
        unsafe {
            let e = &mut *self.slots.add(usize::from(self.tail & (self.entries - 1)));
            e.set_addr(self.bufs.add(usize::from(bid) * self.size) as u64);
            e.set_len(self.size as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        self.unpublished = true;
    }

    /// A buffer the server held goes back.
    fn give_back(&mut self, bid: u16) {
        self.lent -= 1;
        self.put(bid);
    }

    /// Doubles the buffers given to the ring, up to `max`; whether any
    /// were added.
    fn grow(&mut self) -> bool {
        let to = self
            .registered
            .saturating_mul(2)
            .max(FIRST_BUFFERS)
            .min(self.max);
        for bid in self.registered..to {
            self.put(bid);
        }
        let grew = to > self.registered;
        self.registered = to;
        grew
    }

    fn free(&self) -> u16 {
        self.registered - self.lent
    }

    fn publish(&mut self) {
        if !self.unpublished {
            return;
        }
        // SAFETY: the tail is the `resv` field of slot 0, an aligned u16
        // the kernel reads with an acquire load; the release store orders
        // the slot writes of `put` before it.
        unsafe {
            let tail = types::BufRingEntry::tail(self.slots) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
        self.unpublished = false;
    }
}

fn map(len: usize) -> io::Result<*mut std::ffi::c_void> {
    // SAFETY: a new anonymous private mapping; no existing memory is
    // touched.
    let p = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }?;
    Ok(p)
}

struct Echo {
    ring: IoUring,
    pool: Pool,
    held: Vec<Held>,
    conns: Vec<Conn>,
    listener: TcpListener,
    starved: Vec<RawFd>,
    cqes: Vec<cqueue::Entry>,
    backoff: types::Timespec,
}

impl Echo {
    fn new(listener: TcpListener, max: u16, size: usize) -> io::Result<Echo> {
        let ring = IoUring::<squeue::Entry, cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_submit_all()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)?;
        let mut pool = Pool::new(max, size)?;
        pool.grow();
        pool.publish();
        // SAFETY: the slots are page-aligned (a fresh mapping), `entries`
        // of them, a power of two, and stay mapped until the process exits.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(pool.slots as u64, pool.entries, GROUP, 0)
        }?;
        Ok(Echo {
            ring,
            pool,
            held: vec![
                Held {
                    len: 0,
                    sent: 0,
                    next: NONE
                };
                usize::from(max)
            ],
            conns: Vec::new(),
            listener,
            starved: Vec::new(),
            cqes: Vec::with_capacity(CQ_ENTRIES as usize),
            backoff: types::Timespec::new().nsec(ACCEPT_BACKOFF_NS),
        })
    }

    fn run(mut self) -> io::Result<()> {
        self.push(self.accept())?;
        loop {
            self.pool.publish();
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                // A signal, or a completion queue that overflowed: reap
                // what is there and enter again.
                Err(e) if matches!(errno(&e), Errno::INTR | Errno::BUSY) => {}
                Err(e) => return Err(e),
            }
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.extend(self.ring.completion());
            for c in &cqes {
                let fd = (c.user_data() & !KIND) as RawFd;
                match c.user_data() & KIND {
                    ACCEPT => self.on_accept(c.result(), c.flags())?,
                    RETRY => self.push(self.accept())?,
                    RECV => self.on_recv(fd, c.result(), c.flags())?,
                    SEND => self.on_send(fd, c.result())?,
                    _ => {}
                }
            }
            cqes.clear();
            self.cqes = cqes;
            self.rearm_starved()?;
        }
    }

    fn push(&mut self, e: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every buffer an entry points to (a receive buffer of
            // the pool, `self.backoff`) stays valid while the kernel may
            // use it: the pool is never unmapped, `self` is not moved
            // while it runs, and a buffer is given back only after its
            // send completed.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return Ok(());
            }
            // The submission queue is full: hand it to the kernel.
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if errno(&e) == Errno::INTR => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn accept(&self) -> squeue::Entry {
        opcode::AcceptMulti::new(types::Fd(self.listener.as_raw_fd()))
            .build()
            .user_data(ACCEPT)
    }

    fn recv(&mut self, fd: RawFd) -> io::Result<()> {
        let c = &mut self.conns[fd as usize];
        c.armed = true;
        c.starved = false;
        self.push(
            opcode::RecvMulti::new(types::Fd(fd), GROUP)
                .build()
                .user_data(RECV | fd as u64),
        )
    }

    /// Sends what is left of buffer `bid` on `fd`.
    fn send(&mut self, fd: RawFd, bid: u16) -> io::Result<()> {
        let h = self.held[usize::from(bid)];
        let e = opcode::Send::new(types::Fd(fd), self.pool.buf(bid, h.sent), h.len - h.sent)
            .build()
            .user_data(SEND | fd as u64);
        self.push(e)
    }

    fn on_accept(&mut self, res: i32, flags: u32) -> io::Result<()> {
        if res >= 0 {
            let fd = res;
            // Without TCP_NODELAY a partial echo waits for the peer's
            // delayed ACK.
            // SAFETY: `fd` was just accepted and stays open for the call.
            let _ =
                rustix::net::sockopt::set_tcp_nodelay(unsafe { BorrowedFd::borrow_raw(fd) }, true);
            let i = fd as usize;
            if self.conns.len() <= i {
                self.conns.resize(i + 1, Conn::IDLE);
            }
            self.conns[i] = Conn::IDLE;
            self.recv(fd)?;
        }
        if !cqueue::more(flags) {
            if res < 0 {
                let t = opcode::Timeout::new(&self.backoff).build().user_data(RETRY);
                self.push(t)?;
            } else {
                self.push(self.accept())?;
            }
        }
        Ok(())
    }

    fn on_recv(&mut self, fd: RawFd, res: i32, flags: u32) -> io::Result<()> {
        let i = fd as usize;
        let last = !cqueue::more(flags);
        if last {
            self.conns[i].armed = false;
        }
        match (res, cqueue::buffer_select(flags)) {
            (1.., Some(bid)) => {
                self.pool.lent += 1;
                let c = &mut self.conns[i];
                if c.done {
                    self.pool.give_back(bid);
                } else {
                    self.held[usize::from(bid)] = Held {
                        len: res as u32,
                        sent: 0,
                        next: NONE,
                    };
                    if c.head == NONE {
                        c.head = bid;
                        c.tail = bid;
                        self.send(fd, bid)?;
                    } else {
                        self.held[usize::from(c.tail)].next = bid;
                        c.tail = bid;
                    }
                }
                if last && !self.conns[i].done {
                    self.recv(fd)?;
                }
            }
            (r, _) if r == -Errno::NOBUFS.raw_os_error() => {
                self.conns[i].starved = true;
                self.starved.push(fd);
                self.pool.grow();
            }
            // End of stream, or the connection failed.
            _ => self.conns[i].done = true,
        }
        self.close_if_finished(fd);
        Ok(())
    }

    fn on_send(&mut self, fd: RawFd, res: i32) -> io::Result<()> {
        let i = fd as usize;
        let bid = self.conns[i].head;
        if res <= 0 {
            // The peer is gone: drop what it would have been sent, and end
            // the receive so that the descriptor can close.
            let mut b = bid;
            while b != NONE {
                let next = self.held[usize::from(b)].next;
                self.pool.give_back(b);
                b = next;
            }
            let c = &mut self.conns[i];
            c.head = NONE;
            c.done = true;
            if c.armed {
                // SAFETY: the descriptor is open: it closes only once its
                // receive has ended.
                let sock = unsafe { BorrowedFd::borrow_raw(fd) };
                let _ = rustix::net::shutdown(sock, rustix::net::Shutdown::Both);
            }
        } else {
            let h = &mut self.held[usize::from(bid)];
            h.sent += res as u32;
            if h.sent < h.len {
                // A short send: the rest goes before anything after it.
                self.send(fd, bid)?;
            } else {
                let next = h.next;
                self.conns[i].head = next;
                self.pool.give_back(bid);
                if next != NONE {
                    self.send(fd, next)?;
                }
            }
        }
        self.close_if_finished(fd);
        Ok(())
    }

    /// Closes a connection with nothing in flight and nothing to come.
    /// Only then: a completion for a closed descriptor would be taken for
    /// the next connection that reuses its number.
    fn close_if_finished(&mut self, fd: RawFd) {
        let c = &mut self.conns[fd as usize];
        if c.done && !c.armed && c.head == NONE {
            *c = Conn::IDLE;
            // SAFETY: the descriptor was accepted by this ring, is owned by
            // nothing else, and no request on it is in flight.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }

    fn rearm_starved(&mut self) -> io::Result<()> {
        if self.starved.is_empty() || self.pool.free() == 0 {
            return Ok(());
        }
        let mut starved = std::mem::take(&mut self.starved);
        for &fd in &starved {
            // A connection that ended while starved was closed, and its
            // number may belong to a new one: only the flag says.
            if self.conns[fd as usize].starved && !self.conns[fd as usize].done {
                self.recv(fd)?;
            }
        }
        starved.clear();
        self.starved = starved;
        Ok(())
    }
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_io_error(e).unwrap_or(Errno::IO)
}
