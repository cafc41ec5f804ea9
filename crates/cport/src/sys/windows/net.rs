//! Sockets and addresses: socket2's view of every associated socket, the
//! Winsock calls that are not an operation's issue (cancellation, the
//! accept and connect contexts, ConnectEx's lookup, the outcome of a
//! finished operation), and every address conversion, through socket2's
//! `SockAddr`.

use std::ffi::c_void;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::windows::io::AsRawSocket;
use std::ptr;

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use windows_sys::core::GUID;
use windows_sys::Win32::Foundation::{GetLastError, FALSE, HANDLE};
use windows_sys::Win32::Networking::WinSock::{
    setsockopt, WSAGetLastError, WSAGetOverlappedResult, WSAIoctl, AF_INET, AF_INET6,
    LPFN_CONNECTEX, SIO_GET_EXTENSION_FUNCTION_POINTER, SOCKADDR, SOCKADDR_IN, SOCKADDR_IN6,
    SOCKADDR_STORAGE, SOCKET, SOCKET_ERROR, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT,
    SO_UPDATE_CONNECT_CONTEXT, WSAENOTSOCK, WSAID_CONNECTEX,
};
use windows_sys::Win32::Storage::FileSystem::SetFileCompletionNotificationModes;
use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};

use crate::sys::{Source, SourceInner};

/// FILE_SKIP_COMPLETION_PORT_ON_SUCCESS (winbase.h).
const SKIP_ON_SUCCESS: u8 = 1;
/// ERROR_NOT_FOUND: CancelIoEx found nothing left to cancel.
const ERROR_NOT_FOUND: u32 = 1168;

/// socket2's view of `source`, or `None` for a file.
pub(super) fn sock_ref(source: &Source) -> Option<SockRef<'_>> {
    match &source.0 {
        SourceInner::TcpListener(s) => Some(SockRef::from(s)),
        SourceInner::TcpStream(s) => Some(SockRef::from(s)),
        SourceInner::TcpSocket(s) => Some(SockRef::from(s)),
        SourceInner::UdpSocket(s) => Some(SockRef::from(s)),
        SourceInner::File(_) => None,
    }
}

/// The SOCKET Winsock calls take. std and socket2 name it `RawSocket`
/// (u64), windows-sys `SOCKET` (usize): this is the one place a socket
/// becomes that integer.
pub(super) fn raw(s: &Socket) -> SOCKET {
    s.as_raw_socket() as SOCKET
}

/// The same socket as the HANDLE the I/O manager's calls take
/// (association, CancelIoEx, notification modes).
pub(super) fn as_handle(s: SOCKET) -> HANDLE {
    s as HANDLE
}

/// Sets FILE_SKIP_COMPLETION_PORT_ON_SUCCESS on an associated socket: an
/// operation that succeeds at issue then queues no packet. Whether it took.
pub(super) fn skip_on_success(s: SOCKET) -> bool {
    // SAFETY:
    // - the call only sets a mode flag on the handle; no pointer is passed.
    unsafe { SetFileCompletionNotificationModes(as_handle(s), SKIP_ON_SUCCESS) != 0 }
}

/// CancelIoEx with no OVERLAPPED: every operation in flight on `s`
/// completes, aborted unless it had already finished.
pub(super) fn cancel_all(s: SOCKET) {
    // SAFETY:
    // - no OVERLAPPED is passed; a socket that is no longer open only makes
    //   the call fail.
    unsafe { CancelIoEx(as_handle(s), ptr::null()) };
}

