//! WSAEventSelect: each socket signals an event object, and threads wait
//! on up to 64 event objects each (WSA_MAXIMUM_WAIT_EVENTS, the limit of
//! `WSAWaitForMultipleEvents`).
//!
//! The tutorials' calls, and where they are here:
//!
//! - `accept` on a blocking listener: the accepting thread
//!   ([`accept_blocking`]), woken at the stop by a connection to the
//!   listener ([`Stop::wake_accept`]).
//! - `WSACreateEvent` and `WSAEventSelect(s, event, FD_READ | FD_WRITE |
//!   FD_CLOSE)` for each accepted socket: the accepting thread too, before
//!   it hands the socket over. Events that happen before its group thread
//!   waits stay recorded: the event is manual-reset and stays set until
//!   `WSAEnumNetworkEvents` reads it.
//! - `WSAWaitForMultipleEvents(n, events, FALSE, WSA_INFINITE, FALSE)`:
//!   each group thread, on its control event (index 0: new sockets, sent
//!   through a channel, and the stop) and up to [`GROUP`] = 63 sockets'
//!   events. The tutorials' single thread stops at 64 events; here the
//!   accepting thread starts another group thread when every group is
//!   full, so the thread per 63 sockets is the cost a benchmark sees.
//!   Windows' kernel sets the events: there is no signalling thread (the
//!   Unix form needs one).
//! - `WSAEnumNetworkEvents(s, event, &events)`, which resets the event,
//!   then `recv`/`send` until they would block ([`Echo::pump`]).
//!   `WSAEventSelect` made the socket non-blocking, and Winsock records
//!   FD_READ again after each `recv` that leaves data, FD_WRITE only after
//!   a `send` failed with WSAEWOULDBLOCK: pumping until both would block
//!   (or are not wanted, under backpressure) leaves each wanted direction
//!   re-enabled by its last call, so no readiness is lost.
//!
//! Where it differs from the tutorial: the tutorial handles only the index
//! `WSAWaitForMultipleEvents` returns, the lowest signalled one, so a busy
//! socket at a low index starves those above it. Here every socket from
//! that index up is asked with `WSAEnumNetworkEvents` after each wake-up
//! (those below it were not signalled when the wait returned; if they are
//! now, the next wait returns at once), as the Unix form handles every
//! event `poll` reports. A socket with no recorded event is not pumped.
//! The error codes `WSAEnumNetworkEvents` reports per event are not used:
//! the `recv` or `send` that follows fails with the same error, and that
//! ends the connection (a reset ends only its own).
//!
//! A connection's socket is closed before its event object (field order
//! in `Conn`): `closesocket` cancels the `WSAEventSelect` association, so
//! the kernel never sets a closed event handle.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use windows_sys::Win32::Foundation::{FALSE, HANDLE};
use windows_sys::Win32::Networking::WinSock::{
    WSAEnumNetworkEvents, WSAEventSelect, WSAWaitForMultipleEvents, FD_CLOSE, FD_READ, FD_WRITE,
    SOCKET_ERROR, WSANETWORKEVENTS, WSA_INFINITE, WSA_WAIT_FAILED,
};

use crate::win::{socket, wsa_error, WsaEvent, MAXIMUM_WAIT_EVENTS};
use crate::{accept_blocking, keep, spawn, Echo, Stats, Stop};

/// Sockets per group thread: every event but the control event.
pub const GROUP: usize = crate::win::MAXIMUM_WAIT_EVENTS - 1;

struct Conn {
    // Declared first, so dropped first: the socket is closed (and its
    // association with `event` cancelled) before the event is.
    echo: Echo,
    event: WsaEvent,
}

