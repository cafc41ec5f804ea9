//! `WSAPoll`: one thread, one array of `WSAPOLLFD`s rebuilt on every pass,
//! as the Unix form does with `poll(2)`.
//!
//! The array holds the wake socket, the listener and every connection:
//!
//! | `poll(2)` (Unix form) | `WSAPoll` (here) |
//! |---|---|
//! | `struct pollfd { fd, events, revents }` | `WSAPOLLFD { fd: SOCKET, events, revents }` |
//! | `poll(fds, n, -1)` | `WSAPoll(fds, n, -1)`, or a short timeout while a hung-up connection waits (below) |
//! | `POLLIN` on the listener: `accept` | `POLLRDNORM`: `accept` until WSAEWOULDBLOCK (`accept_ready`) |
//! | `POLLIN` / `POLLOUT` on a connection | `POLLRDNORM` / `POLLWRNORM` (`interest`), then `Echo::pump` |
//! | a socket pair's end as the wake | a UDP socket on 127.0.0.1 connected to itself (`win::stop_socket`): Windows has no socket pair |
//!
//! Like `poll(2)`, and unlike `select`, there is no limit of 64: one
//! thread holds every connection; but every wait hands the kernel the
//! whole array and every wake-up scans it, so the cost grows with the
//! connections held, not with the ones that are active.
//!
//! WSAPoll's documented quirks, and what is done about each:
//!
//! - **Only some flags may be asked for.** `events` may hold only
//!   POLLRDNORM, POLLRDBAND and POLLWRNORM (POLLIN and POLLOUT are
//!   combinations of them); POLLPRI is "not supported by the Microsoft
//!   Winsock provider", and asking for it, or for POLLERR, POLLHUP or
//!   POLLNVAL, makes the whole call fail with WSAEINVAL. `interest`
//!   asks for POLLRDNORM and POLLWRNORM only. Not POLLIN either: it
//!   includes POLLRDBAND, out-of-band (TCP urgent) data, which this echo
//!   of the normal stream never reads (`recv(MSG_OOB)`), so an urgent
//!   byte would be reported on every pass: a spin. (Wine's WSAPoll does
//!   not refuse unsupported flags; Windows does.)
//! - **POLLHUP and POLLERR are reported whether asked for or not**, and
//!   POLLHUP means a peer's orderly close (FIN) as well as a reset: Windows
//!   has no POLLRDHUP, and may report a closed connection with POLLHUP
//!   alone, without POLLRDNORM. So any `revents` at all is a reason to
//!   pump: `recv` then tells the end of stream (0) from a reset (an
//!   error), as the Unix form does. (Under wine, POLLHUP comes once the
//!   data ahead of the FIN has been read, alone or with POLLWRNORM, on a
//!   socket that asked for POLLWRNORM only: both were seen in its tests.)
//! - **POLLHUP stays set**, asked for or not, once the peer has closed
//!   its side. A half-closed connection whose echo is still pending (the
//!   peer has not yet read it, or never reads it) wants only to write; in
//!   the array it would make every `WSAPoll` return at once: a spin until
//!   the peer reads. Such a connection, reported hung up with nothing able
//!   to move, is *parked*: it leaves the array, and while any is parked
//!   the wait has a timeout of [`HUNG_RETRY_MS`], after which (and after
//!   any other wake-up) each parked connection tries its `send` again
//!   until its echo is written and it ends. That timeout is the only one
//!   in the loop, never needed for the stop (the wake socket ends the wait
//!   at once); Windows offers no way to wait for room to send on a socket
//!   whose peer has closed without also being told, at once and on every
//!   call, that it has closed. Under wine, a half-closed connection whose
//!   echo could not be sent was parked and retried about every 10 ms
//!   until its peer read, where it would otherwise have spun.
//! - **A negative `fd`** is ignored by Windows (its `revents` set to 0);
//!   wine's WSAPoll reports it POLLNVAL instead (read in its source). Parked connections are therefore
//!   left out of the array rather than given a negative `fd`.
//! - **WSAPoll does not report a failed `connect`** (before Windows 10
//!   2004; the reason curl and libuv avoid it): this server makes no
//!   `connect`, so it does not matter here.
//! - An empty array is an error, not a sleep (wine: WSAEINVAL): the wake
//!   socket and the listener are always in the array.
//!
//! Buffers: every `recv` and `send` is synchronous on a non-blocking
//! socket; no operation outlives its call, so each connection's buffer is
//! freed with the connection and nothing else.
//!
//! Stopping: [`Stop::stop`] sends a datagram to the wake socket; the wait
//! returns, the loop sees the flag, drops every connection (closing it)
//! and counts what was still open as closed.

