//! The Windows backend: the model on the kernel object it was taken from.
//!
//! # How it realises the model
//!
//! The port is one I/O completion port made by `CreateIoCompletionPort`
//! ([`port`]: the owned handle, one system call per method). The
//! user-space queue (`crate::queue`) still orders completions and counts
//! running threads, exactly as on Linux, so that every platform obeys the
//! same SEMANTICS items; the kernel port is what the queue's leader polls
//! in [`Reactor::wait`] with `GetQueuedCompletionStatusEx`, and
//! [`Reactor::wake`] is a `PostQueuedCompletionStatus` with a key no I/O
//! uses.
//!
//! * **Association.** A socket is associated with the port (completion key
//!   [`IO_KEY`]) and switched to `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`: an
//!   operation that succeeds at issue queues no packet, and its completion
//!   is produced at once into `ready`. Where the mode cannot be set, the
//!   packet comes and the operation is treated as pending. The port keeps
//!   the `Source` itself; sockets are seen through socket2 ([`net`]).
//! * **Operations** ([`op`]). Each operation is one heap cell, a
//!   `#[repr(C)]` struct with the `OVERLAPPED` first, followed by
//!   everything else the kernel writes after the call returns (flags, the
//!   sender's address, `AcceptEx`'s address block), its value and its
//!   buffers. A dequeued packet's `OVERLAPPED` pointer is therefore the
//!   operation's address: it holds its own slab key, which leads to the op
//!   slab's entry without a map. The slab (generational, `sys/slab.rs`)
//!   is what an `OpId` and a handle's cancel or close find operations in,
//!   and a stale `OpId` never reaches a newer operation (X4). The cell is
//!   owned by an `OpBox`, freed only after its final packet (or at once
//!   when no packet is to come), and leaked, never freed, by a port
//!   dropped while the kernel still holds it (X3).
//! * **Sockets**: `WSARecv`/`WSASend` (one or several `WSABUF`s),
//!   `WSARecvFrom`/`WSASendTo`, `AcceptEx` (re-issued for `accept_multi`),
//!   `ConnectEx` (after binding the socket to the wildcard address, as it
//!   requires), one issuing function each. A send completing short is
//!   continued inside the port (O4). Addresses go through socket2's
//!   `SockAddr`.
//! * **Files** ([`file`]): `std::fs::File` opens handles for synchronous
//!   I/O, which cannot be overlapped; `ReadFile`/`WriteFile` run at issue
//!   with the offset in the `OVERLAPPED` and complete at once, as on epoll.
//!   On such a handle they move the file position anyway, so it is saved
//!   and put back around each operation (O8), under the port's state lock:
//!   file I/O holds up the port's other issues meanwhile. Truly overlapped
//!   files (`ReOpenFile` with `FILE_FLAG_OVERLAPPED`) are left to do.
//! * **Cancel and close**: `CancelIoEx` with the operation's `OVERLAPPED`,
//!   or with none for a whole handle. Closing a handle cancels what is in
//!   flight on it and then drops it (closesocket); any failure of an
//!   operation whose handle is gone is reported as aborted (X2).
//! * **Pooled receives** (O6, R3): a zero-byte `WSARecv` waits for data
//!   pinning no buffer; when it completes, a pool buffer is taken and a
//!   real `WSARecv` into it (normally done at once) finishes the operation.
//!   At most `pool_buffers` such receives hold a buffer in the kernel; when
//!   none is free the receive is parked, with nothing in the kernel, until
//!   one finishes. The buffer handed out no longer counts, as on io_uring
//!   (where the user gets a copy); `recycle` keeps it for reuse.
//! * **Close and drop of the port** (Q6, X3): `close_port` cancels every
//!   socket's I/O and reaps the aborted packets itself for up to 5 s, since
//!   no `get` reaps on a closed port. Dropping the driver closes every
//!   handle, reaps for up to 5 s more, and leaks what the kernel still
//!   holds after that, with a log line.
//! * **Backend name**: Windows has this one backend, so a port built with
//!   `Backend::Auto` reports `Auto`; `Uring` and `Epoll` are refused.
//! * **Under wine 8** (how CI runs it, `scripts/windows-test.sh`): closing
//!   the port does not wake `GetQueuedCompletionStatusEx`, so nothing here
//!   relies on it: the queue's wake-up is a posted packet.

