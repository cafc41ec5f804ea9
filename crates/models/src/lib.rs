//! The tutorials' socket I/O models, each as the same TCP echo server.
//!
//! The tutorials compare blocking sockets, non-blocking polling, select,
//! WSAAsyncSelect, WSAEventSelect, overlapped I/O with event objects and
//! with completion routines, and the completion port in tables of claims.
//! Each module here is one model, written as the tutorials write it, so
//! that `cport bench` can measure the claims instead:
//!
//! | model | module | threads |
//! |---|---|---|
//! | blocking sockets | [`blocking`] | one per connection |
//! | non-blocking polling (NonblockTCPServer) | [`nonblocking`] | one, never sleeps |
//! | `select` | [`select`] | one per group of FD_SETSIZE sockets |
//! | `poll` | [`poll`] | one |
//! | epoll readiness reactor | [`epoll`] | one |
//! | WSAAsyncSelect (window messages) | [`message`] | one message loop |
//! | WSAEventSelect (event objects) | [`event`] | one per 64 events |
//! | overlapped I/O with event objects | [`overlapped`] | one per 64 events, and a completion thread |
//! | overlapped I/O with completion routines | [`callback`] | one, alertable |
//! | completion port | [`port`] | a worker pool |
//!
//! Each model has a Windows form written with the Winsock calls the
//! tutorials make (`select` on a 64-socket `fd_set`, `WSAPoll`,
//! `WSAAsyncSelect` with a message-only window, `WSAEventSelect`,
//! `WSARecv`/`WSASend` with event objects or completion routines) and a
//! Unix form with stand-ins for those calls, each described in its module.
//! epoll is Linux's alone: [`Model::unavailable`] says so on Windows.
//!
//! [`port`] is also the whole server `cport serve` runs (UDP, limits,
//! timeouts, a graceful shutdown); the `port` model is that server with
//! its defaults, and [`callback`] is it again with one thread.
//!
//! Every model has the signature of [`serve`]: it takes a bound listener,
//! echoes every connection's bytes back until the peer closes (a
//! half-close gets every byte echoed, then end of stream), survives peers
//! that reset, counts into [`Stats`] and returns once [`Stop::stop`] is
//! called and its threads have ended.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

// One module per model, under the same name on both platforms. On Unix
// the Winsock calls the tutorials make have stand-ins (poll for
// WaitForMultipleObjects, eventfd for an event object, a channel for a
// window's message queue); on Windows the models in `win/` make the
// Winsock calls themselves. Blocking and non-blocking sockets are the
// standard library's on both (its `set_nonblocking` is
// `ioctlsocket(FIONBIO)` on Windows). epoll is Linux's alone.
pub mod blocking;
#[cfg_attr(windows, path = "win/callback.rs")]
pub mod callback;
#[cfg(unix)]
pub mod epoll;
#[cfg_attr(windows, path = "win/event.rs")]
pub mod event;
#[cfg_attr(windows, path = "win/message.rs")]
pub mod message;
pub mod nonblocking;
#[cfg_attr(windows, path = "win/overlapped.rs")]
pub mod overlapped;
#[cfg_attr(windows, path = "win/poll.rs")]
pub mod poll;
pub mod port;
#[cfg_attr(windows, path = "win/select.rs")]
pub mod select;
#[cfg(unix)]
mod signal;
#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::{drain, poll_fds, pollfd, stop_socket};
#[cfg(windows)]
mod win;

/// One I/O model.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Model {
    /// A thread per connection, blocking reads and writes.
    Blocking,
    /// One thread looping over non-blocking sockets without ever waiting.
    Nonblocking,
    /// `select(2)`, one thread per FD_SETSIZE group.
    Select,
    /// `poll(2)`, one thread.
    Poll,
    /// An epoll readiness reactor, one thread.
    Epoll,
    /// Socket events as messages to one message loop.
    Message,
    /// Event objects (eventfd) signalled per socket, one waiting thread per 64.
    Event,
    /// Overlapped I/O signalled through event objects (eventfd), one
    /// waiting thread per 64.
    Overlapped,
    /// Overlapped I/O with completion routines, run on the issuing thread.
    Callback,
    /// The completion port with a worker pool.
    Port,
}

impl Model {
    /// Every model, in the tutorials' order.
    pub const ALL: [Model; 10] = [
        Model::Blocking,
        Model::Nonblocking,
        Model::Select,
        Model::Poll,
        Model::Epoll,
        Model::Message,
        Model::Event,
        Model::Overlapped,
        Model::Callback,
        Model::Port,
    ];

