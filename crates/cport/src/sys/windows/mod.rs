//! The Windows backend: the model on the kernel object it was taken from.
//!
//! # How it realises the model
//!
//! The port is one I/O completion port made by `CreateIoCompletionPort`.
//! The user-space queue (`crate::queue`) still orders completions and counts
//! running threads, exactly as on Linux, so that every platform obeys the
//! same SEMANTICS items; the kernel port is what the queue's leader polls in
//! [`Reactor::wait`] with `GetQueuedCompletionStatusEx`, and
//! [`Reactor::wake`] is a `PostQueuedCompletionStatus` with a key no I/O
//! uses.
//!
//! * **Association.** A socket is associated with the port (completion key
//!   [`IO_KEY`]) and switched to `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`: an
//!   operation that succeeds at issue queues no packet, and its completion
//!   is produced at once into `ready`. Where the mode cannot be set, the
//!   packet comes and the operation is treated as pending.
//! * **Operations.** Each in-flight operation lives in a slab entry
//!   ([`Pending`]) that owns its value, its buffers and a boxed [`Ov`]: the
//!   `OVERLAPPED` plus everything else the kernel writes into after the call
//!   returns (flags, the sender's address, `AcceptEx`'s address block). The
//!   box's address identifies the operation when its packet is dequeued
//!   (`by_ov`), and it is freed only after that packet, or, for a port
//!   dropped with operations still in the kernel, never (SEMANTICS X3).
//! * **Sockets**: `WSARecv`/`WSASend` (one or several `WSABUF`s),
//!   `WSARecvFrom`/`WSASendTo`, `AcceptEx` (re-issued for `accept_multi`),
//!   `ConnectEx` (after binding the socket to the wildcard address, as it
//!   requires). A send completing short is continued inside the port (O4).
//! * **Files**: `std::fs::File` opens handles for synchronous I/O, which
//!   cannot be overlapped; `ReadFile`/`WriteFile` run at issue with the
//!   offset in the `OVERLAPPED` and complete at once, as on epoll. On such
//!   a handle they move the file position anyway, so it is saved and put
//!   back around each operation (O8), under the port's state lock: file
//!   I/O holds up the port's other issues meanwhile. Truly overlapped
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
//! * **Backend name**: Windows has this one backend, so a port built with
//!   `Backend::Auto` reports `Auto`; `Uring` and `Epoll` are refused.
//! * **Under wine 8** (how CI runs it, `scripts/windows-test.sh`): closing
//!   the port does not wake `GetQueuedCompletionStatusEx`, so nothing here
//!   relies on it: the queue's wake-up is a posted packet.

use std::collections::HashMap;
use std::ffi::c_void;
use std::fmt;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use windows_sys::core::GUID;
use windows_sys::Win32::Foundation::{
    CloseHandle, GetLastError, ERROR_HANDLE_EOF, ERROR_IO_PENDING, ERROR_MORE_DATA, FALSE, HANDLE,
    INVALID_HANDLE_VALUE, TRUE,
};
use windows_sys::Win32::Networking::WinSock::{
    setsockopt, AcceptEx, WSAGetLastError, WSAGetOverlappedResult, WSAIoctl, WSARecv, WSARecvFrom,
    WSASend, WSASendTo, LPFN_CONNECTEX, SIO_GET_EXTENSION_FUNCTION_POINTER, SOCKADDR, SOCKET,
    SOCKET_ERROR, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, SO_UPDATE_CONNECT_CONTEXT, WSABUF,
    WSAEMSGSIZE, WSAENOTSOCK, WSAID_CONNECTEX,
};
use windows_sys::Win32::Storage::FileSystem::{
    ReadFile, SetFileCompletionNotificationModes, SetFilePointerEx, WriteFile, FILE_BEGIN,
    FILE_CURRENT,
};
use windows_sys::Win32::System::IO::{
    CancelIoEx, CreateIoCompletionPort, GetOverlappedResult, GetQueuedCompletionStatusEx,
    PostQueuedCompletionStatus, OVERLAPPED, OVERLAPPED_0, OVERLAPPED_0_0, OVERLAPPED_ENTRY,
};

use crate::completion::{Completion, Handle, OpId, OpKind, Payload, Rejected};
use crate::config::{Backend, Config};
use crate::queue::Reactor;
use crate::sync::lock_std as lock;
use crate::sys::error::{
    aborted, bad_handle, none_in_flight, not_a_socket, not_in_flight, not_ip, port_closed,
};
use crate::sys::slab::Slab;
use crate::sys::{Op, Opts, Ready, Source, SourceInner, SourceKind};

/// The completion key of every associated socket: operations are told
/// apart by their `OVERLAPPED`, not by the key.
const IO_KEY: usize = 0;
/// The key of the packets [`Reactor::wake`] posts.
const WAKE_KEY: usize = 1;
/// FILE_SKIP_COMPLETION_PORT_ON_SUCCESS (winbase.h).
const SKIP_ON_SUCCESS: u8 = 1;
/// ERROR_NOT_FOUND: CancelIoEx found nothing left to cancel.
const ERROR_NOT_FOUND: u32 = 1168;
/// Packets taken per GetQueuedCompletionStatusEx.
const BATCH: usize = 64;
/// Room `AcceptEx` wants per address: the largest sockaddr plus 16.
const ACCEPT_ADDR: usize = 128 + 16;
/// How long a dropped port waits for the kernel to give back the buffers of
/// cancelled operations before leaking them instead.
const DRAIN: Duration = Duration::from_secs(5);

/// A sockaddr as bytes, aligned for the kernel's view of it.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct AddrBuf([u8; 128]);

/// Everything the kernel may write after the call that started an
/// operation returned. Boxed: its address must not change while the
/// operation is in flight, and it identifies the operation's packet.
#[repr(C)]
struct Ov {
    ov: OVERLAPPED,
    /// WSARecv's in/out flags.
    flags: u32,
    /// WSARecvFrom's sender; WSASendTo's destination.
    addr: AddrBuf,
    addr_len: i32,
    /// AcceptEx's local and remote address block.
    accept: [u8; 2 * ACCEPT_ADDR],
}

// SAFETY:
// - `Ov` is plain data; the raw pointers inside OVERLAPPED are never
//   dereferenced by this crate, only handed to the kernel, so moving the
//   box between threads cannot create an aliasing or lifetime problem.
unsafe impl Send for Ov {}

impl Ov {
    fn new() -> Box<Ov> {
        Box::new(Ov {
            ov: zeroed_overlapped(),
            flags: 0,
            addr: AddrBuf([0; 128]),
            addr_len: 0,
            accept: [0; 2 * ACCEPT_ADDR],
        })
    }