mod file;
mod net;
mod op;
mod pool;
mod port;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::mem;
use std::net::{Shutdown, SocketAddr};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use socket2::Domain;
use windows_sys::Win32::Networking::WinSock::{INVALID_SOCKET, SOCKET};
use windows_sys::Win32::System::IO::OVERLAPPED_ENTRY;

use self::op::{Next, OpBox, Operation, Started};
use self::pool::Pool;
use self::port::Iocp;
use crate::completion::{Completion, Handle, OpId, OpKind, PortId, Rejected};
use crate::config::{Backend, Config};
use crate::queue::Reactor;
use crate::sync::lock_std as lock;
use crate::sys::error::{
    bad_handle, none_in_flight, not_a_socket, not_in_flight, not_ip, port_closed, Broken, ABORTED,
};
use crate::sys::slab::Slab;
use crate::sys::{FreeList, Op, Opts, Ready, Source, SourceInner, SourceKind};

/// The completion key of every associated socket: operations are told
/// apart by their `OVERLAPPED`, not by the key.
const IO_KEY: usize = 0;
/// The key of the packets [`Reactor::wake`] posts.
const WAKE_KEY: usize = 1;
/// How long `close_port`, and then a dropped port, wait for the kernel to
/// give back the operations they cancelled (dropped ones are leaked after
/// that instead of freed).
const DRAIN: Duration = Duration::from_secs(5);
/// One wait of `close_port`'s reaping.
const CLOSE_POLL: Duration = Duration::from_millis(50);
/// One wait of a dropped port's reaping.
const DROP_POLL: Duration = Duration::from_millis(100);

/// One associated socket or file.
struct Assoc {
    key: u64,
    kind: SourceKind,
    /// Owned until the handle is closed: dropping it is the closesocket or
    /// CloseHandle.
    source: Source,
    /// FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is in effect.
    skip: bool,
    /// A stream's failure, kept for the operations after it (O5): Windows
    /// keeps failing them itself, wine (on Linux sockets) does not.
    broken: Broken,
}

impl Assoc {
    /// The socket, or `None` for a file.
    fn socket(&self) -> Option<SOCKET> {
        net::sock_ref(&self.source).map(|s| net::raw(&s))
    }
}

/// An operation in the slab, with its handle beside it: cancel and close
/// read the handle without touching the operation, which the kernel may
/// be writing into.
struct Entry<T> {
    op: OpBox<T>,
    handle: Handle,
}

struct State<T> {
    handles: Slab<Assoc>,
    ops: Slab<Entry<T>>,
    /// Pooled receives whose data is there but the pool was dry (R3):
    /// nothing of theirs is in the kernel until a buffer comes back.
    parked: Vec<OpId>,
}

pub(crate) struct Driver<T> {
    port: PortId,
    /// Closed by its own `Drop`, after the driver's has drained or leaked
    /// every operation.
    iocp: Iocp,
    closed: AtomicBool,
    state: Mutex<State<T>>,
    pool: Mutex<Pool>,
}

