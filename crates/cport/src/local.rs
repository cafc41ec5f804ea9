//! [`LocalPort`]: a completion port that belongs to one thread.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::mem;
use std::net::{Shutdown, SocketAddr};
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::builder::Builder;
use crate::completion::{Completion, GetError, Handle, OpId, Payload, Rejected};
use crate::config::Backend;
use crate::issue::{Ops, Via};
use crate::port::{packet, CompletionPort};
use crate::queue::{QueueStats, POLL_EVERY};
use crate::sys::error::port_closed;
use crate::sys::{Ready, Source};

/// A completion port for the thread that made it: every operation is
/// issued, and every completion dequeued, on that thread.
///
/// The shape of the leanest servers: a port per core, each thread with its
/// own listener (`SO_REUSEPORT`) and its own connections, sharing nothing.
/// On io_uring the ring runs with `IORING_SETUP_SINGLE_ISSUER |
/// IORING_SETUP_DEFER_TASKRUN` (Linux 6.1; a plain ring before): the kernel
/// posts completions when this thread asks for them in `get`, instead of
/// interrupting it whenever one is ready, and no lock is ever contended. An
/// operation issued while the thread runs a completion starts when it comes
/// back to `get` — one `io_uring_enter` for all of them — as does one that
/// a reaped completion started (the next send queued on a stream, a
/// multishot receive armed again); a port of one thread loses nothing by
/// it: no other thread could reap it meanwhile.
///
/// Its completions never pass through the queue a [`CompletionPort`]
/// shares between threads: `get` reaps into a queue of the thread's own
/// and hands them out of it, without a lock. Other threads reach the port
/// through a [`Poster`].
///
/// `LocalPort` is neither `Send` nor `Sync`, so the compiler keeps other
/// threads off it; there is no `Clone`, no worker pool and no
/// [`blocking`](CompletionPort::blocking) (with one thread, nobody could
/// run meanwhile). Otherwise each method is the [`CompletionPort`] method of
/// the same name, with the same contract (the concurrency value is 1).
///
/// ```
/// use std::io::Read;
/// use std::net::{TcpListener, TcpStream};
/// use std::time::Duration;
///
/// # fn main() -> std::io::Result<()> {
/// let port = cport::LocalPort::<u32>::new()?;
/// let listener = port.associate(TcpListener::bind("127.0.0.1:0")?, 0)?;
/// let mut client = TcpStream::connect(port.local_addr(listener)?)?;
/// port.accept(listener, 0)?;
/// let c = port.get(Some(Duration::from_secs(10))).expect("the accept");
/// let stream = match c.payload {
///     cport::Payload::Accepted { stream, .. } => stream,
///     _ => unreachable!(),
/// };
/// let conn = port.associate(stream, 1)?;
/// port.send(conn, b"hi".to_vec(), 1)?;
/// let c = port.get(Some(Duration::from_secs(10))).expect("the send");
/// assert_eq!(c.result?, 2);
/// let mut got = [0u8; 2];
/// client.read_exact(&mut got)?;
/// assert_eq!(&got, b"hi");
/// # Ok(())
/// # }
/// ```
///
/// It cannot leave its thread:
///
/// ```compile_fail
/// fn elsewhere<P: Send>(_: P) {}
/// elsewhere(cport::LocalPort::<()>::new().unwrap());
/// ```
pub struct LocalPort<T = ()> {
    port: CompletionPort<T>,
    local: Local<T>,
    /// Neither `Send` nor `Sync`.
    _here: PhantomData<*const ()>,
}

/// The thread's own queue. Its completions never pass through the port's
/// shared queue: `get` reaps straight into `ready` and hands them out of
/// it, with no lock and no running-thread record, each moved once. The
/// shared queue only carries what other threads post ([`Poster`]), and is
/// looked at whenever the kernel is.
struct Local<T> {
    /// Completions reaped, made at issue or posted by this thread, oldest
    /// first.
    ready: RefCell<Ready<T>>,
    /// Whether the thread dequeued a completion and has not come back to
    /// `get`: its submissions then wait for that `get` (batched), as a
    /// running worker's do.
    running: Cell<bool>,
    /// Completions taken since the kernel was last looked at: after
    /// `POLL_EVERY` the next `get` looks first, so that a queue that never
    /// runs empty cannot starve the kernel's completions or other threads'
    /// posts (the shared queue's rule).
    taken: Cell<usize>,
}

