//! An epoll readiness reactor (through mio): one thread, told which
//! sockets are ready instead of asking each one.
//!
//! Sockets are registered once, edge-triggered; on readiness a connection
//! reads and writes until the kernel says `WouldBlock`, which re-arms the
//! edge. The wait costs what is ready, not what is held.

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::{accept_ready, keep, Echo, Stats, Stop};

const LISTENER: Token = Token(0);
const WAKE: Token = Token(1);

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
    let mut poll = Poll::new()?;
    let registry = poll.registry().try_clone()?;
    registry.register(
        &mut SourceFd(&listener.as_raw_fd()),
        LISTENER,
        Interest::READABLE,
    )?;
    // Shared with the stop's closure, which is dropped once it has run:
    // the waker's eventfd must stay open until the wake-up is seen, as
    // closing it removes the pending event from epoll.
    let waker = Arc::new(Waker::new(&registry, WAKE)?);
    {
        let waker = waker.clone();
        stop.on_stop(move || {
            let _ = waker.wake();
        });
    }
    let mut conns: HashMap<usize, Echo> = HashMap::new();
    // Tokens are never reused: an event still queued for a closed
    // connection cannot reach a new one with the same descriptor.
    let mut next = 2usize;
    let mut events = Events::with_capacity(1024);
    // The listener is edge-triggered too: after an accept error the
    // connections still queued raise no new event, so accepting is retried.
    let mut retry_accept = false;
    while !stop.is_stopped() {
        let timeout = retry_accept.then_some(std::time::Duration::ZERO);
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut accept_now = std::mem::take(&mut retry_accept);
        for ev in &events {
            match ev.token() {
                WAKE => {}
                LISTENER => accept_now = true,
                Token(t) => {
                    let Some(c) = conns.get_mut(&t) else { continue };
                    if !keep(c.pump(&stats), &stats) {
                        let c = conns.remove(&t).expect("looked up above");
                        let _ = registry.deregister(&mut SourceFd(&c.stream.as_raw_fd()));
                    }
                }
            }
        }
        if accept_now {
            retry_accept = !accept_ready(&listener, |s| {
                let Ok(echo) = Echo::new(s, buffer) else {
                    stats
                        .refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                };
                let token = Token(next);
                next += 1;
                let both = Interest::READABLE | Interest::WRITABLE;
                if registry
                    .register(&mut SourceFd(&echo.stream.as_raw_fd()), token, both)
                    .is_err()
                {
                    stats
                        .refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                stats.opened();
                conns.insert(token.0, echo);
            });
        }
    }
    drop((conns, waker));
    stats.end_all();
    Ok(())
}
