//! The completion port with a worker pool: the tutorials' IOCP echo
//! server. `cport serve` runs it with every option (TCP and UDP, a
//! connection limit, an idle timeout, the data printed), the `port` model
//! with its defaults on TCP, and the [`callback`](crate::callback) model
//! with one thread that issues and dequeues everything.
//!
//! The tutorials' shape, kept: worker threads (2 × CPUs) dequeue
//! completions, a receive completion issues a send of the same buffer and
//! the send completion issues the next receive; 0 bytes closes. What the
//! tutorials leave out and a deployed server needs:
//!
//! * **One message in flight per connection.** A connection always has
//!   exactly one operation in the port, a receive or a send, never both.
//!   A client that never reads therefore stops being read from as soon as
//!   its echo cannot be sent (backpressure without a counter), and the
//!   connection's state needs no lock on the echo path except the one that
//!   lets a timer or the shutdown find the pending receive.
//! * **No buffer pinned while idle** (SEMANTICS O6): receives are
//!   `recv_pooled`; the buffer that comes back is sent and then recycled.
//! * **Accept never spins** (SEMANTICS R2, LESSONS 6): descriptor
//!   exhaustion ends the multishot accept with an error, and the serving
//!   thread re-arms it 50 ms later.
//! * **Shutdown in bounded time**: [`Stop::stop`] closes the listener,
//!   cancels the receives of idle connections, lets echoes in progress
//!   finish (up to [`Options::shutdown_timeout`]), then closes whatever is
//!   left; [`Control::close_now`] cuts that wait short.
//!
//! Connects and disconnects are logged (`tracing`, info level) with the
//! number of connections open, in the order the lines are written.

#[cfg(test)]
mod readme;
mod run;
mod shard;
mod tcp;
mod udp;

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cport::{Backend, Completion, CompletionPort, Handle, OpId, OpKind, Workers};
use rustc_hash::FxHashMap;
use tracing::warn;

use crate::{Stats, Stop, ECHO_BUFFER};

pub use self::shard::{Shards, ShardsControl};

use self::run::{Counters, Events};
use self::tcp::Conn;
use self::udp::UdpState;

/// Receive buffers in the port's pool. On io_uring they form the
/// provided-buffer ring and go back to it as soon as their bytes are copied
/// out, so this bounds bursts, not connections: but a burst is one arrival
/// per connection whose receive the kernel completes between two reap
/// passes, and a receive that meets the ring empty is submitted again. With
/// 256, at 500 connections × 128 B, that was 0.9 more requests per echoed
/// message (2.9 against 2.0 with 512). More buffers than that cost CPU at
/// 500 × 4 KiB × 16 in flight (2048: 2.87 µs per message against 2.62): the
/// ring hands them out in turn, so the more there are, the colder each is
/// when its turn comes. bench/runs/2026-12-05/port-pool/. The ring now
/// starts with 64 and grows to what the load needs, up to this count
/// (bench/runs/2026-12-07/bufring-grow: 512 at 500 connections, 64 at 50).
const POOL_BUFFERS: u16 = 512;

/// Pause before re-arming an accept that failed (EMFILE, ENFILE, ENOBUFS…):
/// the listener stays readable while descriptors are exhausted, so an
/// immediate retry would spin (LESSONS 6).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// After the shutdown timeout, how long closed connections get to report
/// their aborted operations before the server stops anyway.
const FORCE_CLOSE_BOUND: Duration = Duration::from_secs(2);

/// Runs the echo server until `stop` is set, on the backend
/// `CPORT_BACKEND` names (io_uring where allowed, else epoll), with 2 ×
/// CPUs workers; see the [crate] docs.
pub fn serve(
    listener: TcpListener,
    stop: Stop,
    stats: Arc<Stats>,
    buffer: usize,
) -> io::Result<()> {
    serve_on(listener, stop, stats, Backend::Auto, 0, buffer)
}

/// [`serve`] on the given backend with `workers` worker threads (0: 2 ×
/// CPUs) and pool buffers of `buffer` bytes.
pub fn serve_on(
    listener: TcpListener,
    stop: Stop,
    stats: Arc<Stats>,
    backend: Backend,
    workers: usize,
    buffer: usize,
) -> io::Result<()> {
    let options = Options {
        backend,
        workers,
        buffer_size: buffer,
        ..Options::default()
    };
    Server::new(options, Some(listener), None, stats)?.serve(stop)
}

