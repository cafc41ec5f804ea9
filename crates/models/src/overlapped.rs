//! Overlapped I/O with event objects: the tutorials' first overlapped
//! server (seed 000). Every `WSARecv` and `WSASend` carries a
//! `WSAOVERLAPPED` whose `hEvent` is its socket's event object; the kernel
//! performs the operation while a worker thread waits on up to 64 event
//! objects in `WSAWaitForMultipleEvents`, and the thread, woken by one,
//! resets it, reads the operation's outcome with `WSAGetOverlappedResult`
//! and issues the socket's next operation with the same `WSAOVERLAPPED`.
//!
//! Here the operations are a completion port's ([`cport`], io_uring where
//! the kernel allows it), so the receive and the send run in the kernel
//! while the waiting thread sleeps, as on Windows; each event object is an
//! eventfd; and each group thread waits on at most 64 of them with
//! `poll(2)`. How each call of the tutorial maps:
//!
//! | Windows (seed 000) | here |
//! |---|---|
//! | `WSACreateEvent`, `WSACloseEvent` | `eventfd(2)`, one per socket, dropped with its last operation |
//! | `SOCKETINFO` with its `WSAOVERLAPPED` | `Conn`: the port's handle and the shared `Overlapped` (event and outcome) |
//! | `WSARecv`/`WSASend` with `lpOverlapped`, `WSA_IO_PENDING` | `CompletionPort::recv`/`send` with the `Overlapped` as the per-operation value: `IORING_OP_RECV`/`IORING_OP_SEND` in flight |
//! | the kernel signals `hEvent` when the operation completes | the completion thread: dequeues the completion, stores its outcome in the `Overlapped`, writes the eventfd |
//! | `WSAWaitForMultipleEvents(n ≤ 64, FALSE, WSA_INFINITE)` | `poll(2)` on the group's n ≤ 64 eventfds; more are refused, as `WSA_INVALID_PARAMETER` refuses them |
//! | `WSAResetEvent` | reading the eventfd |
//! | `WSAGetOverlappedResult(fWait = FALSE)` | taking the stored outcome (none yet: `WSA_IO_INCOMPLETE`, wait again) |
//! | `EventArray[0]`, set by the accepting thread after `AddSocketInfo` | the group's control event (new sockets, stop): a group holds [`GROUP`] = 63 sockets |
//! | `accept` and the first `WSARecv` on the main thread | the same, on the thread that calls [`serve`] |
//!
//! Where it differs, and why:
//!
//! * **Who sets the event.** On Windows the kernel signals `hEvent` as the
//!   operation completes. Here one thread, the completion thread, plays
//!   that part: it dequeues each completion from the port and writes the
//!   operation's eventfd, as [`event`](crate::event)'s signalling thread
//!   plays WSAEventSelect's. The operation itself runs in the kernel; only
//!   the hand-over of its outcome costs a thread hop. io_uring could signal
//!   the eventfd itself, with an `IORING_OP_WRITE` of it linked behind each
//!   operation, but pushing entries on a ring takes `unsafe` code, which
//!   belongs in cport's backends only, and cport has no linked operations.
//!   (Such a link would have to be `IOSQE_IO_HARDLINK`: after a plain
//!   `IOSQE_IO_LINK`, an operation that fails — a reset — cancels the
//!   write, and the waiting thread would never learn of the failure.)
//! * **On epoll** (`CPORT_BACKEND=epoll`, or io_uring refused) the port
//!   performs each operation itself when its socket is ready: the model
//!   keeps its shape, but the I/O is no longer done by the kernel while the
//!   thread waits.
//! * **Every signalled event per wake-up.** `WSAWaitForMultipleEvents`
//!   reports the lowest signalled index, and the tutorial handles that one
//!   and waits again, which starves the higher ones under load; `poll`
//!   reports them all and the thread handles them all, as the
//!   [`event`](crate::event) model does.
//! * **A send completes whole** (cport's SEMANTICS O4), so the tutorial's
//!   loop that re-sends what a short `WSASend` left is inside the port.
//! * **A thread per 63 sockets.** The tutorial's one worker thread refuses
//!   the 64th socket; here the accepting thread starts another group, as
//!   the [`event`](crate::event) model does, so that the thread cost per
//!   socket is what a benchmark measures.
//! * **A 16 KiB buffer per socket** by default (the tutorial's is 512
//!   bytes; `cport serve --buffer-size` sets it), the same as the readiness
//!   models', owned by the operation while it is in
//!   flight, so no buffer can be freed while the kernel may write into it.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use cport::{Backend, CompletionPort, GetError, Handle, OpKind};
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};