    fn addr_of(&self) -> usize {
        &self.ov as *const OVERLAPPED as usize
    }
}

fn zeroed_overlapped() -> OVERLAPPED {
    OVERLAPPED {
        Internal: 0,
        InternalHigh: 0,
        Anonymous: OVERLAPPED_0 {
            Anonymous: OVERLAPPED_0_0 {
                Offset: 0,
                OffsetHigh: 0,
            },
        },
        hEvent: 0,
    }
}

/// One operation in flight.
struct Pending<T> {
    handle: Handle,
    key: u64,
    raw: usize,
    value: T,
    multishot: Option<fn(&T) -> T>,
    op: Op,
    ov: Box<Ov>,
    /// Bytes of a send the kernel already took (O4's continuation).
    sent: usize,
    /// The listener's address family, for AcceptEx's new socket.
    domain: Option<socket2::Domain>,
    /// The socket AcceptEx accepts into.
    accepted: Option<socket2::Socket>,
    /// `recv_pooled`: the pool buffer taken once the zero-byte receive
    /// said data (or the end) is there; `None` during that first phase.
    pool_buf: Option<Vec<u8>>,
}

/// One associated socket or file.
struct Assoc {
    key: u64,
    kind: SourceKind,
    source: Source,
    raw: usize,
    /// FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is in effect.
    skip: bool,
}

struct State<T> {
    handles: Slab<Assoc>,
    ops: Slab<Pending<T>>,
    /// An in-flight operation's `OVERLAPPED` address → its slab key.
    by_ov: HashMap<usize, (u32, u32)>,
    /// Pooled receives whose data is there but the pool was dry (R3):
    /// nothing of theirs is in the kernel until a buffer comes back.
    parked: Vec<(u32, u32)>,
}

/// The buffers behind `recv_pooled`: at most `count` of `size` bytes in
/// the kernel at once, as io_uring's provided-buffer ring holds them. A
/// buffer handed to the user no longer counts (on io_uring the user gets a
/// copy); `recycle` refills the free list up to `count`.
struct Pool {
    size: usize,
    count: usize,
    in_kernel: usize,
    free: Vec<Vec<u8>>,
}

impl Pool {
    /// A buffer for a receive about to start, or `None`: the pool is dry.
    fn take(&mut self) -> Option<Vec<u8>> {
        if self.in_kernel >= self.count {
            return None;
        }
        self.in_kernel += 1;
        Some(
            self.free
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(self.size)),
        )
    }

    /// A receive that held a buffer finished.
    fn done(&mut self) {
        self.in_kernel -= 1;
    }

    /// Keeps a buffer for reuse; others are dropped.
    fn give(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == self.size && self.free.len() < self.count {
            buf.clear();
            self.free.push(buf);
        }
    }
}

/// What starting an operation did.
enum Started {
    /// The kernel has it; a packet will come.
    Pending,
    /// Done at issue: bytes, and the raw error if it failed.
    Done(usize, Option<i32>),
}

pub(crate) struct Driver<T> {
    port: u32,
    iocp: HANDLE,
    closed: AtomicBool,
    state: Mutex<State<T>>,
    pool: Mutex<Pool>,
}

