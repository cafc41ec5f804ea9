//! Every error the port makes itself, in one place, so that each backend
//! words a refusal the same way and the "aborted" code is defined once.

use std::io;

use crate::completion::{Payload, Rejected};

/// The raw OS error of an aborted (cancelled) operation.
#[cfg(unix)]
pub(crate) const ABORTED: i32 = libc::ECANCELED;
/// The raw OS error of an aborted (cancelled) operation:
/// ERROR_OPERATION_ABORTED.
#[cfg(windows)]
pub(crate) const ABORTED: i32 = 995;

/// The connection failures a stream keeps ([`Broken`]), the reset first: a
/// reset, a connection aborted by the stack, a keepalive or retransmission
/// timeout, an unreachable peer.
#[cfg(unix)]
const CONNECTION_FAILURES: [i32; 5] = [
    libc::ECONNRESET,
    libc::ECONNABORTED,
    libc::ETIMEDOUT,
    libc::EHOSTUNREACH,
    libc::ENETUNREACH,
];
/// The connection failures a stream keeps ([`Broken`]), the reset first:
/// WSAECONNRESET, WSAECONNABORTED, WSAETIMEDOUT, WSAEHOSTUNREACH,
/// WSAENETUNREACH, WSAENETRESET.
#[cfg(windows)]
const CONNECTION_FAILURES: [i32; 6] = [10054, 10053, 10060, 10065, 10051, 10052];

/// What a send on a stream that can send no more fails with: EPIPE;
/// WSAESHUTDOWN on Windows (and under wine, which maps EPIPE to it).
#[cfg(unix)]
const BROKEN_PIPE: i32 = libc::EPIPE;
#[cfg(windows)]
const BROKEN_PIPE: i32 = 10058;

/// Whether `err` is the "operation aborted" outcome of a cancelled
/// operation or of one pending when its handle was closed (Windows:
/// ERROR_OPERATION_ABORTED, 995; Linux: `ECANCELED`).
pub fn is_aborted(err: &io::Error) -> bool {
    err.raw_os_error() == Some(ABORTED)
}

/// The "operation aborted" error: the raw OS code, so that it reads the same
/// as the native port's.
pub(crate) fn aborted() -> io::Error {
    io::Error::from_raw_os_error(ABORTED)
}

/// A call into a port from a multishot value's `Clone`, which the port
/// runs under one of its locks: waiting for that lock would never end.
pub(crate) fn in_clone(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::WouldBlock,
        format!(
            "{what}: called from a multishot value's Clone, which the port runs while it holds \
             a lock this call needs; make the call from the completion's handler instead"
        ),
    )
}

pub(crate) fn port_closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the completion port is closed")
}

pub(crate) fn bad_handle(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}: handle is not associated with this port (closed, or from another port)"),
    )
}

/// `cancel` of an operation that already completed (or never existed).
pub(crate) fn not_in_flight() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "cancel: the operation is not in flight",
    )
}

/// `cancel_handle` on a handle with nothing pending.
pub(crate) fn none_in_flight() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "cancel_handle: no operation in flight on the handle",
    )
}

/// A receive or read given a buffer with no spare capacity.
pub(crate) fn no_room<T>(what: &str, payload: Payload, value: T) -> Rejected<T> {
    Rejected::new(
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}: the buffer has no spare capacity to receive into"),
        ),
        value,
        payload,
    )
}

/// An offset beyond what the kernels take (both take a signed offset).
pub(crate) fn offset_too_large(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}: offset beyond i64::MAX"),
    )
}

/// An operation that does not fit its handle's kind (an accept on a
/// stream, a read at an offset on a socket).
pub(crate) fn misfit(what: &str, kind: impl std::fmt::Debug) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}: not supported on a {kind:?} handle"),
    )
}

/// A socket call (shutdown, addresses) on a file handle.
pub(crate) fn not_a_socket(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: not a socket"))
}

/// An address that is not IPv4 or IPv6.
pub(crate) fn not_ip(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}: not an IP socket"),
    )
}

/// What a TCP stream remembers of its failure (SEMANTICS O5). Linux reports
/// a reset once — to the first call that looks — and then reads end of file
/// (0 bytes) and fails sends with EPIPE; Windows keeps failing every
/// operation with WSAECONNRESET (wine, on Linux sockets, does not). The port
/// keeps the first such error of a stream and gives it to every operation
/// that completes after it, so a reset is never mistaken for a graceful
/// close.
#[derive(Debug, Default)]
pub(crate) struct Broken {
    /// The raw errno every later operation fails with.
    error: Option<i32>,
    /// The user shut the sending side down: an EPIPE is then theirs, not
    /// the connection's failure.
    shut_write: bool,
}

impl Broken {
    /// `shutdown(how)` was called on the stream.
    pub(crate) fn shut(&mut self, how: std::net::Shutdown) {
        if how != std::net::Shutdown::Read {
            self.shut_write = true;
        }
    }

    /// The result a stream operation reports: a failure of the connection
    /// is recorded, and end of file (a receive's 0 bytes) or EPIPE after
    /// one become that failure. Data received before it stays data.
    pub(crate) fn settle(&mut self, receive: bool, r: io::Result<usize>) -> io::Result<usize> {
        match r {
            Ok(0) if receive => match self.error {
                Some(e) => Err(io::Error::from_raw_os_error(e)),
                None => Ok(0),
            },
            Err(e) => match e.raw_os_error() {
                Some(code) if CONNECTION_FAILURES.contains(&code) => Err(
                    io::Error::from_raw_os_error(*self.error.get_or_insert(code)),
                ),
                // A send on a stream whose failure another call consumed:
                // the connection is gone, though the code is lost. Reported
                // as a reset, the one failure that leaves a stream so.
                Some(code) if code == BROKEN_PIPE && !self.shut_write => {
                    let reset = CONNECTION_FAILURES[0];
                    Err(io::Error::from_raw_os_error(
                        *self.error.get_or_insert(reset),
                    ))
                }
                _ => Err(e),
            },
            r => r,
        }
    }
}
