//! The epoll backend: completions emulated on readiness.
//!
//! This is the fallback for hosts where io_uring is refused (Docker's
//! default seccomp profile, `kernel.io_uring_disabled`; LESSONS 5). The
//! kernel tells us only that a socket *may* be read or written; the port
//! does the operation itself and turns the result into the completion the
//! io_uring backend would have reaped.
//!
//! # Objects
//!
//! * One epoll set per port, plus an eventfd registered in it (level
//!   triggered) so that [`Reactor::wake`] can make a blocked `epoll_wait`
//!   return. The leader drains the eventfd when it fires.
//! * A table of handles, a generational slab behind an `RwLock` (submits
//!   only read it). Each entry owns the descriptor and, for a socket, a
//!   lock around two FIFOs of pending operations: the *read side*
//!   (accept, recv, recv_vectored, recv_pooled, recv_from) and the *write
//!   side* (send, send_vectored, send_to, connect).
//! * On a local port (a `LocalPort`: one thread issues and reaps) these
//!   locks, the leader's and the pool's are cells of that thread
//!   (`crate::sys::lock`), and an operation works on its entry under the
//!   table's cell instead of a clone of its `Arc`: no locked instruction
//!   on the echo path (17.3 per echoed message before,
//!   `bench/runs/2026-12-07/locked-ops`).
//! * Each socket is registered once, at association, for
//!   `EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET` with the data
//!   `index | generation << 32`. Edge-triggered: no re-arm system call
//!   per operation. Regular files are not registered (epoll refuses them).
//!
//! # Issue, readiness, completion
//!
//! An operation is appended to its side's FIFO under the handle lock. When
//! the FIFO was empty, the system call is tried at once (a *speculative*
//! try): a recv with data waiting, or a send with room, completes inside
//! `submit` and its completion goes to `ready` for the port to queue.
//! Otherwise, or on EAGAIN, the operation waits in the FIFO.
//!
//! The leader ([`Reactor::wait`]) takes a handle's lock for each event and
//! drives the FIFOs head first: readable, RDHUP, HUP or ERR drive the read
//! side; writable, HUP or ERR the write side (read side first, so that a
//! reset reaches a pending recv as ECONNRESET rather than as 0 bytes). A
//! FIFO is driven until the kernel says EAGAIN or the FIFO is empty.
//!
//! No edge is lost because of one invariant, kept by doing every try and
//! every enqueue under the handle lock that the leader also takes: *a FIFO
//! is non-empty only if the last system call on its side returned EAGAIN*
//! (or, for a connect, found the handshake still going, or, for a
//! multishot receive on a TCP stream driven by an event without hang-up,
//! read less than its buffer held: the stream was drained then, and the
//! kernel raises an edge for the next arrival, FIN or reset as it does
//! after EAGAIN). After EAGAIN the
//! kernel queues an event for the next change, and the leader, blocked on
//! the lock if need be, drives the FIFO again. Data that arrived while
//! nothing was queued raises an edge nobody needed; the next recv finds the
//! data in its speculative try.
//!
//! # Each operation
//!
//! * **recv / recv_vectored** (O5): `recv(2)` / `recvmsg(2)` into spare
//!   capacity; 0 bytes is the peer's FIN, a reset is ECONNRESET.
//! * **recv_pooled** (O6): waits in the FIFO holding no buffer; only an
//!   attempt takes one from the pool's free list (or allocates one of the
//!   pool's size), and gives it back on EAGAIN. The pool never runs dry, so
//!   R3's stall cannot happen here. At end of stream the completion is
//!   `Ok(0)` with an empty, unpooled `Vec`, as on io_uring.
//! * **send / send_vectored** (O4, LESSONS 8): `send(2)` / `sendmsg(2)` with
//!   `MSG_NOSIGNAL`, repeated until every byte is taken; a partial send
//!   stays at the head of the FIFO with its progress and completes only
//!   with the total. Sends behind it wait their turn, so streams never
//!   interleave.
//! * **recv_from / send_to** (O7): `recvmsg(2)`; `MSG_TRUNC` in the
//!   returned flags makes the completion `EMSGSIZE` with the part that fit
//!   and the sender. `sendto(2)` sends one datagram.
//! * **accept** (O7): `accept4(2)` with `SOCK_CLOEXEC` and without
//!   `SOCK_NONBLOCK`: the stream is handed out in blocking mode. Multishot:
//!   accept until EAGAIN on every edge, one completion (`more`, a cloned
//!   value) per connection. `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM` end the
//!   operation with an error completion (the final one of a multishot):
//!   retrying would spin while the listener stays readable (R2, LESSONS 6).
//!   `ECONNABORTED` (a client gone before we took it) is skipped.
//! * **connect**: non-blocking `connect(2)`; EINPROGRESS queues it on the
//!   write side; on writability `SO_ERROR` and `getpeername` say whether it
//!   finished (writability alone is not proof: an unconnected socket polls
//!   as writable). While it is in progress the read side is not tried, so a
//!   recv cannot consume the connect's error; reads queued meanwhile are
//!   tried when it ends.
//! * **read_at / write_at and their vectored forms** (O8): done at once,
//!   inside `submit`, on the issuing thread (`pread`, `pwrite`, `preadv`,
//!   `pwritev`; writes repeated until complete); the completion goes to
//!   `ready`. **Difference from io_uring and Windows: on epoll a file
//!   operation blocks the thread that issues it** for the length of the
//!   disk access. File operations on one handle run concurrently (they take
//!   the handle's lock shared); `close` waits for those in progress.
//!
//! # Operation ids
//!
//! An [`OpId`] is the handle's slot index and a sequence number from a
//! per-port counter, so issuing needs no shared table of operations and a
//! cancel goes straight to the handle whose FIFOs hold the operation. A
//! stale id cannot match a later operation until the counter wraps (2³²
//! operations), and the counter of each port starts at a different point
//! so that ids of two ports seldom meet.
//!
//! # Cancellation and close (X1, X2, X4)
//!
//! Nothing of an operation is in the kernel between attempts, so a cancel
//! always wins unless the operation already completed (then `NotFound`): it
//! is taken out of its FIFO and completed aborted (`ECANCELED`) into
//! `ready`. A multishot accept's abort is its final completion. A cancelled
//! send that had made progress has already put a prefix of its buffer on
//! the wire, as a cancelled WSASend may.
//!
//! `close` removes the handle from the table (the handle is invalid at
//! once), then under the handle lock completes the pending operations
//! aborted, deregisters the socket and closes it: the peer sees FIN at once
//! (LESSONS 2 does not apply: no request of ours refers to the socket). A
//! leader handling an event for the handle holds the same lock, so no
//! system call is ever made on a closed (or reused) descriptor number.
//! Events still queued for a closed handle carry the old generation, which
//! the table no longer knows: they are ignored (X4).
//!
//! # Closing the port and drop (X3)
//!
//! `close_port` refuses new operations (checked under each handle lock, so
//! an issue racing with it is either refused or aborted), completes every
//! pending operation aborted into a vector that is dropped, and wakes the
//! leader. Dropping the driver closes every descriptor it owns. X3 is
//! simple here: the kernel never holds a pointer into a user buffer between
//! system calls, so buffers in flight are freed with their operations.