use std::io;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use windows_sys::Win32::Networking::WinSock::{
    WSAPoll, POLLHUP, POLLRDNORM, POLLWRNORM, SOCKET, SOCKET_ERROR, WSAPOLLFD, WSAPOLL_EVENT_FLAGS,
};

use crate::win::{drain, socket, stop_socket, wsa_error};
use crate::{accept_ready, keep, Echo, Pumped, Stats, Stop};

/// Milliseconds between retries of the connections parked because their
/// peer has closed while their echo waits for room to send (see the
/// module docs): the wait's timeout while any is parked, and only then.
pub const HUNG_RETRY_MS: i32 = 10;

/// Runs the echo server until `stop` is set; see the [crate] docs.
pub fn serve(
    listener: TcpListener,
    stop: Stop,
    stats: Arc<Stats>,
    buffer: usize,
) -> io::Result<()> {
    crate::check_buffer(buffer)?;
    let _me = stats.thread();
    listener.set_nonblocking(true)?;
    let wake = stop_socket(&stop)?;
    let mut conns: Vec<Echo> = Vec::new();
    // Hung up (POLLHUP) with an echo that could not move: out of the
    // array, retried on every pass (see the module docs).
    let mut parked: Vec<Echo> = Vec::new();
    let mut fds: Vec<WSAPOLLFD> = Vec::new();
    while !stop.is_stopped() {
        fds.clear();
        fds.push(pollfd(socket(&wake), POLLRDNORM));
        fds.push(pollfd(socket(&listener), POLLRDNORM));
        fds.extend(conns.iter().map(|c| pollfd(socket(&c.stream), interest(c))));
        let timeout = if parked.is_empty() { -1 } else { HUNG_RETRY_MS };
        wsa_poll(&mut fds, timeout)?;
        if fds[0].revents != 0 {
            drain(&wake);
        }
        parked.retain_mut(|c| keep(c.pump(&stats), &stats));
        // Connections next, while their indices still match `fds`: from
        // the last, so that `swap_remove` moves only one already seen.
        for i in (0..conns.len()).rev() {
            let revents = fds[2 + i].revents;
            if revents == 0 {
                continue;
            }
            let r = conns[i].pump(&stats);
            let hung = revents & POLLHUP != 0 && matches!(r, Ok(Pumped::Idle));
            if !keep(r, &stats) {
                conns.swap_remove(i);
            } else if hung {
                parked.push(conns.swap_remove(i));
            }
        }
        if fds[1].revents != 0 {
            // Level-triggered: connections left queued by an accept error
            // are reported again by the next WSAPoll.
            let _ = accept_ready(&listener, |s| match Echo::new(s, buffer) {
                Ok(e) => {
                    stats.opened();
                    conns.push(e);
                }
                Err(_) => {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    drop(conns);
    drop(parked);
    stats.end_all();
    Ok(())
}

/// The `WSAPoll` events a connection waits for: POLLRDNORM while it wants
/// to read, POLLWRNORM while it has an echo to write; never a flag
/// Windows refuses (see the module docs). Never empty for a connection
/// still served: one that wants neither has ended.
pub(crate) fn interest(c: &Echo) -> WSAPOLL_EVENT_FLAGS {
    let mut ev = 0;
    if c.wants_read() {
        ev |= POLLRDNORM;
    }
    if c.wants_write() {
        ev |= POLLWRNORM;
    }
    ev
}

fn pollfd(fd: SOCKET, events: WSAPOLL_EVENT_FLAGS) -> WSAPOLLFD {
    WSAPOLLFD {
        fd,
        events,
        revents: 0,
    }
}

/// `WSAPoll` on every entry of `fds`, waiting up to `timeout`
/// milliseconds (-1: until one is ready).
fn wsa_poll(fds: &mut [WSAPOLLFD], timeout: i32) -> io::Result<usize> {
    let n = u32::try_from(fds.len()).map_err(|_| io::Error::other("WSAPoll: too many sockets"))?;
    // SAFETY: `fds` is a live, exclusively borrowed array of `n`
    // WSAPOLLFD values, written only for the call's duration; each `fd` is
    // a socket the caller owns and keeps open across the call.
    let r = unsafe { WSAPoll(fds.as_mut_ptr(), n, timeout) };
    if r == SOCKET_ERROR {
        return Err(wsa_error());
    }
    Ok(r as usize)
}
