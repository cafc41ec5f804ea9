//! Overlapped I/O with event objects, on Windows: the tutorials' first
//! overlapped server (seed 000) with the calls it makes. Every `WSARecv`
//! and `WSASend` carries a `WSAOVERLAPPED` whose `hEvent` is its socket's
//! event object; the kernel performs the operation while a group thread
//! waits on up to 64 event objects in `WSAWaitForMultipleEvents`, and the
//! thread, woken, resets each signalled event, reads its operation's
//! outcome with `WSAGetOverlappedResult` and issues the socket's next
//! operation with the same `WSAOVERLAPPED`.
//!
//! | Windows (seed 000) | here |
//! |---|---|
//! | `SOCKETINFO` (`WSAOVERLAPPED`, buffer, `recvbytes`, `sendbytes`, `WSABUF`) | `Conn`: its `Io` (the `WSAOVERLAPPED` and the buffer) on the heap at a fixed address, the counts, the operation in flight |
//! | `WSACreateEvent` per socket, `WSACloseEvent` in `RemoveSocketInfo` | `WsaEvent`, owned by the `Conn`, closed when it is dropped |
//! | `accept` on the main thread, `AddSocketInfo` | the thread that calls [`serve`] blocks in `accept` (`accept_blocking`) and hands each socket to a group over a channel |
//! | `WSASetEvent(EventArray[0])` after `AddSocketInfo` | the group's control event (new sockets, stop): a group holds [`GROUP`] = 63 sockets |
//! | the first `WSARecv` on the main thread | the first `WSARecv` on the group thread that owns the socket |
//! | `WSAWaitForMultipleEvents(sockCnt, EventArray, FALSE, WSA_INFINITE, FALSE)` | the same, on the control event and the group's sockets' events |
//! | `WSAResetEvent(EventArray[index])` | the same, for each signalled event |
//! | `WSAGetOverlappedResult(fWait = FALSE)` | the same (`WSA_IO_INCOMPLETE`: not done, wait again) |
//! | `WSASend` of `buf + sendbytes` while `recvbytes > sendbytes`, else `WSARecv` | the same, with the `WSAOVERLAPPED` zeroed and its `hEvent` kept |
//! | `WSA_IO_PENDING` | in flight; an immediate success is in flight too: the kernel still signals the event and the outcome is read the same way |
//! | `ret == FALSE \|\| cbTransferred == 0`: `RemoveSocketInfo` (`closesocket`, `delete`, `WSACloseEvent`) | the `Conn` is dropped: `closesocket`, the buffer freed, `WSACloseEvent`; a peer's end of stream gets `shutdown(SD_SEND)` first |
//!
//! Where it differs, and why:
//!
//! * **Every signalled event per wake-up.** `WSAWaitForMultipleEvents`
//!   reports the lowest signalled index, and the tutorial handles that one
//!   and waits again, which starves the higher ones under load. Here the
//!   thread handles that one, then asks again with a zero timeout on the
//!   events after it, and so on: one call per signalled event, all of them
//!   handled before it blocks again.
//! * **A thread per 63 sockets.** The tutorial's one worker thread refuses
//!   the 64th socket; here the accepting thread starts another group, so
//!   that the thread cost per socket is what a benchmark measures. The
//!   kernel sets the events, so there is no other thread: the accepting
//!   thread and one per group.
//! * **The group thread issues every operation**, the first `WSARecv`
//!   included, so a socket has one owner, and no operation of it is left
//!   behind by a thread that ends (Windows cancels a thread's pending I/O
//!   when it exits, unless the handle is on a completion port).
//! * **A 16 KiB buffer per socket** by default (the tutorial's is 512
//!   bytes; `cport serve --buffer-size` sets it), as the readiness
//!   models' `ECHO_BUFFER`. One operation is in flight per
//!   socket, as in the tutorial: the next receive is issued only once the
//!   echo is sent, which is the backpressure.
//! * **A buffer never outlives its operation's reach** (LESSONS 1): the
//!   tutorial deletes a `SOCKETINFO` only after a completion, but leaks
//!   its operations at exit. Here a `Conn` dropped with an operation in
//!   flight (the server stops, a group fails) first cancels it
//!   (`CancelIoEx` on its `WSAOVERLAPPED`) and waits for it to complete
//!   (`WSAGetOverlappedResult` with `fWait = TRUE`) before the buffer and
//!   the `WSAOVERLAPPED` are freed.
//! * **A short send is finished**: the tutorial's `sendbytes` loop is kept
//!   (`WSASend` on a stream socket completes whole in practice).
//! * **The `WSABUF`** is built for each call on the stack: Winsock copies
//!   the `WSABUF` array before `WSARecv`/`WSASend` returns; only the bytes
//!   it points to and the `WSAOVERLAPPED` must stay put.