mod op;
mod sys;

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::unix::io::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use socket2::SockRef;

use self::op::{Extra, Origin, Pending, Pool, Side, Step};
use self::sys::Epoll;
use crate::completion::{Completion, Handle, OpId, PortId, Rejected};
use crate::config::{Backend, Config};
use crate::queue::Reactor;
use crate::sys::error::Broken;
use crate::sys::error::{
    aborted, bad_handle, none_in_flight, not_a_socket, not_in_flight, not_ip, port_closed,
};
use crate::sys::lock::{self, Lock};
use crate::sys::slab::Slab;
use crate::sys::unix::EventFd;
use crate::sys::{Op, Opts, Ready, Source, SourceKind};

/// The epoll data of the eventfd; no handle has slot index `u32::MAX`
/// (the slab refuses it).
const WAKE: u64 = u64::MAX;

/// Events taken per `epoll_wait`.
const EVENTS: usize = 1024;

const READABLE: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
const WRITABLE: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;
/// An event that reports the peer's FIN, a hang-up or an error.
const HANGUP: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
const INTEREST: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

/// A file's lock; poison is ignored, as by `crate::sync::lock_std`.
fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct Driver<T> {
    port: PortId,
    epoll: Epoll,
    waker: EventFd,
    /// Locks that are cells of the port's thread on a local port
    /// (`crate::sys::lock`): the table, the leader's buffers, each socket,
    /// the pool's lists.
    table: lock::RwLock<Table<T>>,
    next_seq: AtomicU32,
    closed: AtomicBool,
    /// The leader's buffers, reused across waits; only the leader locks it.
    leader: Lock<LeaderBufs<T>>,
    pool: Pool,
    /// A local port: one thread issues, reaps and counts.
    local: bool,
}