impl<T: Send + 'static> Driver<T> {
    pub(crate) fn new(config: &Config) -> io::Result<Self> {
        // SAFETY:
        // - INVALID_HANDLE_VALUE with no existing port asks for a new port;
        //   no pointer is passed.
        let iocp = unsafe { CreateIoCompletionPort(INVALID_HANDLE_VALUE, 0, 0, 0) };
        if iocp == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Driver {
            port: config.port_id,
            iocp,
            closed: AtomicBool::new(false),
            state: Mutex::new(State {
                handles: Slab::new(),
                ops: Slab::new(),
                by_ov: HashMap::new(),
                parked: Vec::new(),
            }),
            pool: Mutex::new(Pool {
                size: config.pool_buffer_size,
                count: usize::from(config.pool_buffers),
                in_kernel: 0,
                free: Vec::new(),
            }),
        })
    }

    fn reject(e: io::Error, value: T, op: Op) -> Result<OpId, Rejected<T>> {
        Err(Rejected::new(e, value, op.into_payload()))
    }

    /// Settles operation `(i, g)` with the outcome of its last start:
    /// continues a short send, re-issues a multishot accept, or removes it
    /// and produces its completion.
    fn settle(
        &self,
        st: &mut State<T>,
        (i, g): (u32, u32),
        mut bytes: usize,
        mut err: Option<i32>,
        out: &mut Ready<T>,
    ) {
        loop {
            let (skip, orphan) = {
                let h = match st.ops.get(i, g) {
                    Some(p) => p.handle,
                    None => return,
                };
                match st.handles.get(h.index, h.gen) {
                    Some(a) => (a.skip, self.closed.load(Ordering::Acquire)),
                    None => (false, true),
                }
            };
            let p = st.ops.get_mut(i, g).expect("looked up above");
            if err.is_none() && !orphan {
                let total = match &p.op {
                    Op::Send(b) => Some(b.len()),
                    Op::SendVectored(bs) => Some(bs.iter().map(Vec::len).sum()),
                    _ => None,
                };
                if let Some(total) = total {
                    if bytes > 0 && p.sent + bytes < total {
                        p.sent += bytes;
                        match start(p, skip) {
                            Started::Pending => return,
                            Started::Done(b, e) => {
                                bytes = b;
                                err = e;
                                continue;
                            }
                        }
                    }
                }
                if matches!(p.op, Op::RecvPooled) && p.pool_buf.is_none() {
                    // The zero-byte receive says data or the end is there:
                    // now, and only now, a buffer is pinned (O6).
                    match lock(&self.pool).take() {
                        Some(b) => {
                            p.pool_buf = Some(b);
                            match start(p, skip) {
                                Started::Pending => return,
                                Started::Done(b, e) => {
                                    bytes = b;
                                    err = e;
                                    continue;
                                }
                            }
                        }
                        None => {
                            st.parked.push((i, g));
                            return;
                        }
                    }
                }
                if matches!(p.op, Op::Accept) {
                    if let Some(clone) = p.multishot {
                        let payload = accepted(p);
                        let result = match payload {
                            Payload::Accepted { .. } => Ok(0),
                            _ => Err(io::Error::last_os_error()),
                        };
                        // User code, inside the reap: a panic is held in
                        // `out` until the rest is queued; the connection it
                        // was cloned for is closed, nothing else is lost
                        // (LESSONS 12).
                        let value = out.catch(|| clone(&p.value));
                        if let Some(value) = value {
                            out.push(Completion {
                                key: p.key,
                                kind: OpKind::Accept,
                                op: Some(OpId {
                                    port: self.port,
                                    index: i,
                                    gen: g,
                                }),
                                handle: Some(p.handle),
                                result,
                                value,
                                payload,
                                more: true,
                            });
                        }
                        match start(p, skip) {
                            Started::Pending => return,
                            Started::Done(b, e) => {
                                bytes = b;
                                err = e;
                                continue;
                            }
                        }
                    }
                }
            }
            let p = st.ops.remove(i, g).expect("looked up above");
            st.by_ov.remove(&p.ov.addr_of());
            let pooled = p.pool_buf.is_some();
            out.push(self.finish(p, (i, g), bytes, err, orphan));
            if pooled && !st.parked.is_empty() {
                // Its buffer left the kernel: a parked receive may go on.
                self.resume(st, out);
            }
            return;
        }
    }

    /// The completion of a finished operation.
    fn finish(
        &self,
        mut p: Pending<T>,
        (i, g): (u32, u32),
        bytes: usize,
        err: Option<i32>,
        orphan: bool,
    ) -> Completion<T> {
        let kind = p.op.kind();
        let mut result = match err {
            None => Ok(bytes),
            Some(_) if orphan => Err(aborted()),
            Some(e) => Err(io::Error::from_raw_os_error(e)),
        };
        let payload = match &mut p.op {
            Op::Recv(b) if err.is_none() => {
                advance(b, bytes);
                Payload::Buf(mem::take(b))
            }
            Op::RecvVectored(bs) if err.is_none() => {
                let mut left = bytes;
                for b in bs.iter_mut() {
                    let n = left.min(b.capacity() - b.len());
                    advance(b, n);
                    left -= n;
                }
                Payload::Bufs(mem::take(bs))
            }
            Op::Send(_) | Op::SendVectored(_) if err.is_none() => {
                result = Ok(p.sent + bytes);
                mem::replace(&mut p.op, Op::Accept).into_payload()
            }
            Op::RecvFrom(b) => {
                let truncated =
                    matches!(err, Some(e) if e == ERROR_MORE_DATA as i32 || e == WSAEMSGSIZE);
                if truncated && !orphan {
                    // O7: the part that fit, and the error the kernel names
                    // truncation with on this platform.
                    result = Err(io::Error::from_raw_os_error(WSAEMSGSIZE));
                }
                let from = if err.is_none() || (truncated && !orphan) {
                    advance(b, bytes.min(b.capacity() - b.len()));
                    parse_sockaddr(&p.ov.addr, p.ov.addr_len)
                } else {
                    None
                };
                Payload::Datagram {
                    buf: mem::take(b),
                    from,
                }
            }
            Op::RecvPooled => match p.pool_buf.take() {
                Some(mut b) if err.is_none() => {
                    lock(&self.pool).done();
                    advance(&mut b, bytes);
                    Payload::Buf(b)
                }
                Some(b) => {
                    let mut pool = lock(&self.pool);
                    pool.done();
                    pool.give(b);
                    Payload::None
                }
                None => Payload::None,
            },
            Op::Accept if err.is_none() => {
                let payload = accepted(&mut p);
                if !matches!(payload, Payload::Accepted { .. }) {
                    result = Err(io::Error::last_os_error());
                }
                payload
            }
            Op::Connect(_) if err.is_none() => {
                // SAFETY:
                // - `p.raw` is the socket ConnectEx just connected, still
                //   open (its handle is associated, or err would be set);
                // - SO_UPDATE_CONNECT_CONTEXT takes no option value.
                let r = unsafe {
                    setsockopt(
                        p.raw as SOCKET,
                        SOL_SOCKET,
                        SO_UPDATE_CONNECT_CONTEXT,
                        ptr::null(),
                        0,
                    )
                };
                if r == SOCKET_ERROR {
                    result = Err(wsa_error());
                }
                Payload::None
            }
            _ => mem::replace(&mut p.op, Op::Accept).into_payload(),
        };
        Completion {
            key: p.key,
            kind,
            op: Some(OpId {
                port: self.port,
                index: i,
                gen: g,
            }),
            handle: Some(p.handle),
            result,
            value: p.value,
            payload,
            more: false,
        }
    }
}

fn wsa_error() -> io::Error {
    // SAFETY:
    // - reads this thread's last Winsock error; no arguments.
    io::Error::from_raw_os_error(unsafe { WSAGetLastError() })
}

/// The outcome of a socket operation whose packet was dequeued: bytes, and
/// the error if it failed. Winsock's own view first, so that errors read as
/// WSAECONNRESET, WSAECONNREFUSED, ... (which `io::ErrorKind` knows) rather
/// than the kernel's ERROR_NETNAME_DELETED and the like.
fn overlapped_result(raw: usize, ov: &OVERLAPPED) -> (usize, Option<i32>) {
    let mut bytes = 0u32;
    let mut flags = 0u32;
    // SAFETY:
    // - `ov` is the OVERLAPPED whose packet was just dequeued: the kernel
    //   is done with it; not waiting, so nothing blocks.
    let ok = unsafe { WSAGetOverlappedResult(raw as SOCKET, ov, &mut bytes, FALSE, &mut flags) };
    if ok != FALSE {
        return (bytes as usize, None);
    }
    // SAFETY:
    // - reads this thread's last Winsock error; no pointers.
    let e = unsafe { WSAGetLastError() };
    if e != WSAENOTSOCK {
        return (bytes as usize, Some(e));
    }
    // The socket was closed meanwhile: the kernel's status still says
    // whether the operation won its race with the close (X1).
    // SAFETY:
    // - as above; GetOverlappedResult only reads `ov` when not waiting.
    let ok = unsafe { GetOverlappedResult(raw as HANDLE, ov, &mut bytes, FALSE) };
    if ok != FALSE {
        (bytes as usize, None)
    } else {
        // SAFETY:
        // - reads this thread's last error; no pointers.
        (bytes as usize, Some(unsafe { GetLastError() } as i32))
    }
}

/// Advances `b`'s length over `n` bytes the kernel wrote into its spare
/// capacity.
fn advance(b: &mut Vec<u8>, n: usize) {
    let n = n.min(b.capacity() - b.len());
    // SAFETY:
    // - `n` is at most the spare capacity (clamped above);
    // - those bytes were written by the kernel's receive or read into the
    //   spare capacity this crate handed it, so they are initialised.
    unsafe { b.set_len(b.len() + n) };
}

