//! The server's TCP side: accepting, the echo of each connection, and how
//! a connection ends.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cport::{is_aborted, CompletionPort, Handle, OpId, Payload};
use tracing::{debug, info, warn};

use super::{add_single_writer, Inner, Protocol, Tag, ACCEPT_BACKOFF};
use crate::{lock, plural};

/// One TCP connection.
pub(super) struct Conn {
    id: u64,
    pub(super) handle: Handle,
    peer: SocketAddr,
    since: Instant,
    /// Milliseconds since the server started, at the last completed I/O.
    last_active: AtomicU64,
    echoed: AtomicU64,
    pub(super) io: Mutex<ConnIo>,
    ended: AtomicBool,
}

/// What a timer or the shutdown needs to reach a connection: its pending
/// receive (to cancel it) and the reason it should end. Held while a
/// receive is issued, so a canceller never misses one that is being issued.
#[derive(Default)]
pub(super) struct ConnIo {
    pub(super) recv_op: Option<OpId>,
    pub(super) ending: Option<Reason>,
}

/// Why a connection ended, for the disconnect line.
#[derive(Debug)]
pub(super) enum Reason {
    PeerClosed,
    Reset,
    IdleTimeout,
    Shutdown,
    Failed(io::Error),
}

impl Reason {
    fn of(e: io::Error) -> Reason {
        // By kind, not by code: ECONNRESET, EPIPE and ECONNABORTED on
        // Linux, WSAECONNRESET and WSAECONNABORTED on Windows.
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => Reason::Reset,
            _ => Reason::Failed(e),
        }
    }

    /// Whether the connection ended on an error rather than by a close
    /// someone chose ([`Stats::errors`](crate::Stats::errors)).
    fn is_error(&self) -> bool {
        matches!(self, Reason::Reset | Reason::Failed(_))
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::PeerClosed => f.write_str("peer closed"),
            Reason::Reset => f.write_str("reset by peer"),
            Reason::IdleTimeout => f.write_str("idle timeout"),
            Reason::Shutdown => f.write_str("server shutting down"),
            Reason::Failed(e) => write!(f, "error: {e}"),
        }
    }
}