struct Table<T> {
    slab: Slab<Arc<Entry<T>>>,
    /// The current generation of each slot, so that `cancel`, which knows
    /// only the slot index, finds the handle.
    gens: Vec<u32>,
}

impl<T> Table<T> {
    fn get(&self, index: u32, generation: u32) -> Option<(Handle, &Arc<Entry<T>>)> {
        let e = self.slab.get(index, generation)?;
        Some((
            Handle {
                port: e.port,
                index,
                generation,
            },
            e,
        ))
    }
}

struct LeaderBufs<T> {
    events: Vec<libc::epoll_event>,
    batch: Vec<(Origin, Arc<Entry<T>>, u32)>,
    /// The sockets to resume (`Pool::resume`).
    resumed: Vec<Handle>,
}

struct Entry<T> {
    port: PortId,
    key: u64,
    kind: SourceKind,
    io: Io<T>,
}

enum Io<T> {
    Socket(Lock<Socket<T>>),
    /// `None` once closed. Shared by file operations in progress, so they
    /// run in parallel; `close` takes it exclusively.
    File(RwLock<Option<OwnedFd>>),
}

struct Socket<T> {
    /// `None` once closed.
    fd: Option<OwnedFd>,
    reads: VecDeque<Pending<T>>,
    writes: VecDeque<Pending<T>>,
    /// A connect is in flight: the read side waits, or a recv would consume
    /// the connect's error (SO_ERROR) and the connect would never end.
    connecting: bool,
    /// A TCP stream's failure, kept for the operations after it (O5);
    /// `None` for listeners and datagram sockets.
    broken: Option<Broken>,
}

impl<T: Send + 'static> Driver<T> {
    pub(crate) fn new(config: &Config) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        let waker = EventFd::new(true)?;
        epoll.add(waker.raw(), libc::EPOLLIN as u32, WAKE)?;
        let local = config.single_issuer;
        Ok(Driver {
            port: config.port_id,
            epoll,
            waker,
            table: lock::RwLock::new(
                Table {
                    slab: Slab::new(),
                    gens: Vec::new(),
                },
                local,
            ),
            // Spread the ports' sequence ranges apart, so that ids of
            // different ports differ even in their own fields (an OpId's
            // port field is what `cancel` checks).
            next_seq: AtomicU32::new(config.port_id.get().wrapping_mul(0x9E37_79B9)),
            closed: AtomicBool::new(false),
            leader: Lock::new(
                LeaderBufs {
                    events: Vec::with_capacity(EVENTS),
                    batch: Vec::new(),
                    resumed: Vec::new(),
                },
                local,
            ),
            pool: Pool::new(
                usize::from(config.pool_buffers),
                config.pool_buffer_size,
                local,
            ),
            local,
        })
    }

    fn lookup(&self, h: Handle) -> Option<Arc<Entry<T>>> {
        if h.port != self.port {
            return None;
        }
        self.table.read().slab.get(h.index, h.generation).cloned()
    }

    /// The next operation's sequence number. Relaxed: only its uniqueness
    /// matters. A local port's one thread counts with a load and a store,
    /// without a locked add (`crate::sys::lock`).
    fn next_seq(&self) -> u32 {
        if self.local {
            let n = self.next_seq.load(Ordering::Relaxed);
            self.next_seq.store(n.wrapping_add(1), Ordering::Relaxed);
            n
        } else {
            self.next_seq.fetch_add(1, Ordering::Relaxed)
        }
    }

    fn origin(entry: &Entry<T>, handle: Handle) -> Origin {
        Origin {
            handle,
            key: entry.key,
        }
    }
}