/// Which protocol a received message came by.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Called with every message received, before it is echoed (the
/// tutorials' server prints it). It runs on a worker thread.
pub type OnData = Box<dyn Fn(Protocol, SocketAddr, &[u8]) + Send + Sync>;

/// How the server runs. [`Default`] is the `port` model's: the backend
/// `CPORT_BACKEND` names, 2 × CPUs workers, no limits.
pub struct Options {
    /// Kernel mechanism of the port (`Auto` follows `CPORT_BACKEND`).
    pub backend: Backend,
    /// Worker threads dequeuing completions (0: 2 × CPUs).
    pub workers: usize,
    /// Threads allowed to run completions at once (0: the number of CPUs).
    pub concurrency: usize,
    /// Size of each receive buffer in the port's pool.
    pub buffer_size: usize,
    /// Connections beyond this many open ones are closed at once.
    pub max_conns: Option<u64>,
    /// A connection with no completed I/O for this long is closed.
    pub idle_timeout: Option<Duration>,
    /// After a stop, how long echoes in progress may take to finish.
    pub shutdown_timeout: Duration,
    /// Sees every message received.
    pub on_data: Option<OnData>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            backend: Backend::Auto,
            workers: 0,
            concurrency: 0,
            buffer_size: ECHO_BUFFER,
            max_conns: None,
            idle_timeout: None,
            shutdown_timeout: Duration::from_secs(5),
            on_data: None,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("backend", &self.backend)
            .field("workers", &self.workers)
            .field("concurrency", &self.concurrency)
            .field("buffer_size", &self.buffer_size)
            .field("max_conns", &self.max_conns)
            .field("idle_timeout", &self.idle_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("on_data", &self.on_data.is_some())
            .finish()
    }
}

/// The per-operation value (the tutorials' `PER_IO_DATA`): the connection
/// whose one operation in flight this is, or `None` for the listener's
/// accept, the UDP socket's datagrams and the serving thread's wake-up,
/// which the completion key tells apart (and the operation id, which
/// accept or which UDP slot: `Accepts`, `UdpState`).
///
/// Eight bytes keep `Completion<Tag>` at 128, moved with a few vector
/// stores. An enum with the accept's number and the UDP slot in it took 16,
/// and each move of a 136-byte completion was a call to `memcpy`:
/// user-space instructions per message of port-epoll at 50 × 128 B,
/// 4168 → 3990 (bench/instructions.sh, `bench/runs/2026-12-06/instructions`).
type Tag = Option<Arc<Conn>>;

/// The completion key of the serving thread's wake-up (a posted packet).
/// Connections are keyed by their id, which starts at 1.
const WAKE_KEY: u64 = 0;
/// The completion key of the listener.
const LISTENER_KEY: u64 = u64::MAX;
/// The completion key of the UDP socket.
const UDP_KEY: u64 = u64::MAX - 1;

/// The listener's multishot accepts not yet ended, each with its number
/// (0 for the first, then one more per re-arm), so that a late completion
/// of an ended accept is told from one of its successor. An accept is
/// recorded under the lock it was issued under, so a worker that dequeues
/// one of its completions first waits for the record.
#[derive(Default)]
struct Accepts {
    next: u32,
    live: Vec<(OpId, u32)>,
}

/// Adds `n` to a count that one thread at a time writes: a load and a
/// store, each atomic so that a reader never sees a torn value, and no
/// locked read-modify-write (`fetch_add` is one on x86) on the echo path.
fn add_single_writer(count: &AtomicU64, n: u64) {
    count.store(count.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// Who dequeues the port's completions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dequeue {
    /// A pool of this many workers; the serving thread runs the timers.
    Pool(usize),
    /// The serving thread alone, between its timers: every operation is
    /// issued and completed on it (the callback model).
    Caller,
}

/// The echo server on a completion port, built and bound, not yet serving.
pub struct Server {
    inner: Arc<Inner>,
}

/// Reaches a server while it serves, from any thread.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

/// Running totals of a server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Connections open now.
    pub open: u64,
    /// Connections served so far.
    pub served: u64,
    /// Completions dequeued.
    pub completions: u64,
    /// Bytes received, TCP and UDP.
    pub bytes_in: u64,
    /// Bytes echoed, TCP and UDP.
    pub bytes_out: u64,
}