use std::io;
use std::mem;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use windows_sys::Win32::Foundation::{FALSE, HANDLE, TRUE};
use windows_sys::Win32::Networking::WinSock::{
    WSAGetOverlappedResult, WSARecv, WSASend, WSAWaitForMultipleEvents,
    LPWSAOVERLAPPED_COMPLETION_ROUTINE, SOCKET, WSABUF, WSA_INFINITE, WSA_IO_INCOMPLETE,
    WSA_IO_PENDING, WSA_WAIT_FAILED, WSA_WAIT_TIMEOUT,
};
use windows_sys::Win32::System::IO::{CancelIoEx, OVERLAPPED};

use crate::win::{socket, wsa_error, WsaEvent, MAXIMUM_WAIT_EVENTS};
use crate::{accept_blocking, spawn, Stats, Stop};

/// Sockets per group thread: every event but the control event.
pub const GROUP: usize = crate::win::MAXIMUM_WAIT_EVENTS - 1;

/// Runs the echo server until `stop` is set; see the [module](self) docs.
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
    let mut threads = Vec::new();
    let result = loop {
        let Some(stream) = accept_blocking(&listener, &stop) else {
            break Ok(());
        };
        // AddSocketInfo: the socket's state and event object.
        let Ok(conn) = Conn::new(stream, buffer) else {
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
                drop(conn);
                stats.ended(true);
                break Err(e);
            }
        };
        let g = &groups[i];
        g.count.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::SendError(conn)) = g.tx.send(conn) {
            // The group thread has ended: stopped, or failed (its error
            // is logged). The socket has no operation in flight yet.
            drop(conn);
            stats.ended(!stop.is_stopped());
            continue;
        }
        // WSASetEvent(EventArray[0]): the group waits on one more.
        g.control.set();
    };
    drop(groups);
    let joined = crate::join_all(threads);
    stats.end_all();
    result.and(joined)
}

/// What a socket's one operation in flight is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Op {
    Recv,
    Send,
}

/// The part of a socket's state the kernel writes into while an operation
/// is in flight: the `WSAOVERLAPPED` (first, so that a pointer to it is a
/// pointer to the whole) and the buffer's bytes, a heap block of their own
/// that the `Io` owns. It lives at a fixed address and, while an operation
/// is in flight, is reached only through raw pointers, never through a
/// Rust reference.
#[repr(C)]
pub(crate) struct Io {
    pub(crate) overlapped: OVERLAPPED,
    /// The kernel writes into the bytes, never into this field.
    buf: Box<[u8]>,
}

impl Io {
    /// A zeroed `WSAOVERLAPPED` (the tutorial's `ZeroMemory`) and a zeroed
    /// buffer of `size` bytes.
    pub(crate) fn new(size: usize) -> Io {
        Io {
            // SAFETY: `OVERLAPPED` is plain data (integers, a union of
            // integers and a pointer, a handle) for which all-zero bytes
            // are a valid value.
            overlapped: unsafe { mem::zeroed() },
            buf: vec![0; size].into_boxed_slice(),
        }
    }

    /// [`new`](Io::new) on the heap, owned by the caller through the
    /// pointer until it passes it to `Box::from_raw`.
    pub(crate) fn alloc(size: usize) -> NonNull<Io> {
        NonNull::from(Box::leak(Box::new(Io::new(size))))
    }
}

