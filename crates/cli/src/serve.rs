//! `cport serve`: the tutorials' IOCP echo server on a cport completion port.
//!
//! The tutorials' shape, kept: the main thread owns the listener, worker
//! threads (2 × CPUs) dequeue completions, a receive completion issues a
//! send of the same buffer and the send completion issues the next receive;
//! 0 bytes closes. What the tutorials leave out and a deployed server needs:
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
//!   exhaustion ends the multishot accept with an error, and the main
//!   thread re-arms it 50 ms later.
//! * **Shutdown in bounded time**: Ctrl-C or SIGTERM closes the listener,
//!   cancels the receives of idle connections, lets echoes in progress
//!   finish (up to `--shutdown-timeout`), then closes whatever is left.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cport::{is_aborted, Completion, CompletionPort, Handle, OpId, OpKind, Payload, Workers};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, info, warn};

use crate::args::ServeArgs;
use crate::Usage;

/// Listen backlog. Linux caps it at `net.core.somaxconn` (4096 by default
/// since 5.4); with the old default of 128, 500 simultaneous connects
/// overflow the queue and wait for SYN retransmits, a second or more each.
const BACKLOG: i32 = 4096;

/// Pause before re-arming an accept that failed (EMFILE, ENFILE, ENOBUFS…):
/// the listener stays readable while descriptors are exhausted, so an
/// immediate retry would spin (LESSONS 6).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Receives of datagrams kept in flight on the UDP socket.
const UDP_SLOTS: usize = 4;
/// Room for the largest UDP payload (65,507 bytes over IPv4, 65,527 over
/// IPv6): no datagram is truncated.
const UDP_BUFFER: usize = 64 * 1024;

/// Receive buffers in the port's pool. On io_uring they form the
/// provided-buffer ring and go back to it as soon as their bytes are copied
/// out, so this bounds bursts, not connections.
const POOL_BUFFERS: u16 = 256;

/// After the shutdown timeout, how long closed connections get to report
/// their aborted operations before the workers stop anyway.
const FORCE_CLOSE_BOUND: Duration = Duration::from_secs(2);

/// The per-operation value (the tutorials' `PER_IO_DATA`).
#[derive(Clone)]
enum Tag {
    /// The listener's multishot accept, numbered by re-arm so that a late
    /// completion of an ended accept is told from one of its successor.
    Accept(u32),
    /// The one operation in flight on a TCP connection.
    Tcp(Arc<Conn>),
    /// A receive or send of datagrams, by slot.
    Udp(usize),
    /// Workers::stop's quit packets.
    Quit,
}

/// Why a connection ended, for the disconnect line.
#[derive(Debug)]
enum Reason {
    PeerClosed,
    Reset,
    IdleTimeout,
    Shutdown,
    Failed(io::Error),
}

