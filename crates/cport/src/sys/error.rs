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