/// `WSARecv` into `buf[from..from + len]` (cut to the buffer), or `WSASend`
/// of it, with `io`'s `WSAOVERLAPPED` (zeroed first, its `hEvent` kept) and
/// `routine`.
/// `Ok` once the operation is in flight: `WSA_IO_PENDING`, or done at once,
/// which Windows still reports through the event or the routine. An error
/// means nothing is in flight (no event, no routine follows).
///
/// # Safety
///
/// `io` is live, has no operation in flight, and stays allocated, unmoved
/// and untouched (but through the kernel) until the operation's completion
/// has been observed: its event and `WSAGetOverlappedResult`, or its
/// routine's call. `s` is an open socket.
pub(crate) unsafe fn start(
    s: SOCKET,
    io: NonNull<Io>,
    op: Op,
    from: usize,
    len: usize,
    routine: LPWSAOVERLAPPED_COMPLETION_ROUTINE,
) -> io::Result<()> {
    let p = io.as_ptr();
    // SAFETY: the caller guarantees `p` is live with nothing in flight,
    // so nothing else reads or writes it. The buffer is reached raw,
    // through the box, with no reference made to it (its length is the
    // raw slice pointer's); `from <= its length` keeps the pointer the
    // kernel writes through within (or one past) the buffer.
    let (overlapped, buf, len) = unsafe {
        let overlapped = &raw mut (*p).overlapped;
        let event = (*overlapped).hEvent;
        overlapped.write(mem::zeroed());
        (*overlapped).hEvent = event;
        let bytes: *mut [u8] = &raw mut *(*p).buf;
        let from = from.min(bytes.len());
        let len = len.min(bytes.len() - from);
        (overlapped, bytes.cast::<u8>().add(from), len)
    };
    // `len <= MAX_BUFFER`, which fits a u32.
    let wsabuf = WSABUF {
        len: len as u32,
        buf,
    };
    // Written on an immediate success; the outcome is read from the
    // completion either way.
    let mut n = 0u32;
    let r = match op {
        Op::Recv => {
            let mut flags = 0u32;
            // SAFETY: `wsabuf` names `len` bytes of the live buffer, which
            // the caller keeps allocated and unmoved until the completion;
            // the WSABUF array is copied before the call returns; `n` and
            // `flags` outlive the call; `overlapped` is the live, zeroed
            // WSAOVERLAPPED of that buffer.
            unsafe { WSARecv(s, &wsabuf, 1, &mut n, &mut flags, overlapped, routine) }
        }
        // SAFETY: as for WSARecv: the bytes and the WSAOVERLAPPED stay
        // put until the completion, the WSABUF is copied during the call.
        Op::Send => unsafe { WSASend(s, &wsabuf, 1, &mut n, 0, overlapped, routine) },
    };
    if r == 0 {
        return Ok(());
    }
    let e = wsa_error();
    if e.raw_os_error() == Some(WSA_IO_PENDING) {
        Ok(())
    } else {
        Err(e)
    }
}

/// One socket: the tutorial's SOCKETINFO and its event object.
struct Conn {
    /// The WSAOVERLAPPED and the buffer, owned (freed in `drop`, once no
    /// operation is in flight).
    io: NonNull<Io>,
    stream: TcpStream,
    event: WsaEvent,
    /// The operation in flight, if any: while it is `Some`, `io` belongs
    /// to the kernel.
    op: Option<Op>,
    recvbytes: usize,
    sendbytes: usize,
    /// The buffer's size.
    size: usize,
}

// SAFETY: `io` is owned by the Conn alone (no other pointer to it is kept
// but the kernel's, while an operation is in flight); the Conn is sent to
// its group thread before any operation is issued, and an operation may
// complete while its issuing thread does anything, so no part of the
// state is tied to a thread.
unsafe impl Send for Conn {}