impl<T: Send + 'static> Driver<T> {
    pub(crate) fn new(config: &Config) -> io::Result<Self> {
        Ok(Driver {
            port: config.port_id,
            iocp: Iocp::new()?,
            closed: AtomicBool::new(false),
            state: Mutex::new(State {
                handles: Slab::new(),
                ops: Slab::new(),
                parked: Vec::new(),
            }),
            pool: Mutex::new(Pool {
                count: usize::from(config.pool_buffers),
                in_kernel: 0,
                undelivered: 0,
                free: FreeList::new(usize::from(config.pool_buffers), config.pool_buffer_size),
            }),
        })
    }

    fn reject(e: io::Error, value: T, op: Op) -> Result<OpId, Rejected<T>> {
        Err(Rejected::new(e, value, op.into_payload()))
    }

    /// Settles operation `id` with the outcome of its last start: goes on
    /// (a send's rest, a pooled receive's buffer, a multishot accept's next
    /// connection), parks it, or removes it and produces its completion.
    fn settle(
        &self,
        st: &mut State<T>,
        id: OpId,
        mut bytes: usize,
        mut err: Option<i32>,
        out: &mut Ready<T>,
    ) {
        loop {
            let handle = match st.ops.get(id.index, id.generation) {
                Some(e) => e.handle,
                None => return,
            };
            let (skip, orphan) = match st.handles.get(handle.index, handle.generation) {
                Some(a) => (a.skip, self.closed.load(Ordering::Acquire)),
                None => (false, true),
            };
            let e = st
                .ops
                .get_mut(id.index, id.generation)
                .expect("looked up above");
            if err.is_none() && !orphan {
                // SAFETY:
                // - settle is given the outcome of the operation's last
                //   start, which completed at issue or whose packet was
                //   dequeued: the kernel holds none of it.
                match unsafe { e.op.next(bytes, skip, &self.pool, out) } {
                    Next::Again(Started::Pending) => return,
                    Next::Again(Started::Done(b, x)) => {
                        bytes = b;
                        err = x;
                        continue;
                    }
                    Next::Park => {
                        st.parked.push(id);
                        return;
                    }
                    Next::Final => {}
                }
            }
            let e = st
                .ops
                .remove(id.index, id.generation)
                .expect("looked up above");
            // SAFETY:
            // - as above, and the slab no longer has it: this is its final
            //   outcome, and nothing starts it again.
            let op = unsafe { e.op.into_inner() };
            let pooled = op.is_pooled();
            let mut c = op.complete(bytes, err, orphan, &self.pool);
            if let Some(a) = st.handles.get_mut(handle.index, handle.generation) {
                if matches!(a.kind, SourceKind::TcpStream | SourceKind::TcpSocket) {
                    let receive = match c.kind {
                        OpKind::Recv | OpKind::RecvPooled | OpKind::RecvMulti => Some(true),
                        OpKind::Send => Some(false),
                        _ => None,
                    };
                    if let Some(receive) = receive {
                        c.result = a.broken.settle(receive, c.result);
                    }
                }
            }
            out.push(c);
            if pooled && !st.parked.is_empty() {
                // Its buffer left the kernel: a parked receive may go on.
                self.resume(st, out);
            }
            return;
        }
    }

    /// Completes, aborted, the parked receives `pick` selects (by id and
    /// handle): cancelled, or their handle closed.
    fn unpark(&self, st: &mut State<T>, pick: impl Fn(OpId, Handle) -> bool, out: &mut Ready<T>) {
        let parked = mem::take(&mut st.parked);
        for id in parked {
            let h = match st.ops.get(id.index, id.generation) {
                Some(e) => e.handle,
                None => continue,
            };
            if pick(id, h) {
                let e = st
                    .ops
                    .remove(id.index, id.generation)
                    .expect("looked up above");
                // SAFETY:
                // - a parked receive has nothing in the kernel.
                let op = unsafe { e.op.into_inner() };
                out.push(op.complete(0, Some(ABORTED), true, &self.pool));
            } else {
                st.parked.push(id);
            }
        }
    }

    /// Gives pool buffers that came back to parked receives, oldest first.
    fn resume(&self, st: &mut State<T>, out: &mut Ready<T>) {
        while !st.parked.is_empty() {
            let id = st.parked[0];
            let buf = match lock(&self.pool).take() {
                Some(b) => b,
                None => return,
            };
            st.parked.remove(0);
            let handle = match st.ops.get(id.index, id.generation) {
                Some(e) => e.handle,
                None => {
                    let mut pool = lock(&self.pool);
                    pool.done();
                    pool.give(buf);
                    continue;
                }
            };
            let skip = st
                .handles
                .get(handle.index, handle.generation)
                .map_or(false, |a| a.skip);
            let e = st
                .ops
                .get_mut(id.index, id.generation)
                .expect("looked up above");
            // SAFETY:
            // - a parked receive has nothing in the kernel.
            if let Started::Done(bytes, err) = unsafe { e.op.resume(buf, skip) } {
                self.settle(st, id, bytes, err, out);
            }
        }
    }

    /// Dequeues one batch of packets (waiting at most `timeout`) and
    /// settles the operations they finish. Returns how many packets came.
    fn reap(&self, timeout: Option<Duration>, out: &mut Ready<T>) -> usize {
        let mut room = port::packets();
        let packets = self.iocp.dequeue(&mut room, timeout);
        if packets.is_empty() {
            return 0;
        }
        let mut st = lock(&self.state);
        for p in packets {
            let id = match Self::op_of(&st, p) {
                Some(id) => id,
                None => continue,
            };
            let e = st
                .ops
                .get_mut(id.index, id.generation)
                .expect("op_of found it");
            // SAFETY:
            // - the packet of its last start was just dequeued: the kernel
            //   holds none of it.
            let (bytes, err) = unsafe { e.op.get_mut() }.outcome();
            self.settle(&mut st, id, bytes, err, out);
        }
        if !st.parked.is_empty() {
            // Dequeued completions may have made room in the pool.
            self.resume(&mut st, out);
        }
        packets.len()
    }

    /// Puts a socket operation in the slab and starts it (unless binding
    /// its socket failed: `bind_err`); `ready` gets its completion if it
    /// ended at issue.
    fn submit_socket(
        &self,
        st: &mut State<T>,
        op: Operation<T>,
        skip: bool,
        bind_err: Option<i32>,
        ready: &mut Ready<T>,
    ) -> OpId {
        let handle = op.handle;
        let (index, generation) = st.ops.insert(Entry {
            op: OpBox::new(op),
            handle,
        });
        let id = OpId {
            port: self.port,
            index,
            generation,
        };
        let e = st.ops.get_mut(index, generation).expect("just inserted");
        // SAFETY:
        // - not started yet: the kernel holds none of it.
        unsafe { e.op.get_mut() }.id = id;
        let started = match bind_err {
            Some(err) => Started::Done(0, Some(err)),
            // SAFETY:
            // - not started yet: the kernel holds none of it.
            None => unsafe { e.op.start(skip) },
        };
        if let Started::Done(bytes, err) = started {
            self.settle(st, id, bytes, err, ready);
        }
        id
    }

    /// Completes a file operation whose I/O already ran, with `r` (see
    /// [`file`]); it takes a slab slot only for an `OpId` of its own (X4).
    fn submit_file(
        &self,
        st: &mut State<T>,
        op: Operation<T>,
        r: io::Result<usize>,
        ready: &mut Ready<T>,
    ) -> OpId {
        let handle = op.handle;
        let (index, generation) = st.ops.insert(Entry {
            op: OpBox::new(op),
            handle,
        });
        let e = st.ops.remove(index, generation).expect("just inserted");
        // SAFETY:
        // - a file operation never reaches the kernel through its cell: it
        //   ran at issue, with an OVERLAPPED of its own.
        let mut op = unsafe { e.op.into_inner() };
        let id = OpId {
            port: self.port,
            index,
            generation,
        };
        op.id = id;
        let (bytes, err) = match r {
            Ok(n) => (n, None),
            Err(e) => (0, Some(e)),
        };
        let mut c = op.complete(bytes, None, false, &self.pool);
        if let Some(e) = err {
            c.result = Err(e);
        }
        ready.push(c);
        id
    }
}

