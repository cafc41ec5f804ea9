//! The backends, and the one contract each of them implements: [`Driver`].
//!
//! A backend owns the kernel object (an io_uring, an epoll set, a Windows
//! port), the associated descriptors, and every in-flight operation with
//! its buffers and value. It never touches the completion queue: what an
//! operation produces at issue time, or what a cancel or close produces at
//! once, it appends to the `ready` vector it is given, and the port queues
//! it. What the kernel produces later it hands out from
//! [`Reactor::wait`], called by the queue's
//! leader.
//!
//! | backend | module | kernel object | native or emulated |
//! |---|---|---|---|
//! | io_uring | `uring` | one ring, submissions under a lock, reaped by the leader | completion-based, native |
//! | epoll | `epoll` | one epoll set, edge-triggered, the operation done in user space on readiness | emulated on readiness |
//! | Windows | `windows` | one I/O completion port, dequeued by the leader with GetQueuedCompletionStatusEx | native (files: at issue) |
//!
//! Every `unsafe` block of the crate lives under this module.

use std::fmt;
use std::fs::File;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};

use crate::completion::{Completion, Handle, OpId, OpKind, Payload, Rejected};
use crate::config::{Backend, Config};
use crate::queue::{Batch, Reactor};

#[cfg(target_os = "linux")]
pub(crate) mod epoll;
#[cfg(target_os = "linux")]
pub(crate) mod uring;
#[cfg(windows)]
pub(crate) mod windows;

pub(crate) mod error;
pub(crate) mod lock;
pub(crate) mod slab;
#[cfg(unix)]
pub(crate) mod unix;

/// Opens the backend a port runs on (CreateIoCompletionPort with no handle).
///
/// With [`Backend::Auto`], `CPORT_BACKEND` is read first; then io_uring is
/// tried, and on failure epoll is used with one log line (target `cport`)
/// naming the reason (SEMANTICS R1). An explicit backend that cannot start
/// is an error naming its cause. Windows has one backend, the native
/// completion port: `Auto` opens it (and the port reports `Auto`, there
/// being no other to tell it from); the Linux backends are refused there
/// with `Unsupported`.
pub(crate) fn open<T: Send + 'static>(
    backend: Backend,
    config: &Config,
) -> io::Result<Box<dyn Driver<T>>> {
    let mut backend = backend;
    if backend == Backend::Auto {
        if let Ok(v) = std::env::var("CPORT_BACKEND") {
            backend = v
                .parse()
                .map_err(|e: io::Error| io::Error::new(e.kind(), format!("CPORT_BACKEND: {e}")))?;
        }
    }
    open_backend(backend, config)
}

#[cfg(target_os = "linux")]
fn open_backend<T: Send + 'static>(
    backend: Backend,
    config: &Config,
) -> io::Result<Box<dyn Driver<T>>> {
    match backend {
        Backend::Uring => Ok(Box::new(uring::Driver::new(config).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot start the io_uring backend: {e}"))
        })?)),
        Backend::Epoll => Ok(Box::new(epoll::Driver::new(config).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot start the epoll backend: {e}"))
        })?)),
        Backend::Auto => fall_back(config, |c| {
            uring::Driver::new(c).map(|d| Box::new(d) as Box<dyn Driver<T>>)
        }),
    }
}

#[cfg(windows)]
fn open_backend<T: Send + 'static>(
    backend: Backend,
    config: &Config,
) -> io::Result<Box<dyn Driver<T>>> {
    match backend {
        Backend::Auto => Ok(Box::new(windows::Driver::new(config).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create the completion port: {e}"))
        })?)),
        other => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("the {other} backend exists only on Linux; use auto on Windows"),
        )),
    }
}