impl Conn {
    fn new(stream: TcpStream, size: usize) -> io::Result<Conn> {
        // Echoes are small request-response exchanges: Nagle's delay
        // would add 40 ms to every one that follows an unacknowledged one.
        stream.set_nodelay(true)?;
        let event = WsaEvent::new()?;
        let io = Io::alloc(size);
        // SAFETY: `io` was just allocated; nothing is in flight.
        unsafe { (*io.as_ptr()).overlapped.hEvent = event.handle() };
        Ok(Conn {
            io,
            stream,
            event,
            op: None,
            recvbytes: 0,
            sendbytes: 0,
            size,
        })
    }

    /// Issues `op` on `buf[from..from + len]`.
    fn start(&mut self, op: Op, from: usize, len: usize) -> io::Result<()> {
        debug_assert!(self.op.is_none(), "one operation at a time");
        // SAFETY: nothing is in flight (`op` is None: the last completion
        // was consumed); `self.io` stays allocated and unmoved until
        // `drop`, which waits for the operation first; nothing touches it
        // while `op` is Some.
        unsafe { start(socket(&self.stream), self.io, op, from, len, None) }?;
        self.op = Some(op);
        Ok(())
    }

    /// WSARecv into the whole buffer.
    fn recv(&mut self) -> io::Result<()> {
        self.recvbytes = 0;
        self.sendbytes = 0;
        self.start(Op::Recv, 0, self.size)
    }

    /// WSASend of what is received and not yet sent.
    fn send(&mut self) -> io::Result<()> {
        let (from, len) = (self.sendbytes, self.recvbytes - self.sendbytes);
        self.start(Op::Send, from, len)
    }

    /// WSAGetOverlappedResult: the bytes moved, or the error, or `None`
    /// while the operation is in flight (`WSA_IO_INCOMPLETE`); with `wait`
    /// (`fWait = TRUE`) it waits for the completion on the event.
    fn result(&self, wait: bool) -> Option<io::Result<usize>> {
        let mut n = 0u32;
        let mut flags = 0u32;
        // SAFETY: the WSAOVERLAPPED is live (freed only in `drop`, after
        // this); the call reads it and writes only `n` and `flags`.
        let ok = unsafe {
            WSAGetOverlappedResult(
                socket(&self.stream),
                &raw const (*self.io.as_ptr()).overlapped,
                &mut n,
                if wait { TRUE } else { FALSE },
                &mut flags,
            )
        };
        if ok != FALSE {
            return Some(Ok(n as usize));
        }
        let e = wsa_error();
        if e.raw_os_error() == Some(WSA_IO_INCOMPLETE) {
            None
        } else {
            Some(Err(e))
        }
    }

    /// CancelIoEx of the operation in flight, if any: it completes soon,
    /// with WSA_OPERATION_ABORTED (or its outcome, if it was done).
    fn cancel(&self) {
        if self.op.is_some() {
            // SAFETY: the socket is open while `self` lives; the
            // WSAOVERLAPPED names the operation to cancel and is only read.
            unsafe {
                CancelIoEx(
                    socket(&self.stream) as HANDLE,
                    &raw const (*self.io.as_ptr()).overlapped,
                )
            };
        }
    }