impl Reason {
    fn of(e: io::Error) -> Reason {
        match e.raw_os_error() {
            Some(libc::ECONNRESET) | Some(libc::EPIPE) | Some(libc::ECONNABORTED) => Reason::Reset,
            _ => Reason::Failed(e),
        }
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

/// One TCP connection.
struct Conn {
    id: u64,
    handle: Handle,
    peer: SocketAddr,
    since: Instant,
    /// Milliseconds since the server started, at the last completed I/O.
    last_active: AtomicU64,
    echoed: AtomicU64,
    io: Mutex<ConnIo>,
    ended: AtomicBool,
}

/// What a timer or the shutdown needs to reach a connection: its pending
/// receive (to cancel it) and the reason it should end. Held while a
/// receive is issued, so a canceller never misses one that is being issued.
#[derive(Default)]
struct ConnIo {
    recv_op: Option<OpId>,
    ending: Option<Reason>,
}

struct UdpState {
    handle: Handle,
    /// Each slot's pending receive, held while one is issued (as ConnIo).
    slots: Vec<Mutex<Option<OpId>>>,
    live: AtomicUsize,
}

/// What the main thread waits for: signals, a timed accept re-arm, the
/// end of the drain.
#[derive(Default)]
struct Events {
    state: Mutex<EventState>,
    cv: Condvar,
}

#[derive(Default)]
struct EventState {
    signals: u32,
    rearm_accept_at: Option<Instant>,
}

impl Events {
    fn lock(&self) -> MutexGuard<'_, EventState> {
        lock(&self.state)
    }

    fn notify(&self) {
        let _held = self.lock();
        self.cv.notify_all();
    }
}

struct Server {
    port: CompletionPort<Tag>,
    listener: Option<Handle>,
    udp: Option<UdpState>,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    open: AtomicU64,
    next_id: AtomicU64,
    max_conns: Option<u64>,
    track_idle: bool,
    print: bool,
    draining: AtomicBool,
    /// Accept has failed and waits for its re-arm: the warning is logged
    /// once per episode, not 20 times a second.
    accept_paused: AtomicBool,
    /// The number of the current accept operation (`Tag::Accept`).
    accept_epoch: AtomicU32,
    /// 1 + the number of the accept operation that last failed.
    accept_failed: AtomicU32,
    started: Instant,
    counters: Counters,
    events: Events,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A worker's panic is reported by Workers::stop; the state behind the
    // lock is still consistent (every section is a few assignments).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.model != cport_models::Model::Port {
        return crate::serve_model::run(args);
    }
    if args.no_tcp && args.no_udp {
        return Err(Usage("--no-tcp and --no-udp together leave nothing to serve".into()).into());
    }
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let workers = args.workers.map_or(2 * cpus, |n| n as usize);
    let concurrency = args.concurrency.map_or(cpus, |n| n as usize);

    let port: CompletionPort<Tag> = cport::Builder::new()
        .concurrency(concurrency)
        .backend(args.backend.to_backend())
        .pool(POOL_BUFFERS, args.buffer_size as usize)
        // Every handler issues its next operation and returns at once, so
        // batching their submissions costs no latency and saves system calls.
        .batch_submissions(true)
        .build()
        .context("cannot create the completion port")?;

    let (listener, udp_socket) = bind(args.bind, args.port, !args.no_tcp, !args.no_udp)?;
    let local = match (&listener, &udp_socket) {
        (Some(l), _) => l.local_addr()?,
        (None, Some(u)) => u.local_addr()?,
        (None, None) => unreachable!("checked above"),
    };
    let listener = match listener {
        Some(l) => Some(
            port.associate(l, 0)
                .context("cannot associate the listener with the port")?,
        ),
        None => None,
    };
    let udp = match udp_socket {
        Some(u) => Some(UdpState {
            handle: port
                .associate(u, 0)
                .context("cannot associate the UDP socket with the port")?,
            slots: (0..UDP_SLOTS).map(|_| Mutex::new(None)).collect(),
            live: AtomicUsize::new(UDP_SLOTS),
        }),
        None => None,
    };

    let server = Arc::new(Server {
        port: port.clone(),
        listener,
        udp,
        conns: Mutex::new(HashMap::new()),
        open: AtomicU64::new(0),
        next_id: AtomicU64::new(1),
        max_conns: args.max_conns,
        track_idle: args.idle_timeout.is_some(),
        print: args.print,
        draining: AtomicBool::new(false),
        accept_paused: AtomicBool::new(false),
        accept_epoch: AtomicU32::new(0),
        accept_failed: AtomicU32::new(0),
        started: Instant::now(),
        counters: Counters::default(),
        events: Events::default(),
    });

    // Before the listening line: a SIGTERM sent as soon as the address is
    // known must start the drain, not kill the process.
    watch_signals(&server)?;

    let protocols = match (!args.no_tcp, !args.no_udp) {
        (true, true) => "tcp, udp",
        (true, false) => "tcp",
        _ => "udp",
    };
    // The first line is the address actually bound (tests and scripts start
    // the server on port 0 and read it from here).
    out_line(&format!(
        "listening on {local} ({protocols}) backend={} workers={workers} concurrency={}",
        port.backend(),
        port.concurrency()
    ));

    let handler = {
        let server = server.clone();
        move |port: &CompletionPort<Tag>, c: Completion<Tag>| server.complete(port, c)
    };
    let pool = Workers::spawn(&port, workers, handler).context("cannot start worker threads")?;