/// Turns the socket AcceptEx filled into the accepted stream, or
/// `Payload::None` (with the OS error set) if that fails.
fn accepted<T>(p: &mut Pending<T>) -> Payload {
    let sock = match p.accepted.take() {
        Some(s) => s,
        None => return Payload::None,
    };
    let listener = p.raw as SOCKET;
    // SAFETY:
    // - `sock` is the open socket AcceptEx accepted into, `listener` the
    //   open listening socket it was issued on (the operation's handle);
    // - the option value points at `listener`, a live SOCKET, with its size.
    let r = unsafe {
        setsockopt(
            sock.as_raw_socket_usize() as SOCKET,
            SOL_SOCKET,
            SO_UPDATE_ACCEPT_CONTEXT,
            &listener as *const SOCKET as *const u8,
            mem::size_of::<SOCKET>() as i32,
        )
    };
    if r == SOCKET_ERROR {
        return Payload::None;
    }
    let stream = TcpStream::from(sock);
    match stream.peer_addr() {
        Ok(peer) => Payload::Accepted { stream, peer },
        Err(_) => Payload::None,
    }
}

trait RawSock {
    fn as_raw_socket_usize(&self) -> usize;
}

impl RawSock for socket2::Socket {
    fn as_raw_socket_usize(&self) -> usize {
        use std::os::windows::io::AsRawSocket;
        self.as_raw_socket() as usize
    }
}

/// A WSABUF over the spare capacity of `b`.
fn spare(b: &mut Vec<u8>) -> WSABUF {
    let len = b.len();
    WSABUF {
        len: (b.capacity() - len).min(u32::MAX as usize) as u32,
        buf: b.as_mut_ptr().wrapping_add(len),
    }
}

/// A WSABUF over `b[from..]` (a send's unsent rest).
fn rest(b: &[u8], from: usize) -> WSABUF {
    let from = from.min(b.len());
    WSABUF {
        len: (b.len() - from).min(u32::MAX as usize) as u32,
        buf: b.as_ptr().wrapping_add(from) as *mut u8,
    }
}

/// What a WSA call that takes an OVERLAPPED returned.
fn wsa_started(rc: i32, bytes: u32, skip: bool) -> Started {
    if rc == 0 {
        if skip {
            Started::Done(bytes as usize, None)
        } else {
            Started::Pending
        }
    } else {
        // SAFETY:
        // - reads this thread's last Winsock error; no arguments.
        let e = unsafe { WSAGetLastError() };
        if e == ERROR_IO_PENDING as i32 {
            Started::Pending
        } else {
            Started::Done(0, Some(e))
        }
    }
}

/// Starts (or restarts) a socket operation with a fresh OVERLAPPED.
fn start<T>(p: &mut Pending<T>, skip: bool) -> Started {
    p.ov.ov = zeroed_overlapped();
    p.ov.flags = 0;
    let s = p.raw as SOCKET;
    let ov: *mut OVERLAPPED = &mut p.ov.ov;
    let mut bytes = 0u32;
    match &mut p.op {
        Op::Recv(_) | Op::RecvVectored(_) | Op::RecvFrom(_) | Op::RecvPooled => {
            let bufs: Vec<WSABUF> = match &mut p.op {
                Op::Recv(b) | Op::RecvFrom(b) => vec![spare(b)],
                Op::RecvVectored(bs) => bs.iter_mut().map(spare).collect(),
                // Zero bytes first: completes when data or the end is
                // there, pinning no buffer meanwhile.
                Op::RecvPooled => match &mut p.pool_buf {
                    Some(b) => vec![spare(b)],
                    None => vec![WSABUF {
                        len: 0,
                        buf: ptr::null_mut(),
                    }],
                },
                _ => unreachable!("matched above"),
            };
            let rc = if matches!(p.op, Op::RecvFrom(_)) {
                p.ov.addr_len = mem::size_of::<AddrBuf>() as i32;
                // SAFETY:
                // - `bufs` describes spare capacity of buffers the operation
                //   owns until its completion (heap memory: it does not move
                //   when the slab does); the WSABUF array itself may be
                //   transient for an overlapped call;
                // - flags, sender address, its length and the OVERLAPPED are
                //   in the boxed `Ov`, alive and unmoved until the packet is
                //   dequeued or the port leaks it.
                unsafe {
                    WSARecvFrom(
                        s,
                        bufs.as_ptr(),
                        bufs.len() as u32,
                        &mut bytes,
                        &mut p.ov.flags,
                        p.ov.addr.0.as_mut_ptr() as *mut SOCKADDR,
                        &mut p.ov.addr_len,
                        ov,
                        None,
                    )
                }
            } else {
                // SAFETY:
                // - as for WSARecvFrom above: owned heap buffers, transient
                //   WSABUF array, flags and OVERLAPPED in the boxed `Ov`.
                unsafe {
                    WSARecv(
                        s,
                        bufs.as_ptr(),
                        bufs.len() as u32,
                        &mut bytes,
                        &mut p.ov.flags,
                        ov,
                        None,
                    )
                }
            };
            wsa_started(rc, bytes, skip)
        }
        Op::Send(_) | Op::SendVectored(_) | Op::SendTo(..) => {
            let mut skip_bytes = p.sent;
            let bufs: Vec<WSABUF> = match &p.op {
                Op::Send(b) | Op::SendTo(b, _) => vec![rest(b, skip_bytes)],
                Op::SendVectored(bs) => bs
                    .iter()
                    .filter_map(|b| {
                        if skip_bytes >= b.len() {
                            skip_bytes -= b.len();
                            None
                        } else {
                            let w = rest(b, skip_bytes);
                            skip_bytes = 0;
                            Some(w)
                        }
                    })
                    .collect(),
                _ => unreachable!("matched above"),
            };
            let rc = if let Op::SendTo(_, to) = &p.op {
                p.ov.addr_len = write_sockaddr(to, &mut p.ov.addr);
                // SAFETY:
                // - `bufs` describes bytes of buffers the operation owns
                //   until its completion; the WSABUF array may be transient;
                // - the destination and the OVERLAPPED are in the boxed
                //   `Ov`, alive and unmoved until the packet is dequeued.
                unsafe {
                    WSASendTo(
                        s,
                        bufs.as_ptr(),
                        bufs.len() as u32,
                        &mut bytes,
                        0,
                        p.ov.addr.0.as_ptr() as *const SOCKADDR,
                        p.ov.addr_len,
                        ov,
                        None,
                    )
                }
            } else {
                // SAFETY:
                // - as for WSASendTo above, without a destination.
                unsafe { WSASend(s, bufs.as_ptr(), bufs.len() as u32, &mut bytes, 0, ov, None) }
            };
            wsa_started(rc, bytes, skip)
        }
        Op::Accept => {
            let domain = p.domain.unwrap_or(socket2::Domain::IPV4);
            let sock = match socket2::Socket::new(
                domain,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            ) {
                Ok(sock) => sock,
                Err(e) => return Started::Done(0, Some(e.raw_os_error().unwrap_or(0))),
            };
            let target = sock.as_raw_socket_usize() as SOCKET;
            p.accepted = Some(sock);
            // SAFETY:
            // - `s` is the listening socket and `target` a fresh socket the
            //   operation owns (`p.accepted`) until its completion;
            // - the address block and the OVERLAPPED are in the boxed `Ov`,
            //   alive and unmoved until the packet is dequeued; no data is
            //   received (length 0), so the block holds only the addresses.
            let ok = unsafe {
                AcceptEx(
                    s,
                    target,
                    p.ov.accept.as_mut_ptr() as *mut c_void,
                    0,
                    ACCEPT_ADDR as u32,
                    ACCEPT_ADDR as u32,
                    &mut bytes,
                    ov,
                )
            };
            wsa_started(if ok == TRUE { 0 } else { SOCKET_ERROR }, bytes, skip)
        }
        Op::Connect(addr) => {
            let connect_ex = match connect_ex(s) {
                Ok(f) => f,
                Err(e) => return Started::Done(0, Some(e.raw_os_error().unwrap_or(0))),
            };
            p.ov.addr_len = write_sockaddr(addr, &mut p.ov.addr);
            // SAFETY:
            // - `connect_ex` is the provider's ConnectEx for `s`, a bound,
            //   unconnected socket the port owns;
            // - the address and the OVERLAPPED are in the boxed `Ov`, alive
            //   and unmoved until the packet is dequeued; no data is sent.
            let ok = unsafe {
                connect_ex(
                    s,
                    p.ov.addr.0.as_ptr() as *const SOCKADDR,
                    p.ov.addr_len,
                    ptr::null(),
                    0,
                    &mut bytes,
                    ov,
                )
            };
            wsa_started(if ok == TRUE { 0 } else { SOCKET_ERROR }, bytes, skip)
        }
        Op::ReadAt(..) | Op::ReadVectoredAt(..) | Op::WriteAt(..) | Op::WriteVectoredAt(..) => {
            unreachable!("not started through the port")
        }
    }
}

