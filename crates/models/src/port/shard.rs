//! The echo server as a port per thread (`cport serve --shards N`): the
//! shape of the leanest servers, next to the tutorials' one port with a
//! worker pool.
//!
//! Each shard is a thread with a [`LocalPort`] of its own (on io_uring a
//! ring with SINGLE_ISSUER | DEFER_TASKRUN), its own listener on the shared
//! address (`SO_REUSEPORT`: the kernel spreads connections over them) and
//! its own connections. Nothing is shared on the echo path: no lock, no
//! reference count, no other thread's cache line.
//!
//! A connection keeps one multishot receive armed (SEMANTICS O9) and sends
//! each arrival back from the buffer it arrived in. Sends queue on the
//! stream in order; when `MAX_SENDS` of them wait (a client that does not
//! read), the receive is cancelled, and it is armed again once half of them
//! went: the client's data then waits in the kernel under TCP's flow
//! control, and the server's memory stays bounded.
//!
//! TCP only. On a stop each shard closes its listener, stops receiving and
//! ends every connection whose echoes have all been sent, closing what is
//! left after `shutdown_timeout`.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cport::{is_aborted, Backend, Builder, Handle, LocalPort, OpId, OpKind, Payload};
use slab::Slab;
use tracing::{info, warn};

use super::{add_single_writer, Totals, ACCEPT_BACKOFF};
use crate::{plural, Stats, Stop};

/// Sends a connection may have queued before its receive is cancelled.
const MAX_SENDS: u32 = 32;

/// The completion key of the listener. A connection's key is never 0: it
/// carries a generation of at least 1 (`Conns`).
const LISTENER_KEY: u64 = 0;
/// The key of the packet a stop posts; no connection's (its slot index
/// would be 2³² − 1).
const STOP_KEY: u64 = u64::MAX;

/// The per-operation value. The completion key already says what an
/// operation belongs to (the tutorials' per-handle data: the listener, a
/// connection's slot and generation, the stop packet), so the value
/// carries nothing. It
/// keeps `Completion<Tag>` at 120 bytes, moved with a few vector stores:
/// with a 16-byte value it was 136, and every move of one was a call to
/// `memcpy` (about 2 % of this server's samples).
type Tag = ();

/// What each shard counts, written by its thread alone.
#[derive(Default)]
#[repr(align(64))]
struct Counts {
    completions: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    open: AtomicU64,
    served: AtomicU64,
}

/// The sharded server, built, not yet serving.
pub struct Shards {
    listeners: Vec<TcpListener>,
    backend: Backend,
    buffer_size: usize,
    shutdown_timeout: Duration,
    counts: Arc<Vec<Counts>>,
    stats: Arc<Stats>,
}

/// Reads a sharded server's totals while it serves.
#[derive(Clone)]
pub struct ShardsControl {
    counts: Arc<Vec<Counts>>,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("shards", &self.listeners.len())
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ShardsControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardsControl").finish_non_exhaustive()
    }
}

impl ShardsControl {
    /// The totals over every shard.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for c in self.counts.iter() {
            t.completions += c.completions.load(Ordering::Relaxed);
            t.bytes_in += c.bytes_in.load(Ordering::Relaxed);
            t.bytes_out += c.bytes_out.load(Ordering::Relaxed);
            t.open += c.open.load(Ordering::Relaxed);
            t.served += c.served.load(Ordering::Relaxed);
        }
        t
    }
}