    if let Some(Err(r)) = server
        .listener
        .map(|l| port.accept_multi(l, Tag::Accept(0)))
    {
        bail!("cannot start accepting: {}", r.error);
    }
    if let Some(udp) = &server.udp {
        for slot in 0..udp.slots.len() {
            server.udp_recv(slot, Vec::with_capacity(UDP_BUFFER));
        }
    }

    server.housekeep(args.stats, args.idle_timeout);
    server.drain(args.shutdown_timeout);

    let stop = pool.stop(Tag::Quit);
    info!(
        "stopped after {:.1?}; {} connections served",
        server.started.elapsed(),
        server.next_id.load(Ordering::Relaxed) - 1
    );
    stop.map_err(|p| anyhow::anyhow!("{p}"))
}

/// Binds the TCP listener and the UDP socket on one port. With port 0 the
/// UDP socket takes the port the kernel gave the listener, which another
/// program may hold for UDP: then both are bound again elsewhere.
fn bind(
    ip: IpAddr,
    port: u16,
    tcp: bool,
    udp: bool,
) -> anyhow::Result<(Option<TcpListener>, Option<UdpSocket>)> {
    const TRIES: usize = 16;
    for attempt in 1..=TRIES {
        let listener = if tcp {
            Some(listen(SocketAddr::new(ip, port))?)
        } else {
            None
        };
        let udp_port = match &listener {
            Some(l) => l.local_addr()?.port(),
            None => port,
        };
        if !udp {
            return Ok((listener, None));
        }
        let addr = SocketAddr::new(ip, udp_port);
        match UdpSocket::bind(addr) {
            Ok(u) => return Ok((listener, Some(u))),
            Err(e)
                if port == 0 && tcp && e.kind() == io::ErrorKind::AddrInUse && attempt < TRIES =>
            {
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot bind {addr} (udp)")),
        }
    }
    unreachable!("the last attempt returns")
}

pub(crate) fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let what = || format!("cannot listen on {addr} (tcp)");
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .with_context(what)?;
    // Lets a restarted server bind while the old one's connections sit in
    // TIME_WAIT; it does not let two listeners share the port.
    s.set_reuse_address(true).with_context(what)?;
    s.bind(&addr.into()).with_context(what)?;
    s.listen(BACKLOG).with_context(what)?;
    Ok(s.into())
}

