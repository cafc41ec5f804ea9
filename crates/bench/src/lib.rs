//! The workloads that cport's benchmarks and the `syscalls` binary share,
//! so that a criterion figure and a system-call count describe the same
//! code path.
//!
//! * [`PingPong`], [`ChannelPingPong`] and [`CondvarPingPong`]: one
//!   message bounced between two threads through two queues (two cport
//!   ports, two crossbeam channels, or two `Mutex` + `Condvar` queues), one
//!   round trip per call of `round_trips(1)`.
//! * [`post_get_same_thread`] and [`channel_same_thread`]: a post (send)
//!   and its get (receive) on one thread, nothing crossing threads.
//! * [`EchoServer`] and [`EchoClient`]: a loopback TCP echo server on a
//!   cport port (a [`Workers`] pool: receive completion → send of the same
//!   buffer, send completion → next receive) and a blocking `std` client
//!   that keeps one 64-byte message in flight per connection.
//!
//! Every wait is bounded by [`STALL`], so a broken port fails the run with
//! an error instead of hanging it; every thread started here ends when its
//! owner is stopped or dropped.
//!
//! The peer echo servers `cport bench` measures cport against
//! (`tokio-echo`, `uring-echo`, `epoll-echo` in src/bin) share [`peer`].
//!
//! `docs/design/benchmark-method.md` says what each figure means.

pub mod peer;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cport::{Backend, Completion, CompletionPort, GetError, OpKind, Payload, Workers};

/// The longest any single wait of a workload may take before the run is
/// declared stuck. Far above any healthy round trip (microseconds), so it
/// only ever fires on a hang.
pub const STALL: Duration = Duration::from_secs(10);

/// Bytes in one echoed message.
pub const MSG: usize = 64;

/// Capacity of each connection's receive buffer on the echo server: more
/// than one message, so a receive is never cut short by the buffer.
const RECV_CAP: usize = 4096;

/// A port with default settings on `backend` (never `Auto`: a figure must
/// name the backend it measured).
pub fn port(backend: Backend) -> io::Result<CompletionPort<()>> {
    cport::Builder::new().backend(backend).build()
}

/// The backends a port can start on here, io_uring first. One that cannot
/// start is left out with its reason printed (io_uring may be refused by
/// `kernel.io_uring_disabled` or a seccomp filter).
pub fn usable_backends() -> Vec<Backend> {
    let mut usable = Vec::new();
    for b in [Backend::Uring, Backend::Epoll] {
        match port(b) {
            Ok(_) => usable.push(b),
            Err(e) => eprintln!("skipping the {b} backend: {e}"),
        }
    }
    usable
}

fn stalled(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what}: nothing within {STALL:?}: the workload is stuck"),
    )
}

fn get_error(what: &str, e: GetError) -> io::Error {
    match e {
        GetError::Timeout => stalled(what),
        _ => io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}")),
    }
}

fn mismatch(what: &str, want: u64, got: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what}: expected message {want}, got {got}"),
    )
}

fn partner_panicked() -> io::Error {
    io::Error::other("the partner thread panicked")
}

/// A message bounced between this thread and a partner through two cport
/// ports: this thread posts to `ping`, the partner gets from `ping` and
/// posts to `pong`, this thread gets from `pong`.
///
/// Each port has exactly one consumer, so the concurrency limit never
/// holds a completion back; what is measured is the hand-off itself:
/// queueing, waking the blocked consumer, and its return from `get`.
#[derive(Debug)]
pub struct PingPong {
    ping: CompletionPort<()>,
    pong: CompletionPort<()>,
    partner: Option<JoinHandle<io::Result<()>>>,
}

impl PingPong {
    /// Makes both ports on `backend` and starts the partner thread.
    pub fn start(backend: Backend) -> io::Result<PingPong> {
        let ping = port(backend)?;
        let pong = port(backend)?;
        let (p, q) = (ping.clone(), pong.clone());
        let partner = thread::Builder::new()
            .name("pingpong-partner".into())
            .spawn(move || {
                loop {
                    // No timeout: the partner idles between criterion's
                    // samples for as long as the analysis takes, and is
                    // ended by `close_port`.
                    match p.get(None) {
                        Ok(c) => q.post(c.key, 0, ())?,
                        Err(GetError::Closed) => return Ok(()),
                        Err(e) => return Err(get_error("partner get", e)),
                    }
                }
            })?;
        Ok(PingPong {
            ping,
            pong,
            partner: Some(partner),
        })
    }

    /// Runs `n` round trips (2 `n` hand-offs), checking that each message
    /// that comes back is the one sent.
    pub fn round_trips(&self, n: u64) -> io::Result<()> {
        for i in 0..n {
            self.ping.post(i, 0, ())?;
            let c = self
                .pong
                .get(Some(STALL))
                .map_err(|e| get_error("get from pong", e))?;
            if c.key != i {
                return Err(mismatch("ping-pong", i, c.key));
            }
        }
        Ok(())
    }