/// `Auto`: io_uring if `try_uring` starts it, else epoll, with the one log
/// line that says why (SEMANTICS R1, LESSONS 5).
#[cfg(target_os = "linux")]
fn fall_back<T: Send + 'static>(
    config: &Config,
    try_uring: impl FnOnce(&Config) -> io::Result<Box<dyn Driver<T>>>,
) -> io::Result<Box<dyn Driver<T>>> {
    match try_uring(config) {
        Ok(d) => Ok(d),
        Err(e) => {
            log::info!(target: "cport", "io_uring unavailable ({e}); using epoll");
            open_backend(Backend::Epoll, config)
        }
    }
}

/// Completions made at once by a call, for the port to queue, with the
/// panic of user code the call ran, if any (see `queue::Batch`).
pub(crate) type Ready<T> = Batch<Completion<T>>;

/// What each backend implements. All methods may be called from any thread
/// at any time, except `Reactor::wait`, which the queue calls from one
/// thread at a time.
pub(crate) trait Driver<T>: Reactor<Completion<T>> + Send + Sync {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Takes ownership of `source` and registers it under `key`.
    /// Sockets are switched to non-blocking mode.
    fn associate(&self, source: Source, key: u64) -> io::Result<Handle>;

    /// Issues `op` on `handle`. On success the operation owns its buffers
    /// and value until its one completion (for multishot operations: until
    /// the completion with `more == false`). Completions produced before
    /// returning go to `ready`. On refusal, everything comes back in the
    /// `Rejected` and no completion follows.
    fn submit(
        &self,
        handle: Handle,
        op: Op,
        value: T,
        opts: Opts<T>,
        ready: &mut Ready<T>,
    ) -> Result<OpId, Rejected<T>>;

    /// Requests cancellation of one operation (CancelIoEx with an
    /// OVERLAPPED). Its completion still comes, aborted unless it had
    /// already finished. `NotFound` if the operation is not in flight.
    fn cancel(&self, op: OpId, ready: &mut Ready<T>) -> io::Result<()>;

    /// Requests cancellation of every operation on `handle`; returns how
    /// many were in flight. `NotFound` when none was.
    fn cancel_handle(&self, handle: Handle, ready: &mut Ready<T>) -> io::Result<usize>;

    /// Closes `handle`: its pending operations complete aborted, then the
    /// descriptor is released (SEMANTICS X2). The handle is invalid at once.
    fn close(&self, handle: Handle, ready: &mut Ready<T>) -> io::Result<()>;

    /// shutdown(2) on a socket handle.
    fn shutdown(&self, handle: Handle, how: Shutdown) -> io::Result<()>;

    /// The handle's local (`peer == false`) or peer address.
    fn addr(&self, handle: Handle, peer: bool) -> io::Result<SocketAddr>;

    /// The port is closing: refuse new operations and cancel all in flight.
    /// Their completions are dropped with the queue; the backend's `Drop`
    /// must still not free a buffer the kernel may use (SEMANTICS X3).
    fn close_port(&self);

    /// Takes back a buffer that a pooled receive handed out, for reuse.
    fn recycle(&self, buf: Vec<u8>);

    /// `n` completions carrying a pool buffer (`recv_pooled`,
    /// `recv_multi`) were dequeued: as many more buffers may be filled.
    /// What keeps the filled buffers waiting in the queue bounded by the
    /// pool (SEMANTICS O9).
    fn delivered(&self, n: usize);
}

/// Advances the lengths of `bufs` by the `n` bytes a receive or read wrote
/// into their spare capacities, each filled before the next (the way the
/// kernel fills an iovec or WSABUF list). A count beyond the total spare
/// capacity is clamped to it.
///
/// # Safety
///
/// The kernel wrote `n` bytes (or all of the spare capacity, if less) into
/// the spare capacities of `bufs`, in order, and nothing has written to
/// them since.
pub(crate) unsafe fn advance(bufs: &mut [Vec<u8>], mut n: usize) {
    for b in bufs {
        if n == 0 {
            break;
        }
        let k = (b.capacity() - b.len()).min(n);
        // SAFETY:
        // - `k` is within this buffer's spare capacity;
        // - the kernel filled the spare capacities in order (this
        //   function's contract), so the first `k` spare bytes of this
        //   buffer are initialised.
        unsafe { b.set_len(b.len() + k) };
        n -= k;
    }
}

