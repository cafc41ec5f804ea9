//! [`CompletionPort`]: the port's calls, over the queue and a backend.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::builder::Builder;
use crate::completion::{Completion, GetError, Handle, OpId, OpKind, Payload, PortId, Rejected};
use crate::config::Backend;
use crate::issue::{Ops, Via};
use crate::queue::{Queue, QueueStats, Seat};
use crate::sys::error::port_closed;
use crate::sys::{Driver, Ready, Source};

/// A completion port: the queue that overlapped operations complete into,
/// and that worker threads dequeue from.
///
/// `T` is the per-operation value (the tutorials' `PER_IO_DATA`): every
/// operation takes one and its completion gives it back, unchanged
/// (SEMANTICS P4). The port is a shared handle: clones refer to the same
/// port, and it is `Send + Sync` (P5). It closes when [`close_port`] is
/// called or the last clone is dropped.
///
/// [`close_port`]: CompletionPort::close_port
pub struct CompletionPort<T = ()> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    id: PortId,
    queue: Queue<Completion<T>>,
    /// [`Builder::batch_submissions`].
    batch: bool,
    driver: Box<dyn Driver<T>>,
    /// `close_port` was called inside a multishot value's `Clone`: the
    /// backend's part of the close waits for the call that ran the clone
    /// (`settle_close`).
    close_pending: AtomicBool,
}

impl<T> CompletionPort<T> {
    /// The port a [`Builder`] opened.
    pub(crate) fn from_parts(
        id: PortId,
        queue: Queue<Completion<T>>,
        batch: bool,
        driver: Box<dyn Driver<T>>,
    ) -> Self {
        CompletionPort {
            inner: Arc::new(Inner {
                id,
                queue,
                batch,
                driver,
                close_pending: AtomicBool::new(false),
            }),
        }
    }

    /// [`close_port`](Self::close_port), for owners without `T`'s bounds
    /// (a `LocalPort`'s drop).
    pub(crate) fn close_now(&self) {
        self.inner.close();
    }
}

impl<T> Clone for CompletionPort<T> {
    fn clone(&self) -> Self {
        CompletionPort {
            inner: self.inner.clone(),
        }
    }
}

impl<T> fmt::Debug for CompletionPort<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionPort")
            .field("id", &self.inner.id)
            .field("backend", &self.inner.driver.backend())
            .field("concurrency", &self.inner.queue.concurrency())
            .finish()
    }
}

impl<T> Inner<T> {
    /// Closes the queue and the backend, dropping what was queued and what
    /// was in flight. Those drops run user code (each value's `Drop`); a
    /// panic in it is logged, not propagated: this runs inside the port's
    /// own drop, where a panic during another unwind aborts the process,
    /// and the backend must get to the end of its close either way.
    ///
    /// Inside a multishot value's `Clone` only the queue closes at once: the
    /// backend runs the clone under a lock of its own, which its close takes
    /// too, so waiting for it there would never end (SEMANTICS O10). The
    /// backend closes as soon as the call that ran the clone has let go of
    /// that lock ([`settle_close`](Self::settle_close)).
    fn close(&self) {
        let queued = self.queue.close(&*self.driver);
        let dropped = panic::catch_unwind(AssertUnwindSafe(|| drop(queued))).is_ok();
        if crate::sync::in_clone() {
            self.close_pending.store(true, Ordering::Release);
            if !dropped {
                Self::panicked_closing();
            }
            return;
        }
        let closed = panic::catch_unwind(AssertUnwindSafe(|| self.driver.close_port())).is_ok();
        if !dropped || !closed {
            Self::panicked_closing();
        }
    }

    /// Closes the backend if a `close_port` inside a `Clone` left that to
    /// this thread, which has just come back from the backend call that
    /// ran the clone. One relaxed load otherwise.
    fn settle_close(&self) {
        if self.close_pending.load(Ordering::Relaxed)
            && self.close_pending.swap(false, Ordering::AcqRel)
            && panic::catch_unwind(AssertUnwindSafe(|| self.driver.close_port())).is_err()
        {
            Self::panicked_closing();
        }
    }

    fn panicked_closing() {
        log::error!(
            target: "cport",
            "a per-operation value panicked while the port closed; what was left in flight \
             is released when the port is dropped"
        );
    }
}

impl<T> Drop for Inner<T> {
    fn drop(&mut self) {
        self.close();
    }
}

