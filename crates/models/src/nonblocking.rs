//! Non-blocking sockets polled in a loop: the tutorials' NonblockTCPServer.
//!
//! One thread tries `accept` and then every connection's `read` and
//! `write`, over and over, and never waits: that busy loop is the model's
//! cost (a whole CPU while anything is connected, or nothing is), and it is
//! kept so that a benchmark shows it. Only the stop flag is checked on
//! each pass.

use std::io;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;

use crate::{keep, transient_accept_error, Echo, Stats, Stop, ACCEPT_BACKOFF};

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
    let mut conns: Vec<Echo> = Vec::new();
    while !stop.is_stopped() {
        loop {
            match listener.accept() {
                Ok((s, _)) => match Echo::new(s, buffer) {
                    Ok(e) => {
                        stats.opened();
                        conns.push(e);
                    }
                    Err(_) => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if transient_accept_error(&e) => continue,
                Err(_) => {
                    // Descriptor exhaustion, not idleness: the one pause
                    // this model takes (LESSONS 6).
                    thread::sleep(ACCEPT_BACKOFF);
                    break;
                }
            };
        }
        conns.retain_mut(|c| keep(c.pump(&stats), &stats));
    }
    drop(conns);
    stats.end_all();
    Ok(())
}
