//! `cport serve`: the tutorials' echo server from crates/models — the
//! completion port server (`--model port`, the default: TCP and UDP, with
//! every option) or one of the other I/O models (TCP only, no options).
//! Here the sockets are bound, the server is started on a thread of its
//! own, signals are answered, and what it does is reported: the listening
//! line, `--print`, `--stats`, `-v`.
//!
//! Ctrl-C or SIGTERM stops the server: the port server drains (a second
//! signal closes every connection at once), the other models stop at once.
//! One signal more than that exits at once, whatever the server is doing.
//!
//! With `--stats` or `--print` the server ends, as after a signal, when
//! stdout's reader has gone (`cport serve --stats | head -1`): its output
//! has nowhere to go. Without them stdout carries only the listening line,
//! and the server outlives that line's reader, as any program that writes
//! nothing more does.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use cport_models::port::{self, Control, Protocol};
use cport_models::{plural, Model, Stats, Stop};
use socket2::{Domain, Protocol as IpProtocol, Socket, Type};
use tracing::info;

use crate::args::ServeArgs;
use crate::console::{self, signal_name, StdoutClosed};

/// Listen backlog. Linux caps it at `net.core.somaxconn` (4096 by default
/// since 5.4); with the old default of 128, 500 simultaneous connects
/// overflow the queue and wait for SYN retransmits, a second or more each.
const BACKLOG: i32 = 4096;

/// Options are checked by `args` before this runs.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    match (args.model, args.shards) {
        (Model::Port, Some(n)) => run_shards(args, n as usize),
        (Model::Port, None) => run_port(args),
        _ => run_model(args),
    }
}

/// `--shards N`: N ports of one thread each, on N listeners sharing the
/// address.
fn run_shards(args: ServeArgs, n: usize) -> anyhow::Result<()> {
    let first = listen_shared(SocketAddr::new(args.bind, args.port))?;
    let local = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..n {
        listeners.push(listen_shared(local)?);
    }
    let stop = Stop::new();
    let shards = port::Shards::new(
        listeners,
        args.backend.to_backend(),
        args.buffer_size(),
        args.shutdown_timeout,
        Arc::new(Stats::default()),
    )?;
    let control = shards.control();
    watch_signals(&stop, None)?;
    if args.stats {
        watch_stdout(&stop)?;
    }
    console::line(&format!(
        "listening on {local} (tcp only: shards serve no udp) backend={} shards={n}",
        shards.backend()
    ))?;
    serve_to_stop(
        &stop,
        args.stats,
        move || control.totals(),
        move |stop| shards.serve(stop),
    )
}

fn run_port(args: ServeArgs) -> anyhow::Result<()> {
    let (listener, udp) = bind(args.bind, args.port, !args.no_tcp, !args.no_udp)?;
    let local = match (&listener, &udp) {
        (Some(l), _) => l.local_addr()?,
        (None, Some(u)) => u.local_addr()?,
        (None, None) => unreachable!("args refuses --no-tcp with --no-udp"),
    };
    let protocols = match (&listener, &udp) {
        (Some(_), Some(_)) => "tcp, udp",
        (Some(_), None) => "tcp",
        _ => "udp",
    };
    let stop = Stop::new();
    let options = port::Options {
        backend: args.backend.to_backend(),
        workers: args.workers.map_or(0, |n| n as usize),
        concurrency: args.concurrency.map_or(0, |n| n as usize),
        buffer_size: args.buffer_size(),
        max_conns: args.max_conns,
        idle_timeout: args.idle_timeout,
        shutdown_timeout: args.shutdown_timeout,
        on_data: args.print.then(|| print_data(stop.clone())),
    };
    let server = port::Server::new(options, listener, udp, Arc::new(Stats::default()))?;
    let control = server.control();

    // Before the listening line: a SIGTERM sent as soon as the address is
    // known must start the drain, not kill the process.
    watch_signals(&stop, Some(control.clone()))?;
    if args.stats || args.print {
        watch_stdout(&stop)?;
    }
    // The first line is the address actually bound (tests and scripts start
    // the server on port 0 and read it from here).
    console::line(&format!(
        "listening on {local} ({protocols}) backend={} workers={} concurrency={}",
        server.backend(),
        server.workers(),
        server.concurrency()
    ))?;

    serve_to_stop(
        &stop,
        args.stats,
        move || control.totals(),
        move |stop| server.serve(stop),
    )
}