    /// Closes both ports and waits for the partner; reports its error.
    pub fn stop(mut self) -> io::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> io::Result<()> {
        self.ping.close_port();
        self.pong.close_port();
        match self.partner.take() {
            Some(t) => t.join().map_err(|_| partner_panicked())?,
            None => Ok(()),
        }
    }
}

impl Drop for PingPong {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// [`PingPong`]'s shape on two unbounded crossbeam channels: the reference
/// the issue asks cport's hand-off to match.
#[derive(Debug)]
pub struct ChannelPingPong {
    ping: Option<crossbeam_channel::Sender<u64>>,
    pong: crossbeam_channel::Receiver<u64>,
    partner: Option<JoinHandle<()>>,
}

impl ChannelPingPong {
    /// Makes both channels and starts the partner thread.
    pub fn start() -> io::Result<ChannelPingPong> {
        let (ping_tx, ping_rx) = crossbeam_channel::unbounded::<u64>();
        let (pong_tx, pong_rx) = crossbeam_channel::unbounded::<u64>();
        let partner = thread::Builder::new()
            .name("channel-partner".into())
            .spawn(move || {
                // Ends when the ping sender is dropped, or when this
                // thread's owner stopped listening.
                while let Ok(v) = ping_rx.recv() {
                    if pong_tx.send(v).is_err() {
                        return;
                    }
                }
            })?;
        Ok(ChannelPingPong {
            ping: Some(ping_tx),
            pong: pong_rx,
            partner: Some(partner),
        })
    }

    /// Runs `n` round trips, checking each message.
    pub fn round_trips(&self, n: u64) -> io::Result<()> {
        let ping = self
            .ping
            .as_ref()
            .ok_or_else(|| io::Error::other("stopped"))?;
        for i in 0..n {
            ping.send(i)
                .map_err(|_| io::Error::other("the partner thread is gone"))?;
            let got = self
                .pong
                .recv_timeout(STALL)
                .map_err(|_| stalled("recv from pong"))?;
            if got != i {
                return Err(mismatch("channel ping-pong", i, got));
            }
        }
        Ok(())
    }

    /// Drops the sender and waits for the partner.
    pub fn stop(mut self) -> io::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> io::Result<()> {
        self.ping = None;
        match self.partner.take() {
            Some(t) => t.join().map_err(|_| partner_panicked()),
            None => Ok(()),
        }
    }
}

impl Drop for ChannelPingPong {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A queue that always blocks in the kernel: a `Mutex<VecDeque>` and a
/// `Condvar`. The reference for what a futex sleep and wake costs, since
/// crossbeam spins before it sleeps and cport's waiter does not.
#[derive(Debug, Default)]
struct BlockingQueue {
    items: Mutex<(std::collections::VecDeque<u64>, bool)>,
    ready: Condvar,
}

impl BlockingQueue {
    fn push(&self, v: u64) {
        self.items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .push_back(v);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.ready.notify_all();
    }

    /// The next item; `None` once closed, or after `timeout`.
    fn pop(&self, timeout: Option<Duration>) -> Option<u64> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut q = self.items.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(v) = q.0.pop_front() {
                return Some(v);
            }
            if q.1 {
                return None;
            }
            q = match deadline {
                None => self.ready.wait(q).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    self.ready
                        .wait_timeout(q, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }
}

/// [`PingPong`]'s shape on two [`Mutex`] + [`Condvar`] queues: every
/// hand-off puts the receiver to sleep in the kernel and wakes it with a
/// futex, with no spinning. Explains the gap between cport and crossbeam.
#[derive(Debug)]
pub struct CondvarPingPong {
    ping: Arc<BlockingQueue>,
    pong: Arc<BlockingQueue>,
    partner: Option<JoinHandle<()>>,
}

impl CondvarPingPong {
    /// Makes both queues and starts the partner thread.
    pub fn start() -> io::Result<CondvarPingPong> {
        let ping = Arc::new(BlockingQueue::default());
        let pong = Arc::new(BlockingQueue::default());
        let (p, q) = (ping.clone(), pong.clone());
        let partner = thread::Builder::new()
            .name("condvar-partner".into())
            .spawn(move || {
                while let Some(v) = p.pop(None) {
                    q.push(v);
                }
            })?;
        Ok(CondvarPingPong {
            ping,
            pong,
            partner: Some(partner),
        })
    }

    /// Runs `n` round trips, checking each message.
    pub fn round_trips(&self, n: u64) -> io::Result<()> {
        for i in 0..n {
            self.ping.push(i);
            let got = self
                .pong
                .pop(Some(STALL))
                .ok_or_else(|| stalled("pop from pong"))?;
            if got != i {
                return Err(mismatch("condvar ping-pong", i, got));
            }
        }
        Ok(())
    }