impl Shards {
    /// A shard per listener; the listeners share one address
    /// (`SO_REUSEPORT`). The backend is checked here: the first shard's port
    /// is built and dropped, so that a backend that cannot start fails now.
    pub fn new(
        listeners: Vec<TcpListener>,
        backend: Backend,
        buffer_size: usize,
        shutdown_timeout: Duration,
        stats: Arc<Stats>,
    ) -> io::Result<Shards> {
        if listeners.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a sharded server needs at least one listener",
            ));
        }
        let probe = port(backend, buffer_size)?;
        let backend = probe.backend();
        drop(probe);
        let counts = Arc::new((0..listeners.len()).map(|_| Counts::default()).collect());
        Ok(Shards {
            listeners,
            backend,
            buffer_size,
            shutdown_timeout,
            counts,
            stats,
        })
    }

    /// The backend every shard's port runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The number of shards.
    pub fn len(&self) -> usize {
        self.listeners.len()
    }

    /// Whether there is no shard (never: `new` refuses that).
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    pub fn control(&self) -> ShardsControl {
        ShardsControl {
            counts: self.counts.clone(),
        }
    }

    /// Serves until `stop` is set, then shuts every shard down; returns the
    /// first shard's error, if any.
    pub fn serve(self, stop: Stop) -> io::Result<()> {
        let Shards {
            listeners,
            backend,
            buffer_size,
            shutdown_timeout,
            counts,
            stats,
        } = self;
        let threads: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(i, listener)| {
                let (stop, counts, stats) = (stop.clone(), counts.clone(), stats.clone());
                thread::Builder::new()
                    .name(format!("cport-shard-{i}"))
                    .spawn(move || {
                        let _me = stats.thread();
                        let shard = Shard {
                            port: port(backend, buffer_size)?,
                            counts: &counts[i],
                            stats: &stats,
                            conns: Conns::default(),
                            next_id: 1,
                            draining: false,
                        };
                        shard.run(listener, &stop, shutdown_timeout)
                    })
            })
            .collect::<io::Result<_>>()?;
        let mut first = Ok(());
        for t in threads {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a shard panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

fn port(backend: Backend, buffer_size: usize) -> io::Result<LocalPort<Tag>> {
    Builder::new()
        .backend(backend)
        .pool(POOL_BUFFERS, buffer_size)
        .build_local()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create a shard's port: {e}")))
}

/// Receive buffers in a shard's pool, on either backend.
///
/// On io_uring they are the provided-buffer ring, and an arrival holds its
/// buffer until its echo is sent: the ring must cover the messages in
/// flight, or receives meet it empty and are armed again, a request each
/// (with 512, at 500 connections × 16 messages of 4 KiB, about one per
/// echoed message; with 2048, none). 2048 buffers of 16 KiB are 32 MiB at
/// most, resident only once the kernel has written into them. The ring
/// starts smaller and grows to what the load needs (`Builder::pool`): 128
/// buffers at 50 connections × 128 B, all 2048 at 500 × 4 KiB × 16.
///
/// On epoll the pool never runs dry (a buffer is made when none is free)
/// and keeps up to its count of the buffers given back: with 512, the
/// buffers held at 50 connections × 4 messages of 64 KiB outnumbered that
/// at times, and were made and freed again (0.12 malloc per message in
/// bench/runs/2026-12-06/serve-111527; none with 2048, in
/// bench/runs/2026-12-06/pool-keep). The count also bounds the filled
/// buffers waiting to be dequeued; a client that never reads is held back
/// by `MAX_SENDS` well within it (crates/cli/tests/robustness.rs).
const POOL_BUFFERS: u16 = 2048;

/// A shard's connections, found by their completion key in one indexed
/// load: the slot's index in the low 32 bits, the connection's generation
/// (its id, 1 to 2³² − 1, wrapping) in the high 32. A completion that comes
/// after its connection ended (a send aborted by the close) finds the slot
/// empty or holding another generation, never the connection that took the
/// slot since. A hash table by id cost 0.5 % of the shard's CPU at 500
/// connections × 4 KiB × 16, the most of any function in user space
/// (perf record, bench/runs/2026-12-07/locked-ops).
struct Conns<C> {
    /// Each connection with its generation.
    slots: Slab<(u32, C)>,
}

impl<C> Default for Conns<C> {
    fn default() -> Self {
        Conns { slots: Slab::new() }
    }
}

/// The slot index in a key.
fn index(key: u64) -> usize {
    (key & u64::from(u32::MAX)) as usize
}

impl<C> Conns<C> {
    /// The generation of the connection numbered `id`: never 0, so that
    /// no key is `LISTENER_KEY`.
    fn generation(id: u64) -> u32 {
        (id % u64::from(u32::MAX)) as u32 + 1
    }

    /// The key the connection numbered `id` gets if it is the next one
    /// inserted: the handle is associated under its key before the
    /// connection is made.
    fn next_key(&self, id: u64) -> u64 {
        self.slots.vacant_key() as u64 | u64::from(Self::generation(id)) << 32
    }

    /// Inserts `conn` under `key`, which `next_key` gave with nothing
    /// inserted since.
    fn insert(&mut self, key: u64, conn: C) {
        let index = self.slots.insert(((key >> 32) as u32, conn));
        debug_assert_eq!(index, self::index(key), "a key not from next_key");
    }

    fn get(&self, key: u64) -> Option<&C> {
        match self.slots.get(index(key)) {
            Some((g, c)) if u64::from(*g) == key >> 32 => Some(c),
            _ => None,
        }
    }

    fn get_mut(&mut self, key: u64) -> Option<&mut C> {
        match self.slots.get_mut(index(key)) {
            Some((g, c)) if u64::from(*g) == key >> 32 => Some(c),
            _ => None,
        }
    }

    fn remove(&mut self, key: u64) -> Option<C> {
        self.get(key)?;
        Some(self.slots.remove(index(key)).1)
    }

    fn keys(&self) -> Vec<u64> {
        self.slots
            .iter()
            .map(|(i, (g, _))| i as u64 | u64::from(*g) << 32)
            .collect()
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// One connection of a shard.
struct Conn {
    /// Its number, in the log lines.
    id: u64,
    handle: Handle,
    peer: SocketAddr,
    since: Instant,
    /// The multishot receive, while armed.
    recv: Option<OpId>,
    /// Sends issued and not completed.
    sends: u32,
    /// The receive was cancelled for `MAX_SENDS`: armed again at half.
    paused: bool,
    /// The peer finished sending.
    eof: bool,
    echoed: u64,
}

impl Conn {
    /// Nothing more will come or go: the connection may end.
    fn finished(&self) -> bool {
        self.recv.is_none() && self.sends == 0 && self.eof
    }
}

/// A shard's two timers.
#[derive(Default)]
struct Timers {
    /// When to arm the accept again after it failed.
    rearm_at: Option<Instant>,
    /// A stop came: when to close the connections still busy.
    deadline: Option<Instant>,
}

/// What the shard loop does next.
enum Step {
    /// Wait for a completion, at most this long.
    Wait(Option<Duration>),
    /// Every connection ended: the shard is done.
    End,
}

struct Shard<'a> {
    port: LocalPort<Tag>,
    counts: &'a Counts,
    stats: &'a Stats,
    conns: Conns<Conn>,
    next_id: u64,
    /// A stop came: connections end as their echoes finish.
    draining: bool,
}

impl Shard<'_> {
    fn run(mut self, listener: TcpListener, stop: &Stop, shutdown: Duration) -> io::Result<()> {
        let poster = self.port.poster();
        stop.on_stop(move || {
            let _ = poster.post(STOP_KEY, 0, ());
        });
        let listener = self.port.associate(listener, LISTENER_KEY)?;
        self.accept(listener)?;
        let mut timers = Timers::default();
        loop {
            let wait = match self.timers(&mut timers, listener) {
                Step::Wait(wait) => wait,
                Step::End => return Ok(()),
            };
            let c = match self.port.get(wait) {
                Ok(c) => c,
                Err(cport::GetError::Timeout) => continue,
                Err(e) => return Err(e.into()),
            };
            add_single_writer(&self.counts.completions, 1);
            match (c.key, c.kind) {
                (STOP_KEY, OpKind::Post) => {
                    if timers.deadline.is_none() {
                        timers.deadline = Some(Instant::now() + shutdown);
                        let _ = self.port.close(listener);
                        self.stop_receiving();
                    }
                }
                (LISTENER_KEY, OpKind::Accept) => {
                    if let Payload::Accepted { stream, peer } = c.payload {
                        self.admit(stream, peer);
                    }
                    if !c.more && timers.deadline.is_none() {
                        if let Err(e) = c.result {
                            warn!("accept failed: {e}; retrying");
                        }
                        timers.rearm_at = Some(Instant::now() + ACCEPT_BACKOFF);
                    }
                }
                (key, OpKind::RecvMulti) => self.on_recv(key, c.more, c.result, c.payload),
                (key, OpKind::Send) => self.on_sent(key, c.result, c.payload),
                (key, other) => warn!("unexpected {other:?} completion with key {key}"),
            }
        }
    }

    /// Runs the timers that are due (the accept's re-arm after a failure,
    /// the end of a stop's grace period) and says how long `get` may wait.
    /// The clock is read only while a timer runs: on the echo path neither
    /// does, and the loop then costs no clock_gettime.
    fn timers(&mut self, t: &mut Timers, listener: Handle) -> Step {
        if t.rearm_at.is_none() && t.deadline.is_none() {
            return Step::Wait(None);
        }
        let now = Instant::now();
        if t.rearm_at.is_some_and(|at| at <= now) {
            t.rearm_at = None;
            if t.deadline.is_none() {
                let _ = self.accept(listener);
            }
        }
        if let Some(d) = t.deadline {
            if self.conns.is_empty() {
                return Step::End;
            }
            if d <= now {
                info!(
                    "shutdown timeout: closing {} still busy",
                    plural(self.conns.len() as u64, "connection")
                );
                for key in self.conns.keys() {
                    self.end(key, "server shutting down", false);
                }
                return Step::End;
            }
        }
        let wake = [t.rearm_at, t.deadline].into_iter().flatten().min();
        Step::Wait(wake.map(|w| w.saturating_duration_since(now)))
    }

    fn accept(&self, listener: Handle) -> io::Result<()> {
        self.port
            .accept_multi(listener, ())
            .map(drop)
            .map_err(|r| io::Error::new(r.error.kind(), format!("cannot accept: {}", r.error)))
    }

    fn admit(&mut self, stream: std::net::TcpStream, peer: SocketAddr) {
        // Echoes are small writes answered at once: without NODELAY a
        // partial echo can wait for the peer's delayed ACK.
        let _ = stream.set_nodelay(true);
        let id = self.next_id;
        self.next_id += 1;
        let key = self.conns.next_key(id);
        let handle = match self.port.associate(stream, key) {
            Ok(h) => h,
            Err(e) => {
                warn!("cannot serve {peer}: {e}");
                return;
            }
        };
        let recv = match self.port.recv_multi(handle, ()) {
            Ok(op) => op,
            Err(r) => {
                warn!("cannot receive from {peer}: {}", r.error);
                let _ = self.port.close(handle);
                return;
            }
        };
        self.conns.insert(
            key,
            Conn {
                id,
                handle,
                peer,
                since: Instant::now(),
                recv: Some(recv),
                sends: 0,
                paused: false,
                eof: false,
                echoed: 0,
            },
        );
        self.stats.opened();
        self.counts.served.fetch_add(1, Ordering::Relaxed);
        let open = self.counts.open.fetch_add(1, Ordering::Relaxed) + 1;
        info!("connect {peer} (#{id}, {open} open on this shard)");
    }

    fn on_recv(&mut self, key: u64, more: bool, r: io::Result<usize>, payload: Payload) {
        let Some(conn) = self.conns.get_mut(key) else {
            // Ended meanwhile: the arrival goes back to the pool.
            if let Some(b) = payload.into_buf() {
                self.port.recycle(b);
            }
            return;
        };
        if more {
            let buf = match payload.into_buf() {
                Some(b) => b,
                None => return,
            };
            add_single_writer(&self.counts.bytes_in, buf.len() as u64);
            if let Err(r) = self.port.send(conn.handle, buf, ()) {
                if let Some(b) = r.payload.into_buf() {
                    self.port.recycle(b);
                }
                return self.end(key, "send refused", true);
            }
            conn.sends += 1;
            if conn.sends >= MAX_SENDS && !conn.paused {
                // The client does not read its echoes: stop reading it.
                conn.paused = true;
                if let Some(op) = conn.recv {
                    let _ = self.port.cancel(op);
                }
            }
            return;
        }
        conn.recv = None;
        match r {
            Ok(_) => conn.eof = true,
            // Cancelled here, for backpressure or the stop.
            Err(e) if is_aborted(&e) => {}
            Err(e) => return self.end(key, &format!("error: {e}"), true),
        }
        if self.resume(key) {
            self.settle(key);
        }
    }

    fn on_sent(&mut self, key: u64, r: io::Result<usize>, payload: Payload) {
        if let Some(b) = payload.into_buf() {
            self.port.recycle(b);
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.sends -= 1;
        match r {
            Ok(n) => {
                conn.echoed += n as u64;
                add_single_writer(&self.counts.bytes_out, n as u64);
            }
            Err(e) => return self.end(key, &format!("error: {e}"), true),
        }
        // Most sends leave a connection that neither waits to receive
        // again nor is finished: spare that echo the two lookups below.
        if !conn.paused && !conn.finished() {
            return;
        }
        if self.resume(key) {
            self.settle(key);
        }
    }

    /// Receives again on a connection paused for its unread echoes once
    /// half of them went out *and* its cancelled receive has ended. The two
    /// come in either order: on epoll, where sends finish at issue, the
    /// sends' completions are often dequeued before the cancelled
    /// receive's last one, and a check on the sends alone left such a
    /// connection paused for good (an echo stalled mid-stream: tests/echo.rs
    /// `shards_read_again_after_pausing_for_pending_echoes`). Returns false
    /// if the connection ended.
    fn resume(&mut self, key: u64) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        if conn.paused && conn.recv.is_none() && conn.sends <= MAX_SENDS / 2 && !conn.eof {
            conn.paused = false;
            match self.port.recv_multi(conn.handle, ()) {
                Ok(op) => conn.recv = Some(op),
                Err(r) => {
                    self.end(key, &format!("error: {}", r.error), true);
                    return false;
                }
            }
        }
        true
    }

    /// Ends a connection once nothing more will come or go.
    fn settle(&mut self, key: u64) {
        let done = self.conns.get(key).is_some_and(Conn::finished);
        if done {
            let why = if self.draining {
                "server shutting down"
            } else {
                "peer closed"
            };
            self.end(key, why, false);
        }
    }

    /// On a stop: no more receiving (the connection is treated as if its
    /// peer had finished); connections end as their echoes finish.
    fn stop_receiving(&mut self) {
        self.draining = true;
        for key in self.conns.keys() {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.eof = true;
                if let Some(op) = conn.recv {
                    let _ = self.port.cancel(op);
                }
            }
            self.settle(key);
        }
    }

    fn end(&mut self, key: u64, why: &str, error: bool) {
        let Some(conn) = self.conns.remove(key) else {
            return;
        };
        let _ = self.port.close(conn.handle);
        self.stats.echoed(conn.echoed as usize);
        self.stats.ended(error);
        let open = self.counts.open.fetch_sub(1, Ordering::Relaxed) - 1;
        info!(
            "disconnect {} (#{}): {why}; {} echoed in {:.1?}, {open} open on this shard",
            conn.peer,
            conn.id,
            plural(conn.echoed, "byte"),
            conn.since.elapsed(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{Conns, LISTENER_KEY, STOP_KEY};

    #[test]
    fn a_stale_key_does_not_reach_the_connection_that_took_its_slot() {
        let mut conns = Conns::default();
        let old = conns.next_key(1);
        conns.insert(old, "first");
        assert_eq!(conns.remove(old), Some("first"));
        let new = conns.next_key(2);
        conns.insert(new, "second");
        assert_eq!(old & 0xffff_ffff, new & 0xffff_ffff, "the slot is reused");
        assert_eq!(conns.get(old), None);
        assert_eq!(conns.get_mut(old), None);
        assert_eq!(conns.remove(old), None, "a stale key removes nothing");
        assert_eq!(conns.get(new), Some(&"second"));
        assert_eq!(conns.keys(), vec![new]);
        assert_eq!(conns.len(), 1);
    }

    #[test]
    fn no_connection_key_is_the_listener_or_stop_key() {
        let mut conns = Conns::default();
        for id in [
            1,
            u64::from(u32::MAX) - 1,
            u64::from(u32::MAX),
            1 << 32,
            u64::MAX,
        ] {
            let key = conns.next_key(id);
            assert!(
                key != LISTENER_KEY && key != STOP_KEY,
                "id {id}: key {key:#x}"
            );
            conns.insert(key, id);
            assert_eq!(conns.get(key), Some(&id));
        }
        assert_eq!(conns.len(), 5);
    }
}