/// The buffers of a port's receive pool that users gave back
/// (`CompletionPort::recycle`), kept for reuse: only buffers of the pool's
/// size, and at most `keep` of them. Every backend's pool keeps one.
#[derive(Debug)]
pub(crate) struct FreeList {
    bufs: Vec<Vec<u8>>,
    keep: usize,
    size: usize,
}

impl FreeList {
    pub(crate) fn new(keep: usize, size: usize) -> FreeList {
        FreeList {
            bufs: Vec::new(),
            keep,
            size,
        }
    }

    /// An empty buffer of the pool's size: a recycled one, else a new one.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.bufs
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// A recycled buffer, if one is kept.
    #[cfg(target_os = "linux")]
    pub(crate) fn pop(&mut self) -> Option<Vec<u8>> {
        self.bufs.pop()
    }

    /// Keeps `buf` for reuse if it is of the pool's size and there is
    /// room; drops it otherwise.
    pub(crate) fn give(&mut self, buf: Vec<u8>) {
        drop(self.offer(buf));
    }

    /// Keeps `buf` if it is of the pool's size and there is room, and
    /// drops it if it is of another size; gives it back when there is no
    /// room (for another list to keep).
    pub(crate) fn offer(&mut self, mut buf: Vec<u8>) -> Option<Vec<u8>> {
        if buf.capacity() != self.size {
            return None;
        }
        if self.bufs.len() >= self.keep {
            return Some(buf);
        }
        buf.clear();
        self.bufs.push(buf);
        None
    }

    /// How many buffers are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.bufs.len()
    }
}

/// Options of one submission.
pub(crate) struct Opts<T> {
    /// The issuing thread is running a completion of this port and will
    /// come back to `get`: the backend may defer the submission syscall
    /// until then (see `Reactor::flush`).
    pub(crate) defer: bool,
    /// Multishot: every completion but the last carries a clone of the value
    /// made with this function.
    pub(crate) multishot: Option<fn(&T) -> T>,
}

impl<T> fmt::Debug for Opts<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opts")
            .field("defer", &self.defer)
            .field("multishot", &self.multishot.is_some())
            .finish()
    }
}

/// An operation as handed to a backend, owning its buffers.
#[derive(Debug)]
pub(crate) enum Op {
    Accept,
    Connect(SocketAddr),
    Recv(Vec<u8>),
    RecvVectored(Vec<Vec<u8>>),
    RecvPooled,
    RecvMulti,
    Send(Vec<u8>),
    SendVectored(Vec<Vec<u8>>),
    RecvFrom(Vec<u8>),
    SendTo(Vec<u8>, SocketAddr),
    ReadAt(Vec<u8>, u64),
    ReadVectoredAt(Vec<Vec<u8>>, u64),
    WriteAt(Vec<u8>, u64),
    WriteVectoredAt(Vec<Vec<u8>>, u64),
}