use crate::{accept_blocking, lock, spawn, Stats, Stop};

/// Events one thread can wait on (WSA_MAXIMUM_WAIT_EVENTS).
pub const MAXIMUM_WAIT_EVENTS: usize = crate::event::MAXIMUM_WAIT_EVENTS;

/// Sockets per group thread: every event but the control event.
pub const GROUP: usize = MAXIMUM_WAIT_EVENTS - 1;

/// Runs the echo server until `stop` is set; see the [module](self) docs.
pub fn serve(
    listener: TcpListener,
    stop: Stop,
    stats: Arc<Stats>,
    buffer: usize,
) -> io::Result<()> {
    serve_on(listener, stop, stats, Backend::Auto, buffer)
}

/// [`serve`] on a port of the given backend (`Auto` follows
/// `CPORT_BACKEND`).
pub fn serve_on(
    listener: TcpListener,
    stop: Stop,
    stats: Arc<Stats>,
    backend: Backend,
    buffer: usize,
) -> io::Result<()> {
    Server::new(listener, backend, stats, buffer)?.serve(stop)
}

/// An event object: an eventfd, manual-reset (it stays set until reset).
struct Event(File);

impl Event {
    /// WSACreateEvent.
    fn new() -> io::Result<Event> {
        let fd = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        Ok(Event(File::from(fd)))
    }

    /// WSASetEvent.
    fn set(&self) {
        // Fails only when the counter would overflow, i.e. it is set.
        let _ = (&self.0).write(&1u64.to_ne_bytes());
    }

    /// WSAResetEvent.
    fn reset(&self) {
        let mut b = [0u8; 8];
        let _ = (&self.0).read(&mut b);
    }
}

/// A completed operation's outcome: what WSAGetOverlappedResult reports,
/// and the buffer the operation owned, handed back.
struct Outcome {
    kind: OpKind,
    result: io::Result<usize>,
    buf: Vec<u8>,
}

/// A socket's WSAOVERLAPPED: its event object (`hEvent`) and, once the
/// operation has completed, its outcome (`Internal`, `InternalHigh`). It
/// is every operation's per-operation value, so it lives as long as the
/// socket's last operation does.
struct Overlapped {
    event: Event,
    outcome: Mutex<Option<Outcome>>,
}

impl Overlapped {
    /// The kernel's part: record the outcome, then signal the event (in
    /// this order, so a thread woken by the event finds the outcome).
    fn complete(&self, outcome: Outcome) {
        *lock(&self.outcome) = Some(outcome);
        self.event.set();
    }

    /// WSAGetOverlappedResult with fWait = FALSE: `None` while the
    /// operation is still in flight (WSA_IO_INCOMPLETE).
    fn result(&self) -> Option<Outcome> {
        lock(&self.outcome).take()
    }
}

/// One socket (the tutorial's SOCKETINFO). The socket itself belongs to
/// the port; its buffer belongs to whichever operation is in flight.
struct Conn {
    handle: Handle,
    ov: Arc<Overlapped>,
}

type Port = CompletionPort<Arc<Overlapped>>;