/// CancelIoEx for one operation. `Ok` also when it had already finished
/// (ERROR_NOT_FOUND): its packet is on the way.
pub(super) fn cancel(s: SOCKET, ov: *const OVERLAPPED) -> io::Result<()> {
    // SAFETY:
    // - CancelIoEx uses `ov` only as a key to find the I/O issued with it;
    //   it is the OVERLAPPED of an operation in the port's slab, which
    //   stays allocated until its packet is dequeued.
    let ok = unsafe { CancelIoEx(as_handle(s), ov) };
    // SAFETY:
    // - reads this thread's last error; no pointers.
    if ok == FALSE && unsafe { GetLastError() } != ERROR_NOT_FOUND {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// This thread's last Winsock error.
pub(super) fn last_error() -> i32 {
    // SAFETY:
    // - reads this thread's last Winsock error; no arguments.
    unsafe { WSAGetLastError() }
}

/// The outcome of a socket operation whose packet was dequeued: bytes, and
/// the error if it failed. Winsock's own view first, so that errors read as
/// WSAECONNRESET, WSAECONNREFUSED, ... (which `io::ErrorKind` knows) rather
/// than the kernel's ERROR_NETNAME_DELETED and the like.
pub(super) fn overlapped_result(s: SOCKET, ov: &OVERLAPPED) -> (usize, Option<i32>) {
    let mut bytes = 0u32;
    let mut flags = 0u32;
    // SAFETY:
    // - `ov` is borrowed for the call, and its operation is finished (its
    //   packet was dequeued), so the call only reads it; not waiting, so
    //   nothing blocks;
    // - `bytes` and `flags` are live locals.
    let ok = unsafe { WSAGetOverlappedResult(s, ov, &mut bytes, FALSE, &mut flags) };
    if ok != FALSE {
        return (bytes as usize, None);
    }
    let e = last_error();
    if e != WSAENOTSOCK {
        return (bytes as usize, Some(e));
    }
    // The socket was closed meanwhile: the kernel's status still says
    // whether the operation won its race with the close (X1).
    // SAFETY:
    // - as above; without waiting, GetOverlappedResult only reads `ov`.
    let ok = unsafe { GetOverlappedResult(as_handle(s), ov, &mut bytes, FALSE) };
    if ok != FALSE {
        (bytes as usize, None)
    } else {
        // SAFETY:
        // - reads this thread's last error; no pointers.
        (bytes as usize, Some(unsafe { GetLastError() } as i32))
    }
}

/// A listener's address family, for the sockets AcceptEx accepts into.
pub(super) fn family(listener: &SockRef<'_>) -> Domain {
    match listener.local_addr() {
        Ok(a) if a.is_ipv6() => Domain::IPV6,
        _ => Domain::IPV4,
    }
}

/// A fresh socket for AcceptEx to accept into.
pub(super) fn accept_socket(domain: Domain) -> io::Result<Socket> {
    Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
}

/// Makes the socket AcceptEx filled a full connection of `listener`
/// (SO_UPDATE_ACCEPT_CONTEXT), as a std stream with its peer's address.
pub(super) fn accepted(sock: Socket, listener: SOCKET) -> io::Result<(TcpStream, SocketAddr)> {
    // SAFETY:
    // - `sock` is the open socket AcceptEx accepted into, and `listener`
    //   the listening socket of the accept's handle;
    // - the option value points at `listener`, a live SOCKET, with its size.
    let r = unsafe {
        setsockopt(
            raw(&sock),
            SOL_SOCKET,
            SO_UPDATE_ACCEPT_CONTEXT,
            &listener as *const SOCKET as *const u8,
            mem::size_of::<SOCKET>() as i32,
        )
    };
    if r == SOCKET_ERROR {
        return Err(io::Error::from_raw_os_error(last_error()));
    }
    let stream = TcpStream::from(sock);
    let peer = stream.peer_addr()?;
    Ok((stream, peer))
}

/// SO_UPDATE_CONNECT_CONTEXT on a socket ConnectEx connected, so that
/// shutdown, getpeername and the like work on it.
pub(super) fn connected(s: SOCKET) -> io::Result<()> {
    // SAFETY:
    // - SO_UPDATE_CONNECT_CONTEXT takes no option value: null, length 0.
    let r = unsafe { setsockopt(s, SOL_SOCKET, SO_UPDATE_CONNECT_CONTEXT, ptr::null(), 0) };
    if r == SOCKET_ERROR {
        return Err(io::Error::from_raw_os_error(last_error()));
    }
    Ok(())
}

/// Binds `s` to the wildcard address of `to`'s family: ConnectEx refuses
/// an unbound socket.
pub(super) fn bind_any(s: &SockRef<'_>, to: &SocketAddr) -> io::Result<()> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    s.bind(&SockAddr::from(any))
}

/// ConnectEx, as the socket's provider hands it out (it is not exported).
pub(super) type ConnectEx = unsafe extern "system" fn(
    SOCKET,
    *const SOCKADDR,
    i32,
    *const c_void,
    u32,
    *mut u32,
    *mut OVERLAPPED,
) -> i32;

/// Looks ConnectEx up for `s`.
pub(super) fn connect_ex(s: SOCKET) -> io::Result<ConnectEx> {
    let guid: GUID = WSAID_CONNECTEX;
    let mut f: LPFN_CONNECTEX = None;
    let mut bytes = 0u32;
    // SAFETY:
    // - input is the GUID (read only, with its size), output the function
    //   pointer slot (with its size), both live locals; the call is not
    //   overlapped.
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
        return Err(io::Error::from_raw_os_error(last_error()));
    }
    f.ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "connect: no ConnectEx"))
}

/// Room for a socket address the kernel writes (WSARecvFrom's sender).
pub(super) fn storage() -> SOCKADDR_STORAGE {
    SOCKADDR_STORAGE {
        ss_family: 0,
        __ss_pad1: [0; 6],
        __ss_align: 0,
        __ss_pad2: [0; 112],
    }
}

/// `addr` in the kernel's layout (SOCKADDR_IN or SOCKADDR_IN6), and its
/// length, for WSASendTo and ConnectEx.
pub(super) fn to_storage(addr: SocketAddr) -> (SOCKADDR_STORAGE, i32) {
    let a = SockAddr::from(addr);
    let len = a.len();
    (a.as_storage(), len)
}

/// The address the kernel wrote into `storage`, `len` bytes of it, if it
/// is a whole IPv4 or IPv6 address.
pub(super) fn from_storage(storage: &SOCKADDR_STORAGE, len: i32) -> Option<SocketAddr> {
    // socket2 reads an address by its family alone: a length too short for
    // the family is refused here, before it is given one.
    let need = match storage.ss_family {
        AF_INET => mem::size_of::<SOCKADDR_IN>(),
        AF_INET6 => mem::size_of::<SOCKADDR_IN6>(),
        _ => return None,
    };
    let len = usize::try_from(len).ok()?;
    if len < need {
        return None;
    }
    let len = len.min(mem::size_of::<SOCKADDR_STORAGE>()) as i32;
    // SAFETY:
    // - the family is AF_INET or AF_INET6 and the first `len` bytes, at
    //   least that family's SOCKADDR_IN or SOCKADDR_IN6, are what the
    //   kernel wrote; the rest of the storage is initialised too (made by
    //   `storage()`), and `len` does not exceed it.
    let a = unsafe { SockAddr::new(*storage, len) };
    a.as_socket()
}