/// Runs a port server until it stops, with the `--stats` line if asked,
/// and logs how long it served and whom.
fn serve_to_stop(
    stop: &Stop,
    stats: bool,
    totals: impl Fn() -> port::Totals + Clone,
    serve: impl FnOnce(Stop) -> io::Result<()> + Send + 'static,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let stats = stats.then(|| port_stats(totals.clone()));
    let result = supervise("cport-serve", stop, stats, serve);
    info!(
        "stopped after {:.1?}; {} served",
        started.elapsed(),
        plural(totals().served, "connection")
    );
    result
}

fn run_model(args: ServeArgs) -> anyhow::Result<()> {
    let model = args.model;
    let listener = listen(SocketAddr::new(args.bind, args.port))?;
    let local = listener.local_addr()?;
    let stop = Stop::new();
    let stats = Arc::new(Stats::default());
    // The callback model's port is built here, so the first line names
    // the backend `auto` chose.
    let (serve, backend_note): (Box<dyn FnOnce(Stop) -> io::Result<()> + Send>, _) = match model {
        #[cfg(unix)]
        Model::Callback => {
            let server = cport_models::callback::Server::new(
                listener,
                args.backend.to_backend(),
                stats.clone(),
                args.buffer_size(),
            )?;
            let note = format!(" backend={}", server.backend());
            (Box::new(move |stop| server.serve(stop)), note)
        }
        #[cfg(unix)]
        Model::Overlapped => {
            let server = cport_models::overlapped::Server::new(
                listener,
                args.backend.to_backend(),
                stats.clone(),
                args.buffer_size(),
            )?;
            let note = format!(" backend={}", server.backend());
            (Box::new(move |stop| server.serve(stop)), note)
        }
        _ => {
            let stats = stats.clone();
            let buffer = args.buffer_size();
            (
                Box::new(move |stop| model.serve(listener, stop, stats, buffer)),
                String::new(),
            )
        }
    };

    watch_signals(&stop, None)?;
    if args.stats {
        watch_stdout(&stop)?;
    }
    // The first line names the address actually bound, as the port
    // server's does (scripts start on port 0 and read it from here).
    console::line(&format!(
        "listening on {local} (tcp only: the {model} model serves no udp) \
         model={model}{backend_note}"
    ))?;

    let started = Instant::now();
    let line = args.stats.then(|| model_stats(stats.clone()));
    let result = supervise(&format!("model-{model}"), &stop, line, serve);
    info!(
        "stopped after {:.1?}; {} served",
        started.elapsed(),
        plural(stats.accepted.load(Ordering::Relaxed), "connection")
    );
    result.with_context(|| format!("the {model} model failed"))
}

/// Runs `serve` on a thread named `name` until it returns; meanwhile, with
/// `stats`, prints its line after the first second (the stats are on),
/// then each second in which the line changed: an idle server is quiet.
fn supervise(
    name: &str,
    stop: &Stop,
    mut stats: Option<impl FnMut() -> String>,
    serve: impl FnOnce(Stop) -> io::Result<()> + Send + 'static,
) -> anyhow::Result<()> {
    let (done_tx, done_rx) = mpsc::channel();
    {
        let stop = stop.clone();
        thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ = done_tx.send(serve(stop));
            })
            .context("cannot start the server's thread")?;
    }
    let mut last = String::new();
    loop {
        match done_rx.recv_timeout(Duration::from_secs(1)) {
            Ok(r) => return r.map_err(Into::into),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let Some(line) = stats.as_mut().map(|f| f()) else {
                    continue;
                };
                if line != last && !out_or_stop(&line, stop) {
                    stats = None;
                }
                last = line;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                anyhow::bail!("the server's thread panicked")
            }
        }
    }
}