struct Inner {
    port: CompletionPort<Tag>,
    dequeue: Dequeue,
    listener: Option<Handle>,
    udp: Option<UdpState>,
    conns: Mutex<FxHashMap<u64, Arc<Conn>>>,
    /// Connections admitted and not ended (a place is taken before the
    /// connection enters the table, so that `max_conns` holds).
    open: AtomicU64,
    next_id: AtomicU64,
    max_conns: Option<u64>,
    idle_timeout: Option<Duration>,
    shutdown_timeout: Duration,
    on_data: Option<OnData>,
    draining: AtomicBool,
    /// Accept has failed and waits for its re-arm: the warning is logged
    /// once per episode, not 20 times a second.
    accept_paused: AtomicBool,
    /// The accept operations in flight and their numbers.
    accepts: Mutex<Accepts>,
    /// 1 + the number of the accept operation that last failed.
    accept_failed: AtomicU32,
    started: Instant,
    counters: Counters,
    events: Events,
    stats: Arc<Stats>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("backend", &self.backend())
            .field("dequeue", &self.inner.dequeue)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Server {
    /// Builds the port and associates the sockets: TCP on `listener`, UDP
    /// on `udp` (at least one).
    pub fn new(
        options: Options,
        listener: Option<TcpListener>,
        udp: Option<UdpSocket>,
        stats: Arc<Stats>,
    ) -> io::Result<Server> {
        let workers = match options.workers {
            0 => 2 * thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Server::build(options, listener, udp, stats, Dequeue::Pool(workers))
    }

    /// A server whose serving thread is its only dequeuer: concurrency 1,
    /// no workers (the callback model, on Unix only so far).
    #[cfg(unix)]
    pub(crate) fn on_caller(
        backend: Backend,
        listener: TcpListener,
        stats: Arc<Stats>,
        buffer: usize,
    ) -> io::Result<Server> {
        let options = Options {
            backend,
            concurrency: 1,
            buffer_size: buffer,
            ..Options::default()
        };
        Server::build(options, Some(listener), None, stats, Dequeue::Caller)
    }

    fn build(
        options: Options,
        listener: Option<TcpListener>,
        udp: Option<UdpSocket>,
        stats: Arc<Stats>,
        dequeue: Dequeue,
    ) -> io::Result<Server> {
        crate::check_buffer(options.buffer_size)?;
        if listener.is_none() && udp.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither a TCP listener nor a UDP socket to serve",
            ));
        }
        let port: CompletionPort<Tag> = cport::Builder::new()
            .concurrency(options.concurrency)
            .backend(options.backend)
            .pool(POOL_BUFFERS, options.buffer_size)
            // Every handler issues its next operation and returns at once,
            // so batching their submissions costs no latency and saves
            // system calls.
            .batch_submissions(true)
            .build()
            .map_err(|e| context(e, "cannot create the completion port"))?;
        let listener = match listener {
            Some(l) => Some(
                port.associate(l, LISTENER_KEY)
                    .map_err(|e| context(e, "cannot associate the listener with the port"))?,
            ),
            None => None,
        };
        let udp = match udp {
            Some(u) => Some(UdpState::new(port.associate(u, UDP_KEY).map_err(|e| {
                context(e, "cannot associate the UDP socket with the port")
            })?)),
            None => None,
        };
        let inner = Inner {
            port,
            dequeue,
            listener,
            udp,
            conns: Mutex::new(FxHashMap::default()),
            open: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            max_conns: options.max_conns,
            idle_timeout: options.idle_timeout,
            shutdown_timeout: options.shutdown_timeout,
            on_data: options.on_data,
            draining: AtomicBool::new(false),
            accept_paused: AtomicBool::new(false),
            accepts: Mutex::new(Accepts::default()),
            accept_failed: AtomicU32::new(0),
            started: Instant::now(),
            counters: Counters::default(),
            events: Events::default(),
            stats,
        };
        Ok(Server {
            inner: Arc::new(inner),
        })
    }

    /// The backend the port runs on: never `Auto`.
    pub fn backend(&self) -> Backend {
        self.inner.port.backend()
    }

    /// The port's concurrency value.
    pub fn concurrency(&self) -> usize {
        self.inner.port.concurrency()
    }

    /// Worker threads [`serve`](Server::serve) starts.
    pub fn workers(&self) -> usize {
        match self.inner.dequeue {
            Dequeue::Pool(n) => n,
            Dequeue::Caller => 0,
        }
    }

    /// A handle to reach the server while it serves.
    pub fn control(&self) -> Control {
        Control {
            inner: self.inner.clone(),
        }
    }

    /// Serves until `stop` is set, then shuts down (see the module docs)
    /// and returns once every worker has ended.
    pub fn serve(self, stop: Stop) -> io::Result<()> {
        let inner = self.inner;
        let _me = inner.stats.thread();
        {
            let inner = inner.clone();
            stop.on_stop(move || inner.request_stop(1));
        }
        let pool = match inner.dequeue {
            Dequeue::Pool(n) => {
                let handler = {
                    let inner = inner.clone();
                    move |port: &CompletionPort<Tag>, c: Completion<Tag>| inner.complete(port, c)
                };
                let pool = Workers::spawn(&inner.port, n, handler)
                    .map_err(|e| context(e, "cannot start worker threads"))?;
                // Counted here: the pool's threads are not spawned through
                // `spawn`.
                inner.stats.add_threads(pool.len() as i64);
                Some(pool)
            }
            Dequeue::Caller => None,
        };
        let started = inner.start();
        if started.is_ok() {
            inner.housekeep();
            inner.drain();
        }
        let stopped = pool.map(|pool| {
            let n = pool.len() as i64;
            let r = pool.shutdown();
            inner.stats.add_threads(-n);
            r
        });
        // Drops whatever is still in flight after a forced close.
        inner.port.close_port();
        inner.stats.end_all();
        started?;
        match stopped {
            Some(Err(p)) => Err(io::Error::other(p)),
            _ => Ok(()),
        }
    }
}

