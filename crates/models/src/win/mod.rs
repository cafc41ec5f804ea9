//! What the Windows models share: Winsock errors, event objects and the
//! wake-up socket a `select` or `WSAPoll` loop includes in its wait.
//!
//! Every `unsafe` block of the models crate on Windows is in this folder,
//! each with its `// SAFETY:` comment; the Unix stand-ins need none but
//! `poll(2)`'s and `eventfd(2)`'s.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::windows::io::AsRawSocket;

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::Networking::WinSock::{
    WSACloseEvent, WSACreateEvent, WSAGetLastError, WSAResetEvent, WSASetEvent, SOCKET,
};
use windows_sys::Win32::System::IO::CancelIoEx;

use crate::Stop;

/// Events one thread can wait on: WSA_MAXIMUM_WAIT_EVENTS, the limit of
/// `WSAWaitForMultipleEvents` (and of `WaitForMultipleObjects`).
pub(crate) const MAXIMUM_WAIT_EVENTS: usize = 64;

/// The `SOCKET` of a standard-library socket.
pub(crate) fn socket(s: &impl AsRawSocket) -> SOCKET {
    s.as_raw_socket() as SOCKET
}

/// The calling thread's last Winsock error (`WSAGetLastError`).
pub(crate) fn wsa_error() -> io::Error {
    // SAFETY: WSAGetLastError reads the calling thread's error slot; it
    // takes no arguments.
    io::Error::from_raw_os_error(unsafe { WSAGetLastError() })
}

/// Cancels every operation pending on `s`'s socket, whichever thread
/// issued it: a thread blocked in `recv` on it returns with an error.
/// Windows' `shutdown` does not end a blocked `recv` (it only refuses the
/// calls that follow), so a model whose threads block in `recv` needs
/// this to stop them. `s` may be a `try_clone` of the socket the thread
/// reads: the two handles name one socket, and the cancel is by socket.
pub(crate) fn cancel_io(s: &impl AsRawSocket) {
    // SAFETY: CancelIoEx takes the socket's handle, open while `s` lives,
    // and a null OVERLAPPED (every operation on it); it writes nothing
    // the caller owns. Failure (nothing pending) is harmless.
    unsafe { CancelIoEx(socket(s) as HANDLE, std::ptr::null()) };
}

/// A manual-reset event object (`WSACreateEvent`), closed on drop.
#[derive(Debug)]
pub(crate) struct WsaEvent(HANDLE);

// SAFETY: an event handle may be set, reset, waited on and closed from
// any thread; the handle is owned here and closed once, in `drop`.
unsafe impl Send for WsaEvent {}
// SAFETY: as above: `set`, `reset` and waits through `&self` are the
// kernel object's own thread-safe operations.
unsafe impl Sync for WsaEvent {}

impl WsaEvent {
    /// A new event object, not set.
    pub(crate) fn new() -> io::Result<WsaEvent> {
        // SAFETY: WSACreateEvent takes no arguments and returns a new
        // handle, or 0 (WSA_INVALID_EVENT) with the error in
        // WSAGetLastError.
        let h = unsafe { WSACreateEvent() };
        if h == 0 {
            return Err(wsa_error());
        }
        Ok(WsaEvent(h))
    }

    /// `WSASetEvent`.
    pub(crate) fn set(&self) {
        // SAFETY: `self.0` is an open event handle owned by `self`.
        unsafe { WSASetEvent(self.0) };
    }

    /// `WSAResetEvent`.
    pub(crate) fn reset(&self) {
        // SAFETY: `self.0` is an open event handle owned by `self`.
        unsafe { WSAResetEvent(self.0) };
    }

    /// The handle, for `WSAEventSelect`, an `OVERLAPPED`'s `hEvent` or a
    /// wait; valid while `self` lives.
    pub(crate) fn handle(&self) -> HANDLE {
        self.0
    }
}

impl Drop for WsaEvent {
    fn drop(&mut self) {
        // SAFETY: `self.0` is open and owned here; nothing uses it after
        // this.
        unsafe { WSACloseEvent(self.0) };
    }
}

/// A non-blocking UDP socket on 127.0.0.1, connected to itself, that
/// receives a datagram when `stop` is set: the wake-up a `select` or
/// `WSAPoll` loop includes with its sockets (Windows has no socket pair).
pub(crate) fn stop_socket(stop: &Stop) -> io::Result<UdpSocket> {
    let (rx, tx) = self_socket()?;
    stop.on_stop(move || {
        let _ = tx.send(&[1]);
    });
    Ok(rx)
}

/// A non-blocking UDP socket on 127.0.0.1 connected to itself, and a
/// handle to it for the sending side.
pub(crate) fn self_socket() -> io::Result<(UdpSocket, UdpSocket)> {
    let rx = UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    rx.connect(rx.local_addr()?)?;
    rx.set_nonblocking(true)?;
    let tx = rx.try_clone()?;
    Ok((rx, tx))
}

/// Receives and discards every datagram waiting on a wake socket.
pub(crate) fn drain(wake: &UdpSocket) {
    let mut buf = [0u8; 64];
    while wake.recv(&mut buf).is_ok() {}
}