    /// The name the CLI and benchmark columns use.
    pub fn name(self) -> &'static str {
        match self {
            Model::Blocking => "blocking",
            Model::Nonblocking => "nonblocking",
            Model::Select => "select",
            Model::Poll => "poll",
            Model::Epoll => "epoll",
            Model::Message => "message",
            Model::Event => "event",
            Model::Overlapped => "overlapped",
            Model::Callback => "callback",
            Model::Port => "port",
        }
    }

    /// Why this model cannot run on this platform, or `None` if it can:
    /// every model runs on Unix; on Windows every model but epoll, which
    /// is Linux's (Windows' readiness models are select, WSAAsyncSelect
    /// and WSAEventSelect).
    pub fn unavailable(self) -> Option<String> {
        if cfg!(unix) || self != Model::Epoll {
            None
        } else {
            Some(
                "the epoll model is Linux's: Windows has no epoll (its readiness \
                 models are select, message (WSAAsyncSelect) and event (WSAEventSelect))"
                    .to_string(),
            )
        }
    }

    /// Runs this model's echo server on `listener` until `stop` is set,
    /// with `buffer` bytes per connection ([`ECHO_BUFFER`] is the
    /// default; [`MIN_BUFFER`]..=[`MAX_BUFFER`], else `InvalidInput`).
    /// A model [`unavailable`](Model::unavailable) here fails with
    /// [`Unsupported`](io::ErrorKind::Unsupported) and that reason.
    pub fn serve(
        self,
        listener: TcpListener,
        stop: Stop,
        stats: Arc<Stats>,
        buffer: usize,
    ) -> io::Result<()> {
        let f = match self {
            Model::Blocking => blocking::serve,
            Model::Nonblocking => nonblocking::serve,
            Model::Select => select::serve,
            Model::Poll => poll::serve,
            #[cfg(unix)]
            Model::Epoll => epoll::serve,
            Model::Message => message::serve,
            Model::Event => event::serve,
            Model::Overlapped => overlapped::serve,
            Model::Callback => callback::serve,
            Model::Port => port::serve,
            #[cfg(not(unix))]
            Model::Epoll => {
                let why = self.unavailable().unwrap_or_default();
                return Err(io::Error::new(io::ErrorKind::Unsupported, why));
            }
        };
        f(listener, stop, stats, buffer)
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown model name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownModel(pub String);

impl fmt::Display for UnknownModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Model::ALL.iter().map(|m| m.name()).collect();
        write!(
            f,
            "unknown model {:?} (expected one of: {})",
            self.0,
            names.join(", ")
        )
    }
}

impl std::error::Error for UnknownModel {}

impl FromStr for Model {
    type Err = UnknownModel;

    fn from_str(s: &str) -> Result<Model, UnknownModel> {
        Model::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownModel(s.to_string()))
    }
}

/// The signature every model shares (this one is [`Model::serve`]'s).
pub fn serve(
    model: Model,
    listener: TcpListener,
    stop: Stop,
    stats: Arc<Stats>,
    buffer: usize,
) -> io::Result<()> {
    model.serve(listener, stop, stats, buffer)
}

/// What a model counts while it serves. Every field is a running total
/// except `open` and `threads`, which are current values.
#[derive(Default, Debug)]
pub struct Stats {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections refused by the model's own limit (select's FD_SETSIZE).
    pub refused: AtomicU64,
    /// Connections closed, whatever the reason.
    pub closed: AtomicU64,
    /// Connections that ended with an error (a reset, a failed write).
    pub errors: AtomicU64,
    /// Bytes echoed back.
    pub bytes: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Threads the model runs now, the caller's included.
    pub threads: AtomicU64,
    /// The most threads the model ran at once.
    pub peak_threads: AtomicU64,
}