impl Control {
    /// Cuts the shutdown short: every connection is closed now, echoes in
    /// progress or not. Before a stop, it stops the server that way.
    pub fn close_now(&self) {
        self.inner.request_stop(2);
    }

    /// The server's running totals.
    pub fn totals(&self) -> Totals {
        let (completions, bytes_in, bytes_out) = self.inner.counters.sum();
        Totals {
            open: self.inner.open.load(Ordering::Relaxed),
            served: self.inner.next_id.load(Ordering::Relaxed) - 1,
            completions,
            bytes_in,
            bytes_out,
        }
    }
}

impl Inner {
    /// Starts accepting and receiving datagrams.
    fn start(&self) -> io::Result<()> {
        if let Some(l) = self.listener {
            self.issue_accept(l)
                .map_err(|e| context(e, "cannot start accepting"))?;
        }
        if let Some(udp) = &self.udp {
            for slot in 0..udp.slots() {
                self.udp_recv(slot, Vec::new());
            }
        }
        Ok(())
    }

    /// The handler of every completion, on a worker (or the serving thread
    /// when it dequeues itself).
    fn complete(&self, port: &CompletionPort<Tag>, c: Completion<Tag>) {
        self.counters.add(1, 0, 0);
        let kind = c.kind;
        let more = c.more;
        let result = c.result;
        let payload = c.payload;
        match c.value {
            Some(conn) => match kind {
                OpKind::RecvPooled => self.on_recv(port, conn, result, payload),
                OpKind::Send => self.on_sent(port, conn, result, payload),
                other => warn!("unexpected {other:?} completion on a connection"),
            },
            None => match (c.key, kind) {
                (LISTENER_KEY, OpKind::Accept) => {
                    let epoch = self.accept_number(c.op, more);
                    self.on_accept(port, epoch, result, payload, more)
                }
                (UDP_KEY, OpKind::RecvFrom) => self.on_datagram(c.op, result, payload),
                (UDP_KEY, OpKind::SendTo) => self.on_datagram_sent(c.op, result, payload),
                (WAKE_KEY, OpKind::Post) => {}
                (key, other) => warn!("unexpected {other:?} completion with key {key}"),
            },
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