impl Op {
    /// The name of the port method that issued it, for error messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Accept => "accept",
            Op::Connect(_) => "connect",
            Op::Recv(_) => "recv",
            Op::RecvVectored(_) => "recv_vectored",
            Op::RecvPooled => "recv_pooled",
            Op::RecvMulti => "recv_multi",
            Op::Send(_) => "send",
            Op::SendVectored(_) => "send_vectored",
            Op::RecvFrom(_) => "recv_from",
            Op::SendTo(..) => "send_to",
            Op::ReadAt(..) => "read_at",
            Op::ReadVectoredAt(..) => "read_vectored_at",
            Op::WriteAt(..) => "write_at",
            Op::WriteVectoredAt(..) => "write_vectored_at",
        }
    }

    /// The file offset of a positional operation.
    pub(crate) fn offset(&self) -> Option<u64> {
        match self {
            Op::ReadAt(_, o)
            | Op::ReadVectoredAt(_, o)
            | Op::WriteAt(_, o)
            | Op::WriteVectoredAt(_, o) => Some(*o),
            _ => None,
        }
    }

    pub(crate) fn kind(&self) -> OpKind {
        match self {
            Op::Accept => OpKind::Accept,
            Op::Connect(_) => OpKind::Connect,
            Op::Recv(_) | Op::RecvVectored(_) => OpKind::Recv,
            Op::RecvPooled => OpKind::RecvPooled,
            Op::RecvMulti => OpKind::RecvMulti,
            Op::Send(_) | Op::SendVectored(_) => OpKind::Send,
            Op::RecvFrom(_) => OpKind::RecvFrom,
            Op::SendTo(..) => OpKind::SendTo,
            Op::ReadAt(..) | Op::ReadVectoredAt(..) => OpKind::ReadAt,
            Op::WriteAt(..) | Op::WriteVectoredAt(..) => OpKind::WriteAt,
        }
    }

    /// Gives the buffers back, for a refusal.
    pub(crate) fn into_payload(self) -> Payload {
        match self {
            Op::Accept | Op::Connect(_) | Op::RecvPooled | Op::RecvMulti => Payload::None,
            Op::Recv(b)
            | Op::Send(b)
            | Op::RecvFrom(b)
            | Op::SendTo(b, _)
            | Op::ReadAt(b, _)
            | Op::WriteAt(b, _) => Payload::Buf(b),
            Op::RecvVectored(b)
            | Op::SendVectored(b)
            | Op::ReadVectoredAt(b, _)
            | Op::WriteVectoredAt(b, _) => Payload::Bufs(b),
        }
    }

    /// Whether an operation of this kind may run on a handle of `kind`.
    pub(crate) fn fits(&self, kind: SourceKind) -> bool {
        match self {
            Op::Accept => kind == SourceKind::TcpListener,
            Op::Connect(_) => kind == SourceKind::TcpSocket,
            // A stream's: on Windows the zero-byte receive that waits
            // for data cannot wait for a datagram without taking it
            // (WSAEMSGSIZE, the datagram lost).
            Op::RecvPooled | Op::RecvMulti => {
                matches!(kind, SourceKind::TcpStream | SourceKind::TcpSocket)
            }
            Op::Recv(_) | Op::RecvVectored(_) | Op::Send(_) | Op::SendVectored(_) => {
                matches!(
                    kind,
                    SourceKind::TcpStream | SourceKind::TcpSocket | SourceKind::UdpSocket
                )
            }
            Op::RecvFrom(_) | Op::SendTo(..) => kind == SourceKind::UdpSocket,
            Op::ReadAt(..) | Op::ReadVectoredAt(..) | Op::WriteAt(..) | Op::WriteVectoredAt(..) => {
                kind == SourceKind::File
            }
        }
    }

    /// The error every backend refuses an operation with when it does not
    /// [`fit`](Op::fits) the handle's kind (an accept on a stream, a read
    /// at an offset on a socket), so the message is the same on each.
    pub(crate) fn misfit(&self, kind: SourceKind) -> Option<io::Error> {
        if self.fits(kind) {
            None
        } else {
            Some(error::misfit(self.name(), kind))
        }
    }
}

/// Something that can be associated with a port: a TCP listener or stream,
/// a UDP socket, or a regular file. Made with `From`/`Into`.
#[derive(Debug)]
pub struct Source(pub(crate) SourceInner);

#[derive(Debug)]
pub(crate) enum SourceInner {
    TcpListener(TcpListener),
    TcpStream(TcpStream),
    /// An unconnected TCP socket made by `CompletionPort::connect`.
    TcpSocket(socket2::Socket),
    UdpSocket(UdpSocket),
    File(File),
}

/// The kind of an associated handle, to check that an operation fits it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SourceKind {
    TcpListener,
    TcpStream,
    TcpSocket,
    UdpSocket,
    File,
}