impl Inner {
    fn touch(&self, conn: &Conn) {
        if self.idle_timeout.is_some() {
            conn.last_active.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    pub(super) fn on_accept(
        &self,
        port: &CompletionPort<Tag>,
        epoch: u32,
        result: io::Result<usize>,
        payload: Payload,
        more: bool,
    ) {
        if let Payload::Accepted { stream, peer } = payload {
            // Only a connection from an accept issued after the failure shows
            // the pause is over: the failed multishot's own earlier
            // connections may be handled after its failure, on other workers.
            if epoch >= self.accept_failed.load(Ordering::Relaxed)
                && self.accept_paused.swap(false, Ordering::Relaxed)
            {
                info!("accepting connections again");
            }
            self.admit(port, stream, peer);
        }
        if more {
            return;
        }
        // The multishot accept ended: on shutdown (the listener was closed)
        // or on an error.
        if self.draining.load(Ordering::Acquire) {
            return;
        }
        let at = match result {
            Ok(_) => Instant::now(),
            Err(e) => {
                self.accept_failed.store(epoch + 1, Ordering::Relaxed);
                if !self.accept_paused.swap(true, Ordering::Relaxed) {
                    warn!(
                        "accept failed: {e}; retrying every {} ms until it succeeds",
                        ACCEPT_BACKOFF.as_millis()
                    );
                }
                Instant::now() + ACCEPT_BACKOFF
            }
        };
        self.events.rearm_accept_at(at);
    }

    /// Re-arms the multishot accept (on the serving thread, after a pause).
    pub(super) fn rearm_accept(&self) {
        let Some(l) = self.listener else { return };
        if let Err(e) = self.issue_accept(l) {
            warn!("cannot re-arm accept: {e}");
        }
    }

    /// Issues a multishot accept and records it with its number.
    pub(super) fn issue_accept(&self, listener: Handle) -> io::Result<()> {
        let mut accepts = lock(&self.accepts);
        let op = self
            .port
            .accept_multi(listener, None)
            .map_err(|r| r.error)?;
        let epoch = accepts.next;
        accepts.next += 1;
        accepts.live.push((op, epoch));
        Ok(())
    }

    /// The number of the accept `op`, forgotten with its last completion.
    pub(super) fn accept_number(&self, op: Option<OpId>, more: bool) -> u32 {
        let mut accepts = lock(&self.accepts);
        let Some(i) = accepts.live.iter().position(|(o, _)| Some(*o) == op) else {
            // Every accept is recorded before its completions can be
            // looked up here (see `Accepts`).
            warn!("a completion of an unknown accept");
            return 0;
        };
        let epoch = accepts.live[i].1;
        if !more {
            accepts.live.swap_remove(i);
        }
        epoch
    }

    fn admit(&self, port: &CompletionPort<Tag>, stream: TcpStream, peer: SocketAddr) {
        if let Some(max) = self.max_conns {
            // Counted before the check, so two workers admitting at once
            // cannot both take the last place.
            if self.open.fetch_add(1, Ordering::AcqRel) >= max {
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                info!(
                    "refused {peer}: {} open (--max-conns)",
                    plural(max, "connection")
                );
                return;
            }
        } else {
            self.open.fetch_add(1, Ordering::AcqRel);
        }
        // Echoes are small writes answered at once: without NODELAY a partial
        // echo can wait for the peer's delayed ACK (40 ms).
        if let Err(e) = stream.set_nodelay(true) {
            debug!("TCP_NODELAY on {peer}: {e}");
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let handle = match port.associate(stream, id) {
            Ok(h) => h,
            Err(e) => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                warn!("cannot serve {peer}: {e}");
                return;
            }
        };
        let conn = Arc::new(Conn {
            id,
            handle,
            peer,
            since: Instant::now(),
            last_active: AtomicU64::new(self.now_ms()),
            echoed: AtomicU64::new(0),
            io: Mutex::new(ConnIo::default()),
            ended: AtomicBool::new(false),
        });
        {
            let mut conns = lock(&self.conns);
            // Checked under the table lock that `drain` takes after setting
            // the flag: a connection is either in its snapshot or refused here.
            if self.draining.load(Ordering::Acquire) {
                drop(conns);
                self.open.fetch_sub(1, Ordering::AcqRel);
                let _ = port.close(handle);
                return;
            }
            conns.insert(id, conn.clone());
            self.stats.opened();
            // Under the lock, as the disconnect line: the counts read in the
            // order the lines are written.
            info!("connect {peer} (#{id}, {} open)", conns.len());
        }
        self.issue_recv(port, conn);
    }

    fn issue_recv(&self, port: &CompletionPort<Tag>, conn: Arc<Conn>) {
        let mut io = lock(&conn.io);
        if let Some(reason) = io.ending.take() {
            drop(io);
            return self.end(port, &conn, reason);
        }
        match port.recv_pooled(conn.handle, Some(conn.clone())) {
            Ok(op) => io.recv_op = Some(op),
            Err(r) => {
                drop(io);
                let reason = self.reason(&conn, r.error);
                self.end(port, &conn, reason);
            }
        }
    }

    pub(super) fn on_recv(
        &self,
        port: &CompletionPort<Tag>,
        conn: Arc<Conn>,
        result: io::Result<usize>,
        payload: Payload,
    ) {
        lock(&conn.io).recv_op = None;
        match result {
            Ok(0) => self.end(port, &conn, Reason::PeerClosed),
            Ok(n) => {
                let Some(buf) = payload.into_buf() else {
                    warn!("a receive completed without its buffer");
                    return self.end(port, &conn, Reason::Failed(io::ErrorKind::Other.into()));
                };
                self.counters.add(0, n as u64, 0);
                self.touch(&conn);
                if let Some(on_data) = &self.on_data {
                    on_data(Protocol::Tcp, conn.peer, &buf);
                }
                let handle = conn.handle;
                if let Err(r) = port.send(handle, buf, Some(conn)) {
                    if let Some(b) = r.payload.into_buf() {
                        port.recycle(b);
                    }
                    if let Some(conn) = r.value {
                        let reason = self.reason(&conn, r.error);
                        self.end(port, &conn, reason);
                    }
                }
            }
            Err(e) => {
                let reason = self.reason(&conn, e);
                self.end(port, &conn, reason);
            }
        }
    }

    pub(super) fn on_sent(
        &self,
        port: &CompletionPort<Tag>,
        conn: Arc<Conn>,
        result: io::Result<usize>,
        payload: Payload,
    ) {
        if let Some(b) = payload.into_buf() {
            port.recycle(b);
        }
        match result {
            Ok(n) => {
                self.counters.add(0, 0, n as u64);
                // Only the thread that completed the connection's one
                // operation in flight writes this.
                add_single_writer(&conn.echoed, n as u64);
                self.touch(&conn);
                self.issue_recv(port, conn);
            }
            Err(e) => {
                let reason = self.reason(&conn, e);
                self.end(port, &conn, reason);
            }
        }
    }

    /// Why an operation failed: the reason a timer or the shutdown gave when
    /// it cancelled or closed the connection, else the error itself.
    fn reason(&self, conn: &Conn, e: io::Error) -> Reason {
        match lock(&conn.io).ending.take() {
            Some(r) => r,
            None if is_aborted(&e) && self.draining.load(Ordering::Acquire) => Reason::Shutdown,
            None => Reason::of(e),
        }
    }

    /// Ends a connection whose chain of operations has ended (nothing of it
    /// is in flight).
    fn end(&self, port: &CompletionPort<Tag>, conn: &Conn, reason: Reason) {
        if conn.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        // Already closed when a timer or the forced shutdown closed it.
        let _ = port.close(conn.handle);
        let echoed = conn.echoed.load(Ordering::Relaxed);
        {
            let mut conns = lock(&self.conns);
            conns.remove(&conn.id);
            // Per connection, not per send: the echo path touches no
            // counter another worker writes.
            self.stats.echoed(echoed as usize);
            self.stats.ended(reason.is_error());
            info!(
                "disconnect {} (#{}): {reason}; {} echoed in {:.1?}, {} open",
                conn.peer,
                conn.id,
                plural(echoed, "byte"),
                conn.since.elapsed(),
                conns.len()
            );
        }
        let open = self.open.fetch_sub(1, Ordering::AcqRel) - 1;
        if open == 0 && self.draining.load(Ordering::Acquire) {
            self.events.notify();
        }
    }

    pub(super) fn snapshot(&self) -> Vec<Arc<Conn>> {
        lock(&self.conns).values().cloned().collect()
    }

    /// Closes the connections that have had no completed I/O for longer
    /// than `limit`.
    pub(super) fn close_idle(&self, limit: Duration) {
        let now = self.now_ms();
        let limit = limit.as_millis() as u64;
        for conn in self.snapshot() {
            // Strictly more: both stamps are truncated to the millisecond, so
            // a difference equal to the limit may be up to 1 ms short of it.
            if now.saturating_sub(conn.last_active.load(Ordering::Relaxed)) <= limit {
                continue;
            }
            lock(&conn.io).ending.get_or_insert(Reason::IdleTimeout);
            // Aborts the pending operation, a receive or a send stuck on a
            // peer that does not read; its completion ends the connection.
            let _ = self.port.close(conn.handle);
        }
    }
}
