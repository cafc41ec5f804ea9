//! `poll(2)`: one thread, one array of descriptors rebuilt on every pass.
//!
//! No descriptor-number limit (unlike select), but every wait hands the
//! kernel the whole array and every wake-up scans it: the cost grows with
//! the connections held, not with the ones that are active.

use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::{accept_ready, drain, keep, poll_fds, pollfd, stop_socket, Echo, Stats, Stop};

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
    let mut fds: Vec<libc::pollfd> = Vec::new();
    while !stop.is_stopped() {
        fds.clear();
        fds.push(pollfd(wake.as_raw_fd(), libc::POLLIN));
        fds.push(pollfd(listener.as_raw_fd(), libc::POLLIN));
        fds.extend(
            conns
                .iter()
                .map(|c| pollfd(c.stream.as_raw_fd(), interest(c))),
        );
        poll_fds(&mut fds, -1)?;
        if fds[0].revents != 0 {
            drain(&wake);
        }
        // Connections first, while their indices still match `fds`.
        let mut i = 2;
        conns.retain_mut(|c| {
            let ready = fds[i].revents != 0;
            i += 1;
            !ready || keep(c.pump(&stats), &stats)
        });
        if fds[1].revents != 0 {
            // Level-triggered: connections left queued by an accept error
            // are reported again by the next poll.
            let _ = accept_ready(&listener, |s| match Echo::new(s, buffer) {
                Ok(e) => {
                    stats.opened();
                    conns.push(e);
                }
                Err(_) => {
                    stats
                        .refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    }
    drop(conns);
    stats.end_all();
    Ok(())
}

/// The poll events a connection waits for.
pub(crate) fn interest(c: &Echo) -> libc::c_short {
    let mut ev = 0;
    if c.wants_read() {
        ev |= libc::POLLIN;
    }
    if c.wants_write() {
        ev |= libc::POLLOUT;
    }
    ev
}