impl<T> Driver<T> {
    /// The operation a dequeued packet finishes a start of; `None` for a
    /// wake-up.
    fn op_of(st: &State<T>, p: &OVERLAPPED_ENTRY) -> Option<OpId> {
        if p.lpCompletionKey != IO_KEY || p.lpOverlapped.is_null() {
            return None;
        }
        // SAFETY:
        // - a packet with IO_KEY and an OVERLAPPED is one of this port's
        //   socket operations: only the port's own sockets are associated,
        //   under IO_KEY, and only the port issues I/O on them;
        // - its cell is in the slab until its final packet is handled (by
        //   `reap` or `Drop`, under the state lock or `&mut self`), and
        //   this packet was just dequeued.
        let id = unsafe { OpBox::<T>::id_of(p.lpOverlapped) };
        match st.ops.get(id.index, id.generation) {
            Some(e) if e.op.overlapped() == p.lpOverlapped => Some(id),
            _ => {
                log::error!(target: "cport", "a packet for an operation the port does not have");
                None
            }
        }
    }
}

impl<T: Send + 'static> crate::sys::Driver<T> for Driver<T> {
    fn backend(&self) -> Backend {
        Backend::Auto
    }

    fn associate(&self, source: Source, key: u64) -> io::Result<Handle> {
        if self.closed.load(Ordering::Acquire) {
            return Err(port_closed());
        }
        let kind = source.kind();
        let mut skip = false;
        if let Some(s) = net::sock_ref(&source) {
            let s = net::raw(&s);
            self.iocp.associate(s, IO_KEY)?;
            skip = net::skip_on_success(s);
        }
        let mut st = lock(&self.state);
        let (index, generation) = st.handles.insert(Assoc {
            key,
            kind,
            source,
            skip,
            broken: Broken::default(),
        });
        Ok(Handle {
            port: self.port,
            index,
            generation,
        })
    }

    fn submit(
        &self,
        handle: Handle,
        mut op: Op,
        value: T,
        opts: Opts<T>,
        ready: &mut Ready<T>,
    ) -> Result<OpId, Rejected<T>> {
        if self.closed.load(Ordering::Acquire) {
            return Self::reject(port_closed(), value, op);
        }
        if handle.port != self.port {
            return Self::reject(bad_handle(op.name()), value, op);
        }
        let mut st = lock(&self.state);
        let a = match st.handles.get(handle.index, handle.generation) {
            Some(a) => a,
            None => return Self::reject(bad_handle(op.name()), value, op),
        };
        if let Some(err) = op.misfit(a.kind) {
            return Self::reject(err, value, op);
        }
        let (key, skip) = (a.key, a.skip);
        if let SourceInner::File(f) = &a.source.0 {
            let r = file::run(f, &mut op);
            let op = Operation::new(handle, key, INVALID_SOCKET, value, None, op, Domain::IPV4);
            return Ok(self.submit_file(&mut st, op, r, ready));
        }
        let s = net::sock_ref(&a.source).expect("not a file: a socket");
        let domain = match op {
            Op::Accept => net::family(&s),
            _ => Domain::IPV4,
        };
        // ConnectEx refuses an unbound socket.
        let bind_err = match &op {
            Op::Connect(to) => net::bind_any(&s, to).err().and_then(|e| e.raw_os_error()),
            _ => None,
        };
        let sock = net::raw(&s);
        let op = Operation::new(handle, key, sock, value, opts.multishot, op, domain);
        Ok(self.submit_socket(&mut st, op, skip, bind_err, ready))
    }

    fn cancel(&self, op: OpId, ready: &mut Ready<T>) -> io::Result<()> {
        let mut st = lock(&self.state);
        let (handle, ov) = match st.ops.get(op.index, op.generation) {
            Some(e) if op.port == self.port => (e.handle, e.op.overlapped()),
            _ => return Err(not_in_flight()),
        };
        let sock = match st.handles.get(handle.index, handle.generation) {
            Some(a) => a.socket(),
            // Its handle was closed: the abort is already on its way.
            None => return Ok(()),
        };
        if st.parked.contains(&op) {
            self.unpark(&mut st, |id, _| id == op, ready);
            return Ok(());
        }
        // The state lock is held, so the operation stays in the slab, its
        // OVERLAPPED allocated, while CancelIoEx looks for it.
        match sock {
            Some(s) => net::cancel(s, ov),
            None => Ok(()),
        }
    }

    fn cancel_handle(&self, handle: Handle, ready: &mut Ready<T>) -> io::Result<usize> {
        if handle.port != self.port {
            return Err(bad_handle("cancel_handle"));
        }
        let mut st = lock(&self.state);
        let sock = match st.handles.get(handle.index, handle.generation) {
            Some(a) => a.socket(),
            None => return Err(bad_handle("cancel_handle")),
        };
        let n = st
            .ops
            .iter_mut()
            .filter(|(_, e)| e.handle == handle)
            .count();
        if n == 0 {
            return Err(none_in_flight());
        }
        if let Some(s) = sock {
            net::cancel_all(s);
        }
        self.unpark(&mut st, |_, h| h == handle, ready);
        Ok(n)
    }

    fn close(&self, handle: Handle, ready: &mut Ready<T>) -> io::Result<()> {
        if handle.port != self.port {
            return Err(bad_handle("close"));
        }
        let assoc = {
            let mut st = lock(&self.state);
            let a = st
                .handles
                .remove(handle.index, handle.generation)
                .ok_or_else(|| bad_handle("close"))?;
            // Cancelling everything makes the pending operations complete
            // aborted before the socket goes (X2); it is still open here,
            // `a.source` being dropped below.
            if let Some(s) = a.socket() {
                net::cancel_all(s);
            }
            self.unpark(&mut st, |_, h| h == handle, ready);
            a
        };
        // closesocket / CloseHandle, outside the lock.
        drop(assoc);
        Ok(())
    }

    fn shutdown(&self, handle: Handle, how: Shutdown) -> io::Result<()> {
        let mut st = lock(&self.state);
        let a = st
            .handles
            .get_mut(handle.index, handle.generation)
            .filter(|_| handle.port == self.port)
            .ok_or_else(|| bad_handle("shutdown"))?;
        let s = net::sock_ref(&a.source).ok_or_else(|| not_a_socket("shutdown"))?;
        s.shutdown(how)?;
        a.broken.shut(how);
        Ok(())
    }

    fn addr(&self, handle: Handle, peer: bool) -> io::Result<SocketAddr> {
        let st = lock(&self.state);
        let a = st
            .handles
            .get(handle.index, handle.generation)
            .filter(|_| handle.port == self.port)
            .ok_or_else(|| bad_handle("addr"))?;
        let s = net::sock_ref(&a.source).ok_or_else(|| not_a_socket("addr"))?;
        if peer && a.kind == SourceKind::TcpListener {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "addr: a listener has no peer",
            ));
        }
        let addr = if peer {
            s.peer_addr()?
        } else {
            s.local_addr()?
        };
        addr.as_socket().ok_or_else(|| not_ip("addr"))
    }

    fn close_port(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut dropped = Ready::new();
        {
            let mut st = lock(&self.state);
            // Parked receives have nothing in the kernel to cancel.
            self.unpark(&mut st, |_, _| true, &mut dropped);
            for (_, a) in st.handles.iter_mut() {
                if let Some(s) = a.socket() {
                    net::cancel_all(s);
                }
            }
        }
        self.wake();
        // The queue is closed, so nobody takes these completions: reap the
        // cancellations here and drop what was in flight now, values and
        // buffers, not when the last clone of the port goes (Q6).
        let deadline = Instant::now() + DRAIN;
        let reaped = lock(&self.state).ops.len() > 0;
        while lock(&self.state).ops.len() > 0 && Instant::now() < deadline {
            self.reap(Some(CLOSE_POLL), &mut dropped);
        }
        if reaped {
            // This thread's reaping may have taken the wake-up posted above:
            // a leader that was about to wait, not yet in
            // GetQueuedCompletionStatusEx when it was posted, would then
            // wait with nothing to end it. Another one, now that nobody
            // else reaps, is there for it. (Seen as a waiter of Q6's test
            // not woken within 10 s under wine on a busy machine; not
            // reproduced on demand.)
            self.wake();
        }
        // Outside the lock; every value is dropped even if one's Drop
        // panics, and the first panic goes on to the port, which logs it.
        let mut first = dropped.take_panic();
        for c in dropped {
            if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| drop(c))) {
                first.get_or_insert(p);
            }
        }
        if let Some(p) = first {
            panic::resume_unwind(p);
        }
    }

    fn recycle(&self, buf: Vec<u8>) {
        lock(&self.pool).give(buf);
    }

    fn delivered(&self, n: usize) {
        lock(&self.pool).delivered(n);
        if !lock(&self.state).parked.is_empty() {
            // The leader resumes parked receives in its reap.
            self.wake();
        }
    }
}