type ConnectEx = unsafe extern "system" fn(
    SOCKET,
    *const SOCKADDR,
    i32,
    *const c_void,
    u32,
    *mut u32,
    *mut OVERLAPPED,
) -> i32;

/// ConnectEx is not exported: the socket's provider hands it out.
fn connect_ex(s: SOCKET) -> io::Result<ConnectEx> {
    let guid: GUID = WSAID_CONNECTEX;
    let mut f: LPFN_CONNECTEX = None;
    let mut bytes = 0u32;
    // SAFETY:
    // - input is the GUID (read only, with its size), output the function
    //   pointer slot (with its size); the call is not overlapped.
    let rc = unsafe {
        WSAIoctl(
            s,
            SIO_GET_EXTENSION_FUNCTION_POINTER,
            &guid as *const GUID as *const c_void,
            mem::size_of::<GUID>() as u32,
            &mut f as *mut LPFN_CONNECTEX as *mut c_void,
            mem::size_of::<LPFN_CONNECTEX>() as u32,
            &mut bytes,
            ptr::null_mut(),
            None,
        )
    };
    if rc == SOCKET_ERROR {
        return Err(wsa_error());
    }
    f.ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "connect: no ConnectEx"))
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 23;

/// Writes `addr` as a SOCKADDR_IN or SOCKADDR_IN6; returns its length.
fn write_sockaddr(addr: &SocketAddr, out: &mut AddrBuf) -> i32 {
    out.0 = [0; 128];
    let b = &mut out.0;
    b[2..4].copy_from_slice(&addr.port().to_be_bytes());
    match addr {
        SocketAddr::V4(a) => {
            b[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
            b[4..8].copy_from_slice(&a.ip().octets());
            16
        }
        SocketAddr::V6(a) => {
            b[0..2].copy_from_slice(&AF_INET6.to_ne_bytes());
            b[4..8].copy_from_slice(&a.flowinfo().to_ne_bytes());
            b[8..24].copy_from_slice(&a.ip().octets());
            b[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
            28
        }
    }
}

/// Reads a SOCKADDR_IN or SOCKADDR_IN6 the kernel wrote.
fn parse_sockaddr(buf: &AddrBuf, len: i32) -> Option<SocketAddr> {
    let b = &buf.0;
    let family = u16::from_ne_bytes([b[0], b[1]]);
    let port = u16::from_be_bytes([b[2], b[3]]);
    let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    match family {
        AF_INET if len >= 16 => Some(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(b[4], b[5], b[6], b[7]),
            port,
        ))),
        AF_INET6 if len >= 28 => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[8..24]);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                word(4),
                word(24),
            )))
        }
        _ => None,
    }
}

/// One synchronous ReadFile (`write == false`) or WriteFile at `offset`.
fn file_call(h: HANDLE, ptr: *mut u8, len: usize, offset: u64, write: bool) -> io::Result<usize> {
    let mut ov = zeroed_overlapped();
    ov.Anonymous.Anonymous = OVERLAPPED_0_0 {
        Offset: offset as u32,
        OffsetHigh: (offset >> 32) as u32,
    };
    let len = len.min(u32::MAX as usize) as u32;
    let mut n = 0u32;
    let ok = if write {
        // SAFETY:
        // - `ptr..ptr+len` are initialised bytes of a buffer the caller
        //   owns for the duration of the call; `ov` lives on this frame,
        //   which waits below for the I/O if it went asynchronous.
        unsafe { WriteFile(h, ptr, len, &mut n, &mut ov) }
    } else {
        // SAFETY:
        // - `ptr..ptr+len` is spare capacity of a buffer the caller owns
        //   for the duration of the call; `ov` as above.
        unsafe { ReadFile(h, ptr, len, &mut n, &mut ov) }
    };
    if ok == FALSE {
        // SAFETY:
        // - reads this thread's last error; no arguments.
        match unsafe { GetLastError() } {
            ERROR_HANDLE_EOF => return Ok(0),
            ERROR_IO_PENDING => {
                // A handle the user opened overlapped: wait for it here, so
                // `ov` and the buffer outlive the I/O.
                // SAFETY:
                // - `ov` is the OVERLAPPED of the I/O just started on `h`;
                //   waiting makes the call return only once it is finished.
                if unsafe { GetOverlappedResult(h, &ov, &mut n, TRUE) } == FALSE {
                    // SAFETY:
                    // - reads this thread's last error; no pointers.
                    let e = unsafe { GetLastError() };
                    if e == ERROR_HANDLE_EOF {
                        return Ok(0);
                    }
                    return Err(io::Error::from_raw_os_error(e as i32));
                }
            }
            e => return Err(io::Error::from_raw_os_error(e as i32)),
        }
    }
    Ok(n as usize)
}

