//! `cport load`: drives an echo server with many connections, checks every
//! echoed byte, and reports messages/s, MB/s and latency percentiles.
//!
//! Its I/O is plain mio (epoll), one event loop per thread, sharing no code
//! with the cport library it is meant to measure.
//!
//! Each connection sends a stream of `--size`-byte messages, keeping up to
//! `--depth` of them in flight. The bytes come from one pseudo-random
//! pattern, read from an offset that differs per connection, so a byte
//! echoed wrong, out of order, or on the wrong connection is caught. A
//! message's latency runs from its send (or, with `--rate`, from the time
//! it was scheduled: a server that stalls cannot hide it by slowing the
//! sender) to the arrival of its last echoed byte.
//!
//! SIGINT or SIGTERM ends the run early: the report covers the period
//! measured until then, says it was interrupted, and the command exits
//! 128 + the signal's number (130, 143); while the connections are
//! still being made there is nothing to report. A second signal exits at
//! once.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::args::LoadArgs;
use crate::client;
use crate::console::{self, signal_name, Interrupted};
use cport_models::plural;

/// Largest single read or write.
const CHUNK: usize = 64 * 1024;
/// Length of the pattern's cycle: not a power of two, so the pattern does
/// not line up with buffer or page sizes.
const PATTERN: usize = (1 << 20) + 4093;
/// After the measured period, how long echoes still in flight may take
/// before they count as lost.
const GRACE: Duration = Duration::from_secs(5);

/// What can go wrong, counted per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorKind {
    /// The connection failed (reset, broken pipe, another I/O error).
    Io,
    /// The server closed the connection before the run ended.
    Closed,
    /// An echoed byte differed from the byte sent.
    Mismatch,
    /// Messages still unanswered when the grace period ended.
    Unanswered,
}

const KINDS: [ErrorKind; 4] = [
    ErrorKind::Io,
    ErrorKind::Closed,
    ErrorKind::Mismatch,
    ErrorKind::Unanswered,
];

impl ErrorKind {
    fn name(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::Closed => "closed",
            ErrorKind::Mismatch => "mismatch",
            ErrorKind::Unanswered => "unanswered",
        }
    }
}

/// Counters the progress display reads while the threads run, and the
/// signal that ends the run early.
#[derive(Default)]
struct Live {
    measured: AtomicU64,
    errors: AtomicU64,
    /// SIGINT or SIGTERM, once received (0 before).
    signal: AtomicI32,
}

/// One thread's result.
struct Outcome {
    latency: Histogram<u64>,
    messages: u64,
    errors: [u64; 4],
    first_error: Option<String>,
    /// When the thread stopped counting.
    until: Instant,
}

/// The schedule every thread follows.
#[derive(Clone, Copy)]
struct Plan {
    size: u64,
    depth: usize,
    /// Per connection, with --rate.
    interval: Option<Duration>,
    measure_from: Instant,
    measure_to: Instant,
}