    /// What the tutorial's worker does once this socket's event is
    /// signalled: WSAResetEvent, WSAGetOverlappedResult, the next
    /// operation. `Err` ends the connection: `Err(true)` on an error,
    /// `Err(false)` when the peer finished and everything was echoed.
    fn completed(&mut self, stats: &Stats) -> Result<(), bool> {
        // Reset before the outcome is read: a completion after the reset
        // sets the event again, so none is missed. (Windows writes the
        // outcome into the WSAOVERLAPPED before it signals the event, and
        // so does wine: a signalled event means the outcome is there.)
        self.event.reset();
        let Some(op) = self.op else {
            return Ok(());
        };
        let Some(result) = self.result(false) else {
            // WSA_IO_INCOMPLETE: signalled for an earlier operation.
            return Ok(());
        };
        self.op = None;
        let next = match (op, result) {
            (_, Err(_)) => return Err(true),
            (Op::Recv, Ok(0)) => {
                // End of stream, with every byte before it echoed (the
                // next receive is issued only after the echo): pass it on.
                let _ = self.stream.shutdown(Shutdown::Write);
                return Err(false);
            }
            (Op::Recv, Ok(n)) => {
                self.recvbytes = n.min(self.size);
                self.sendbytes = 0;
                self.send()
            }
            // A send of at least one byte that moved none would repeat
            // forever.
            (Op::Send, Ok(0)) => return Err(true),
            (Op::Send, Ok(n)) => {
                let n = n.min(self.recvbytes - self.sendbytes);
                stats.echoed(n);
                self.sendbytes += n;
                if self.sendbytes < self.recvbytes {
                    self.send()
                } else {
                    self.recv()
                }
            }
        };
        next.map_err(|_| true)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.op.is_some() {
            // LESSONS 1: the kernel may still write into the buffer and
            // the WSAOVERLAPPED: cancel the operation and wait until it has
            // completed before they are freed.
            self.cancel();
            let _ = self.result(true);
        }
        // SAFETY: `io` came from `Io::alloc` (Box::leak) and is freed only
        // here; no operation is in flight (none was, or the one that was
        // has completed), so neither the kernel nor anything else uses it.
        drop(unsafe { Box::from_raw(self.io.as_ptr()) });
        // Then `stream` (closesocket) and `event` (WSACloseEvent).
    }
}

/// The accepting thread's view of a group thread.
struct Group {
    tx: Sender<Conn>,
    control: Arc<WsaEvent>,
    /// Sockets the group holds or has been sent.
    count: Arc<AtomicUsize>,
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
        let (stop, stats, count, control) =
            (stop.clone(), stats.clone(), count.clone(), control.clone());
        spawn("model-overlapped", &stats.clone(), move || {
            let mut conns = Vec::new();
            let r = group(&mut conns, &rx, &control, &stop, &stats, &count);
            // Stopping, or failed: cancel every operation in flight, then
            // drop each socket once its operation has completed.
            for c in &conns {
                c.cancel();
            }
            if r.is_err() {
                // Not a stop: each connection ends with the error.
                conns.extend(rx.try_iter());
                for _ in &conns {
                    stats.ended(true);
                }
            }
            drop(conns);
            if let Err(e) = r {
                tracing::error!("overlapped: a group thread failed: {e}");
            }
        })?
    };
    Ok((Group { tx, control, count }, t))
}