impl<T: Send + 'static> Local<T> {
    /// Queues `items` (drained) here, behind what other threads posted
    /// before (Q3); a closed port drops them instead, as nobody will
    /// dequeue them.
    fn queue(&self, port: &CompletionPort<T>, items: &mut Ready<T>) {
        if port.is_closed() {
            items.clear();
            return;
        }
        let mut ready = self.ready.borrow_mut();
        port.take_posted(&mut ready);
        ready.append(items);
    }
}

impl<T> Local<T> {
    /// Drops what is queued here. Values' `Drop` is user code: a panic is
    /// logged, not propagated (this runs in the port's drop).
    fn clear(&self) {
        let items = mem::take(&mut *self.ready.borrow_mut());
        if panic::catch_unwind(AssertUnwindSafe(|| drop(items))).is_err() {
            log::error!(
                target: "cport",
                "a per-operation value panicked while its local port closed"
            );
        }
    }
}

impl<T: Send + 'static> Via<T> for &Local<T> {
    fn running(&self, _: &CompletionPort<T>) -> bool {
        self.running.get()
    }

    fn queue(&self, port: &CompletionPort<T>, ready: &mut Ready<T>, _: bool) {
        Local::queue(self, port, ready);
    }
}

impl<T> fmt::Debug for LocalPort<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LocalPort").field(&self.port).finish()
    }
}

/// Dropping the port closes it on its own thread, even while a [`Poster`]
/// lives: a single-issuer ring must be cancelled and reaped by its issuer.
impl<T> Drop for LocalPort<T> {
    fn drop(&mut self) {
        self.port.close_now();
        self.local.clear();
    }
}

/// Each method is the [`CompletionPort`] method of its name: forwarded to
/// it (`port`), or issued through this thread's queue (`ops`).
macro_rules! forward {
    ($(
        $to:ident fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;
    )*) => {
        $(
            #[doc = concat!("[`CompletionPort::", stringify!($name), "`], on this thread.")]
            pub fn $name(&self $(, $arg: $ty)*) -> $ret {
                self.$to().$name($($arg),*)
            }
        )*
    };
}