impl<T> Socket<T> {
    fn queue(&mut self, side: Side) -> &mut VecDeque<Pending<T>> {
        match side {
            Side::Read => &mut self.reads,
            Side::Write => &mut self.writes,
        }
    }

    /// Queues `p` and, when nothing was ahead of it, tries it at once.
    fn issue(&mut self, p: Pending<T>, at: Origin, pool: &Pool, out: &mut Ready<T>) {
        if let Op::Connect(addr) = p.op {
            return self.connect(p, addr, at, out);
        }
        let side = p.side();
        let q = self.queue(side);
        let idle = q.is_empty();
        q.push_back(p);
        if idle {
            self.drive(side, false, at, pool, out);
        }
    }

    fn connect(&mut self, p: Pending<T>, addr: SocketAddr, at: Origin, out: &mut Ready<T>) {
        let r = match &self.fd {
            Some(fd) => SockRef::from(fd).connect(&addr.into()),
            None => Err(aborted()),
        };
        match r {
            Ok(()) => out.push(at.finish(p, Ok(0), Extra::None)),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                self.connecting = true;
                self.writes.push_back(p);
            }
            Err(e) => out.push(at.finish(p, Err(e), Extra::None)),
        }
    }

    /// Runs the head of one FIFO until it must wait or the FIFO is empty.
    ///
    /// `edge` says the FIFO is driven for an event that reported no
    /// hang-up or error: a multishot receive may then stop at a short read,
    /// since whatever comes later (data, FIN, RST) raises a new edge. Driven
    /// from an issue, a resume or an event with EPOLLRDHUP, a FIN or RST may
    /// already be waiting behind the data with its edge spent, so the
    /// receive reads on to EAGAIN or end of stream.
    fn drive(&mut self, side: Side, edge: bool, at: Origin, pool: &Pool, out: &mut Ready<T>) {
        if side == Side::Read && self.connecting {
            return;
        }
        let was_connecting = self.connecting;
        let Socket {
            fd,
            reads,
            writes,
            connecting,
            broken,
        } = self;
        let fd = match fd {
            Some(fd) => &*fd,
            None => return,
        };
        let q = match side {
            Side::Read => reads,
            Side::Write => writes,
        };
        while let Some(head) = q.front_mut() {
            match op::attempt(head, fd, pool) {
                Step::Wait => break,
                Step::Paused => {
                    if pool.pause(at.handle) {
                        // Buffers were dequeued since the attempt looked.
                        continue;
                    }
                    break;
                }
                Step::More(clone, r, extra, drained) => {
                    // User code, inside the reap or the issuing call: a
                    // panic is held in `out` until everything is queued. The
                    // event it was cloned for is lost (an accepted
                    // connection is closed) and the loop goes on to EAGAIN,
                    // which the edge-triggered registration needs, or the
                    // handle would never be reported again (LESSONS 12).
                    if let Some(value) = out.catch(|| clone(&head.value)) {
                        out.push(at.more(head, value, r, extra));
                    }
                    // A short read took all the stream had (multishot
                    // receives are on TCP streams only).
                    if drained && edge {
                        break;
                    }
                }
                Step::Done(r, extra) => {
                    if let Some(p) = q.pop_front() {
                        if let Op::Connect(_) = p.op {
                            *connecting = false;
                        }
                        // After a reset the kernel reads end of file and
                        // fails sends with EPIPE; the port keeps the reset
                        // (O5).
                        let r = match (broken.as_mut(), p.stream_io()) {
                            (Some(b), Some(receive)) => b.settle(receive, r),
                            _ => r,
                        };
                        out.push(at.finish(p, r, extra));
                    }
                }
            }
        }
        if was_connecting && !self.connecting {
            self.drive(Side::Read, false, at, pool, out);
        }
    }

    /// Handles one epoll event.
    fn on_event(&mut self, events: u32, at: Origin, pool: &Pool, out: &mut Ready<T>) {
        if events & READABLE != 0 {
            self.drive(Side::Read, events & HANGUP == 0, at, pool, out);
        }
        if events & WRITABLE != 0 {
            self.drive(Side::Write, false, at, pool, out);
        }
    }

    /// Takes out the operation `seq`, if it is still queued.
    fn remove(&mut self, seq: u32) -> Option<Pending<T>> {
        for q in [&mut self.reads, &mut self.writes] {
            if let Some(i) = q.iter().position(|p| p.id.generation == seq) {
                return q.remove(i);
            }
        }
        None
    }

    /// Completes every queued operation aborted; returns how many.
    fn abort_all(&mut self, at: Origin, out: &mut Ready<T>) -> usize {
        self.connecting = false;
        let n = self.reads.len() + self.writes.len();
        for p in self.reads.drain(..).chain(self.writes.drain(..)) {
            out.push(at.finish(p, Err(aborted()), Extra::None));
        }
        n
    }
}

