//! WSAAsyncSelect: socket events arrive as messages in one thread's
//! message queue, and one message loop (the window procedure) handles
//! every socket.
//!
//! The message queue is an mpsc channel; the posting of WM_SOCKET
//! messages is done by the thread in `signal` (Windows' kernel does it).
//! Every accept, read and write of every connection runs on the one
//! message-loop thread: its single-loop cost is what this model shows.

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;

use mio::unix::SourceFd;
use mio::{Interest, Token};

use crate::signal::spawn_signaler;
use crate::{accept_ready, keep, Echo, Stats, Stop};

/// A window message.
enum Msg {
    /// WM_SOCKET for the socket registered under this token: FD_ACCEPT for
    /// the listener, FD_READ / FD_WRITE / FD_CLOSE for a connection.
    Socket(usize),
    /// WM_QUIT.
    Quit,
}

const LISTENER: usize = 0;

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
    let (tx, rx) = mpsc::channel();
    let (registry, signaler) = {
        let tx = tx.clone();
        spawn_signaler(&stop, &stats, move |token| {
            let _ = tx.send(Msg::Socket(token.0));
        })?
    };
    let retry = tx.clone();
    stop.on_stop(move || {
        let _ = tx.send(Msg::Quit);
    });
    // WSAAsyncSelect(listener, window, WM_SOCKET, FD_ACCEPT).
    registry.register(
        &mut SourceFd(&listener.as_raw_fd()),
        Token(LISTENER),
        Interest::READABLE,
    )?;
    let mut conns: HashMap<usize, Echo> = HashMap::new();
    // Never reused: a message still queued for a closed socket cannot
    // reach a new one.
    let mut next = LISTENER + 1;
    // The message loop: GetMessage, DispatchMessage, the window procedure.
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Quit => break,
            Msg::Socket(LISTENER) => {
                let drained = accept_ready(&listener, |s| {
                    let Ok(echo) = Echo::new(s, buffer) else {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    let both = Interest::READABLE | Interest::WRITABLE;
                    let fd = echo.stream.as_raw_fd();
                    if registry
                        .register(&mut SourceFd(&fd), Token(next), both)
                        .is_err()
                    {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    stats.opened();
                    conns.insert(next, echo);
                    next += 1;
                });
                if !drained {
                    // Edge-triggered: connections still queued after an
                    // accept error raise no new message, so post one.
                    let _ = retry.send(Msg::Socket(LISTENER));
                }
            }
            Msg::Socket(t) => {
                let Some(c) = conns.get_mut(&t) else { continue };
                if !keep(c.pump(&stats), &stats) {
                    let c = conns.remove(&t).expect("looked up above");
                    let _ = registry.deregister(&mut SourceFd(&c.stream.as_raw_fd()));
                }
            }
        }
    }
    drop(conns);
    let joined = crate::join_all(vec![signaler]);
    stats.end_all();
    joined
}
