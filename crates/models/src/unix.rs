//! What the Unix stand-ins of the readiness models share: the wake-up
//! socket their waits include, and `poll(2)`.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use crate::Stop;

/// The read end of a socket pair that receives a byte when `stop` is set:
/// the wake-up a `select` or `poll` loop waits on with its sockets.
pub(crate) fn stop_socket(stop: &Stop) -> io::Result<UnixStream> {
    let (rx, tx) = UnixStream::pair()?;
    rx.set_nonblocking(true)?;
    tx.set_nonblocking(true)?;
    stop.on_stop(move || {
        let _ = (&tx).write(&[1]);
    });
    Ok(rx)
}

/// Reads and discards whatever is waiting on a non-blocking wake socket.
pub(crate) fn drain(mut wake: impl Read) {
    let mut buf = [0u8; 64];
    while matches!(wake.read(&mut buf), Ok(n) if n > 0) {}
}

/// `poll(2)` on `fds`, waiting at most `timeout_ms` (-1: no limit).
/// An interrupted call returns `Ok(0)`, as a timeout would.
pub(crate) fn poll_fds(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a live, exclusively borrowed slice of `fds.len()`
    // pollfd structures; poll(2) writes only their `revents` fields.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// A `pollfd` waiting for `events` on `fd`.
pub(crate) fn pollfd(fd: std::os::fd::RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}