impl<T: Send + 'static> LocalPort<T> {
    pub(crate) fn new_from(port: CompletionPort<T>) -> LocalPort<T> {
        LocalPort {
            port,
            local: Local {
                ready: RefCell::new(Ready::new()),
                running: Cell::new(false),
                taken: Cell::new(0),
            },
            _here: PhantomData,
        }
    }

    fn port(&self) -> &CompletionPort<T> {
        &self.port
    }

    /// The calls that issue, through this thread's queue.
    fn ops(&self) -> Ops<'_, T, &Local<T>> {
        Ops {
            port: &self.port,
            via: &self.local,
        }
    }

    /// A port for this thread on the default backend; see
    /// [`Builder::build_local`] for the other settings.
    pub fn new() -> io::Result<LocalPort<T>> {
        Builder::new().build_local()
    }

    forward! {
        port fn backend(&self) -> Backend;
        ops fn close(&self, handle: Handle) -> io::Result<()>;
        port fn shutdown(&self, handle: Handle, how: Shutdown) -> io::Result<()>;
        port fn local_addr(&self, handle: Handle) -> io::Result<SocketAddr>;
        port fn peer_addr(&self, handle: Handle) -> io::Result<SocketAddr>;
        ops fn accept(&self, listener: Handle, value: T) -> Result<OpId, Rejected<T>>;
        ops fn connect(&self, addr: SocketAddr, key: u64, value: T) -> Result<(Handle, OpId), Rejected<T>>;
        ops fn recv(&self, handle: Handle, buf: Vec<u8>, value: T) -> Result<OpId, Rejected<T>>;
        ops fn recv_vectored(&self, handle: Handle, bufs: Vec<Vec<u8>>, value: T) -> Result<OpId, Rejected<T>>;
        ops fn recv_pooled(&self, handle: Handle, value: T) -> Result<OpId, Rejected<T>>;
        ops fn send(&self, handle: Handle, buf: Vec<u8>, value: T) -> Result<OpId, Rejected<T>>;
        ops fn send_vectored(&self, handle: Handle, bufs: Vec<Vec<u8>>, value: T) -> Result<OpId, Rejected<T>>;
        ops fn recv_from(&self, handle: Handle, buf: Vec<u8>, value: T) -> Result<OpId, Rejected<T>>;
        ops fn send_to(&self, handle: Handle, buf: Vec<u8>, addr: SocketAddr, value: T) -> Result<OpId, Rejected<T>>;
        ops fn read_at(&self, handle: Handle, buf: Vec<u8>, offset: u64, value: T) -> Result<OpId, Rejected<T>>;
        ops fn read_vectored_at(&self, handle: Handle, bufs: Vec<Vec<u8>>, offset: u64, value: T) -> Result<OpId, Rejected<T>>;
        ops fn write_at(&self, handle: Handle, buf: Vec<u8>, offset: u64, value: T) -> Result<OpId, Rejected<T>>;
        ops fn write_vectored_at(&self, handle: Handle, bufs: Vec<Vec<u8>>, offset: u64, value: T) -> Result<OpId, Rejected<T>>;
        ops fn cancel(&self, op: OpId) -> io::Result<()>;
        ops fn cancel_handle(&self, handle: Handle) -> io::Result<usize>;
        port fn recycle(&self, buf: Vec<u8>) -> ();
        port fn is_closed(&self) -> bool;
    }

    /// [`CompletionPort::post`], on this thread: the packet is queued
    /// behind what this thread's calls made so far.
    pub fn post(&self, key: u64, bytes: usize, value: T) -> Result<(), Rejected<T>> {
        if self.port.is_closed() {
            return Err(Rejected::new(port_closed(), value, Payload::None));
        }
        let mut post = Ready::new();
        post.push(packet(key, bytes, value));
        self.local.queue(&self.port, &mut post);
        Ok(())
    }

    /// [`CompletionPort::get`], on this thread.
    pub fn get(&self, timeout: Option<Duration>) -> Result<Completion<T>, GetError> {
        self.local.running.set(false);
        self.fill(timeout)?;
        let c = match self.local.ready.borrow_mut().pop_front() {
            Some(c) => c,
            None => unreachable!("fill returned Ok with nothing queued"),
        };
        self.local.taken.set(self.local.taken.get() + 1);
        self.local.running.set(true);
        self.port.delivered(Some(&c));
        Ok(c)
    }

    /// [`CompletionPort::get_many`], on this thread.
    pub fn get_many(
        &self,
        out: &mut Vec<Completion<T>>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, GetError> {
        if max == 0 {
            return Err(GetError::InvalidInput);
        }
        self.local.running.set(false);
        self.fill(timeout)?;
        let before = out.len();
        {
            let mut ready = self.local.ready.borrow_mut();
            while out.len() - before < max {
                match ready.pop_front() {
                    Some(c) => out.push(c),
                    None => break,
                }
            }
        }
        let n = out.len() - before;
        self.local.taken.set(self.local.taken.get() + n);
        self.local.running.set(true);
        self.port.delivered(&out[before..]);
        Ok(n)
    }

    /// Makes sure a completion is queued here, or says why none will be
    /// within `timeout`. The kernel and other threads' posts are looked at
    /// when nothing is queued (waiting for them at most `timeout`), and
    /// also, without waiting, once `POLL_EVERY` completions were taken
    /// since the last look.
    fn fill(&self, timeout: Option<Duration>) -> Result<(), GetError> {
        if self.port.is_closed() {
            return Err(GetError::Closed);
        }
        if self.local.taken.get() < POLL_EVERY && !self.local.ready.borrow().is_empty() {
            return Ok(());
        }
        let mut deadline = None;
        loop {
            let wait = if !self.local.ready.borrow().is_empty() {
                Some(Duration::ZERO)
            } else {
                match timeout {
                    Some(t) if !t.is_zero() => {
                        let d = *deadline.get_or_insert_with(|| Instant::now() + t);
                        Some(d.saturating_duration_since(Instant::now()))
                    }
                    t => t,
                }
            };
            self.local.taken.set(0);
            // Reaping runs user code (a multishot value's `Clone`), so the
            // queue is not borrowed meanwhile: what that code might queue
            // here goes into an empty one, and behind the reap afterwards.
            let mut reaped = mem::take(&mut *self.local.ready.borrow_mut());
            let r = self.port.poll_local(wait, &mut reaped);
            let caught = reaped.take_panic();
            {
                let mut ready = self.local.ready.borrow_mut();
                reaped.append(&mut ready);
                *ready = reaped;
            }
            if let Some(p) = caught {
                // Everything reaped is kept; only this call unwinds.
                panic::resume_unwind(p);
            }
            r?;
            if self.port.is_closed() {
                // Closed during the reap, by a `close_port` in a multishot
                // value's `Clone`: what the reap brought goes with the rest
                // of the queue (Q6).
                self.local.clear();
                return Err(GetError::Closed);
            }
            if !self.local.ready.borrow().is_empty() {
                return Ok(());
            }
            let expired = match (timeout, deadline) {
                (Some(t), _) if t.is_zero() => true,
                (Some(_), Some(d)) => Instant::now() >= d,
                _ => false,
            };
            if expired {
                return Err(GetError::Timeout);
            }
        }
    }

    /// [`CompletionPort::close_port`], on this thread: what is queued here
    /// is dropped with the rest.
    pub fn close_port(&self) {
        self.port.close_port();
        self.local.clear();
    }

    /// [`CompletionPort::stats`], on this thread: `queued` counts what
    /// this thread's queue holds too, and `running` is 1 between a `get`
    /// that dequeued and the next `get`.
    pub fn stats(&self) -> QueueStats {
        let mut stats = self.port.stats();
        stats.queued += self.local.ready.borrow().len();
        stats.running = usize::from(self.local.running.get());
        stats
    }

    /// A handle other threads can post to this port with
    /// (PostQueuedCompletionStatus from outside: a stop request, work
    /// handed from another shard). Posting submits nothing to the kernel,
    /// so it keeps the ring's single issuer; the packet wakes this thread
    /// in `get`.
    pub fn poster(&self) -> Poster<T> {
        Poster {
            port: self.port.clone(),
        }
    }

    /// [`CompletionPort::associate`], on this thread.
    pub fn associate(&self, source: impl Into<Source>, key: u64) -> io::Result<Handle> {
        self.port.associate(source, key)
    }

    /// [`CompletionPort::accept_multi`], on this thread.
    pub fn accept_multi(&self, listener: Handle, value: T) -> Result<OpId, Rejected<T>>
    where
        T: Clone,
    {
        self.ops().accept_multi(listener, value)
    }

    /// [`CompletionPort::recv_multi`], on this thread.
    pub fn recv_multi(&self, handle: Handle, value: T) -> Result<OpId, Rejected<T>>
    where
        T: Clone,
    {
        self.ops().recv_multi(handle, value)
    }
}

/// Posts packets to a [`LocalPort`] from any thread; see
/// [`LocalPort::poster`]. Clones post to the same port.
pub struct Poster<T = ()> {
    port: CompletionPort<T>,
}

impl<T> Clone for Poster<T> {
    fn clone(&self) -> Self {
        Poster {
            port: self.port.clone(),
        }
    }
}

impl<T> fmt::Debug for Poster<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Poster").field(&self.port).finish()
    }
}

impl<T: Send + 'static> Poster<T> {
    /// [`CompletionPort::post`], to the port's thread.
    pub fn post(&self, key: u64, bytes: usize, value: T) -> Result<(), Rejected<T>> {
        self.port.post(key, bytes, value)
    }

    /// Whether the port was closed (by its thread, or dropped).
    pub fn is_closed(&self) -> bool {
        self.port.is_closed()
    }
}
