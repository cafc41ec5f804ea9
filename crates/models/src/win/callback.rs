//! Overlapped I/O with completion routines, on Windows: the tutorials'
//! callback servers (seed 000's second server, seed 001's
//! `ReadComRoutine`/`WriteComRoutine`) with the calls they make. Every
//! `WSARecv` and `WSASend` names a completion routine; when the operation
//! completes, Windows queues the routine as an APC to the thread that
//! issued it, and runs it when that thread is in an alertable wait. The
//! routine issues the socket's next operation, with the next call of
//! itself. One thread does everything: it accepts, waits alertably, and
//! runs every routine.
//!
//! | Windows (seeds 000, 001) | here |
//! |---|---|
//! | `SOCKETINFO` / `PER_IO_DATA` with its `WSAOVERLAPPED` | `Conn`, `#[repr(C)]` with its `Io` (the `WSAOVERLAPPED`, then a 16 KiB buffer) first, boxed at a fixed address |
//! | `SOCKETINFO* ptr = (SOCKETINFO*)lpOverlapped` (seed 000; seed 001 passes it in `hEvent`) | the same cast: the `WSAOVERLAPPED` is the first field of the first field |
//! | `ioctlsocket(FIONBIO)`, `accept` until `WSAEWOULDBLOCK`, `SleepEx(100, TRUE)` between tries (seed 001) | `WSAEventSelect(listener, accept event, FD_ACCEPT)` (which makes the listener non-blocking) and one `accept` each time that event is set (Windows sets it again while connections wait) |
//! | `SleepEx(100, TRUE)` / `WaitForSingleObjectEx(hWriteEvent, INFINITE, TRUE)` | `WSAWaitForMultipleEvents(2, [accept event, stop event], FALSE, WSA_INFINITE, TRUE)` |
//! | `WAIT_IO_COMPLETION` | `WSA_WAIT_IO_COMPLETION`: routines ran; wait again |
//! | `WSARecv(..., lpOverlapped, ReadComRoutine)`, `WSASend(..., WriteComRoutine)` | the same calls with one routine, `completion_routine`, that knows from the socket's state which operation completed |
//! | `dwError != 0 \|\| cbTransferred == 0`: `closesocket`, `delete ptr` in the routine | the routine hands the `Conn` back to the loop, which frees it (`closesocket`, the buffer) after the wait; a peer's end of stream gets `shutdown(SD_SEND)` first |
//! | `ptr->sendbytes += cbTransferred`, `WSASend` of the rest (seed 000) | the same |
//!
//! Where it differs, and why:
//!
//! * **No polling.** Seed 001 alternates a non-blocking `accept` with
//!   `SleepEx(100, TRUE)` and says itself that this costs: a connection
//!   waits up to 100 ms, and an idle server wakes ten times a second.
//!   Here the listener signals an event object (`WSAEventSelect`) and the
//!   one alertable wait covers the listener, the stop and every routine,
//!   with no timeout. Each signal gets one `accept`, not a loop until
//!   `WSAEWOULDBLOCK`: that is enough on Windows, and the loop stalls the
//!   listener under wine (see `accept_one`). Sockets that `accept`
//!   returns inherit the listener's `WSAEventSelect`, its event object
//!   and with it non-blocking mode (`ioctlsocket(FIONBIO)` is refused with
//!   `WSAEINVAL` while it holds; a test checks both, under wine). With `FD_ACCEPT` alone it would never fire on a
//!   connected socket, but it names the listener's event: each accepted
//!   socket is taken out of it with `WSAEventSelect(s, 0, 0)`. Non-blocking
//!   mode stays, as in seed 001: an overlapped call does not heed it (it
//!   returns `WSA_IO_PENDING`, never `WSAEWOULDBLOCK`).
//! * **The stop.** The tutorials never stop. Here [`Stop`] sets the stop
//!   event; the loop then cancels every operation in flight
//!   (`CancelIoEx` on its `WSAOVERLAPPED`) and keeps waiting alertably
//!   (`SleepEx(INFINITE, TRUE)`) until every socket's routine has run with
//!   its cancellation (or its outcome, if it was done). A `Conn` is freed
//!   only once its routine has run and issued nothing more (LESSONS 1).
//! * **Freeing after the routine.** The tutorial's routine deletes its
//!   `SOCKETINFO` itself; here it hands the `Conn` back and the loop frees
//!   it once the wait returns, so that the loop's list of sockets (needed
//!   to cancel them at the stop) never names a freed one.
//! * **A routine cannot unwind.** Rust aborts a panic that reaches an
//!   `extern "system"` function's end. The routine's work does not panic
//!   (no indexing, no `unwrap`, no `RefCell`); in case it does anyway, it
//!   runs under `catch_unwind`, the panic is counted and [`serve`] returns
//!   an error at the end, and the `Conn` is handed back only if nothing of
//!   it is in flight.
//! * **A 16 KiB buffer per socket** (the tutorials' are 512 and 1024
//!   bytes) and one operation in flight per socket: the next receive is
//!   issued once the echo is sent, which is the backpressure.
//!
//! A routine runs only while this thread waits alertably. Under wine this
//! is the same: the completion is queued as a user APC to the issuing
//! thread and run inside `WSAWaitForMultipleEvents`/`SleepEx` when they
//! are alertable (NtWaitForMultipleObjects returning STATUS_USER_APC).
//! A test checks it under wine 8: a completed receive's routine does not
//! run in `Sleep`, runs in `SleepEx(.., TRUE)`, and one alertable wait
//! may run several (the echo's send, completed at once, runs in the same
//! wait as the receive that issued it).

