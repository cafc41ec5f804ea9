//! The kernel's part of WSAEventSelect and WSAAsyncSelect, played by a
//! thread: Windows watches the sockets and signals an event object or
//! posts a window message; here an epoll thread (through mio) watches them
//! and calls a function that does the signalling or posting. The models
//! built on it pay for this thread, as the Windows ones pay for the kernel
//! work; their own threads only wait on events or messages.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::{Events, Poll, Registry, Token, Waker};

use crate::{spawn, Stats, Stop};

/// The signalling thread's own wake-up; never a socket's token.
pub(crate) const WAKE: Token = Token(usize::MAX);

/// Starts the signalling thread. Sockets registered with the returned
/// registry (edge-triggered) make it call `signal` with their token, once
/// per change of readiness. It ends when `stop` is set.
pub(crate) fn spawn_signaler(
    stop: &Stop,
    stats: &Arc<Stats>,
    mut signal: impl FnMut(Token) + Send + 'static,
) -> io::Result<(Registry, JoinHandle<()>)> {
    let mut poll = Poll::new()?;
    let registry = poll.registry().try_clone()?;
    // Shared with the stop's closure, which is dropped once it has run:
    // the waker's eventfd must stay open until the wake-up is seen, as
    // closing it removes the pending event from epoll.
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    {
        let waker = waker.clone();
        stop.on_stop(move || {
            let _ = waker.wake();
        });
    }
    let stop = stop.clone();
    let t = spawn("model-signaler", stats, move || {
        let _waker = waker;
        let mut events = Events::with_capacity(1024);
        while !stop.is_stopped() {
            if let Err(e) = poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("signaler: epoll failed: {e}");
                return;
            }
            for ev in &events {
                if ev.token() != WAKE {
                    signal(ev.token());
                }
            }
        }
    })?;
    Ok((registry, t))
}