/// SIGINT and SIGTERM: the first starts the drain, the second cuts it
/// short.
fn watch_signals(server: &Arc<Server>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    let server = server.clone();
    thread::Builder::new()
        .name("cport-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let mut st = server.events.lock();
                st.signals += 1;
                if st.signals == 1 {
                    info!("signal {sig}: shutting down");
                } else {
                    info!("signal {sig} again: closing every connection now");
                }
                server.events.cv.notify_all();
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

impl Server {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn touch(&self, conn: &Conn) {
        if self.track_idle {
            conn.last_active.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// The worker's handler: one completion.
    fn complete(&self, port: &CompletionPort<Tag>, c: Completion<Tag>) {
        self.counters.add(1, 0, 0);
        let kind = c.kind;
        let more = c.more;
        let result = c.result;
        let payload = c.payload;
        match c.value {
            Tag::Accept(epoch) => self.on_accept(port, epoch, result, payload, more),
            Tag::Tcp(conn) => match kind {
                OpKind::RecvPooled => self.on_recv(port, conn, result, payload),
                OpKind::Send => self.on_sent(port, conn, result, payload),
                other => warn!("unexpected {other:?} completion on a connection"),
            },
            Tag::Udp(slot) => match kind {
                OpKind::RecvFrom => self.on_datagram(slot, result, payload),
                OpKind::SendTo => self.on_datagram_sent(slot, result, payload),
                other => warn!("unexpected {other:?} completion on the UDP socket"),
            },
            Tag::Quit => {}
        }
    }

    // ----- TCP ------------------------------------------------------------

    fn on_accept(
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
        let mut st = self.events.lock();
        st.rearm_accept_at = Some(at);
        self.events.cv.notify_all();
    }

    fn admit(&self, port: &CompletionPort<Tag>, stream: TcpStream, peer: SocketAddr) {
        if let Some(max) = self.max_conns {
            // Counted before the check, so two workers admitting at once
            // cannot both take the last place.
            if self.open.fetch_add(1, Ordering::AcqRel) >= max {
                self.open.fetch_sub(1, Ordering::AcqRel);
                info!("refused {peer}: {max} connections open (--max-conns)");
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
        }
        info!(
            "connect {peer} (#{id}, {} open)",
            self.open.load(Ordering::Relaxed)
        );
        self.issue_recv(port, conn);
    }

    fn issue_recv(&self, port: &CompletionPort<Tag>, conn: Arc<Conn>) {
        let mut io = lock(&conn.io);
        if let Some(reason) = io.ending.take() {
            drop(io);
            return self.end(port, &conn, reason);
        }
        match port.recv_pooled(conn.handle, Tag::Tcp(conn.clone())) {
            Ok(op) => io.recv_op = Some(op),
            Err(r) => {
                drop(io);
                let reason = self.reason(&conn, r.error);
                self.end(port, &conn, reason);
            }
        }
    }

    fn on_recv(
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
                if self.print {
                    out_line(&format!("[tcp] {}: {}", conn.peer, printable(&buf)));
                }
                let handle = conn.handle;
                if let Err(r) = port.send(handle, buf, Tag::Tcp(conn)) {
                    if let Some(b) = r.payload.into_buf() {
                        port.recycle(b);
                    }
                    if let Tag::Tcp(conn) = r.value {
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

    fn on_sent(
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
                conn.echoed.fetch_add(n as u64, Ordering::Relaxed);
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
        lock(&self.conns).remove(&conn.id);
        let open = self.open.fetch_sub(1, Ordering::AcqRel) - 1;
        info!(
            "disconnect {} (#{}): {reason}; {} bytes echoed in {:.1?}, {open} open",
            conn.peer,
            conn.id,
            conn.echoed.load(Ordering::Relaxed),
            conn.since.elapsed()
        );
        if open == 0 && self.draining.load(Ordering::Acquire) {
            self.events.notify();
        }
    }

    fn snapshot(&self) -> Vec<Arc<Conn>> {
        lock(&self.conns).values().cloned().collect()
    }

    // ----- UDP ------------------------------------------------------------

    fn udp_recv(&self, slot: usize, mut buf: Vec<u8>) {
        let Some(udp) = &self.udp else { return };
        buf.clear();
        let mut pending = lock(&udp.slots[slot]);
        if self.draining.load(Ordering::Acquire) {
            drop(pending);
            return self.udp_slot_end(udp);
        }
        match self.port.recv_from(udp.handle, buf, Tag::Udp(slot)) {
            Ok(op) => *pending = Some(op),
            Err(r) => {
                drop(pending);
                if !self.draining.load(Ordering::Acquire) {
                    warn!("UDP receive refused: {}", r.error);
                }
                self.udp_slot_end(udp);
            }
        }
    }

    fn udp_slot_end(&self, udp: &UdpState) {
        if udp.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            if !self.draining.load(Ordering::Acquire) {
                warn!("UDP service stopped: no receive left in flight");
            }
            self.events.notify();
        }
    }

    fn on_datagram(&self, slot: usize, result: io::Result<usize>, payload: Payload) {
        let Some(udp) = &self.udp else { return };
        *lock(&udp.slots[slot]) = None;
        let (buf, from) = match payload {
            Payload::Datagram { buf, from } => (buf, from),
            other => (other.into_buf().unwrap_or_default(), None),
        };
        match (result, from) {
            (Ok(n), Some(from)) => {
                self.counters.add(0, n as u64, 0);
                if self.print {
                    out_line(&format!("[udp] {from}: {}", printable(&buf)));
                }
                if let Err(r) = self.port.send_to(udp.handle, buf, from, Tag::Udp(slot)) {
                    debug!("UDP echo to {from} refused: {}", r.error);
                    self.udp_recv(slot, r.payload.into_buf().unwrap_or_default());
                }
            }
            (Err(e), _) if is_aborted(&e) => self.udp_slot_end(udp),
            (Ok(_), None) => self.udp_recv(slot, buf),
            (Err(e), from) => {
                // A truncated datagram (EMSGSIZE), or an ICMP error from an
                // earlier echo (ECONNREFUSED): the socket is fine.
                debug!("UDP receive from {from:?}: {e}");
                self.udp_recv(slot, buf);
            }
        }
    }

    fn on_datagram_sent(&self, slot: usize, result: io::Result<usize>, payload: Payload) {
        let buf = payload.into_buf().unwrap_or_default();
        match result {
            Ok(n) => self.counters.add(0, 0, n as u64),
            Err(e) if is_aborted(&e) => {
                if let Some(udp) = &self.udp {
                    self.udp_slot_end(udp);
                }
                return;
            }
            Err(e) => debug!("UDP echo: {e}"),
        }
        self.udp_recv(slot, buf);
    }

    // ----- the main thread ------------------------------------------------

    /// Runs the timers (stats, idle scan, accept re-arm) until a signal.
    fn housekeep(&self, stats: bool, idle: Option<Duration>) {
        let start = Instant::now();
        let mut next_stats = start + Duration::from_secs(1);
        let mut last = (start, self.counters.sum());
        let scan_every =
            idle.map(|d| (d / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
        let mut next_scan = scan_every.map(|d| start + d);
        loop {
            let mut deadline = Instant::now() + Duration::from_secs(3600);
            if stats {
                deadline = deadline.min(next_stats);
            }
            if let Some(t) = next_scan {
                deadline = deadline.min(t);
            }
            let rearm = {
                let mut st = self.events.lock();
                loop {
                    if st.signals > 0 {
                        return;
                    }
                    let now = Instant::now();
                    if st.rearm_accept_at.is_some_and(|t| t <= now) {
                        st.rearm_accept_at = None;
                        break true;
                    }
                    let until = st.rearm_accept_at.map_or(deadline, |t| t.min(deadline));
                    if until <= now {
                        break false;
                    }
                    st = self
                        .events
                        .cv
                        .wait_timeout(st, until - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            };
            if let (true, Some(l)) = (rearm, self.listener) {
                let epoch = self.accept_epoch.fetch_add(1, Ordering::Relaxed) + 1;
                if let Err(r) = self.port.accept_multi(l, Tag::Accept(epoch)) {
                    warn!("cannot re-arm accept: {}", r.error);
                }
            }
            let now = Instant::now();
            if stats && now >= next_stats {
                let sum = self.counters.sum();
                let secs = now.duration_since(last.0).as_secs_f64().max(1e-9);
                out_line(&format!(
                    "conns {}  completions/s {:.0}  recv {}/s  sent {}/s",
                    self.open.load(Ordering::Relaxed),
                    (sum.0 - last.1 .0) as f64 / secs,
                    bytes((sum.1 - last.1 .1) as f64 / secs),
                    bytes((sum.2 - last.1 .2) as f64 / secs),
                ));
                last = (now, sum);
                next_stats += Duration::from_secs(1);
                if next_stats <= now {
                    next_stats = now + Duration::from_secs(1);
                }
            }
            match (next_scan, scan_every, idle) {
                (Some(t), Some(every), Some(limit)) if now >= t => {
                    self.close_idle(limit);
                    next_scan = Some(now + every);
                }
                _ => {}
            }
        }
    }

    fn close_idle(&self, limit: Duration) {
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

    /// Stops accepting, lets echoes in progress finish, closes everything.
    fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        {
            let _table = lock(&self.conns);
            self.draining.store(true, Ordering::Release);
        }
        if let Some(l) = self.listener {
            let _ = self.port.close(l);
        }
        if let Some(udp) = &self.udp {
            for slot in &udp.slots {
                if let Some(op) = *lock(slot) {
                    let _ = self.port.cancel(op);
                }
            }
        }
        for conn in self.snapshot() {
            let mut io = lock(&conn.io);
            io.ending.get_or_insert(Reason::Shutdown);
            // A connection that is sending finishes its echo and ends at its
            // next receive; one waiting to receive ends now.
            if let Some(op) = io.recv_op {
                let _ = self.port.cancel(op);
            }
        }
        if !self.wait_drained(deadline, true) {
            let left = self.snapshot();
            warn!(
                "{} connection(s) still busy after {timeout:?}: closing them",
                left.len()
            );
            for conn in left {
                let _ = self.port.close(conn.handle);
            }
            if let Some(udp) = &self.udp {
                let _ = self.port.close(udp.handle);
            }
            if !self.wait_drained(Instant::now() + FORCE_CLOSE_BOUND, false) {
                warn!("connections did not report their close in time; stopping anyway");
            }
        }
        if let Some(udp) = &self.udp {
            let _ = self.port.close(udp.handle);
        }
    }

    /// Waits until no connection or UDP receive is left, or the deadline,
    /// or (when `second_signal_cuts`) a second signal.
    fn wait_drained(&self, deadline: Instant, second_signal_cuts: bool) -> bool {
        let mut st = self.events.lock();
        loop {
            let udp_live = self
                .udp
                .as_ref()
                .map_or(0, |u| u.live.load(Ordering::Acquire));
            if self.open.load(Ordering::Acquire) == 0 && udp_live == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || (second_signal_cuts && st.signals > 1) {
                return false;
            }
            st = self
                .events
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Per-thread counters, summed by the stats line: a worker only writes its
/// own cache line, so counting costs no shared atomic per completion.
#[derive(Default)]
struct Counters {
    all: Mutex<Vec<Arc<ThreadCounters>>>,
}

#[derive(Default)]
#[repr(align(128))]
struct ThreadCounters {
    completions: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

thread_local! {
    static MINE: RefCell<Option<Arc<ThreadCounters>>> = const { RefCell::new(None) };
}

impl Counters {
    fn add(&self, completions: u64, bytes_in: u64, bytes_out: u64) {
        MINE.with(|cell| {
            let mut cell = cell.borrow_mut();
            let mine = cell.get_or_insert_with(|| {
                let c = Arc::new(ThreadCounters::default());
                lock(&self.all).push(c.clone());
                c
            });
            // One writer per counter: a load and a store, no locked add.
            for (a, n) in [
                (&mine.completions, completions),
                (&mine.bytes_in, bytes_in),
                (&mine.bytes_out, bytes_out),
            ] {
                if n != 0 {
                    a.store(a.load(Ordering::Relaxed) + n, Ordering::Relaxed);
                }
            }
        });
    }

    fn sum(&self) -> (u64, u64, u64) {
        lock(&self.all).iter().fold((0, 0, 0), |s, c| {
            (
                s.0 + c.completions.load(Ordering::Relaxed),
                s.1 + c.bytes_in.load(Ordering::Relaxed),
                s.2 + c.bytes_out.load(Ordering::Relaxed),
            )
        })
    }
}

/// One line on stdout, flushed. A closed stdout (`cport serve | head`) must
/// not stop the server, so write errors are ignored.
pub(crate) fn out_line(s: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// Received bytes as one line of text: UTF-8 kept, control characters and
/// invalid bytes escaped, the final line break dropped.
fn printable(data: &[u8]) -> String {
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    let data = data.strip_suffix(b"\r").unwrap_or(data);
    let mut s = String::with_capacity(data.len());
    for chunk in data.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                s.extend(c.escape_default());
            } else {
                s.push(c);
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

fn bytes(per_sec: f64) -> String {
    if per_sec >= 1e9 {
        format!("{:.2} GB", per_sec / 1e9)
    } else if per_sec >= 1e6 {
        format!("{:.2} MB", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.1} kB", per_sec / 1e3)
    } else {
        format!("{per_sec:.0} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_controls_and_invalid_bytes() {
        assert_eq!(printable(b"hello\n"), "hello");
        assert_eq!(printable(b"a\tb\r\n"), "a\\tb");
        assert_eq!(printable(b"\xff\x00ok"), "\\xff\\u{0}ok");
        assert_eq!(printable("안녕".as_bytes()), "안녕");
    }

    #[test]
    fn byte_rates_read_naturally() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(2_500_000.0), "2.50 MB");
    }
}