struct Group {
    tx: Sender<Conn>,
    /// Set after each send, and by the stop.
    control: Arc<WsaEvent>,
    /// Sockets the group holds or has been sent.
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
    let mut groups: Vec<Group> = Vec::new();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let result = loop {
        let Some(stream) = accept_blocking(&listener, &stop) else {
            break Ok(());
        };
        let Ok(conn) = selected(stream, buffer) else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        stats.opened();
        let i = match crate::group_with_room(
            &mut groups,
            &mut threads,
            GROUP,
            |g| &g.count,
            || start_group(&stop, &stats),
        ) {
            Ok(i) => i,
            Err(e) => {
                stats.ended(true);
                break Err(e);
            }
        };
        let g = &groups[i];
        g.count.fetch_add(1, Ordering::AcqRel);
        if g.tx.send(conn).is_err() {
            // The group thread failed and ended (it logged why).
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

/// The accepted socket with its event object, selected for FD_READ,
/// FD_WRITE and FD_CLOSE.
fn selected(stream: TcpStream, buffer: usize) -> io::Result<Conn> {
    let echo = Echo::new(stream, buffer)?;
    let event = WsaEvent::new()?;
    let events = (FD_READ | FD_WRITE | FD_CLOSE) as i32;
    // SAFETY: WSAEventSelect takes the socket, open while `echo` lives,
    // and the event handle, open while `event` lives; both are moved
    // into one `Conn`, which closes the socket (ending the association)
    // before the event. No pointers.
    if unsafe { WSAEventSelect(socket(&echo.stream), event.handle(), events) } == SOCKET_ERROR {
        return Err(wsa_error());
    }
    Ok(Conn { echo, event })
}

fn start_group(stop: &Stop, stats: &Arc<Stats>) -> io::Result<(Group, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let control = Arc::new(WsaEvent::new()?);
    {
        let control = control.clone();
        stop.on_stop(move || control.set());
    }
    let count = Arc::new(AtomicUsize::new(0));
    let t = {
        let (stop, stats2, count, control) =
            (stop.clone(), stats.clone(), count.clone(), control.clone());
        spawn("model-event", stats, move || {
            if let Err(e) = group(&rx, &control, &stop, &stats2, &count) {
                tracing::error!("event: a group thread failed: {e}");
            }
        })?
    };
    Ok((Group { tx, control, count }, t))
}

fn group(
    rx: &Receiver<Conn>,
    control: &WsaEvent,
    stop: &Stop,
    stats: &Stats,
    count: &AtomicUsize,
) -> io::Result<()> {
    let mut conns: Vec<Conn> = Vec::new();
    let mut handles: Vec<HANDLE> = Vec::with_capacity(MAXIMUM_WAIT_EVENTS);
    while !stop.is_stopped() {
        handles.clear();
        handles.push(control.handle());
        handles.extend(conns.iter().map(|c| c.event.handle()));
        let first = wait_any(&handles)?;
        // Every socket from the lowest signalled index up, not only that
        // one (see the module docs).
        let mut index = 0;
        conns.retain_mut(|c| {
            index += 1;
            if index < first {
                return true;
            }
            let pumped = match network_events(c) {
                Ok(0) => return true,
                Ok(_) => c.echo.pump(stats),
                Err(e) => Err(e),
            };
            if keep(pumped, stats) {
                return true;
            }
            count.fetch_sub(1, Ordering::AcqRel);
            false
        });
        if first == 0 {
            // Reset before taking: a socket sent after the reset sets the
            // event again, so none waits unseen.
            control.reset();
            conns.extend(rx.try_iter());
        }
    }
    // `conns` drops here, closing every socket; `serve` counts them with
    // `end_all` once every group has ended.
    Ok(())
}

/// `WSAWaitForMultipleEvents(n, handles, FALSE, WSA_INFINITE, FALSE)`:
/// the lowest index whose event is set.
fn wait_any(handles: &[HANDLE]) -> io::Result<usize> {
    debug_assert!(!handles.is_empty() && handles.len() <= MAXIMUM_WAIT_EVENTS);
    // SAFETY: `handles` points to `handles.len()` (at most 64) event
    // handles, each open while its owner (the group's control event, a
    // `Conn` in the caller's `conns`) lives, which is for the whole call:
    // the caller holds both. The wait writes nothing.
    let r = unsafe {
        WSAWaitForMultipleEvents(
            handles.len() as u32,
            handles.as_ptr(),
            FALSE,
            WSA_INFINITE,
            FALSE,
        )
    };
    // WSA_WAIT_EVENT_0 is 0: a success is the index itself. With no
    // timeout and no alertable wait, nothing else is expected.
    if r == WSA_WAIT_FAILED {
        return Err(wsa_error());
    }
    if r as usize >= handles.len() {
        return Err(io::Error::other(format!(
            "WSAWaitForMultipleEvents returned {r:#x}"
        )));
    }
    Ok(r as usize)
}

/// `WSAEnumNetworkEvents(s, event, &events)`: the network events recorded
/// since the last call (0 if none), resetting the event.
fn network_events(c: &Conn) -> io::Result<i32> {
    let mut events = WSANETWORKEVENTS {
        lNetworkEvents: 0,
        iErrorCode: [0; 10],
    };
    // SAFETY: the socket and the event handle are open while `c` lives;
    // `events` is a local the call fills and nothing keeps after it.
    let r = unsafe { WSAEnumNetworkEvents(socket(&c.echo.stream), c.event.handle(), &mut events) };
    if r == SOCKET_ERROR {
        return Err(wsa_error());
    }
    Ok(events.lNetworkEvents)
}