pub fn run(a: LoadArgs) -> anyhow::Result<()> {
    let addrs = client::resolve(&a.addr)?;
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let threads = a
        .threads
        .map_or(cpus, |n| n as usize)
        .min(a.conns as usize)
        .max(1);
    let pattern: Arc<Vec<u8>> = Arc::new(make_pattern());
    let live = Arc::new(Live::default());
    {
        let live = live.clone();
        console::on_signals(move |sig, n| {
            if n == 1 {
                live.signal.store(sig, Ordering::Relaxed);
            } else {
                std::process::exit(128 + sig);
            }
        })?;
    }

    // Connections are made before the clock starts, so connect time is not
    // counted as the server's latency.
    let mut per_thread: Vec<Vec<(usize, TcpStream)>> = (0..threads).map(|_| Vec::new()).collect();
    for id in 0..a.conns as usize {
        if let sig @ 1.. = live.signal.load(Ordering::Relaxed) {
            return Err(Interrupted(sig).into());
        }
        let s = client::connect(&addrs, &a.addr, Duration::from_secs(5))
            .with_context(|| format!("connection {} of {}", id + 1, a.conns))?;
        s.set_nonblocking(true)?;
        per_thread[id % threads].push((id, TcpStream::from_std(s)));
    }
    let addr: SocketAddr = per_thread[0][0].1.peer_addr()?;

    let start = Instant::now();
    let plan = Plan {
        size: u64::from(a.size),
        depth: a.depth as usize,
        interval: a
            .rate
            .map(|r| Duration::from_secs_f64(f64::from(a.conns) / r)),
        measure_from: start + a.warmup,
        measure_to: start + a.warmup + a.duration,
    };
    let mut handles = Vec::new();
    for conns in per_thread {
        let pattern = pattern.clone();
        let live = live.clone();
        handles.push(
            thread::Builder::new()
                .name("load".into())
                .spawn(move || drive(conns, plan, &pattern, &live))?,
        );
    }

    let bar = progress(&a);
    while handles.iter().any(|h| !h.is_finished()) {
        thread::sleep(Duration::from_millis(100));
        if let Some(bar) = &bar {
            let now = Instant::now();
            bar.set_position(now.duration_since(start).as_millis() as u64);
            let msg = if now < plan.measure_from {
                "warming up".to_string()
            } else if now < plan.measure_to {
                let secs = now
                    .duration_since(plan.measure_from)
                    .as_secs_f64()
                    .max(1e-3);
                format!(
                    "{:.0} msg/s, errors {}",
                    live.measured.load(Ordering::Relaxed) as f64 / secs,
                    live.errors.load(Ordering::Relaxed)
                )
            } else {
                "waiting for the last echoes".to_string()
            };
            bar.set_message(msg);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    let mut latency = new_histogram();
    let mut messages = 0;
    let mut errors = [0u64; 4];
    let mut first_error = None;
    let mut until = start;
    for h in handles {
        let o = h.join().map_err(|_| anyhow!("a load thread panicked"))??;
        latency
            .add(&o.latency)
            .context("merging latency histograms")?;
        messages += o.messages;
        for (t, n) in errors.iter_mut().zip(o.errors) {
            *t += n;
        }
        first_error = first_error.or(o.first_error);
        until = until.max(o.until);
    }

    let signal = live.signal.load(Ordering::Relaxed);
    let measured = if signal == 0 {
        a.duration
    } else {
        until.clamp(plan.measure_from, plan.measure_to) - plan.measure_from
    };
    let secs = measured.as_secs_f64().max(1e-9);
    let interrupted = (signal != 0).then(|| signal_name(signal));
    let total_errors: u64 = errors.iter().sum();
    let us = |q: f64| latency.value_at_quantile(q) as f64 / 1e3;
    let mut text = String::new();
    if a.json {
        let kinds: serde_json::Map<String, serde_json::Value> = KINDS
            .iter()
            .zip(errors)
            .map(|(k, n)| (k.name().to_string(), n.into()))
            .collect();
        let report = serde_json::json!({
            "addr": addr.to_string(),
            "conns": a.conns,
            "size": a.size,
            "depth": a.depth,
            "rate": a.rate,
            "threads": threads,
            "warmup_s": a.warmup.as_secs_f64(),
            "duration_s": secs,
            "messages": messages,
            "messages_per_sec": messages as f64 / secs,
            "bytes": messages * u64::from(a.size),
            "mb_per_sec": (messages * u64::from(a.size)) as f64 / secs / 1e6,
            "latency_us": {
                "p50": us(0.5),
                "p99": us(0.99),
                "p999": us(0.999),
                "max": latency.max() as f64 / 1e3,
                "mean": latency.mean() / 1e3,
            },
            "errors": total_errors,
            "error_kinds": kinds,
            "first_error": first_error,
            "interrupted": interrupted,
        });
        let _ = writeln!(text, "{report}");
    } else {
        if let Some(sig) = &interrupted {
            let _ = if measured.is_zero() {
                writeln!(
                    text,
                    "interrupted by {sig} during the warm-up: nothing was measured"
                )
            } else {
                writeln!(
                    text,
                    "interrupted by {sig}: {:.2} s of the {:.2} s planned were measured",
                    measured.as_secs_f64(),
                    a.duration.as_secs_f64()
                )
            };
        }
        let _ = writeln!(
            text,
            "target     {addr} (tcp), {}, {} B messages, depth {}{}",
            plural(a.conns.into(), "connection"),
            a.size,
            a.depth,
            a.rate
                .map_or(String::new(), |r| format!(", {r} msg/s scheduled"))
        );
        let _ = writeln!(
            text,
            "measured   {:.2} s after a {:.2} s warm-up, {}",
            measured.as_secs_f64(),
            a.warmup.as_secs_f64(),
            plural(threads as u64, "thread")
        );
        let _ = writeln!(
            text,
            "messages   {messages} ({:.1}/s)",
            messages as f64 / secs
        );
        let _ = writeln!(
            text,
            "throughput {:.2} MB/s each way",
            (messages * u64::from(a.size)) as f64 / secs / 1e6
        );
        if messages > 0 {
            let _ = writeln!(
                text,
                "latency    p50 {}, p99 {}, p999 {}, max {}",
                human_us(us(0.5)),
                human_us(us(0.99)),
                human_us(us(0.999)),
                human_us(latency.max() as f64 / 1e3)
            );
        }
        let detail: Vec<String> = KINDS
            .iter()
            .zip(errors)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{} {n}", k.name()))
            .collect();
        if detail.is_empty() {
            let _ = writeln!(text, "errors     0");
        } else {
            let _ = writeln!(text, "errors     {total_errors} ({})", detail.join(", "));
        }
    }
    let printed = console::print(&text);
    if signal != 0 {
        return Err(Interrupted(signal).into());
    }
    if total_errors > 0 {
        bail!(
            "{}; first: {}",
            plural(total_errors, "error"),
            first_error.unwrap_or_default()
        );
    }
    if messages == 0 {
        bail!("no message was echoed during the measured period");
    }
    printed
}

fn progress(a: &LoadArgs) -> Option<ProgressBar> {
    if a.json || !io::stderr().is_terminal() {
        return None;
    }
    let total = (a.warmup + a.duration).as_millis() as u64;
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {elapsed}/{duration} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    Some(bar)
}

fn human_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// A fixed pseudo-random pattern (xorshift), `CHUNK` bytes longer than its
/// cycle so that any window of up to `CHUNK` bytes is one slice.
fn make_pattern() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut p = Vec::with_capacity(PATTERN + CHUNK);
    while p.len() < PATTERN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.extend_from_slice(&x.to_le_bytes());
    }
    p.truncate(PATTERN);
    p.extend_from_within(..CHUNK);
    p
}