impl<T: Send + 'static> crate::sys::Driver<T> for Driver<T> {
    fn backend(&self) -> Backend {
        Backend::Epoll
    }

    fn associate(&self, source: Source, key: u64) -> io::Result<Handle> {
        if self.closed.load(Ordering::Acquire) {
            return Err(port_closed());
        }
        let kind = source.kind();
        let socket = source.is_socket();
        let fd = source.into_fd();
        let raw = fd.as_raw_fd();
        let io = if socket {
            SockRef::from(&fd).set_nonblocking(true)?;
            Io::Socket(Lock::new(
                Socket {
                    fd: Some(fd),
                    reads: VecDeque::new(),
                    writes: VecDeque::new(),
                    connecting: false,
                    broken: match kind {
                        SourceKind::TcpStream | SourceKind::TcpSocket => Some(Broken::default()),
                        _ => None,
                    },
                },
                self.local,
            ))
        } else {
            Io::File(RwLock::new(Some(fd)))
        };
        let entry = Arc::new(Entry {
            port: self.port,
            key,
            kind,
            io,
        });
        // In the table before registering: the registration reports the
        // current readiness at once, and that event must find the handle.
        let (index, generation) = {
            let mut t = self.table.write();
            let (index, generation) = t.slab.insert(entry);
            let i = index as usize;
            if t.gens.len() <= i {
                t.gens.resize(i + 1, 0);
            }
            t.gens[i] = generation;
            (index, generation)
        };
        if socket {
            if let Err(e) = self.epoll.add(
                raw,
                INTEREST,
                u64::from(index) | u64::from(generation) << 32,
            ) {
                let entry = self.table.write().slab.remove(index, generation);
                drop(entry);
                return Err(e);
            }
        }
        Ok(Handle {
            port: self.port,
            index,
            generation,
        })
    }

    fn submit(
        &self,
        handle: Handle,
        op: Op,
        value: T,
        opts: Opts<T>,
        ready: &mut Ready<T>,
    ) -> Result<OpId, Rejected<T>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Rejected::new(port_closed(), value, op.into_payload()));
        }
        // A shared port clones the entry's `Arc` and lets go of the table,
        // so that the attempt below does not hold up `associate` and
        // `close` on other threads. A local port has none to hold up: the
        // table's cell stays open instead, and the clone and its drop, two
        // locked instructions, are spared.
        let (table, cloned);
        let found = if self.local && handle.port == self.port {
            table = self.table.read();
            table.slab.get(handle.index, handle.generation)
        } else {
            cloned = self.lookup(handle);
            cloned.as_ref()
        };
        let entry = match found {
            Some(e) => e,
            None => {
                return Err(Rejected::new(
                    bad_handle(op.name()),
                    value,
                    op.into_payload(),
                ))
            }
        };
        if let Some(err) = op.misfit(entry.kind) {
            return Err(Rejected::new(err, value, op.into_payload()));
        }
        let id = OpId {
            port: self.port,
            index: handle.index,
            generation: self.next_seq(),
        };
        let at = Self::origin(entry, handle);
        match &entry.io {
            Io::File(fd) => {
                let fd = read(fd);
                let fd = match &*fd {
                    Some(fd) => fd,
                    None => {
                        return Err(Rejected::new(
                            bad_handle(op.name()),
                            value,
                            op.into_payload(),
                        ))
                    }
                };
                let kind = op.kind();
                let (result, payload) = op::file_op(fd, op);
                ready.push(Completion {
                    key: at.key,
                    kind,
                    op: Some(id),
                    handle: Some(handle),
                    result,
                    value,
                    payload,
                    more: false,
                    seq: 0,
                });
            }
            Io::Socket(m) => {
                let mut s = m.lock();
                if s.fd.is_none() {
                    return Err(Rejected::new(
                        bad_handle(op.name()),
                        value,
                        op.into_payload(),
                    ));
                }
                // Checked again under the handle lock: close_port sets the
                // flag before sweeping the handles, so an op is either
                // refused here or seen and aborted by the sweep.
                if self.closed.load(Ordering::SeqCst) {
                    return Err(Rejected::new(port_closed(), value, op.into_payload()));
                }
                let p = Pending {
                    id,
                    op,
                    value,
                    multishot: opts.multishot,
                    done: 0,
                    seq: 0,
                };
                s.issue(p, at, &self.pool, ready);
            }
        }
        Ok(id)
    }

    fn cancel(&self, op: OpId, ready: &mut Ready<T>) -> io::Result<()> {
        let found = if op.port != self.port {
            None
        } else {
            let t = self.table.read();
            let generation = t.gens.get(op.index as usize).copied();
            generation
                .and_then(|generation| t.get(op.index, generation))
                .map(|(h, e)| (h, e.clone()))
        };
        let not_found = || not_in_flight();
        let (handle, entry) = found.ok_or_else(not_found)?;
        let m = match &entry.io {
            Io::Socket(m) => m,
            Io::File(_) => return Err(not_found()),
        };
        let at = Self::origin(&entry, handle);
        let mut s = m.lock();
        let p = s.remove(op.generation).ok_or_else(not_found)?;
        let was_connect = matches!(p.op, Op::Connect(_));
        ready.push(at.finish(p, Err(aborted()), Extra::None));
        if was_connect {
            // Reads queued behind the connect were never tried: try them
            // now, or they could wait for an edge that already came.
            s.connecting = false;
            s.drive(Side::Read, false, at, &self.pool, ready);
        }
        Ok(())
    }

    fn cancel_handle(&self, handle: Handle, ready: &mut Ready<T>) -> io::Result<usize> {
        let entry = self
            .lookup(handle)
            .ok_or_else(|| bad_handle("cancel_handle"))?;
        let n = match &entry.io {
            Io::Socket(m) => m.lock().abort_all(Self::origin(&entry, handle), ready),
            Io::File(_) => 0,
        };
        if n == 0 {
            return Err(none_in_flight());
        }
        Ok(n)
    }

    fn close(&self, handle: Handle, ready: &mut Ready<T>) -> io::Result<()> {
        if handle.port != self.port {
            return Err(bad_handle("close"));
        }
        let entry = self
            .table
            .write()
            .slab
            .remove(handle.index, handle.generation);
        let entry = entry.ok_or_else(|| bad_handle("close"))?;
        match &entry.io {
            Io::Socket(m) => {
                let mut s = m.lock();
                s.abort_all(Self::origin(&entry, handle), ready);
                if let Some(fd) = s.fd.take() {
                    // Explicit: a duplicate of the descriptor made before
                    // association would keep the registration alive.
                    let _ = self.epoll.delete(fd.as_raw_fd());
                    drop(fd);
                }
            }
            Io::File(fd) => drop(write(fd).take()),
        }
        Ok(())
    }

    fn shutdown(&self, handle: Handle, how: Shutdown) -> io::Result<()> {
        let entry = self.lookup(handle).ok_or_else(|| bad_handle("shutdown"))?;
        match &entry.io {
            Io::Socket(m) => {
                let mut s = m.lock();
                match &s.fd {
                    Some(fd) => SockRef::from(fd).shutdown(how)?,
                    None => return Err(bad_handle("shutdown")),
                }
                if let Some(b) = s.broken.as_mut() {
                    b.shut(how);
                }
                Ok(())
            }
            Io::File(_) => Err(not_a_socket("shutdown")),
        }
    }

    fn addr(&self, handle: Handle, peer: bool) -> io::Result<SocketAddr> {
        let entry = self.lookup(handle).ok_or_else(|| bad_handle("addr"))?;
        let addr = match &entry.io {
            Io::Socket(m) => match &m.lock().fd {
                Some(fd) if peer => SockRef::from(fd).peer_addr()?,
                Some(fd) => SockRef::from(fd).local_addr()?,
                None => return Err(bad_handle("addr")),
            },
            Io::File(_) => return Err(not_a_socket("addr")),
        };
        addr.as_socket().ok_or_else(|| not_ip("addr"))
    }

    fn close_port(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            let entries: Vec<(Handle, Arc<Entry<T>>)> = {
                let mut t = self.table.write();
                t.slab
                    .iter_mut()
                    .map(|((index, generation), e)| {
                        let h = Handle {
                            port: self.port,
                            index,
                            generation,
                        };
                        (h, e.clone())
                    })
                    .collect()
            };
            let mut dropped = Ready::new();
            for (h, e) in &entries {
                if let Io::Socket(m) = &e.io {
                    m.lock().abort_all(Self::origin(e, *h), &mut dropped);
                }
            }
            // Dropped here, outside every lock: a value's Drop may do
            // anything, including calling into the port.
            drop(dropped);
        }
        self.waker.notify();
    }

    fn recycle(&self, buf: Vec<u8>) {
        self.pool.give(buf);
    }

    fn delivered(&self, n: usize) {
        self.pool.delivered(n);
        if self.pool.any_paused() {
            self.waker.notify();
        }
    }
}