impl Source {
    pub(crate) fn kind(&self) -> SourceKind {
        match self.0 {
            SourceInner::TcpListener(_) => SourceKind::TcpListener,
            SourceInner::TcpStream(_) => SourceKind::TcpStream,
            SourceInner::TcpSocket(_) => SourceKind::TcpSocket,
            SourceInner::UdpSocket(_) => SourceKind::UdpSocket,
            SourceInner::File(_) => SourceKind::File,
        }
    }
}

#[cfg(unix)]
impl Source {
    /// Whether this is a socket (switched to non-blocking on association).
    pub(crate) fn is_socket(&self) -> bool {
        self.kind() != SourceKind::File
    }

    /// Gives up the descriptor.
    pub(crate) fn into_fd(self) -> std::os::unix::io::OwnedFd {
        match self.0 {
            SourceInner::TcpListener(s) => s.into(),
            SourceInner::TcpStream(s) => s.into(),
            SourceInner::TcpSocket(s) => s.into(),
            SourceInner::UdpSocket(s) => s.into(),
            SourceInner::File(s) => s.into(),
        }
    }
}

impl From<TcpListener> for Source {
    fn from(s: TcpListener) -> Source {
        Source(SourceInner::TcpListener(s))
    }
}

impl From<TcpStream> for Source {
    fn from(s: TcpStream) -> Source {
        Source(SourceInner::TcpStream(s))
    }
}

impl From<UdpSocket> for Source {
    fn from(s: UdpSocket) -> Source {
        Source(SourceInner::UdpSocket(s))
    }
}

impl From<File> for Source {
    fn from(s: File) -> Source {
        Source(SourceInner::File(s))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Keeps the `cport` log lines of this test binary.
    struct Capture(Mutex<Vec<String>>);

    impl log::Log for Capture {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.target() == "cport"
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                self.0
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", r.level(), r.args()));
            }
        }
        fn flush(&self) {}
    }

    static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

    #[test]
    fn r1_auto_falls_back_to_epoll_with_one_line_naming_the_cause() {
        let _ = log::set_logger(&CAPTURE);
        log::set_max_level(log::LevelFilter::Info);
        let config = Config {
            port_id: crate::completion::PortId::new(u32::MAX - 1).unwrap(),
            entries: 8,
            pool_buffers: 1,
            pool_buffer_size: 1,
            single_issuer: false,
            prompt_handlers: false,
            registered_files: 0,
        };
        let refused = |_: &Config| -> io::Result<Box<dyn Driver<()>>> {
            Err(io::Error::from_raw_os_error(libc::EPERM))
        };
        let driver = fall_back(&config, refused).expect("epoll starts");
        assert_eq!(driver.backend(), Backend::Epoll);
        let lines: Vec<String> = CAPTURE
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("io_uring unavailable"))
            .cloned()
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("INFO"), "{}", lines[0]);
        assert!(
            lines[0].contains("Operation not permitted"),
            "the cause is named: {}",
            lines[0]
        );
        assert!(lines[0].contains("using epoll"), "{}", lines[0]);
    }

    #[test]
    fn r1_auto_keeps_io_uring_when_it_starts() {
        let config = Config {
            port_id: crate::completion::PortId::new(u32::MAX - 2).unwrap(),
            entries: 8,
            pool_buffers: 1,
            pool_buffer_size: 1,
            single_issuer: false,
            prompt_handlers: false,
            registered_files: 0,
        };
        match uring::Driver::<()>::new(&config) {
            Ok(_) => {
                let d = fall_back::<()>(&config, |c| {
                    uring::Driver::new(c).map(|d| Box::new(d) as Box<dyn Driver<()>>)
                })
                .unwrap();
                assert_eq!(d.backend(), Backend::Uring);
            }
            Err(e) => eprintln!("skipped: io_uring refused here: {e}"),
        }
    }
}