use std::cell::Cell;
use std::collections::HashSet;
use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::Arc;

use windows_sys::Win32::Foundation::{FALSE, HANDLE, TRUE};
use windows_sys::Win32::Networking::WinSock::{
    WSAEventSelect, WSAWaitForMultipleEvents, FD_ACCEPT, WSA_INFINITE, WSA_WAIT_FAILED,
    WSA_WAIT_IO_COMPLETION,
};
use windows_sys::Win32::System::Threading::{SleepEx, INFINITE};
use windows_sys::Win32::System::IO::{CancelIoEx, OVERLAPPED};

use crate::overlapped::{start, Io, Op};
use crate::win::{socket, wsa_error, WsaEvent};
use crate::{transient_accept_error, Stats, Stop, ACCEPT_BACKOFF};

/// Runs the echo server on this one thread until `stop` is set; see the
/// [module](self) docs.
pub fn serve(
    listener: TcpListener,
    stop: Stop,
    stats: Arc<Stats>,
    buffer: usize,
) -> io::Result<()> {
    crate::check_buffer(buffer)?;
    let _me = stats.thread();
    let accept = WsaEvent::new()?;
    let stopped = Arc::new(WsaEvent::new()?);
    {
        let stopped = stopped.clone();
        stop.on_stop(move || stopped.set());
    }
    event_select(&listener, accept.handle(), FD_ACCEPT)?;
    let ctx = Ctx {
        stats,
        buffer,
        stopping: Cell::new(false),
        finished: Cell::new(Vec::new()),
        panics: Cell::new(0),
    };
    let mut conns: HashSet<*mut Conn> = HashSet::new();
    let result = run(&listener, &accept, &stopped, &stop, &ctx, &mut conns);

    // The stop (or a failed wait): no routine issues anything more; every
    // operation in flight is cancelled, and its routine, which runs in the
    // alertable waits below, hands its Conn back.
    ctx.stopping.set(true);
    for &p in &conns {
        // SAFETY: every pointer in `conns` is a live Conn with an
        // operation in flight (it is removed, then freed, only after its
        // routine handed it back); reading its socket and naming its
        // WSAOVERLAPPED, through raw places, touches nothing the kernel
        // writes.
        unsafe {
            CancelIoEx(
                socket(&(*p).stream) as HANDLE,
                &raw const (*p).io.overlapped,
            )
        };
    }
    reap(&ctx, &mut conns);
    while !conns.is_empty() {
        // SAFETY: SleepEx takes no pointers; alertable, it returns once
        // queued completion routines have run.
        unsafe { SleepEx(INFINITE, TRUE) };
        reap(&ctx, &mut conns);
    }
    let _ = event_select(&listener, 0, 0);
    ctx.stats.end_all();
    let panics = ctx.panics.get();
    if panics > 0 && result.is_ok() {
        return Err(io::Error::other(format!(
            "{} panicked",
            crate::plural(panics, "completion routine")
        )));
    }
    result
}

/// What the completion routine reaches through its `Conn`: it runs on the
/// serving thread only, inside the alertable waits, so plain `Cell`s do.
struct Ctx {
    stats: Arc<Stats>,
    /// Each connection's buffer, in bytes.
    buffer: usize,
    /// Set once the loop stops: routines issue nothing more.
    stopping: Cell<bool>,
    /// Conns whose routine ended them: nothing of theirs is in flight.
    finished: Cell<Vec<*mut Conn>>,
    /// Routines that panicked.
    panics: Cell<u64>,
}