/// The bytes connection `id` sends at stream offset `at`, `len ≤ CHUNK`.
fn expected(pattern: &[u8], id: usize, at: u64, len: usize) -> &[u8] {
    let base = (id as u64).wrapping_mul(7_919 * 131);
    let start = (base.wrapping_add(at) % PATTERN as u64) as usize;
    &pattern[start..start + len]
}

struct Conn {
    id: usize,
    stream: TcpStream,
    /// Stream offsets: bytes queued (whole messages), written, and echoed
    /// back and checked.
    queued: u64,
    sent: u64,
    echoed: u64,
    /// Messages in flight: (stream offset of their end, time they count from).
    inflight: VecDeque<(u64, Instant)>,
    next_due: Instant,
    done: bool,
}

struct Thread<'a> {
    plan: Plan,
    pattern: &'a [u8],
    live: &'a Live,
    out: Outcome,
    buf: Vec<u8>,
    /// Messages counted since the live counter was last updated.
    unreported: u64,
}

fn drive(
    streams: Vec<(usize, TcpStream)>,
    plan: Plan,
    pattern: &[u8],
    live: &Live,
) -> anyhow::Result<Outcome> {
    let mut poll = Poll::new().context("cannot create an epoll instance")?;
    let now = Instant::now();
    let count = streams.len();
    let mut conns: Vec<Conn> = Vec::with_capacity(count);
    for (i, (id, mut stream)) in streams.into_iter().enumerate() {
        poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        conns.push(Conn {
            id,
            stream,
            queued: 0,
            sent: 0,
            echoed: 0,
            inflight: VecDeque::new(),
            // Spread the first sends of a rate-limited run over one interval.
            next_due: now
                + plan
                    .interval
                    .map_or(Duration::ZERO, |d| d.mul_f64(i as f64 / count as f64)),
            done: false,
        });
    }
    let mut t = Thread {
        plan,
        pattern,
        live,
        out: Outcome {
            latency: new_histogram(),
            messages: 0,
            errors: [0; 4],
            first_error: None,
            until: now,
        },
        buf: vec![0; CHUNK],
        unreported: 0,
    };
    let mut events = Events::with_capacity(1024);
    for c in conns.iter_mut() {
        t.pump(c);
    }
    let give_up = plan.measure_to + GRACE;
    loop {
        // Interrupted: what is in flight is neither counted nor an error.
        if live.signal.load(Ordering::Relaxed) != 0 {
            break;
        }
        let now = Instant::now();
        let sending = now < plan.measure_to;
        if !sending && conns.iter().all(|c| c.done || c.inflight.is_empty()) {
            break;
        }
        if now >= give_up {
            for c in conns
                .iter_mut()
                .filter(|c| !c.done && !c.inflight.is_empty())
            {
                let n = c.inflight.len();
                t.fail(
                    c,
                    ErrorKind::Unanswered,
                    format!("{} unanswered at the end", plural(n as u64, "message")),
                );
            }
            break;
        }
        let mut wake = if sending { plan.measure_to } else { give_up };
        if sending && plan.interval.is_some() {
            for c in conns
                .iter()
                .filter(|c| !c.done && c.inflight.len() < plan.depth)
            {
                wake = wake.min(c.next_due);
            }
        }
        if sending && now < plan.measure_from {
            wake = wake.min(plan.measure_from);
        }
        let timeout = wake
            .saturating_duration_since(now)
            .min(Duration::from_millis(100));
        match poll.poll(&mut events, Some(timeout)) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => {
                return Err(anyhow!(e).context("epoll_wait"));
            }
            _ => {}
        }
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if !c.done {
                t.pump(c);
            }
        }
        if plan.interval.is_some() && sending {
            let now = Instant::now();
            for c in conns.iter_mut().filter(|c| !c.done && c.next_due <= now) {
                t.pump(c);
            }
        }
        t.report();
    }
    t.report();
    t.out.until = Instant::now();
    for c in conns.iter_mut() {
        let _ = poll.registry().deregister(&mut c.stream);
    }
    Ok(t.out)
}