/// The overlapped model with its port already built, so a caller can say
/// which backend `Auto` chose before it serves.
pub struct Server {
    listener: TcpListener,
    port: Port,
    stats: Arc<Stats>,
    /// Each receive's buffer, in bytes.
    buffer: usize,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Builds the port the operations run on (`Auto` follows
    /// `CPORT_BACKEND`); each socket receives into `buffer` bytes.
    pub fn new(
        listener: TcpListener,
        backend: Backend,
        stats: Arc<Stats>,
        buffer: usize,
    ) -> io::Result<Server> {
        crate::check_buffer(buffer)?;
        let port = cport::Builder::new()
            .backend(backend)
            // One thread dequeues: the completion thread.
            .concurrency(1)
            // Every receive brings its socket's own buffer; the pool that
            // pooled receives draw from is never used.
            .pool(1, 64)
            .build()?;
        Ok(Server {
            listener,
            port,
            stats,
            buffer,
        })
    }

    /// The backend the port runs on: never `Auto`.
    pub fn backend(&self) -> Backend {
        self.port.backend()
    }

    /// Runs the echo server on this thread until `stop` is set; see the
    /// [module](self) docs.
    pub fn serve(self, stop: Stop) -> io::Result<()> {
        let Server {
            listener,
            port,
            stats,
            buffer,
        } = self;
        let _me = stats.thread();
        listener.set_nonblocking(false)?;
        stop.wake_accept(listener.local_addr()?);
        let completer = {
            let port = port.clone();
            spawn("model-completer", &stats, move || complete(&port))?
        };
        let mut groups: Vec<Group> = Vec::new();
        let mut threads = Vec::new();
        let mut next = 0u64;
        let result = loop {
            let Some(stream) = accept_blocking(&listener, &stop) else {
                break Ok(());
            };
            next += 1;
            let Ok(conn) = add_socket(&port, stream, next, buffer) else {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            stats.opened();
            let i = match crate::group_with_room(
                &mut groups,
                &mut threads,
                GROUP,
                |g| &g.count,
                || start_group(&port, &stop, &stats),
            ) {
                Ok(i) => i,
                Err(e) => {
                    let _ = port.close(conn.handle);
                    stats.ended(true);
                    break Err(e);
                }
            };
            let g = &groups[i];
            g.count.fetch_add(1, Ordering::AcqRel);
            if let Err(mpsc::SendError(conn)) = g.tx.send(conn) {
                // The group thread has ended: stopped, or failed (its
                // error is logged).
                let _ = port.close(conn.handle);
                stats.ended(!stop.is_stopped());
                continue;
            }
            // WSASetEvent(EventArray[0]): the group waits on one more.
            g.control.set();
        };
        drop(groups);
        let joined = crate::join_all(threads);
        // Every group has closed its sockets; the completion thread ends
        // with the port.
        port.close_port();
        let completed = crate::join_all(vec![completer]);
        stats.end_all();
        result.and(joined).and(completed)
    }
}

/// AddSocketInfo and the first WSARecv: the socket is associated with the
/// port, gets its event object, and its first receive is in flight before
/// a group thread waits on its event (an event set meanwhile stays set).
fn add_socket(
    port: &Port,
    stream: std::net::TcpStream,
    key: u64,
    buffer: usize,
) -> io::Result<Conn> {
    // Echoes are small request-response exchanges: Nagle's delay would
    // add 40 ms to every one that follows an unacknowledged one.
    stream.set_nodelay(true)?;
    let ov = Arc::new(Overlapped {
        event: Event::new()?,
        outcome: Mutex::new(None),
    });
    let handle = port.associate(stream, key)?;
    let conn = Conn { handle, ov };
    if let Err(r) = port.recv(handle, Vec::with_capacity(buffer), conn.ov.clone()) {
        let _ = port.close(handle);
        return Err(r.error);
    }
    Ok(conn)
}

/// The kernel's signalling, played by one thread for every group: each
/// completion's outcome goes to its operation's `Overlapped`, whose event
/// is then set. Ends when the port is closed.
fn complete(port: &Port) {
    loop {
        match port.get(None) {
            Ok(c) => c.value.complete(Outcome {
                kind: c.kind,
                result: c.result,
                buf: c.payload.into_buf().unwrap_or_default(),
            }),
            Err(GetError::Closed) => return,
            Err(_) => {}
        }
    }
}

/// The accepting thread's view of a group thread.
struct Group {
    tx: Sender<Conn>,
    control: Arc<Event>,
    /// Sockets the group holds or has been sent.
    count: Arc<AtomicUsize>,
}

fn start_group(
    port: &Port,
    stop: &Stop,
    stats: &Arc<Stats>,
) -> io::Result<(Group, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let control = Arc::new(Event::new()?);
    {
        let control = control.clone();
        stop.on_stop(move || control.set());
    }
    let count = Arc::new(AtomicUsize::new(0));
    let t = {
        let (port, stop, stats, count, control) = (
            port.clone(),
            stop.clone(),
            stats.clone(),
            count.clone(),
            control.clone(),
        );
        spawn("model-overlapped", &stats.clone(), move || {
            let mut conns = Vec::new();
            let r = group(&mut conns, &rx, &control, &port, &stop, &stats, &count);
            // Stopping, or failed: closing a socket aborts its operation in
            // flight, and the peer sees the connection end.
            conns.extend(rx.try_iter());
            for c in &conns {
                let _ = port.close(c.handle);
            }
            if let Err(e) = r {
                tracing::error!("overlapped: a group thread failed: {e}");
            }
        })?
    };
    Ok((Group { tx, control, count }, t))
}

/// The tutorial's WorkerThread, for the sockets of one group.
fn group(
    conns: &mut Vec<Conn>,
    rx: &Receiver<Conn>,
    control: &Event,
    port: &Port,
    stop: &Stop,
    stats: &Stats,
    count: &AtomicUsize,
) -> io::Result<()> {
    while !stop.is_stopped() {
        let events: Vec<&Event> = std::iter::once(control)
            .chain(conns.iter().map(|c| &c.ov.event))
            .collect();
        let signalled = wait_for_multiple_events(&events)?;
        drop(events);
        let mut i = 0;
        conns.retain(|c| {
            i += 1;
            if signalled & (1u64 << i) == 0 {
                return true;
            }
            // Reset before the outcome is read: a completion after it sets
            // the event again, so none is lost.
            c.ov.event.reset();
            let Some(outcome) = c.ov.result() else {
                return true;
            };
            match next(port, c, outcome, stats) {
                Ok(()) => true,
                Err(error) => {
                    // RemoveSocketInfo: closesocket, WSACloseEvent (with
                    // the last reference to the Overlapped).
                    let _ = port.close(c.handle);
                    stats.ended(error);
                    count.fetch_sub(1, Ordering::AcqRel);
                    false
                }
            }
        });
        if signalled & 1 != 0 {
            control.reset();
            conns.extend(rx.try_iter());
        }
    }
    Ok(())
}

/// WSAWaitForMultipleEvents(n, events, FALSE, WSA_INFINITE, FALSE): waits
/// until at least one event is set, and returns them all as bits (event
/// `i` is bit `i`). More than [`MAXIMUM_WAIT_EVENTS`] are refused.
fn wait_for_multiple_events(events: &[&Event]) -> io::Result<u64> {
    if events.len() > MAXIMUM_WAIT_EVENTS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} events: one thread waits on at most {MAXIMUM_WAIT_EVENTS}",
                events.len()
            ),
        ));
    }
    let mut fds: Vec<PollFd<'_>> = events
        .iter()
        .map(|e| PollFd::new(&e.0, PollFlags::IN))
        .collect();
    loop {
        match poll(&mut fds, None) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(fds
        .iter()
        .enumerate()
        .filter(|(_, fd)| !fd.revents().is_empty())
        .fold(0, |bits, (i, _)| bits | 1u64 << i))
}