/// The running record of a thread: the port it took a completion from and
/// what it holds of that port's running slots (SEMANTICS C1–C3). Every
/// change the thread makes to the count goes through its seat
/// (`queue::Seat`), so no nesting of `blocking`, `leave` and `get` gives a
/// slot up twice. Dropping the record (the thread exits, or moves to
/// another port) gives a held slot back.
struct RunningOn {
    id: PortId,
    port: Weak<dyn Leave>,
    /// Never `None` while stored: a record without a seat is dropped.
    seat: Option<Seat>,
}

trait Leave: Send + Sync {
    fn leave(&self, seat: &mut Option<Seat>);
}

impl<T: Send + 'static> Leave for Inner<T> {
    fn leave(&self, seat: &mut Option<Seat>) {
        // What the thread deferred must reach the kernel before it stops
        // running.
        self.driver.flush();
        self.queue.leave(&*self.driver, seat);
    }
}

impl Drop for RunningOn {
    fn drop(&mut self) {
        if let Some(port) = self.port.upgrade() {
            port.leave(&mut self.seat);
        }
    }
}

/// Puts a thread's record back when a `get` ends, however it ends (a
/// panic resumed from the reap included), unless it holds no seat any more.
struct Restore(Option<RunningOn>);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(record) = self.0.take() {
            if record.seat.is_some() {
                let _ = RUNNING.try_with(|cell| *cell.borrow_mut() = Some(record));
            }
        }
    }
}

thread_local! {
    static RUNNING: RefCell<Option<RunningOn>> = const { RefCell::new(None) };
}

/// Collects one item from `Queue::get`.
struct One<E>(Option<E>);

impl<E> Extend<E> for One<E> {
    fn extend<I: IntoIterator<Item = E>>(&mut self, iter: I) {
        for e in iter {
            debug_assert!(self.0.is_none());
            self.0 = Some(e);
        }
    }
}

/// The shared queue. From a running thread no waiter is released for what
/// a call made at once: the thread comes back to `get` and takes it itself
/// (C2), which spares a context switch per operation that completes at
/// once (the common case of a send on epoll).
pub(crate) struct Shared;

impl<T: Send + 'static> Via<T> for Shared {
    fn running(&self, port: &CompletionPort<T>) -> bool {
        port.running_here()
    }

    fn queue(&self, port: &CompletionPort<T>, ready: &mut Ready<T>, running: bool) {
        port.inner.queue.push(&*port.inner.driver, ready, !running);
    }
}

/// A posted packet (PostQueuedCompletionStatus).
pub(crate) fn packet<T>(key: u64, bytes: usize, value: T) -> Completion<T> {
    Completion {
        key,
        kind: OpKind::Post,
        op: None,
        handle: None,
        result: Ok(bytes),
        value,
        payload: Payload::None,
        more: false,
        seq: 0,
    }
}