impl Thread<'_> {
    fn report(&mut self) {
        if self.unreported > 0 {
            self.live
                .measured
                .fetch_add(self.unreported, Ordering::Relaxed);
            self.unreported = 0;
        }
    }

    fn fail(&mut self, c: &mut Conn, kind: ErrorKind, what: String) {
        c.done = true;
        self.out.errors[KINDS.iter().position(|k| *k == kind).unwrap_or(0)] += 1;
        self.live.errors.fetch_add(1, Ordering::Relaxed);
        if self.out.first_error.is_none() {
            self.out.first_error = Some(format!("connection {}: {what}", c.id));
        }
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Reads what arrived, queues the messages now allowed, writes what the
    /// socket takes; until the socket would block on both sides.
    fn pump(&mut self, c: &mut Conn) {
        loop {
            if let Err((kind, what)) = self.read(c) {
                return self.fail(c, kind, what);
            }
            self.queue(c);
            match self.write(c) {
                Ok(progress) => {
                    if !progress {
                        return;
                    }
                }
                Err(e) => return self.fail(c, ErrorKind::Io, format!("send: {e}")),
            }
        }
    }

    fn queue(&mut self, c: &mut Conn) {
        let now = Instant::now();
        if now >= self.plan.measure_to {
            return;
        }
        while c.inflight.len() < self.plan.depth {
            let from = match self.plan.interval {
                None => now,
                Some(every) => {
                    if c.next_due > now {
                        break;
                    }
                    let due = c.next_due;
                    c.next_due += every;
                    due
                }
            };
            c.queued += self.plan.size;
            c.inflight.push_back((c.queued, from));
        }
    }

    /// Writes queued bytes until done or the socket is full; whether any
    /// byte went.
    fn write(&mut self, c: &mut Conn) -> io::Result<bool> {
        let mut progress = false;
        while c.sent < c.queued {
            let n = ((c.queued - c.sent) as usize).min(CHUNK);
            match c.stream.write(expected(self.pattern, c.id, c.sent, n)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    c.sent += m as u64;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(progress)
    }

    fn read(&mut self, c: &mut Conn) -> Result<(), (ErrorKind, String)> {
        loop {
            let n = match c.stream.read(&mut self.buf) {
                Ok(0) => {
                    return Err((
                        ErrorKind::Closed,
                        format!(
                            "the server closed the connection after echoing {} of {}",
                            c.echoed,
                            plural(c.sent, "byte")
                        ),
                    ));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err((ErrorKind::Io, format!("receive: {e}"))),
            };
            if c.echoed + n as u64 > c.sent {
                return Err((
                    ErrorKind::Mismatch,
                    format!(
                        "{} echoed, only {} sent",
                        plural(c.echoed + n as u64, "byte"),
                        c.sent
                    ),
                ));
            }
            let want = expected(self.pattern, c.id, c.echoed, n);
            if let Some(i) = self.buf[..n].iter().zip(want).position(|(a, b)| a != b) {
                return Err((
                    ErrorKind::Mismatch,
                    format!(
                        "echoed byte at stream offset {} is {:#04x}, sent {:#04x}",
                        c.echoed + i as u64,
                        self.buf[i],
                        want[i]
                    ),
                ));
            }
            c.echoed += n as u64;
            let now = Instant::now();
            while let Some(&(end, from)) = c.inflight.front() {
                if end > c.echoed {
                    break;
                }
                c.inflight.pop_front();
                if now >= self.plan.measure_from && now < self.plan.measure_to {
                    let ns = now
                        .duration_since(from)
                        .as_nanos()
                        .clamp(1, u128::from(u64::MAX)) as u64;
                    self.out.latency.saturating_record(ns);
                    self.out.messages += 1;
                    self.unreported += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_uses_every_byte_value_and_wraps_seamlessly() {
        let p = make_pattern();
        let mut seen = [false; 256];
        for &b in &p[..PATTERN] {
            seen[b as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        // A window crossing the end of the cycle reads on from its start.
        assert_eq!(&p[PATTERN..PATTERN + 100], &p[..100]);
        let at = PATTERN as u64 - 10;
        let w = expected(&p, 0, at, 20);
        assert_eq!(&w[10..], &p[..10]);
    }

    #[test]
    fn connections_read_the_pattern_at_different_offsets() {
        let p = make_pattern();
        assert_ne!(expected(&p, 0, 0, 64), expected(&p, 1, 0, 64));
        assert_ne!(expected(&p, 1, 0, 64), expected(&p, 2, 0, 64));
    }
}
