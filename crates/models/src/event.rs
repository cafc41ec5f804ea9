//! WSAEventSelect: each socket signals an event object, and threads wait
//! on up to 64 event objects each (WSA_MAXIMUM_WAIT_EVENTS, the limit of
//! WaitForMultipleObjects).
//!
//! Event objects are eventfds; the signalling is done by the thread in
//! `signal` (Windows' kernel does it there), and each group thread waits
//! on its eventfds with `poll(2)` in place of WaitForMultipleObjects. One
//! of a group's 64 events is its control event (new sockets, stop), as in
//! the tutorials, so a group serves 63 sockets: the thread cost per
//! socket is the claim this model lets a benchmark check.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::signal::spawn_signaler;
use crate::{accept_blocking, keep, lock, poll_fds, pollfd, spawn, Echo, Stats, Stop};

/// Events one thread can wait on (WSA_MAXIMUM_WAIT_EVENTS).
pub const MAXIMUM_WAIT_EVENTS: usize = 64;

/// Sockets per group thread: every event but the control event.
pub const GROUP: usize = MAXIMUM_WAIT_EVENTS - 1;

/// An event object: an eventfd, set by writing and reset by reading.
struct EventFd(File);

impl EventFd {
    fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd(2) takes no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd(2) and nothing else
        // owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd(File::from(owned)))
    }

    /// SetEvent (WSAEventSelect's signalling).
    fn set(&self) {
        // Fails only when the counter would overflow, i.e. it is set.
        let _ = (&self.0).write(&1u64.to_ne_bytes());
    }

    /// ResetEvent (what WSAEnumNetworkEvents does).
    fn reset(&self) {
        let mut b = [0u8; 8];
        let _ = (&self.0).read(&mut b);
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

type Events = Arc<Mutex<HashMap<usize, Arc<EventFd>>>>;

struct Conn {
    id: usize,
    echo: Echo,
    event: Arc<EventFd>,
}

struct Group {
    tx: Sender<Conn>,
    control: Arc<EventFd>,
    count: Arc<AtomicUsize>,
}

/// Runs the echo server until `stop` is set; see the [crate] docs.
pub fn serve(
    listener: TcpListener,
    stop: Stop,
    stats: Arc<Stats>,
    buffer: usize,
) -> io::Result<()> {
    crate::check_buffer(buffer)?;
    let _me = stats.thread();
    listener.set_nonblocking(false)?;
    stop.wake_accept(listener.local_addr()?);
    let events: Events = Arc::default();
    let (registry, signaler) = {
        let events = events.clone();
        spawn_signaler(&stop, &stats, move |token| {
            if let Some(e) = lock(&events).get(&token.0) {
                e.set();
            }
        })?
    };
    let mut groups: Vec<Group> = Vec::new();
    let mut threads = vec![signaler];
    let mut next = 0usize;
    let result = loop {
        let Some(stream) = accept_blocking(&listener, &stop) else {
            break Ok(());
        };
        let (echo, event) = match (Echo::new(stream, buffer), EventFd::new()) {
            (Ok(s), Ok(e)) => (s, Arc::new(e)),
            _ => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let id = next;
        next += 1;
        lock(&events).insert(id, event.clone());
        // WSAEventSelect(socket, event, FD_READ | FD_WRITE | FD_CLOSE).
        let both = Interest::READABLE | Interest::WRITABLE;
        if registry
            .register(&mut SourceFd(&echo.stream.as_raw_fd()), Token(id), both)
            .is_err()
        {
            lock(&events).remove(&id);
            stats.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        stats.opened();
        let i = match crate::group_with_room(
            &mut groups,
            &mut threads,
            GROUP,
            |g| &g.count,
            || start_group(&stop, &stats, &registry, &events),
        ) {
            Ok(i) => i,
            Err(e) => break Err(e),
        };
        let g = &groups[i];
        g.count.fetch_add(1, Ordering::AcqRel);
        if g.tx.send(Conn { id, echo, event }).is_err() {
            lock(&events).remove(&id);
            stats.ended(true);
            continue;
        }
        g.control.set();
    };
    drop(groups);
    let joined = crate::join_all(threads);
    stats.end_all();
    result.and(joined)
}

fn start_group(
    stop: &Stop,
    stats: &Arc<Stats>,
    registry: &Registry,
    events: &Events,
) -> io::Result<(Group, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let control = Arc::new(EventFd::new()?);
    {
        let control = control.clone();
        stop.on_stop(move || control.set());
    }
    let count = Arc::new(AtomicUsize::new(0));
    let registry = registry.try_clone()?;
    let t = {
        let (stop, stats, count, control, events) = (
            stop.clone(),
            stats.clone(),
            count.clone(),
            control.clone(),
            events.clone(),
        );
        spawn("model-event", &stats.clone(), move || {
            let r = group(&rx, &control, &stop, &stats, &count, &registry, &events);
            if let Err(e) = r {
                tracing::error!("event: a group thread failed: {e}");
            }
        })?
    };
    Ok((Group { tx, control, count }, t))
}

fn group(
    rx: &Receiver<Conn>,
    control: &EventFd,
    stop: &Stop,
    stats: &Stats,
    count: &AtomicUsize,
    registry: &Registry,
    events: &Events,
) -> io::Result<()> {
    let mut conns: Vec<Conn> = Vec::new();
    let mut fds = Vec::with_capacity(MAXIMUM_WAIT_EVENTS);
    while !stop.is_stopped() {
        fds.clear();
        fds.push(pollfd(control.fd(), libc::POLLIN));
        fds.extend(conns.iter().map(|c| pollfd(c.event.fd(), libc::POLLIN)));
        // WaitForMultipleObjects(n, events, FALSE, INFINITE).
        poll_fds(&mut fds, -1)?;
        let mut i = 1;
        conns.retain_mut(|c| {
            let signalled = fds[i].revents != 0;
            i += 1;
            if !signalled {
                return true;
            }
            // Reset before handling: a change of readiness during the
            // handling sets it again, so none is lost.
            c.event.reset();
            if keep(c.echo.pump(stats), stats) {
                return true;
            }
            let _ = registry.deregister(&mut SourceFd(&c.echo.stream.as_raw_fd()));
            lock(events).remove(&c.id);
            count.fetch_sub(1, Ordering::AcqRel);
            false
        });
        if fds[0].revents != 0 {
            control.reset();
            conns.extend(rx.try_iter());
        }
    }
    for c in &conns {
        lock(events).remove(&c.id);
    }
    Ok(())
}