impl<T: Send + 'static> Reactor<Completion<T>> for Driver<T> {
    fn flush(&self) {}

    fn wait(&self, timeout: Option<Duration>, out: &mut Ready<T>) {
        self.reap(timeout, out);
    }

    fn wake(&self) {
        // A post fails only when the kernel is out of memory or the port is
        // gone; the leader's wait then ends by its own timeout.
        let _ = self.iocp.post(WAKE_KEY);
    }
}

impl<T> Drop for Driver<T> {
    fn drop(&mut self) {
        let st = match self.state.get_mut() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        // Close every handle: what is in flight on them is aborted.
        for (_, a) in st.handles.iter_mut() {
            if let Some(s) = a.socket() {
                net::cancel_all(s);
            }
        }
        drop(mem::replace(&mut st.handles, Slab::new()));
        for id in mem::take(&mut st.parked) {
            if let Some(e) = st.ops.remove(id.index, id.generation) {
                // SAFETY:
                // - a parked receive has nothing in the kernel.
                let op = unsafe { e.op.into_inner() };
                let _ = panic::catch_unwind(AssertUnwindSafe(|| drop(op)));
            }
        }
        // The kernel may still write into the cells of what was in flight:
        // take each one's packet before freeing it (X3).
        let deadline = Instant::now() + DRAIN;
        let mut room = port::packets();
        while st.ops.len() > 0 && Instant::now() < deadline {
            for p in self.iocp.dequeue(&mut room, Some(DROP_POLL)) {
                let e = match Self::op_of(st, p) {
                    Some(id) => st
                        .ops
                        .remove(id.index, id.generation)
                        .expect("op_of found it"),
                    None => continue,
                };
                // SAFETY:
                // - its packet was dequeued, and nothing starts it again:
                //   the kernel holds none of it.
                let op = unsafe { e.op.into_inner() };
                // A value's Drop panicking here would escape the port's own
                // drop; close_port already reported one.
                let _ = panic::catch_unwind(AssertUnwindSafe(|| drop(op)));
            }
        }
        if st.ops.len() > 0 {
            // An `OpBox` has no `Drop`: the slab's cells are leaked with it.
            log::error!(
                target: "cport",
                "{} operations still in the kernel when the port was dropped; their buffers \
                 are leaked rather than freed under the kernel",
                st.ops.len()
            );
        }
    }
}

impl<T> fmt::Debug for Driver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("windows::Driver")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}