impl<T: Send + 'static> Reactor<Completion<T>> for Driver<T> {
    fn flush(&self) {
        // Every operation reaches the kernel inside submit: nothing is
        // deferred on epoll.
    }

    fn wait(&self, timeout: Option<Duration>, out: &mut Ready<T>) {
        let mut bufs = self.leader.lock();
        let LeaderBufs {
            events,
            batch,
            resumed,
        } = &mut *bufs;
        // Multishot receives that stopped for the pool's count read on once
        // buffers were dequeued: no edge will come for data already there.
        self.pool.resume(resumed);
        for &h in resumed.iter() {
            if let Some(entry) = self.lookup(h) {
                if let Io::Socket(m) = &entry.io {
                    m.lock()
                        .drive(Side::Read, false, Self::origin(&entry, h), &self.pool, out);
                }
            }
        }
        let timeout = if out.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        match self.epoll.wait(events, sys::timeout_ms(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(e) => {
                log::error!(target: "cport", "epoll_wait failed: {e}");
                return;
            }
        }
        {
            let t = self.table.read();
            for ev in events.iter() {
                // Copied out: the struct is packed on x86-64.
                let (data, mask) = (ev.u64, ev.events);
                if data == WAKE {
                    self.waker.drain();
                } else if let Some((h, e)) = t.get(data as u32, (data >> 32) as u32) {
                    if !self.local {
                        batch.push((Self::origin(e, h), e.clone(), mask));
                    } else if let Io::Socket(m) = &e.io {
                        // Handled at once, under the table's cell, which no
                        // other thread waits for: no `Arc` clone per event
                        // (see `submit`).
                        m.lock().on_event(mask, Self::origin(e, h), &self.pool, out);
                    }
                }
                // Else a handle closed after the event was queued: its
                // generation is gone, so is the event (X4).
            }
        }
        // A shared port's events, handled outside the table lock: a recv or
        // send must not hold up associate and close.
        for (at, entry, mask) in batch.drain(..) {
            if let Io::Socket(m) = &entry.io {
                m.lock().on_event(mask, at, &self.pool, out);
            }
        }
    }

    fn wake(&self) {
        self.waker.notify();
    }
}

impl<T> fmt::Debug for Driver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("epoll::Driver")
            .field("port", &self.port)
            .field("epoll", &self.epoll)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