impl Ctx {
    fn finish(&self, p: *mut Conn) {
        let mut v = self.finished.take();
        v.push(p);
        self.finished.set(v);
    }
}

/// One socket (SOCKETINFO). `io` comes first, and the WSAOVERLAPPED first
/// in it, so that the routine's `lpOverlapped` is a pointer to the Conn.
#[repr(C)]
struct Conn {
    io: Io,
    /// The operation in flight: while it is `Some`, `io` belongs to the
    /// kernel, and the Conn is not freed.
    op: Option<Op>,
    recvbytes: usize,
    sendbytes: usize,
    stream: TcpStream,
    /// The serving thread's state; it outlives every Conn.
    ctx: *const Ctx,
}

/// The loop: waits alertably for the listener, the stop and the routines.
fn run(
    listener: &TcpListener,
    accept: &WsaEvent,
    stopped: &WsaEvent,
    stop: &Stop,
    ctx: &Ctx,
    conns: &mut HashSet<*mut Conn>,
) -> io::Result<()> {
    let events = [accept.handle(), stopped.handle()];
    loop {
        reap(ctx, conns);
        if stop.is_stopped() {
            return Ok(());
        }
        // SAFETY: two open event handles, owned by the caller for the
        // duration of the call, which only reads them. Alertable: queued
        // completion routines run inside it, on this thread.
        let r = unsafe { WSAWaitForMultipleEvents(2, events.as_ptr(), FALSE, WSA_INFINITE, TRUE) };
        match r {
            // WSA_WAIT_EVENT_0: connections are waiting.
            0 => {
                accept.reset();
                accept_one(listener, accept, ctx, conns);
            }
            // The stop event: seen at the top of the loop.
            1 => {}
            r if r == WSA_WAIT_IO_COMPLETION as u32 => {}
            WSA_WAIT_FAILED => return Err(wsa_error()),
            r => {
                return Err(io::Error::other(format!(
                    "WSAWaitForMultipleEvents returned {r}"
                )))
            }
        }
    }
}

/// What the accept event calls for: one `accept`, the connection it
/// returns served.
///
/// One per wake, not until `WSAEWOULDBLOCK`: Windows posts FD_ACCEPT again
/// after each `accept` while connections are waiting, so one accept per
/// signal takes them all, and it keeps wine's listener armed. Wine 8's
/// server (server/sock.c) re-enables FD_ACCEPT only when an accept
/// succeeds (Windows after any accept, even a failing one: the
/// WSAEventSelect documentation's re-enabling rule), and it can report a
/// POLLIN it gathered before this thread's accept took the connection:
/// a loop that accepts until `WSAEWOULDBLOCK` gets such a stale signal,
/// its accept fails, and from then on the listener is not polled and no
/// connection is ever reported again (seen as connects that time out).
/// Accepting only in answer to a signal, one per signal, leaves no
/// connection for a stale signal to have been about.
fn accept_one(
    listener: &TcpListener,
    accept: &WsaEvent,
    ctx: &Ctx,
    conns: &mut HashSet<*mut Conn>,
) {
    loop {
        match listener.accept() {
            Ok((s, _)) => return add(s, ctx, conns),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if transient_accept_error(&e) => continue,
            Err(_) => {
                // Descriptors exhausted (LESSONS 6): pause, and try again
                // on the next turn of the loop.
                std::thread::sleep(ACCEPT_BACKOFF);
                accept.set();
                return;
            }
        }
    }
}

/// `WSAEventSelect(s, event, mask)`.
fn event_select(
    s: &impl std::os::windows::io::AsRawSocket,
    event: HANDLE,
    mask: u32,
) -> io::Result<()> {
    // SAFETY: the socket is open while `s` lives; `event` is an open
    // event handle (or 0, with mask 0, to clear the selection) that
    // outlives the selection: the caller clears it before closing it.
    if unsafe { WSAEventSelect(socket(s), event, mask as i32) } != 0 {
        return Err(wsa_error());
    }
    Ok(())
}