    /// Closes the queues and waits for the partner.
    pub fn stop(mut self) -> io::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> io::Result<()> {
        self.ping.close();
        self.pong.close();
        match self.partner.take() {
            Some(t) => t.join().map_err(|_| partner_panicked()),
            None => Ok(()),
        }
    }
}

impl Drop for CondvarPingPong {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// `n` times: post a packet and get it back on the same thread. Nothing
/// crosses threads and nothing should enter the kernel: this is the cost
/// of the port's user-space queue alone.
pub fn post_get_same_thread(port: &CompletionPort<()>, n: u64) -> io::Result<()> {
    for i in 0..n {
        port.post(i, 0, ())?;
        // The packet is queued: this returns at once. The timeout is there
        // for symmetry with `recv_timeout` below (both read the clock) and
        // so that a broken queue fails instead of hanging.
        let c = port
            .get(Some(STALL))
            .map_err(|e| get_error("same-thread get", e))?;
        if c.key != i {
            return Err(mismatch("same-thread post/get", i, c.key));
        }
    }
    Ok(())
}

/// [`post_get_same_thread`] on a crossbeam channel.
pub fn channel_same_thread(
    tx: &crossbeam_channel::Sender<u64>,
    rx: &crossbeam_channel::Receiver<u64>,
    n: u64,
) -> io::Result<()> {
    for i in 0..n {
        tx.send(i).map_err(|_| io::Error::other("channel closed"))?;
        let got = rx
            .recv_timeout(STALL)
            .map_err(|_| stalled("same-thread recv"))?;
        if got != i {
            return Err(mismatch("same-thread channel", i, got));
        }
    }
    Ok(())
}

/// What the echo server's handler counts, shared with its owner.
#[derive(Debug, Default)]
struct EchoCounts {
    /// Bytes whose send completed.
    bytes: AtomicU64,
    /// Connections accepted, and connections closed (the peer's FIN, an
    /// error, or a refused operation), under one lock so a waiter sees both.
    conns: Mutex<Conns>,
    changed: Condvar,
    /// The first unexpected error the handler met, for the report.
    error: Mutex<Option<String>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Conns {
    accepted: u64,
    closed: u64,
}

impl EchoCounts {
    fn note_error(&self, what: String) {
        let mut e = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_none() {
            *e = Some(what);
        }
    }