/// A positional file operation, done at issue (see the module essay).
/// ReadFile and WriteFile on a synchronous handle move its position even
/// with an offset in the OVERLAPPED; the position is put back, so that it
/// never moves as far as the user can see (O8). Callers hold the port's
/// state lock, which keeps two operations of the port from interleaving
/// between the save and the restore.
fn file_io(h: HANDLE, op: &mut Op) -> io::Result<usize> {
    let mut pos = 0i64;
    // SAFETY:
    // - `h` is the open file handle of an associated handle; moving by 0
    //   from the current position only reads it into `pos`.
    if unsafe { SetFilePointerEx(h, 0, &mut pos, FILE_CURRENT) } == FALSE {
        return Err(io::Error::last_os_error());
    }
    let r = file_io_moving(h, op);
    // SAFETY:
    // - as above; puts the position back where it was.
    unsafe { SetFilePointerEx(h, pos, ptr::null_mut(), FILE_BEGIN) };
    r
}

fn file_io_moving(h: HANDLE, op: &mut Op) -> io::Result<usize> {
    let offset = op.offset().unwrap_or(0);
    match op {
        Op::ReadAt(b, _) => {
            let w = spare(b);
            let n = file_call(h, w.buf, w.len as usize, offset, false)?;
            advance(b, n);
            Ok(n)
        }
        Op::ReadVectoredAt(bs, _) => {
            let mut total = 0;
            for b in bs.iter_mut() {
                let w = spare(b);
                if w.len == 0 {
                    continue;
                }
                let n = file_call(h, w.buf, w.len as usize, offset + total as u64, false)?;
                advance(b, n);
                total += n;
                if n < w.len as usize {
                    break;
                }
            }
            Ok(total)
        }
        Op::WriteAt(..) | Op::WriteVectoredAt(..) => {
            let bufs: Vec<&Vec<u8>> = match op {
                Op::WriteAt(b, _) => vec![&*b],
                Op::WriteVectoredAt(bs, _) => bs.iter().collect(),
                _ => unreachable!("matched above"),
            };
            let mut total = 0usize;
            for b in bufs {
                let mut done = 0;
                while done < b.len() {
                    let ptr = b.as_ptr().wrapping_add(done) as *mut u8;
                    let n = file_call(h, ptr, b.len() - done, offset + total as u64, true)?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "write_at: the file took no bytes",
                        ));
                    }
                    done += n;
                    total += n;
                }
            }
            Ok(total)
        }
        _ => unreachable!("only positional operations reach file_io"),
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
        let raw = source.raw();
        let mut skip = false;
        if source.is_socket() {
            // SAFETY:
            // - `raw` is an open socket owned by `source`, which the port
            //   keeps until the handle is closed; `self.iocp` is our port.
            let r = unsafe { CreateIoCompletionPort(raw as HANDLE, self.iocp, IO_KEY, 0) };
            if r == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY:
            // - `raw` is the socket just associated; the call only sets a
            //   mode flag on it.
            skip =
                unsafe { SetFileCompletionNotificationModes(raw as HANDLE, SKIP_ON_SUCCESS) } != 0;
        }
        let mut st = lock(&self.state);
        let (index, gen) = st.handles.insert(Assoc {
            key,
            kind,
            source,
            raw,
            skip,
        });
        Ok(Handle {
            port: self.port,
            index,
            gen,
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
            return Self::reject(port_closed(), value, op);
        }
        if handle.port != self.port {
            return Self::reject(bad_handle(op.name()), value, op);
        }
        let mut st = lock(&self.state);
        let (key, kind, raw, skip) = match st.handles.get(handle.index, handle.gen) {
            Some(a) => (a.key, a.kind, a.raw, a.skip),
            None => return Self::reject(bad_handle(op.name()), value, op),
        };
        if let Some(err) = op.misfit(kind) {
            return Self::reject(err, value, op);
        }
        let mut domain = None;
        let mut bind_err = None;
        if let Some(a) = st.handles.get(handle.index, handle.gen) {
            match (&a.source.0, &op) {
                (SourceInner::TcpListener(l), Op::Accept) => {
                    domain = Some(match l.local_addr() {
                        Ok(SocketAddr::V6(_)) => socket2::Domain::IPV6,
                        _ => socket2::Domain::IPV4,
                    });
                }
                (SourceInner::TcpSocket(s), Op::Connect(to)) => {
                    // ConnectEx refuses an unbound socket.
                    let any: SocketAddr = match to {
                        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
                    };
                    if let Err(e) = s.bind(&any.into()) {
                        bind_err = e.raw_os_error();
                    }
                }
                _ => {}
            }
        }
        let mut p = Pending {
            handle,
            key,
            raw,
            value,
            multishot: opts.multishot,
            op,
            ov: Ov::new(),
            sent: 0,
            domain,
            accepted: None,
            pool_buf: None,
        };
        if kind == SourceKind::File {
            let r = file_io(raw as HANDLE, &mut p.op);
            let (i, g) = st.ops.insert(p);
            let p = st.ops.remove(i, g).expect("just inserted");
            let (bytes, err) = match r {
                Ok(n) => (n, None),
                Err(e) => (0, Some(e)),
            };
            let mut c = self.finish(p, (i, g), bytes, None, false);
            if let Some(e) = err {
                c.result = Err(e);
            }
            ready.push(c);
            return Ok(OpId {
                port: self.port,
                index: i,
                gen: g,
            });
        }
        let started = match bind_err {
            Some(e) => Started::Done(0, Some(e)),
            None => start(&mut p, skip),
        };
        let addr = p.ov.addr_of();
        let (i, g) = st.ops.insert(p);
        st.by_ov.insert(addr, (i, g));
        if let Started::Done(bytes, err) = started {
            self.settle(&mut st, (i, g), bytes, err, ready);
        }
        Ok(OpId {
            port: self.port,
            index: i,
            gen: g,
        })
    }

    fn cancel(&self, op: OpId, ready: &mut Ready<T>) -> io::Result<()> {
        let mut st = lock(&self.state);
        let p = match st.ops.get(op.index, op.gen) {
            Some(p) if op.port == self.port => p,
            _ => return Err(not_in_flight()),
        };
        if st.handles.get(p.handle.index, p.handle.gen).is_none() {
            // Its handle was closed: the abort is already on its way.
            return Ok(());
        }
        if st.parked.contains(&(op.index, op.gen)) {
            self.unpark(&mut st, |k, _| k == (op.index, op.gen), ready);
            return Ok(());
        }
        // SAFETY:
        // - `p.raw` is the open socket the operation runs on (closing a
        //   handle takes the state lock, held here) and `p.ov` its
        //   OVERLAPPED, alive while the operation is in the slab.
        let ok = unsafe { CancelIoEx(p.raw as HANDLE, &p.ov.ov) };
        // SAFETY:
        // - reads this thread's last error; no pointers.
        if ok == FALSE && unsafe { GetLastError() } != ERROR_NOT_FOUND {
            return Err(io::Error::last_os_error());
        }
        // ERROR_NOT_FOUND: it already finished; its packet is on the way.
        Ok(())
    }

    fn cancel_handle(&self, handle: Handle, ready: &mut Ready<T>) -> io::Result<usize> {
        if handle.port != self.port {
            return Err(bad_handle("cancel_handle"));
        }
        let mut st = lock(&self.state);
        let raw = match st.handles.get(handle.index, handle.gen) {
            Some(a) => a.raw,
            None => return Err(bad_handle("cancel_handle")),
        };
        let n = st
            .ops
            .iter_mut()
            .filter(|(_, p)| p.handle == handle)
            .count();
        if n == 0 {
            return Err(none_in_flight());
        }
        // SAFETY:
        // - `raw` is the open socket of an associated handle (the lock is
        //   held, so it cannot be closed meanwhile); no OVERLAPPED: all.
        unsafe { CancelIoEx(raw as HANDLE, ptr::null()) };
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
                .remove(handle.index, handle.gen)
                .ok_or_else(|| bad_handle("close"))?;
            if a.kind != SourceKind::File {
                // SAFETY:
                // - `a.raw` is still open (`a.source` is dropped below);
                //   cancelling everything makes the pending operations
                //   complete aborted before the socket goes (X2).
                unsafe { CancelIoEx(a.raw as HANDLE, ptr::null()) };
            }
            self.unpark(&mut st, |_, h| h == handle, ready);
            a
        };
        // closesocket / CloseHandle, outside the lock.
        drop(assoc);
        Ok(())
    }

    fn shutdown(&self, handle: Handle, how: Shutdown) -> io::Result<()> {
        let st = lock(&self.state);
        let a = st
            .handles
            .get(handle.index, handle.gen)
            .filter(|_| handle.port == self.port)
            .ok_or_else(|| bad_handle("shutdown"))?;
        match &a.source.0 {
            SourceInner::TcpStream(s) => s.shutdown(how),
            SourceInner::TcpSocket(s) => s.shutdown(how),
            SourceInner::TcpListener(s) => socket2::SockRef::from(s).shutdown(how),
            SourceInner::UdpSocket(s) => socket2::SockRef::from(s).shutdown(how),
            SourceInner::File(_) => Err(not_a_socket("shutdown")),
        }
    }

    fn addr(&self, handle: Handle, peer: bool) -> io::Result<SocketAddr> {
        let st = lock(&self.state);
        let a = st
            .handles
            .get(handle.index, handle.gen)
            .filter(|_| handle.port == self.port)
            .ok_or_else(|| bad_handle("addr"))?;
        let no_ip = || not_ip("addr");
        match (&a.source.0, peer) {
            (SourceInner::TcpListener(s), false) => s.local_addr(),
            (SourceInner::TcpStream(s), false) => s.local_addr(),
            (SourceInner::TcpStream(s), true) => s.peer_addr(),
            (SourceInner::UdpSocket(s), false) => s.local_addr(),
            (SourceInner::UdpSocket(s), true) => s.peer_addr(),
            (SourceInner::TcpSocket(s), false) => s.local_addr()?.as_socket().ok_or_else(no_ip),
            (SourceInner::TcpSocket(s), true) => s.peer_addr()?.as_socket().ok_or_else(no_ip),
            (SourceInner::TcpListener(_), true) => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "addr: a listener has no peer",
            )),
            (SourceInner::File(_), _) => Err(not_a_socket("addr")),
        }
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
                if a.kind != SourceKind::File {
                    // SAFETY:
                    // - `a.raw` is an open socket the port owns (the lock
                    //   is held); no OVERLAPPED: cancel all its I/O.
                    unsafe { CancelIoEx(a.raw as HANDLE, ptr::null()) };
                }
            }
        }
        self.wake();
        // The queue is closed, so nobody takes these completions: reap the
        // cancellations here and drop what was in flight now, values and
        // buffers, not when the last clone of the port goes (Q6).
        let deadline = Instant::now() + DRAIN;
        while lock(&self.state).ops.len() > 0 && Instant::now() < deadline {
            self.reap(50, &mut dropped);
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
}