/// A new connection: its Conn, and its first WSARecv.
fn add(stream: TcpStream, ctx: &Ctx, conns: &mut HashSet<*mut Conn>) {
    // The accepted socket inherits the listener's WSAEventSelect: clear
    // it, or the socket's own events would set the accept event.
    if event_select(&stream, 0, 0).is_err() || stream.set_nodelay(true).is_err() {
        ctx.stats
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return;
    }
    // The tutorial's ZeroMemory.
    let io = Io::new(ctx.buffer);
    let p = Box::into_raw(Box::new(Conn {
        io,
        op: None,
        recvbytes: 0,
        sendbytes: 0,
        stream,
        ctx,
    }));
    ctx.stats.opened();
    // SAFETY: `p` was just allocated, nothing is in flight; it is freed
    // only by `reap`, after its routine hands it back.
    if unsafe { start_op(p, Op::Recv) }.is_ok() {
        conns.insert(p);
    } else {
        ctx.stats.ended(true);
        // SAFETY: nothing is in flight (the call failed), and no other
        // pointer to it is kept.
        drop(unsafe { Box::from_raw(p) });
    }
}

/// Frees the Conns the routines handed back.
fn reap(ctx: &Ctx, conns: &mut HashSet<*mut Conn>) {
    for p in ctx.finished.take() {
        conns.remove(&p);
        // SAFETY: `p` came from Box::into_raw in `add`; a routine handed
        // it back with nothing in flight, once: it is freed once, here
        // (the socket is closed with it).
        drop(unsafe { Box::from_raw(p) });
    }
}

/// Issues `op` for the Conn at `p`: `WSARecv` into the whole buffer, or
/// `WSASend` of what is received and not yet sent, with
/// `completion_routine`.
///
/// # Safety
///
/// `p` is a live Conn with nothing in flight, freed only after its routine
/// has run (and handed it back), and no reference to it is held.
unsafe fn start_op(p: *mut Conn, op: Op) -> io::Result<()> {
    // SAFETY: the caller guarantees `p` is live, unshared, with nothing
    // in flight; the raw places touch only its fields and read its `ctx`,
    // which outlives every Conn.
    unsafe {
        let (from, len) = match op {
            Op::Recv => {
                (*p).recvbytes = 0;
                (*p).sendbytes = 0;
                (0, (*(*p).ctx).buffer)
            }
            Op::Send => ((*p).sendbytes, (*p).recvbytes - (*p).sendbytes),
        };
        let s = socket(&(*p).stream);
        // Set before the call: the routine cannot run before this thread
        // next waits alertably, and on failure it is cleared.
        (*p).op = Some(op);
        // The Io is the Conn's first field: it stays where the Conn is
        // until `reap` frees it, after the routine.
        let io = NonNull::new_unchecked(&raw mut (*p).io);
        let r = start(s, io, op, from, len, Some(completion_routine));
        if r.is_err() {
            (*p).op = None;
        }
        r
    }
}

/// The completion routine (`ReadComRoutine` and `WriteComRoutine` in one),
/// run by Windows on the serving thread during its alertable waits.
unsafe extern "system" fn completion_routine(
    error: u32,
    transferred: u32,
    overlapped: *mut OVERLAPPED,
    _flags: u32,
) {
    let p = overlapped.cast::<Conn>();
    let ran = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `overlapped` is the WSAOVERLAPPED of a Conn (first field
        // of its first field, both `repr(C)`) that `start_op` passed with
        // this routine; the Conn is live until it is handed back, which
        // only this routine does, and its operation has just completed.
        unsafe { completed(p, error, transferred as usize) }
    }));
    if ran.is_err() {
        // SAFETY: `p` is still live (only `reap` frees it, after the
        // wait); the panic ended every borrow of it. Reading `op` and
        // `ctx` through raw places cannot panic.
        unsafe {
            let ctx = &*(*p).ctx;
            ctx.panics.set(ctx.panics.get() + 1);
            if (*p).op.is_none() {
                ctx.finish(p);
            }
        }
    }
}