    fn bump(&self, f: impl FnOnce(&mut Conns)) {
        let mut c = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c);
        self.changed.notify_all();
    }
}

/// A loopback TCP echo server on a cport port.
///
/// The listener is associated with the port and served by a multishot
/// accept; each accepted connection gets one receive buffer that goes back
/// and forth: receive completion → send of the same buffer → send
/// completion → next receive. The handlers run on a [`Workers`] pool.
#[derive(Debug)]
pub struct EchoServer {
    port: CompletionPort<()>,
    workers: Option<Workers<()>>,
    addr: SocketAddr,
    counts: Arc<EchoCounts>,
}

impl EchoServer {
    /// Binds 127.0.0.1 on a free port and starts `threads` workers.
    pub fn start(backend: Backend, threads: usize) -> io::Result<EchoServer> {
        // Its handlers issue the next operation and return at once, as
        // `cport serve`'s do: batching their submissions is safe here.
        let port = cport::Builder::new()
            .backend(backend)
            .batch_submissions(true)
            .build()?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let lh = port.associate(listener, u64::MAX - 1)?;
        let counts = Arc::new(EchoCounts::default());
        let c = counts.clone();
        let next_key = AtomicU64::new(0);
        let workers = Workers::spawn(&port, threads.max(1), move |port, comp| {
            handle(port, comp, &c, &next_key)
        })?;
        port.accept_multi(lh, ()).map_err(io::Error::from)?;
        Ok(EchoServer {
            port,
            workers: Some(workers),
            addr,
            counts,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes echoed so far (counted when their send completed).
    pub fn echoed_bytes(&self) -> u64 {
        self.counts.bytes.load(Ordering::Relaxed)
    }

    /// Waits until `n` connections were accepted and closed again, or
    /// `deadline` passes (`TimedOut`).
    pub fn wait_closed(&self, n: u64, deadline: Instant) -> io::Result<()> {
        let mut c = self.counts.conns.lock().unwrap_or_else(|p| p.into_inner());
        while c.closed < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "echo server: {} of {n} connections closed ({} accepted) at the deadline",
                        c.closed, c.accepted
                    ),
                ));
            }
            c = self
                .counts
                .changed
                .wait_timeout(c, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Stops the workers and closes the port; reports the first error the
    /// handler met, or a worker's panic.
    pub fn stop(mut self) -> io::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> io::Result<()> {
        let stopped = match self.workers.take() {
            Some(w) => w.stop(()).map_err(io::Error::other),
            None => Ok(()),
        };
        // Ends the multishot accept and any receive still pending.
        self.port.close_port();
        stopped?;
        match self
            .counts
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            Some(e) => Err(io::Error::other(format!("echo server: {e}"))),
            None => Ok(()),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// The echo server's handler: one completion.
fn handle(port: &CompletionPort<()>, c: Completion<()>, counts: &EchoCounts, next_key: &AtomicU64) {
    let close = |h| {
        let _ = port.close(h);
        counts.bump(|c| c.closed += 1);
    };
    match c.kind {
        OpKind::Accept => match (c.result, c.payload) {
            (Ok(_), Payload::Accepted { stream, .. }) => {
                // Without it a 64-byte reply can wait for a delayed ACK.
                if let Err(e) = stream.set_nodelay(true) {
                    counts.note_error(format!("TCP_NODELAY: {e}"));
                }
                let key = next_key.fetch_add(1, Ordering::Relaxed);
                let h = match port.associate(stream, key) {
                    Ok(h) => h,
                    Err(e) => return counts.note_error(format!("associate: {e}")),
                };
                counts.bump(|c| c.accepted += 1);
                if let Err(r) = port.recv(h, Vec::with_capacity(RECV_CAP), ()) {
                    counts.note_error(format!("first recv: {}", r.error));
                    close(h);
                }
            }
            // The port closing ends the multishot accept: expected.
            (Err(e), _) if cport::is_aborted(&e) || port.is_closed() => {}
            (Err(e), _) => counts.note_error(format!("accept: {e}")),
            (Ok(_), _) => counts.note_error("accept completed without a stream".into()),
        },
        OpKind::Recv => {
            let Some(h) = c.handle else { return };
            match (c.result, c.payload.into_buf()) {
                (Ok(n), Some(buf)) if n > 0 => {
                    if let Err(r) = port.send(h, buf, ()) {
                        if !port.is_closed() {
                            counts.note_error(format!("send: {}", r.error));
                        }
                        close(h);
                    }
                }
                // 0 bytes: the client closed; the normal end.
                (Ok(_), _) => close(h),
                (Err(e), _) => {
                    if !cport::is_aborted(&e) {
                        counts.note_error(format!("recv: {e}"));
                    }
                    close(h);
                }
            }
        }
        OpKind::Send => {
            let Some(h) = c.handle else { return };
            match (c.result, c.payload.into_buf()) {
                (Ok(n), Some(mut buf)) => {
                    counts.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    buf.clear();
                    if let Err(r) = port.recv(h, buf, ()) {
                        if !port.is_closed() {
                            counts.note_error(format!("recv: {}", r.error));
                        }
                        close(h);
                    }
                }
                (Ok(_), None) => {
                    counts.note_error("send completed without its buffer".into());
                    close(h);
                }
                (Err(e), _) => {
                    if !cport::is_aborted(&e) {
                        counts.note_error(format!("send: {e}"));
                    }
                    close(h);
                }
            }
        }
        other => counts.note_error(format!("unexpected completion {other:?}")),
    }
}

/// A blocking client with one message in flight per connection.
#[derive(Debug)]
pub struct EchoClient {
    streams: Vec<TcpStream>,
    msg: [u8; MSG],
    back: [u8; MSG],
}

impl EchoClient {
    /// Opens `conns` connections to `addr` (each bounded by [`STALL`]).
    pub fn connect(addr: SocketAddr, conns: usize) -> io::Result<EchoClient> {
        let mut streams = Vec::with_capacity(conns);
        for _ in 0..conns {
            let s = TcpStream::connect_timeout(&addr, STALL)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(STALL))?;
            s.set_write_timeout(Some(STALL))?;
            streams.push(s);
        }
        Ok(EchoClient {
            streams,
            msg: [0; MSG],
            back: [0; MSG],
        })
    }

    /// How many connections the client has.
    pub fn conns(&self) -> usize {
        self.streams.len()
    }

    /// One round: a 64-byte message written on every connection, then
    /// every echo read back and checked. `tag` varies the content from
    /// round to round so a stale or misrouted echo is caught.
    pub fn round(&mut self, tag: u8) -> io::Result<()> {
        for (i, s) in self.streams.iter_mut().enumerate() {
            self.msg.fill(tag.wrapping_add(i as u8));
            s.write_all(&self.msg)?;
        }
        for (i, s) in self.streams.iter_mut().enumerate() {
            s.read_exact(&mut self.back).map_err(|e| {
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    stalled("echo read")
                } else {
                    e
                }
            })?;
            let want = tag.wrapping_add(i as u8);
            if self.back.iter().any(|&b| b != want) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("connection {i}: the echo is not the message sent"),
                ));
            }
        }
        Ok(())
    }
}