impl<T: Send + 'static> CompletionPort<T> {
    /// A port with concurrency `concurrency` (0: number of CPUs) on the
    /// default backend. See [`Builder::build`].
    pub fn new(concurrency: usize) -> io::Result<CompletionPort<T>> {
        Builder::new().concurrency(concurrency).build()
    }

    /// Settings beyond the concurrency value.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// The backend this port runs on (never `Auto` on Linux; on Windows,
    /// whose native completion port is the only backend, always `Auto`).
    pub fn backend(&self) -> Backend {
        self.inner.driver.backend()
    }

    /// The concurrency value N (SEMANTICS P1).
    pub fn concurrency(&self) -> usize {
        self.inner.queue.concurrency()
    }

    // ----- handles -------------------------------------------------------

    /// Associates a socket or file with the port under `key` (SEMANTICS
    /// P2, P3): CreateIoCompletionPort with an existing port. The port takes
    /// ownership; every completion of an operation on the returned handle
    /// carries `key`. Sockets are switched to non-blocking mode.
    pub fn associate(&self, source: impl Into<Source>, key: u64) -> io::Result<Handle> {
        if self.inner.queue.is_closed() {
            return Err(port_closed());
        }
        crate::sync::outside_clone("associate")?;
        self.inner.driver.associate(source.into(), key)
    }

    /// Closes a handle (closesocket / CloseHandle): its pending operations
    /// complete with an aborted error ([`is_aborted`](crate::is_aborted)),
    /// then the descriptor is closed, so the peer sees the connection end
    /// (SEMANTICS X2). The handle is invalid from now on.
    pub fn close(&self, handle: Handle) -> io::Result<()> {
        self.ops().close(handle)
    }

    /// shutdown(2) on a socket handle: `Write` sends FIN after what was
    /// sent (a half-close); receives on the peer then complete with 0 bytes.
    pub fn shutdown(&self, handle: Handle, how: Shutdown) -> io::Result<()> {
        crate::sync::outside_clone("shutdown")?;
        self.inner.driver.shutdown(handle, how)
    }

    /// The local address of a socket handle (e.g. a listener bound to port 0).
    pub fn local_addr(&self, handle: Handle) -> io::Result<SocketAddr> {
        crate::sync::outside_clone("local_addr")?;
        self.inner.driver.addr(handle, false)
    }

    /// The peer address of a connected socket handle.
    pub fn peer_addr(&self, handle: Handle) -> io::Result<SocketAddr> {
        crate::sync::outside_clone("peer_addr")?;
        self.inner.driver.addr(handle, true)
    }

    // ----- operations ----------------------------------------------------

    /// Accepts one connection (AcceptEx; `IORING_OP_ACCEPT`; `accept4(2)`
    /// on readiness). Completes with [`Payload::Accepted`]: the new stream
    /// (not associated) and the peer address.
    pub fn accept(&self, listener: Handle, value: T) -> Result<OpId, Rejected<T>> {
        self.ops().accept(listener, value)
    }

    /// Accepts connections until cancelled or failed: one completion per
    /// connection, each with a clone of `value` and `more == true`; the last
    /// one (`more == false`) carries `value` itself and says why the
    /// operation ended. (`IORING_OP_ACCEPT` multishot; on epoll, accept on
    /// every readiness; on Windows, AcceptEx re-issued.)
    ///
    /// The port clones `value` itself, in the middle of its own work (on
    /// io_uring and epoll, under a lock of its own; SEMANTICS O10). From
    /// that `Clone`, [`post`](Self::post), [`stats`](Self::stats) and
    /// [`recycle`](Self::recycle) work, and [`blocking`](Self::blocking)
    /// just runs its closure; any other call into a port (this one or
    /// another) fails at once with [`WouldBlock`](io::ErrorKind::WouldBlock),
    /// handing back what it was given; and `get` must not be called there.
    /// Issue from the completion's handler instead.
    pub fn accept_multi(&self, listener: Handle, value: T) -> Result<OpId, Rejected<T>>
    where
        T: Clone,
    {
        self.ops().accept_multi(listener, value)
    }

    /// Creates a TCP socket, associates it under `key` and connects it to
    /// `addr` (ConnectEx; `IORING_OP_CONNECT`; non-blocking `connect(2)` and
    /// writability). Returns the handle at once; the completion says whether
    /// the connection was made.
    pub fn connect(
        &self,
        addr: SocketAddr,
        key: u64,
        value: T,
    ) -> Result<(Handle, OpId), Rejected<T>> {
        self.ops().connect(addr, key, value)
    }

    /// Receives into the spare capacity of `buf` (WSARecv with one WSABUF;
    /// `IORING_OP_RECV`; `recv(2)` on readiness). Completes with 1..=n bytes
    /// appended to `buf`, or **0 bytes when the peer closed** (SEMANTICS
    /// O5); a reset is an error. A `buf` with no spare capacity is refused.
    pub fn recv(&self, handle: Handle, buf: Vec<u8>, value: T) -> Result<OpId, Rejected<T>> {
        self.ops().recv(handle, buf, value)
    }

    /// Scatter receive: fills the spare capacity of each buffer in order
    /// (WSARecv with several WSABUFs; `IORING_OP_RECVMSG`; `recvmsg(2)`).
    pub fn recv_vectored(
        &self,
        handle: Handle,
        bufs: Vec<Vec<u8>>,
        value: T,
    ) -> Result<OpId, Rejected<T>> {
        self.ops().recv_vectored(handle, bufs, value)
    }

    /// A receive that pins no buffer while the connection is idle: Linux's
    /// answer to IOCP's zero-byte WSARecv (SEMANTICS O6). A buffer is taken
    /// from the port's pool only when data arrives (io_uring provided-buffer
    /// ring; on epoll, after readiness) and comes back in
    /// [`Payload::Buf`]; give it back with [`recycle`](Self::recycle).
    /// TCP streams only: a UDP socket is refused, since on Windows the
    /// zero-byte receive cannot wait for a datagram without losing it
    /// (use [`recv_from`](Self::recv_from)).
    pub fn recv_pooled(&self, handle: Handle, value: T) -> Result<OpId, Rejected<T>> {
        self.ops().recv_pooled(handle, value)
    }

    /// Receives on a TCP stream until it ends (a UDP socket is refused:
    /// on Windows the zero-byte receive behind this would take a datagram
    /// it cannot hold): one completion per arrival, each
    /// with `more == true`, 1..=n bytes in a buffer of the port's pool
    /// ([`Payload::Buf`]; give it back with [`recycle`](Self::recycle)) and
    /// a clone of `value`. The last completion (`more == false`) carries
    /// `value` itself: `Ok(0)` with an empty buffer at end of stream, the
    /// error the stream failed with, or an aborted error after
    /// [`cancel`](Self::cancel) or [`close`](Self::close) (SEMANTICS O9).
    /// No Windows call does this; it stands for a receive issued again
    /// after every completion, without the issuing.
    /// (`IORING_OP_RECV` with `IORING_RECV_MULTISHOT` into the
    /// provided-buffer ring; on epoll, `recv(2)` into pool buffers on each
    /// readiness; on Windows, a zero-byte `WSARecv` re-issued after each.)
    ///
    /// Memory stays bounded when the handler is slower than the peer: the
    /// filled buffers waiting to be dequeued never outnumber the pool
    /// ([`Builder::pool`]). At that count the receive pauses, leaving the
    /// data in the kernel under TCP's flow control, and goes on as
    /// completions are dequeued; nothing is lost and the stream is not
    /// ended.
    ///
    /// What `value`'s `Clone` may call: as for
    /// [`accept_multi`](Self::accept_multi) (SEMANTICS O10).
    pub fn recv_multi(&self, handle: Handle, value: T) -> Result<OpId, Rejected<T>>
    where
        T: Clone,
    {
        self.ops().recv_multi(handle, value)
    }

    /// Sends all of `buf` (WSASend; `IORING_OP_SEND`; `send(2)` on
    /// readiness). Completes only when every byte was taken by the kernel
    /// (SEMANTICS O4): short writes are continued inside the port.
    pub fn send(&self, handle: Handle, buf: Vec<u8>, value: T) -> Result<OpId, Rejected<T>> {
        self.ops().send(handle, buf, value)
    }

    /// Gather send: all bytes of every buffer, in order (WSASend with several
    /// WSABUFs; `IORING_OP_SENDMSG`; `sendmsg(2)`).
    pub fn send_vectored(
        &self,
        handle: Handle,
        bufs: Vec<Vec<u8>>,
        value: T,
    ) -> Result<OpId, Rejected<T>> {
        self.ops().send_vectored(handle, bufs, value)
    }

    /// Receives one datagram into the spare capacity of `buf`
    /// (WSARecvFrom; `IORING_OP_RECVMSG`; `recvmsg(2)`). Completes with
    /// [`Payload::Datagram`]. A datagram larger than the room is an
    /// `EMSGSIZE` error with the part that fit in the buffer (SEMANTICS O7).
    pub fn recv_from(&self, handle: Handle, buf: Vec<u8>, value: T) -> Result<OpId, Rejected<T>> {
        self.ops().recv_from(handle, buf, value)
    }

    /// Sends `buf` as one datagram to `addr` (WSASendTo; `IORING_OP_SENDMSG`;
    /// `sendto(2)`).
    pub fn send_to(
        &self,
        handle: Handle,
        buf: Vec<u8>,
        addr: SocketAddr,
        value: T,
    ) -> Result<OpId, Rejected<T>> {
        self.ops().send_to(handle, buf, addr, value)
    }

    /// Reads into the spare capacity of `buf` from `offset` of a file
    /// (ReadFile with OVERLAPPED.Offset; `IORING_OP_READ`; `pread(2)` at
    /// issue on epoll, where regular files are always ready). The file
    /// position never moves. At or past end of file it completes with 0
    /// bytes (SEMANTICS O8).
    pub fn read_at(
        &self,
        handle: Handle,
        buf: Vec<u8>,
        offset: u64,
        value: T,
    ) -> Result<OpId, Rejected<T>> {
        self.ops().read_at(handle, buf, offset, value)
    }

    /// Vectored [`read_at`](Self::read_at) (`IORING_OP_READV`; `preadv(2)`).
    pub fn read_vectored_at(
        &self,
        handle: Handle,
        bufs: Vec<Vec<u8>>,
        offset: u64,
        value: T,
    ) -> Result<OpId, Rejected<T>> {
        self.ops().read_vectored_at(handle, bufs, offset, value)
    }

    /// Writes all of `buf` at `offset` of a file (WriteFile with an offset;
    /// `IORING_OP_WRITE`; `pwrite(2)`); short writes are continued.
    pub fn write_at(
        &self,
        handle: Handle,
        buf: Vec<u8>,
        offset: u64,
        value: T,
    ) -> Result<OpId, Rejected<T>> {
        self.ops().write_at(handle, buf, offset, value)
    }

    /// Vectored [`write_at`](Self::write_at) (`IORING_OP_WRITEV`; `pwritev(2)`).
    pub fn write_vectored_at(
        &self,
        handle: Handle,
        bufs: Vec<Vec<u8>>,
        offset: u64,
        value: T,
    ) -> Result<OpId, Rejected<T>> {
        self.ops().write_vectored_at(handle, bufs, offset, value)
    }

    /// Requests cancellation of one operation (CancelIoEx with its
    /// OVERLAPPED; `IORING_OP_ASYNC_CANCEL`). Asynchronous: the operation
    /// still yields exactly one completion, its real result if it won the
    /// race, otherwise an aborted error (SEMANTICS X1). `NotFound` if the
    /// operation is no longer in flight.
    pub fn cancel(&self, op: OpId) -> io::Result<()> {
        self.ops().cancel(op)
    }

    /// Requests cancellation of every operation on `handle` (CancelIoEx
    /// with no OVERLAPPED); returns how many were in flight. `NotFound` when
    /// none was.
    pub fn cancel_handle(&self, handle: Handle) -> io::Result<usize> {
        self.ops().cancel_handle(handle)
    }

    /// Gives a buffer back to the pool behind [`recv_pooled`](Self::recv_pooled).
    /// Any buffer may be given; buffers of the wrong size are dropped.
    pub fn recycle(&self, buf: Vec<u8>) {
        self.inner.driver.recycle(buf);
    }

    // ----- posting and dequeuing ---------------------------------------

    /// Queues a user completion (PostQueuedCompletionStatus): it comes back
    /// from [`get`](Self::get) with `kind == OpKind::Post`, `key`,
    /// `result == Ok(bytes)` and `value`, and obeys the same ordering and
    /// concurrency rules as I/O completions (SEMANTICS PQ1, PQ2). Once the
    /// port is closed it is refused with `NotConnected`, and the value comes
    /// back in the [`Rejected`] (which converts into an `io::Error` for `?`).
    /// A post that races with [`close_port`](Self::close_port) may be
    /// accepted and then dropped with everything else the close finds
    /// queued.
    pub fn post(&self, key: u64, bytes: usize, value: T) -> Result<(), Rejected<T>> {
        let post = packet(key, bytes, value);
        // A post from a running thread releases a waiter too: unlike an
        // operation's own completion, a post is how threads hand work to
        // each other.
        self.inner
            .queue
            .push_one(&*self.inner.driver, post)
            .map_err(|c| Rejected::new(port_closed(), c.value, Payload::None))
    }

    /// Dequeues one completion (GetQueuedCompletionStatus), waiting at most
    /// `timeout` (`None`: no limit; zero: do not wait) (SEMANTICS Q1).
    ///
    /// `Err` means nothing was dequeued: [`GetError::Timeout`] or
    /// [`GetError::Closed`]; a failed operation is an `Ok` completion whose
    /// `result` is the error (Q5). The calling thread counts as running
    /// until it calls `get` again, enters [`blocking`](Self::blocking), or
    /// exits (C1).
    pub fn get(&self, timeout: Option<Duration>) -> Result<Completion<T>, GetError> {
        self.get_until(timeout, None)
    }

    /// [`get`](Self::get) that also ends, with `Timeout`, once
    /// [`interrupt`](Self::interrupt) moved the count from `epoch`: how the
    /// worker pool wakes its idle threads to stop, having no `T` to post.
    pub(crate) fn get_until(
        &self,
        timeout: Option<Duration>,
        epoch: Option<usize>,
    ) -> Result<Completion<T>, GetError> {
        let mut one = One(None);
        let r = self.dequeue(1, timeout, epoch, &mut one);
        self.inner.settle_close();
        r?;
        let c = one.0.expect("queue returned Ok with no item");
        self.delivered(Some(&c));
        Ok(c)
    }

    /// Dequeues up to `max` completions in one call
    /// (GetQueuedCompletionStatusEx), appending them to `out`, which grows
    /// as needed; returns how many. Returns as soon as at least one is
    /// available (SEMANTICS Q4). The thread counts as one running thread
    /// however many it took.
    ///
    /// `max` 0 is refused with [`GetError::InvalidInput`] and removes
    /// nothing, as Windows refuses an empty entry array
    /// (ERROR_INVALID_PARAMETER); the thread's running state is unchanged.
    pub fn get_many(
        &self,
        out: &mut Vec<Completion<T>>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, GetError> {
        if max == 0 {
            return Err(GetError::InvalidInput);
        }
        let before = out.len();
        let r = self.dequeue(max, timeout, None, out);
        self.inner.settle_close();
        r?;
        self.delivered(&out[before..]);
        Ok(out.len() - before)
    }

    /// Runs `f`, a section that blocks (a lock, a database call, a sleep),
    /// with this thread's running slot given up, so another waiter may run
    /// meanwhile (SEMANTICS C3). Windows does this for every kind of
    /// blocking; a user-space port only sees the blocking it is told about.
    /// After `f` the thread counts as running again, even if that exceeds
    /// the limit for a while.
    pub fn blocking<R>(&self, f: impl FnOnce() -> R) -> R {
        if crate::sync::in_clone() {
            // Inside a multishot value's Clone (SEMANTICS O10): the flush
            // may need the lock the clone runs under; the slot stays.
            return f();
        }
        let entered = self.with_seat(|seat| {
            self.inner.driver.flush();
            self.inner.queue.block(&*self.inner.driver, seat)
        });
        if entered != Some(true) {
            // Not running on this port, or already in a section: nothing
            // to give up, nothing to take back.
            return f();
        }
        struct Reenter<'a, T: Send + 'static>(&'a CompletionPort<T>);
        impl<T: Send + 'static> Drop for Reenter<'_, T> {
            fn drop(&mut self) {
                let port = self.0;
                port.with_seat(|seat| port.inner.queue.unblock(seat));
            }
        }
        let _back = Reenter(self);
        f()
    }

    /// Stops counting this thread as running on the port without waiting
    /// for another completion (what a worker does when it quits). Inside a
    /// [`blocking`](Self::blocking) section the slot is already given up:
    /// nothing more is given, and the section's end takes none back.
    pub fn leave(&self) {
        let mine = RUNNING
            .try_with(|cell| {
                let mut slot = cell.borrow_mut();
                match slot.as_ref() {
                    Some(on) if on.id == self.inner.id => slot.take(),
                    _ => None,
                }
            })
            .ok()
            .flatten();
        drop(mine);
    }

    /// Closes the port (CloseHandle on the port): every thread blocked in
    /// [`get`](Self::get), and every later call, gets
    /// [`GetError::Closed`] (SEMANTICS Q6); operations in flight are
    /// cancelled and their completions dropped with their buffers; new
    /// operations and posts are refused. Called from a multishot value's
    /// `Clone`, the cancellations wait until the port's work that runs the
    /// clone lets go of its lock, on the same thread (SEMANTICS O10).
    pub fn close_port(&self) {
        self.inner.close();
    }

    /// How many completions are queued, threads waiting, threads running.
    pub fn stats(&self) -> QueueStats {
        self.inner.queue.stats()
    }

    /// Whether [`close_port`](Self::close_port) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.queue.is_closed()
    }

    // ----- internals -----------------------------------------------------

    /// The calls that issue, through the shared queue.
    fn ops(&self) -> Ops<'_, T, Shared> {
        Ops {
            port: self,
            via: Shared,
        }
    }

    pub(crate) fn driver(&self) -> &dyn Driver<T> {
        &*self.inner.driver
    }

    /// [`Builder::batch_submissions`].
    pub(crate) fn batches(&self) -> bool {
        self.inner.batch
    }

    /// [`Queue::poll_local`], for a `LocalPort`'s thread.
    pub(crate) fn poll_local(
        &self,
        timeout: Option<Duration>,
        out: &mut Ready<T>,
    ) -> Result<(), GetError> {
        let r = self
            .inner
            .queue
            .poll_local(&*self.inner.driver, timeout, out);
        self.inner.settle_close();
        r
    }

    /// See [`Inner::settle_close`]: for the calls that issue, cancel or
    /// close, which may run a clone (epoll drives a multishot receive at
    /// issue).
    pub(crate) fn settle_close(&self) {
        self.inner.settle_close();
    }

    /// [`Queue::take_posted`], for a `LocalPort`'s thread.
    pub(crate) fn take_posted(&self, out: &mut Ready<T>) {
        self.inner.queue.take_posted(out);
    }

    /// Tells the backend how many dequeued completions among `got` hand
    /// the user a buffer of the port's pool (`Driver::delivered`).
    pub(crate) fn delivered<'c>(&self, got: impl IntoIterator<Item = &'c Completion<T>>)
    where
        T: 'c,
    {
        let n = got.into_iter().filter(|c| holds_pool_buffer(c)).count();
        if n > 0 {
            self.inner.driver.delivered(n);
        }
    }

    /// Whether this thread holds a running slot of this port: it took a
    /// completion and has not come back, nor entered a blocking section.
    fn running_here(&self) -> bool {
        let id = self.inner.id;
        RUNNING
            .try_with(|cell| {
                matches!(&*cell.borrow(), Some(on) if on.id == id && on.seat == Some(Seat::Running))
            })
            .unwrap_or(false)
    }

    /// Runs `f` on this thread's seat on this port, if it has a record here.
    fn with_seat<R>(&self, f: impl FnOnce(&mut Option<Seat>) -> R) -> Option<R> {
        let id = self.inner.id;
        RUNNING
            .try_with(|cell| {
                let mut slot = cell.borrow_mut();
                let r = match slot.as_mut() {
                    Some(on) if on.id == id => Some(f(&mut on.seat)),
                    _ => None,
                };
                if matches!(&*slot, Some(on) if on.seat.is_none()) {
                    // A seat given up (`leave`): the record goes, and its
                    // drop gives nothing back.
                    *slot = None;
                }
                r
            })
            .ok()
            .flatten()
    }

    /// The interrupt count, for [`get_until`](Self::get_until).
    pub(crate) fn interrupts(&self) -> usize {
        self.inner.queue.interrupts()
    }

    /// Wakes every thread waiting in `get`; those in `get_until` whose
    /// epoch this moves return.
    pub(crate) fn interrupt(&self) {
        self.inner.queue.interrupt(&*self.inner.driver);
    }

    fn dequeue<O: Extend<Completion<T>>>(
        &self,
        max: usize,
        timeout: Option<Duration>,
        epoch: Option<usize>,
        out: &mut O,
    ) -> Result<(), GetError> {
        let id = self.inner.id;
        // This thread's record: ours means it is coming back (or calls
        // `get` inside a blocking section); another port's is dropped, which
        // gives that port's slot back, since a thread runs on one port at a
        // time.
        let taken = RUNNING
            .try_with(|cell| cell.borrow_mut().take())
            .ok()
            .flatten();
        let record = match taken {
            Some(on) if on.id == id => on,
            other => {
                drop(other);
                RunningOn {
                    id,
                    port: Arc::downgrade(&self.inner) as Weak<dyn Leave>,
                    seat: None,
                }
            }
        };
        let mut restore = Restore(Some(record));
        let seat = match restore.0.as_mut() {
            Some(on) => &mut on.seat,
            None => unreachable!("the record was just stored"),
        };
        self.inner
            .queue
            .get_until(&*self.inner.driver, seat, max, timeout, epoch, out)
    }
}

/// Whether a completion hands the user a buffer of the port's pool (a
/// pooled or multishot receive with data): its dequeue lets the port fill
/// one more (`Driver::delivered`).
fn holds_pool_buffer<T>(c: &Completion<T>) -> bool {
    matches!(c.kind, OpKind::RecvPooled | OpKind::RecvMulti) && matches!(c.result, Ok(n) if n > 0)
}