impl<T: Send + 'static> Reactor<Completion<T>> for Driver<T> {
    fn flush(&self) {}

    fn wait(&self, timeout: Option<Duration>, out: &mut Ready<T>) {
        let ms = match timeout {
            None => u32::MAX,
            // Rounded up: a sub-millisecond timeout must not become a
            // zero-wait poll repeated in a busy loop.
            Some(d) => {
                let ms = d.as_micros().saturating_add(999) / 1000;
                ms.min(u128::from(u32::MAX - 1)) as u32
            }
        };
        self.reap(ms, out);
    }

    fn wake(&self) {
        // SAFETY:
        // - `self.iocp` is our open port; the packet carries no OVERLAPPED.
        unsafe { PostQueuedCompletionStatus(self.iocp, 0, WAKE_KEY, ptr::null()) };
    }
}

impl<T: Send + 'static> Driver<T> {
    /// Completes, aborted, the parked receives `pick` selects (by slab key
    /// and handle): cancelled, or their handle closed.
    fn unpark(
        &self,
        st: &mut State<T>,
        pick: impl Fn((u32, u32), Handle) -> bool,
        out: &mut Ready<T>,
    ) {
        let parked = mem::take(&mut st.parked);
        for k in parked {
            let h = match st.ops.get(k.0, k.1) {
                Some(p) => p.handle,
                None => continue,
            };
            if pick(k, h) {
                let p = st.ops.remove(k.0, k.1).expect("looked up above");
                st.by_ov.remove(&p.ov.addr_of());
                out.push(self.finish(p, k, 0, Some(crate::sys::error::ABORTED), true));
            } else {
                st.parked.push(k);
            }
        }
    }

    /// Gives pool buffers that came back to parked receives, oldest first.
    fn resume(&self, st: &mut State<T>, out: &mut Ready<T>) {
        while !st.parked.is_empty() {
            let k = st.parked[0];
            let buf = match lock(&self.pool).take() {
                Some(b) => b,
                None => return,
            };
            st.parked.remove(0);
            let skip = match st.ops.get_mut(k.0, k.1) {
                Some(p) => {
                    p.pool_buf = Some(buf);
                    let h = p.handle;
                    st.handles.get(h.index, h.gen).map_or(false, |a| a.skip)
                }
                None => {
                    let mut pool = lock(&self.pool);
                    pool.done();
                    pool.give(buf);
                    continue;
                }
            };
            let p = st.ops.get_mut(k.0, k.1).expect("looked up above");
            if let Started::Done(bytes, err) = start(p, skip) {
                self.settle(st, k, bytes, err, out);
            }
        }
    }

    /// Dequeues one batch of packets (waiting at most `ms`) and settles the
    /// operations they finish. Returns how many packets came.
    fn reap(&self, ms: u32, out: &mut Ready<T>) -> usize {
        let (entries, n) = dequeue_packets(self.iocp, ms);
        if n == 0 {
            return 0;
        }
        let mut st = lock(&self.state);
        for e in &entries[..n] {
            if e.lpCompletionKey == WAKE_KEY || e.lpOverlapped.is_null() {
                continue;
            }
            let key = match st.by_ov.get(&(e.lpOverlapped as usize)) {
                Some(k) => *k,
                None => continue,
            };
            let (bytes, err) = {
                let p = st.ops.get(key.0, key.1).expect("by_ov and ops agree");
                overlapped_result(p.raw, &p.ov.ov)
            };
            self.settle(&mut st, key, bytes, err, out);
        }
        n
    }
}