/// The tutorial's WorkerThread, for the sockets of one group: `conns[k]`
/// is waited on as event `k + 1`, event 0 is the control event.
fn group(
    conns: &mut Vec<Conn>,
    rx: &Receiver<Conn>,
    control: &WsaEvent,
    stop: &Stop,
    stats: &Stats,
    count: &AtomicUsize,
) -> io::Result<()> {
    let mut events: Vec<HANDLE> = Vec::with_capacity(MAXIMUM_WAIT_EVENTS);
    let mut ended: Vec<(usize, bool)> = Vec::new();
    while !stop.is_stopped() {
        events.clear();
        events.push(control.handle());
        events.extend(conns.iter().map(|c| c.event.handle()));
        let Some(mut i) = wait_for_multiple_events(&events, WSA_INFINITE)? else {
            continue;
        };
        let mut new_sockets = false;
        loop {
            if i == 0 {
                new_sockets = true;
            } else if let Err(error) = conns[i - 1].completed(stats) {
                ended.push((i - 1, error));
            }
            // The next signalled event after this one, if any.
            let next = i + 1;
            if next >= events.len() {
                break;
            }
            match wait_for_multiple_events(&events[next..], 0)? {
                Some(k) => i = next + k,
                None => break,
            }
        }
        // RemoveSocketInfo, highest index first so that the lower ones
        // stay put. Each has no operation in flight.
        for &(k, error) in ended.iter().rev() {
            drop(conns.swap_remove(k));
            stats.ended(error);
            count.fetch_sub(1, Ordering::AcqRel);
        }
        ended.clear();
        if new_sockets {
            control.reset();
            if stop.is_stopped() {
                break;
            }
            for mut c in rx.try_iter() {
                // The first WSARecv.
                if c.recv().is_ok() {
                    conns.push(c);
                } else {
                    drop(c);
                    stats.ended(true);
                    count.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }
    Ok(())
}

/// `WSAWaitForMultipleEvents(n, events, FALSE, timeout, FALSE)`: the index
/// of the lowest signalled event, or `None` when `timeout` (ms) passed.
/// More than [`MAXIMUM_WAIT_EVENTS`] are refused, as Winsock refuses them.
fn wait_for_multiple_events(events: &[HANDLE], timeout: u32) -> io::Result<Option<usize>> {
    if events.is_empty() || events.len() > MAXIMUM_WAIT_EVENTS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} events: one thread waits on 1 to {MAXIMUM_WAIT_EVENTS}",
                events.len()
            ),
        ));
    }
    // SAFETY: `events` holds `events.len()` (1 to 64) open event handles,
    // owned by the caller's WsaEvents for the duration of the call; the
    // call only reads them.
    let r = unsafe {
        WSAWaitForMultipleEvents(events.len() as u32, events.as_ptr(), FALSE, timeout, FALSE)
    };
    match r {
        WSA_WAIT_FAILED => Err(wsa_error()),
        WSA_WAIT_TIMEOUT => Ok(None),
        // WSA_WAIT_EVENT_0 is 0.
        r if (r as usize) < events.len() => Ok(Some(r as usize)),
        r => Err(io::Error::other(format!(
            "WSAWaitForMultipleEvents returned {r}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_reports_the_lowest_set_event_and_a_reset_clears_it() {
        let events: Vec<WsaEvent> = (0..MAXIMUM_WAIT_EVENTS)
            .map(|_| WsaEvent::new().unwrap())
            .collect();
        let all: Vec<HANDLE> = events.iter().map(|e| e.handle()).collect();
        assert_eq!(wait_for_multiple_events(&all, 0).unwrap(), None);
        events[1].set();
        events[63].set();
        assert_eq!(wait_for_multiple_events(&all, 0).unwrap(), Some(1));
        // Still set: a wait does not reset a manual-reset event.
        assert_eq!(wait_for_multiple_events(&all, 0).unwrap(), Some(1));
        assert_eq!(wait_for_multiple_events(&all[2..], 0).unwrap(), Some(61));
        events[1].reset();
        assert_eq!(wait_for_multiple_events(&all, 0).unwrap(), Some(63));
    }

    #[test]
    fn an_immediate_completion_signals_the_event_and_a_drop_cancels() {
        use std::io::{Read, Write};
        use std::time::Duration;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (s, _) = listener.accept().unwrap();
        let stats = Stats::default();
        client.write_all(b"abc").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut c = Conn::new(s, crate::ECHO_BUFFER).unwrap();
        // The bytes are there: the receive may complete at once, and its
        // event is signalled all the same.
        c.recv().unwrap();
        let wait = |c: &Conn| wait_for_multiple_events(&[c.event.handle()], 10_000).unwrap();
        assert_eq!(wait(&c), Some(0));
        assert_eq!(c.completed(&stats), Ok(()));
        assert_eq!(c.op, Some(Op::Send));
        let mut got = [0u8; 3];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc");
        assert_eq!(wait(&c), Some(0));
        assert_eq!(c.completed(&stats), Ok(()));
        assert_eq!(c.op, Some(Op::Recv));
        assert_eq!(stats.bytes.load(Ordering::Relaxed), 3);
        // Dropped with the receive in flight: cancelled, waited for, and
        // only then freed; the peer sees the close.
        drop(c);
        let mut b = [0u8; 1];
        match client.read(&mut b) {
            Ok(n) => assert_eq!(n, 0),
            Err(e) => assert_ne!(e.kind(), io::ErrorKind::WouldBlock, "{e}"),
        }
    }

    #[test]
    fn more_than_64_events_are_refused() {
        let events: Vec<WsaEvent> = (0..=MAXIMUM_WAIT_EVENTS)
            .map(|_| WsaEvent::new().unwrap())
            .collect();
        let all: Vec<HANDLE> = events.iter().map(|e| e.handle()).collect();
        let e = wait_for_multiple_events(&all, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
