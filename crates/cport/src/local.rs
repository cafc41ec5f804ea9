//! [`LocalPort`]: a completion port that belongs to one thread.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use crate::builder::Builder;
use crate::completion::{Completion, GetError, Handle, OpId, Rejected};
use crate::config::Backend;
use crate::port::CompletionPort;
use crate::queue::QueueStats;
use crate::sys::Source;

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
/// back to `get` — one `io_uring_enter` for all of them — which a port of
/// one thread loses nothing by: no other thread could reap it meanwhile.
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
    /// Neither `Send` nor `Sync`.
    _here: PhantomData<*const ()>,
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
    }
}

/// Each method forwards to the [`CompletionPort`] method of its name.
macro_rules! forward {
    ($(
        $(#[$meta:meta])*
        fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;
    )*) => {
        $(
            $(#[$meta])*
            #[doc = concat!("[`CompletionPort::", stringify!($name), "`], on this thread.")]
            pub fn $name(&self $(, $arg: $ty)*) -> $ret {
                self.port.$name($($arg),*)
            }
        )*
    };
}

impl<T: Send + 'static> LocalPort<T> {
    pub(crate) fn new_from(port: CompletionPort<T>) -> LocalPort<T> {
        LocalPort {
            port,
            _here: PhantomData,
        }
    }

    /// A port for this thread on the default backend; see
    /// [`Builder::build_local`] for the other settings.
    pub fn new() -> io::Result<LocalPort<T>> {
        Builder::new().build_local()
    }

    forward! {
        fn backend(&self) -> Backend;
        fn close(&self, handle: Handle) -> io::Result<()>;
        fn shutdown(&self, handle: Handle, how: Shutdown) -> io::Result<()>;
        fn local_addr(&self, handle: Handle) -> io::Result<SocketAddr>;
        fn peer_addr(&self, handle: Handle) -> io::Result<SocketAddr>;
        fn accept(&self, listener: Handle, value: T) -> Result<OpId, Rejected<T>>;
        fn connect(&self, addr: SocketAddr, key: u64, value: T) -> Result<(Handle, OpId), Rejected<T>>;
        fn recv(&self, handle: Handle, buf: Vec<u8>, value: T) -> Result<OpId, Rejected<T>>;
        fn recv_vectored(&self, handle: Handle, bufs: Vec<Vec<u8>>, value: T) -> Result<OpId, Rejected<T>>;
        fn recv_pooled(&self, handle: Handle, value: T) -> Result<OpId, Rejected<T>>;
        fn send(&self, handle: Handle, buf: Vec<u8>, value: T) -> Result<OpId, Rejected<T>>;
        fn send_vectored(&self, handle: Handle, bufs: Vec<Vec<u8>>, value: T) -> Result<OpId, Rejected<T>>;
        fn recv_from(&self, handle: Handle, buf: Vec<u8>, value: T) -> Result<OpId, Rejected<T>>;
        fn send_to(&self, handle: Handle, buf: Vec<u8>, addr: SocketAddr, value: T) -> Result<OpId, Rejected<T>>;
        fn read_at(&self, handle: Handle, buf: Vec<u8>, offset: u64, value: T) -> Result<OpId, Rejected<T>>;
        fn read_vectored_at(&self, handle: Handle, bufs: Vec<Vec<u8>>, offset: u64, value: T) -> Result<OpId, Rejected<T>>;
        fn write_at(&self, handle: Handle, buf: Vec<u8>, offset: u64, value: T) -> Result<OpId, Rejected<T>>;
        fn write_vectored_at(&self, handle: Handle, bufs: Vec<Vec<u8>>, offset: u64, value: T) -> Result<OpId, Rejected<T>>;
        fn cancel(&self, op: OpId) -> io::Result<()>;
        fn cancel_handle(&self, handle: Handle) -> io::Result<usize>;
        fn recycle(&self, buf: Vec<u8>) -> ();
        fn post(&self, key: u64, bytes: usize, value: T) -> Result<(), Rejected<T>>;
        fn get(&self, timeout: Option<Duration>) -> Result<Completion<T>, GetError>;
        fn get_many(&self, out: &mut Vec<Completion<T>>, max: usize, timeout: Option<Duration>) -> Result<usize, GetError>;
        fn close_port(&self) -> ();
        fn stats(&self) -> QueueStats;
        fn is_closed(&self) -> bool;
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
        self.port.accept_multi(listener, value)
    }

    /// [`CompletionPort::recv_multi`], on this thread.
    pub fn recv_multi(&self, handle: Handle, value: T) -> Result<OpId, Rejected<T>>
    where
        T: Clone,
    {
        self.port.recv_multi(handle, value)
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