/// What the routine does with an outcome: a receive of bytes is sent
/// back, a completed send is followed by the rest or the next receive; an
/// error, the peer's end of stream or the stop end the connection.
///
/// # Safety
///
/// `p` is a live Conn whose operation has just completed (nothing of it is
/// in flight), and no reference to it is held.
unsafe fn completed(p: *mut Conn, error: u32, n: usize) {
    // SAFETY: the caller guarantees `p` is live and, its operation done,
    // not in the kernel's hands; the serving thread is in its wait and
    // holds no reference to it. `ctx` outlives every Conn.
    let ctx = unsafe { &*(*p).ctx };
    // SAFETY: as above; `c` is the only reference to the Conn, and ends
    // before `start_op` reaches it through `p`.
    let c = unsafe { &mut *p };
    let Some(op) = c.op.take() else {
        return;
    };
    let next = if error != 0 {
        Err(true)
    } else {
        match op {
            Op::Recv if n == 0 => {
                // End of stream, with every byte before it echoed: pass
                // it on.
                let _ = c.stream.shutdown(Shutdown::Write);
                Err(false)
            }
            Op::Recv => {
                c.recvbytes = n.min(ctx.buffer);
                c.sendbytes = 0;
                Ok(Op::Send)
            }
            // A send of at least one byte that moved none would repeat
            // forever.
            Op::Send if n == 0 => Err(true),
            Op::Send => {
                let n = n.min(c.recvbytes - c.sendbytes);
                ctx.stats.echoed(n);
                c.sendbytes += n;
                Ok(if c.sendbytes < c.recvbytes {
                    Op::Send
                } else {
                    Op::Recv
                })
            }
        }
    };
    let ended = match next {
        // The stop's `end_all` counts it.
        _ if ctx.stopping.get() => None,
        Err(error) => Some(error),
        // SAFETY: nothing is in flight (just taken) and `c`, the only
        // reference, is not used after this.
        Ok(op) => match unsafe { start_op(p, op) } {
            Ok(()) => return,
            Err(_) => Some(true),
        },
    };
    if let Some(error) = ended {
        ctx.stats.ended(error);
    }
    ctx.finish(p);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;
    use windows_sys::Win32::Foundation::WAIT_IO_COMPLETION;

    #[test]
    fn an_accepted_socket_inherits_the_listeners_event_selection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let accept = WsaEvent::new().unwrap();
        event_select(&listener, accept.handle(), FD_ACCEPT).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let events = [accept.handle()];
        // SAFETY: one open event handle, read by the call.
        let r = unsafe { WSAWaitForMultipleEvents(1, events.as_ptr(), FALSE, 10_000, FALSE) };
        assert_eq!(r, 0, "FD_ACCEPT sets the event");
        let (s, _) = listener.accept().unwrap();
        // Non-blocking, as the listener is, and held so: FIONBIO is
        // refused (WSAEINVAL) while a WSAEventSelect is in force.
        let mut b = [0u8; 1];
        let read = (&s).read(&mut b).unwrap_err();
        assert_eq!(read.kind(), io::ErrorKind::WouldBlock);
        let fionbio = s.set_nonblocking(false).unwrap_err();
        assert_eq!(fionbio.raw_os_error(), Some(10022), "{fionbio}");
        // Cleared, the socket is its own again.
        event_select(&s, 0, 0).unwrap();
        s.set_nonblocking(false).unwrap();
        let _ = event_select(&listener, 0, 0);
    }

    #[test]
    fn a_routine_runs_only_in_an_alertable_wait() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (s, _) = listener.accept().unwrap();
        let ctx = Ctx {
            stats: Arc::new(Stats::default()),
            buffer: crate::ECHO_BUFFER,
            stopping: Cell::new(false),
            finished: Cell::new(Vec::new()),
            panics: Cell::new(0),
        };
        let mut conns = HashSet::new();
        add(s, &ctx, &mut conns);
        let p = *conns.iter().next().expect("the first WSARecv is in flight");
        // SAFETY (each read of `op` below): `p` is live until `reap`, and
        // `op` is not a field the kernel writes.
        let op = || unsafe { (*p).op };
        client.write_all(b"ping").unwrap();
        // Not alertable: the receive completes, its routine waits.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(op(), Some(Op::Recv));
        // Alertable: the routine runs here, and sends the echo (whose own
        // routine may run in the same wait: an alertable wait runs every
        // routine queued, those queued meanwhile included).
        // SAFETY: SleepEx takes no pointers.
        assert_eq!(unsafe { SleepEx(10_000, TRUE) }, WAIT_IO_COMPLETION);
        let mut got = [0u8; 4];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        // The send's routine issues the next receive.
        while op() != Some(Op::Recv) {
            // SAFETY: as above.
            assert_eq!(unsafe { SleepEx(10_000, TRUE) }, WAIT_IO_COMPLETION);
        }
        assert_eq!(
            ctx.stats.bytes.load(std::sync::atomic::Ordering::Relaxed),
            4
        );
        // The stop: cancelled, the receive's routine hands the Conn back.
        ctx.stopping.set(true);
        // SAFETY: `p` is live with a receive in flight.
        unsafe {
            CancelIoEx(
                socket(&(*p).stream) as HANDLE,
                &raw const (*p).io.overlapped,
            )
        };
        while !conns.is_empty() {
            // SAFETY: as above.
            assert_eq!(unsafe { SleepEx(10_000, TRUE) }, WAIT_IO_COMPLETION);
            reap(&ctx, &mut conns);
        }
        assert_eq!(ctx.panics.get(), 0);
    }
}