/// What the tutorial's worker does with an outcome: a receive of bytes is
/// sent back, a completed send is followed by the next receive. `Err`
/// ends the connection, `Err(true)` on an error, `Err(false)` when the
/// peer closed.
fn next(port: &Port, c: &Conn, outcome: Outcome, stats: &Stats) -> Result<(), bool> {
    let Outcome {
        kind,
        result,
        mut buf,
    } = outcome;
    let issued = match (kind, result) {
        (_, Err(_)) => return Err(true),
        (OpKind::Recv, Ok(0)) => return Err(false),
        // WSASend of what was received, with the same WSAOVERLAPPED.
        (OpKind::Recv, Ok(_)) => port.send(c.handle, buf, c.ov.clone()),
        // The send completed whole: WSARecv again.
        (_, Ok(n)) => {
            stats.echoed(n);
            buf.clear();
            port.recv(c.handle, buf, c.ov.clone())
        }
    };
    issued.map(drop).map_err(|_| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_reports_every_set_event_and_a_reset_clears_it() {
        let events: Vec<Event> = (0..MAXIMUM_WAIT_EVENTS)
            .map(|_| Event::new().unwrap())
            .collect();
        let all: Vec<&Event> = events.iter().collect();
        events[1].set();
        events[63].set();
        // Set twice, still one signal: a manual-reset event, not a count.
        events[63].set();
        assert_eq!(wait_for_multiple_events(&all).unwrap(), 1 << 1 | 1 << 63);
        // Still set: a wait does not reset (WSAResetEvent does).
        assert_eq!(wait_for_multiple_events(&all).unwrap(), 1 << 1 | 1 << 63);
        events[63].reset();
        assert_eq!(wait_for_multiple_events(&all).unwrap(), 1 << 1);
    }

    #[test]
    fn more_than_64_events_are_refused() {
        let events: Vec<Event> = (0..=MAXIMUM_WAIT_EVENTS)
            .map(|_| Event::new().unwrap())
            .collect();
        events[0].set();
        let all: Vec<&Event> = events.iter().collect();
        let e = wait_for_multiple_events(&all).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("65 events"), "{e}");
    }

    #[test]
    fn an_outcome_is_there_once_its_event_is_set_and_read_once() {
        let ov = Overlapped {
            event: Event::new().unwrap(),
            outcome: Mutex::new(None),
        };
        // WSA_IO_INCOMPLETE until the operation completes.
        assert!(ov.result().is_none());
        ov.complete(Outcome {
            kind: OpKind::Recv,
            result: Ok(3),
            buf: b"abc".to_vec(),
        });
        assert_eq!(wait_for_multiple_events(&[&ov.event]).unwrap(), 1);
        let o = ov.result().expect("the outcome, after the event");
        assert_eq!(
            (o.kind, o.result.unwrap(), &o.buf[..]),
            (OpKind::Recv, 3, &b"abc"[..])
        );
        assert!(ov.result().is_none());
    }
}