/// One GetQueuedCompletionStatusEx on `iocp`, waiting at most `ms`: the
/// packets that came, and how many (0 on WAIT_TIMEOUT, or when the port is
/// being torn down).
fn dequeue_packets(iocp: HANDLE, ms: u32) -> ([OVERLAPPED_ENTRY; BATCH], usize) {
    let empty = OVERLAPPED_ENTRY {
        lpCompletionKey: 0,
        lpOverlapped: ptr::null_mut(),
        Internal: 0,
        dwNumberOfBytesTransferred: 0,
    };
    let mut entries = [empty; BATCH];
    let mut n = 0u32;
    // SAFETY:
    // - `entries` has room for BATCH entries and `n` receives the count;
    //   `iocp` is the caller's open port; not alertable.
    let ok = unsafe {
        GetQueuedCompletionStatusEx(iocp, entries.as_mut_ptr(), BATCH as u32, &mut n, ms, FALSE)
    };
    if ok == FALSE {
        n = 0;
    }
    (entries, n as usize)
}

impl<T> Drop for Driver<T> {
    fn drop(&mut self) {
        let st = match self.state.get_mut() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        // Close every handle: what is in flight on them is aborted.
        for (_, a) in st.handles.iter_mut() {
            if a.kind != SourceKind::File {
                // SAFETY:
                // - `a.raw` is an open socket the port owns; no OVERLAPPED.
                unsafe { CancelIoEx(a.raw as HANDLE, ptr::null()) };
            }
        }
        drop(mem::replace(&mut st.handles, Slab::new()));
        for (i, g) in mem::take(&mut st.parked) {
            // Nothing of a parked receive is in the kernel.
            if let Some(p) = st.ops.remove(i, g) {
                st.by_ov.remove(&p.ov.addr_of());
                let _ = panic::catch_unwind(AssertUnwindSafe(|| drop(p)));
            }
        }
        // The kernel may still write into the buffers of what was in
        // flight: take each one's packet before freeing it (X3).
        let deadline = Instant::now() + DRAIN;
        while st.ops.len() > 0 && Instant::now() < deadline {
            let (entries, n) = dequeue_packets(self.iocp, 100);
            for e in &entries[..n] {
                if let Some((i, g)) = st.by_ov.remove(&(e.lpOverlapped as usize)) {
                    let p = st.ops.remove(i, g);
                    // A value's Drop panicking here would escape the
                    // port's own drop; close_port already reported one.
                    let _ = panic::catch_unwind(AssertUnwindSafe(|| drop(p)));
                }
            }
        }
        if st.ops.len() > 0 {
            log::error!(
                target: "cport",
                "{} operations still in the kernel when the port was dropped; their buffers \
                 are leaked rather than freed under the kernel",
                st.ops.len()
            );
            mem::forget(mem::replace(&mut st.ops, Slab::new()));
        }
        // SAFETY:
        // - `self.iocp` is our port, closed once, here.
        unsafe { CloseHandle(self.iocp) };
    }
}

impl<T> fmt::Debug for Driver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("windows::Driver")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_sockaddr, write_sockaddr, AddrBuf, Pool};
    use std::net::SocketAddr;

    #[test]
    fn sockaddr_bytes_round_trip_for_both_families() {
        // WSASendTo and ConnectEx read what write_sockaddr makes, and
        // WSARecvFrom's sender goes through parse_sockaddr: a byte in the
        // wrong place sends to, or reports, the wrong peer.
        for text in ["127.0.0.1:5353", "[::1]:40000", "[fe80::1%7]:9"] {
            let addr: SocketAddr = text.parse().unwrap();
            let mut buf = AddrBuf([0xAA; 128]);
            let len = write_sockaddr(&addr, &mut buf);
            assert_eq!(len, if addr.is_ipv4() { 16 } else { 28 }, "{text}");
            assert_eq!(parse_sockaddr(&buf, len), Some(addr), "{text}");
            assert_eq!(parse_sockaddr(&buf, len - 1), None, "{text}: truncated");
        }
    }

    #[test]
    fn pool_runs_dry_only_while_buffers_are_in_the_kernel() {
        let mut pool = Pool {
            size: 64,
            count: 2,
            in_kernel: 0,
            free: Vec::new(),
        };
        let a = pool.take().expect("first");
        let _b = pool.take().expect("second");
        assert!(pool.take().is_none(), "two in the kernel: dry");
        pool.done();
        let c = pool.take().expect("a receive finished: one is free again");
        assert_eq!(c.capacity(), 64);
        // Given back, a right-sized buffer is reused; a wrong one dropped.
        pool.give(a);
        pool.give(Vec::with_capacity(3));
        assert_eq!(pool.free.len(), 1);
    }
}