/// The port server's `--stats` line: connections, completions/s, bytes/s.
fn port_stats(totals: impl Fn() -> port::Totals) -> impl FnMut() -> String {
    let mut last = (Instant::now(), totals());
    move || {
        let now = Instant::now();
        let t = totals();
        let secs = now.duration_since(last.0).as_secs_f64().max(1e-9);
        let rate = |n: u64, before: u64| (n - before) as f64 / secs;
        let line = format!(
            "conns {}  completions/s {:.0}  recv {}/s  sent {}/s",
            t.open,
            rate(t.completions, last.1.completions),
            bytes(rate(t.bytes_in, last.1.bytes_in)),
            bytes(rate(t.bytes_out, last.1.bytes_out)),
        );
        last = (now, t);
        line
    }
}

/// The other models' `--stats` line: open connections, accepted, echo
/// throughput, threads.
fn model_stats(stats: Arc<Stats>) -> impl FnMut() -> String {
    let mut last = (Instant::now(), 0u64);
    move || {
        let now = Instant::now();
        let total = stats.bytes.load(Ordering::Relaxed);
        let secs = now.duration_since(last.0).as_secs_f64().max(1e-9);
        let line = format!(
            "stats: open={} accepted={} refused={} errors={} echoed={:.0}B/s threads={}",
            stats.open.load(Ordering::Relaxed),
            stats.accepted.load(Ordering::Relaxed),
            stats.refused.load(Ordering::Relaxed),
            stats.errors.load(Ordering::Relaxed),
            (total - last.1) as f64 / secs,
            stats.threads.load(Ordering::Relaxed),
        );
        last = (now, total);
        line
    }
}

/// `--print`: each message received, as one line with its sender.
fn print_data(stop: Stop) -> port::OnData {
    Box::new(move |proto: Protocol, peer: SocketAddr, data: &[u8]| {
        out_or_stop(&format!("[{proto}] {peer}: {}", printable(data)), &stop);
    })
}

/// Prints `line`; when stdout's reader has gone, stops the server instead
/// and says so (false). Another failure to write (a full disk) loses the
/// line, not the service.
fn out_or_stop(line: &str, stop: &Stop) -> bool {
    match console::line(line) {
        Err(e) if e.is::<StdoutClosed>() => {
            stdout_gone(stop);
            false
        }
        _ => true,
    }
}

fn stdout_gone(stop: &Stop) {
    if !stop.is_stopped() {
        stop.stop();
        info!("stdout was closed: shutting down");
    }
}

fn watch_stdout(stop: &Stop) -> anyhow::Result<()> {
    let stop = stop.clone();
    console::watch_stdout(move || stdout_gone(&stop))
}

/// SIGINT and SIGTERM: the first stops the server; the second closes the
/// port server's connections at once; one more exits at once.
fn watch_signals(stop: &Stop, control: Option<Control>) -> anyhow::Result<()> {
    let stop = stop.clone();
    console::on_signals(move |sig, n| {
        let name = signal_name(sig);
        match (n, &control) {
            (1, _) => {
                stop.stop();
                info!("{name}: shutting down");
            }
            (2, Some(control)) => {
                control.close_now();
                info!("{name} again: closing every connection now");
            }
            _ => {
                info!("{name} again: exiting now");
                std::process::exit(128 + sig);
            }
        }
    })
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

fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    listen_with(addr, false)
}

/// A listener that others may bind to the same address (SO_REUSEPORT):
/// the kernel spreads the connections over them.
fn listen_shared(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    listen_with(addr, true)
}

fn listen_with(addr: SocketAddr, shared: bool) -> anyhow::Result<TcpListener> {
    let what = || format!("cannot listen on {addr} (tcp)");
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(IpProtocol::TCP),
    )
    .with_context(what)?;
    // Lets a restarted server bind while the old one's connections sit in
    // TIME_WAIT; it does not let two listeners share the port.
    s.set_reuse_address(true).with_context(what)?;
    if shared {
        #[cfg(unix)]
        s.set_reuse_port(true).with_context(what)?;
        // `args` refuses --shards on Windows, which has no SO_REUSEPORT.
        #[cfg(not(unix))]
        anyhow::bail!("{}: Windows has no SO_REUSEPORT", what());
    }
    s.bind(&addr.into()).with_context(what)?;
    s.listen(BACKLOG).with_context(what)?;
    Ok(s.into())
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