impl Stats {
    pub(crate) fn opened(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn ended(&self, error: bool) {
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.closed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn echoed(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts `n` more (or, negative, fewer) threads.
    pub(crate) fn add_threads(&self, n: i64) {
        if n >= 0 {
            let now = self.threads.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            self.peak_threads.fetch_max(now, Ordering::Relaxed);
        } else {
            self.threads.fetch_sub(n.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Counts a thread for as long as the returned guard lives.
    pub(crate) fn thread(self: &Arc<Self>) -> ThreadCount {
        self.add_threads(1);
        ThreadCount(self.clone())
    }
}

pub(crate) struct ThreadCount(Arc<Stats>);

impl Drop for ThreadCount {
    fn drop(&mut self) {
        self.0.threads.fetch_sub(1, Ordering::Relaxed);
    }
}

type Waker = Box<dyn Fn() + Send>;

/// Tells a running model to stop. Clones share one flag.
///
/// Each model registers how to wake its waiting threads (a connection to
/// its own listener for a blocked `accept`, a byte on a wake socket, a
/// posted packet), so that stopping takes no polling interval.
#[derive(Clone, Default)]
pub struct Stop(Arc<StopInner>);

#[derive(Default)]
struct StopInner {
    stopped: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl fmt::Debug for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stop")
            .field("stopped", &self.is_stopped())
            .finish_non_exhaustive()
    }
}

impl Stop {
    /// A flag not yet set.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Sets the flag and wakes the model's waiting threads.
    pub fn stop(&self) {
        let wakers = {
            let mut w = lock(&self.0.wakers);
            self.0.stopped.store(true, Ordering::SeqCst);
            std::mem::take(&mut *w)
        };
        for wake in wakers {
            wake();
        }
    }

    /// Whether [`stop`](Stop::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::SeqCst)
    }

    /// Runs `wake` when the flag is set (at once if it already is).
    pub(crate) fn on_stop(&self, wake: impl Fn() + Send + 'static) {
        let mut w = lock(&self.0.wakers);
        if self.0.stopped.load(Ordering::SeqCst) {
            drop(w);
            wake();
        } else {
            w.push(Box::new(wake));
        }
    }

    /// Wakes an `accept` blocked on the listener at `addr` by connecting
    /// to it when the flag is set.
    pub(crate) fn wake_accept(&self, addr: SocketAddr) {
        self.on_stop(move || {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        });
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state behind every lock here stays consistent across a panic
    // (single pushes and removals); the panic itself surfaces on join.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pause after a failed accept: with descriptors exhausted the listener
/// stays ready and an immediate retry would spin (LESSONS 6).
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Whether an accept error is the peer's doing (the connection was reset
/// while queued) rather than a reason to back off.
pub(crate) fn transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Each model's buffer per connection unless told otherwise (`cport serve
/// --buffer-size`): what a readiness model holds read and not yet written
/// back, what a blocking or overlapped read reads into, the port's pool
/// buffers. A connection whose echo cannot be sent stops being read from
/// once its buffer is full (backpressure, as in `cport serve`).
pub const ECHO_BUFFER: usize = 16 * 1024;

/// The least buffer a model takes: a smaller one would only add calls.
pub const MIN_BUFFER: usize = 64;

/// The largest buffer a model takes per connection.
pub const MAX_BUFFER: usize = 1 << 20;

/// `InvalidInput` unless `buffer` is in [`MIN_BUFFER`]..=[`MAX_BUFFER`]:
/// every model's entry checks it, as an empty buffer would read as end of
/// stream, or never be read into.
pub(crate) fn check_buffer(buffer: usize) -> io::Result<()> {
    if (MIN_BUFFER..=MAX_BUFFER).contains(&buffer) {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("a buffer of {buffer} bytes: a model takes {MIN_BUFFER} to {MAX_BUFFER}"),
    ))
}

/// The echo state of one non-blocking connection, shared by every
/// readiness model: bytes read and not yet written, and whether the peer
/// has finished sending.
pub(crate) struct Echo {
    pub(crate) stream: TcpStream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
}

/// What [`Echo::pump`] achieved.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Pumped {
    /// Nothing could move.
    Idle,
    /// Some bytes moved; the connection goes on.
    Moved,
    /// The peer closed and everything it sent was echoed: close now.
    Done,
}

impl Echo {
    /// `buffer`: the bytes it holds read and not yet written back.
    pub(crate) fn new(stream: TcpStream, buffer: usize) -> io::Result<Echo> {
        stream.set_nonblocking(true)?;
        // Echoes are small request-response exchanges: Nagle's delay
        // would add 40 ms to every one that follows an unacknowledged one.
        stream.set_nodelay(true)?;
        Ok(Echo {
            stream,
            buf: vec![0; buffer].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
        })
    }

    /// Whether the connection wants to be told it is readable.
    pub(crate) fn wants_read(&self) -> bool {
        !self.eof && self.end < self.buf.len()
    }

    /// Whether the connection wants to be told it is writable.
    pub(crate) fn wants_write(&self) -> bool {
        self.start < self.end
    }

    /// Reads and writes until both would block (or are not wanted). Going
    /// on until `WouldBlock` is what lets edge-triggered readiness work.
    pub(crate) fn pump(&mut self, stats: &Stats) -> io::Result<Pumped> {
        let mut moved = false;
        loop {
            let mut progress = false;
            if self.wants_write() {
                match (&self.stream).write(&self.buf[self.start..self.end]) {
                    Ok(n) => {
                        stats.echoed(n);
                        self.start += n;
                        if self.start == self.end {
                            self.start = 0;
                            self.end = 0;
                        }
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            if self.wants_read() {
                match (&self.stream).read(&mut self.buf[self.end..]) {
                    Ok(0) => {
                        self.eof = true;
                        progress = true;
                    }
                    Ok(n) => {
                        self.end += n;
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            moved |= progress;
            if self.eof && !self.wants_write() {
                return Ok(Pumped::Done);
            }
            if !progress {
                return Ok(if moved { Pumped::Moved } else { Pumped::Idle });
            }
        }
    }
}

/// `n` and the noun, singular for one: "1 connection", "2 connections".
/// Shared with the `cport` command, so that every count it prints reads
/// right.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Spawns a named thread counted in `stats`.
pub(crate) fn spawn<F>(name: &str, stats: &Arc<Stats>, f: F) -> io::Result<thread::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let count = stats.thread();
    thread::Builder::new().name(name.into()).spawn(move || {
        let _count = count;
        f()
    })
}

/// The index of the first group with room (fewer than `limit` sockets, by
/// its `count`), starting another with `start` when all are full: the
/// thread per group of sockets of the select, event and overlapped models.
pub(crate) fn group_with_room<G>(
    groups: &mut Vec<G>,
    threads: &mut Vec<thread::JoinHandle<()>>,
    limit: usize,
    count: impl Fn(&G) -> &AtomicUsize,
    start: impl FnOnce() -> io::Result<(G, thread::JoinHandle<()>)>,
) -> io::Result<usize> {
    if let Some(i) = groups
        .iter()
        .position(|g| count(g).load(Ordering::Acquire) < limit)
    {
        return Ok(i);
    }
    let (g, t) = start()?;
    threads.push(t);
    groups.push(g);
    Ok(groups.len() - 1)
}

/// Joins `threads`, turning a panic into an error.
pub(crate) fn join_all(threads: Vec<thread::JoinHandle<()>>) -> io::Result<()> {
    let mut panicked = 0;
    for t in threads {
        if t.join().is_err() {
            panicked += 1;
        }
    }
    if panicked > 0 {
        Err(io::Error::other(format!(
            "{} panicked",
            plural(panicked as u64, "model thread")
        )))
    } else {
        Ok(())
    }
}

impl Stats {
    /// Counts every connection still open as closed (the model is
    /// stopping and drops them).
    pub(crate) fn end_all(&self) {
        let open = self.open.swap(0, Ordering::Relaxed);
        self.closed.fetch_add(open, Ordering::Relaxed);
    }
}

/// Accepts the next connection on the blocking `listener` of the models
/// whose accept thread blocks (blocking, select, event): transient errors
/// are retried at once, others (descriptor exhaustion, LESSONS 6) after
/// `ACCEPT_BACKOFF`, so a saturated server does not spin. `None` once
/// `stop` is set; the connection `Stop::wake_accept` makes to unblock the
/// accept is dropped.
pub(crate) fn accept_blocking(listener: &TcpListener, stop: &Stop) -> Option<TcpStream> {
    loop {
        if stop.is_stopped() {
            return None;
        }
        match listener.accept() {
            Ok((s, _)) if stop.is_stopped() => {
                drop(s);
                return None;
            }
            Ok((s, _)) => return Some(s),
            Err(e) if transient_accept_error(&e) => {}
            Err(_) => thread::sleep(ACCEPT_BACKOFF),
        }
    }
}

/// Accepts every connection waiting on the non-blocking `listener`,
/// handing each to `add`. Returns `true` after `WouldBlock`, or `false`
/// after a pause on an error such as descriptor exhaustion (LESSONS 6):
/// connections may still be waiting, and an edge-triggered caller will
/// not be told again, so it must retry.
#[must_use]
pub(crate) fn accept_ready(listener: &TcpListener, mut add: impl FnMut(TcpStream)) -> bool {
    loop {
        match listener.accept() {
            Ok((s, _)) => add(s),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if transient_accept_error(&e) => continue,
            Err(_) => {
                thread::sleep(ACCEPT_BACKOFF);
                return false;
            }
        }
    }
}

/// Whether a connection goes on after a pump, counting its end if not.
pub(crate) fn keep(r: io::Result<Pumped>, stats: &Stats) -> bool {
    match r {
        Ok(Pumped::Idle | Pumped::Moved) => true,
        Ok(Pumped::Done) => {
            stats.ended(false);
            false
        }
        Err(_) => {
            stats.ended(true);
            false
        }
    }
}
