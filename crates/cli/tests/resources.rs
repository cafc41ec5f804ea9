//! Resource use of `cport serve` at scale, on each backend: what an idle
//! connection costs (SEMANTICS O6: no receive buffer pinned while idle),
//! and descriptor exhaustion on accept (SEMANTICS R2: no busy loop, and
//! service resumes when descriptors free up).

// Linux only, as tests/common is (see there).
#![cfg(target_os = "linux")]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{connect, wait_until, Server, STEP};

/// Idle connections held open at once.
const IDLE: usize = 5_000;
/// The target for resident memory per idle connection.
const PER_IDLE_LIMIT_KIB: u64 = 16;

/// The soft descriptor limit of this process, raised (within the hard
/// limit) to `want` if it is lower. The servers started later inherit it.
fn ensure_nofile(want: u64) -> Result<(), String> {
    let soft = || -> u64 {
        std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    };
    if soft() >= want {
        return Ok(());
    }
    let _ = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={want}:"))
        .status();
    match soft() {
        n if n >= want => Ok(()),
        n => Err(format!("needs {want} descriptors, the limit is {n}")),
    }
}

/// 5,000 connections, each after one echo, then idle: the server's resident
/// memory grows by at most 16 KiB per connection (the target; the
/// measured figure is printed).
fn idle_connections_cost_at_most_16_kib_each(backend: &str) {
    // Both backends' tests may run at once, each holding IDLE sockets here.
    if let Err(why) = ensure_nofile(3 * IDLE as u64) {
        eprintln!("skipped: {why}");
        return;
    }
    let Some(server) = Server::start(backend, &[]) else {
        return;
    };
    server.assert_echoes();
    assert!(server.wait_closed(1, STEP));
    let before = server.rss_kib();
    let mut conns: Vec<TcpStream> = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        conns.push(connect(server.addr));
    }
    for c in &mut conns {
        c.write_all(b"hello").unwrap();
    }
    for c in &mut conns {
        let mut got = [0u8; 5];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
    }
    let after = server.rss_kib();
    let per = (after.saturating_sub(before)) as f64 / IDLE as f64;
    eprintln!(
        "{backend}: {IDLE} idle connections: RSS {before} KiB -> {after} KiB, {per:.2} KiB each"
    );
    assert!(
        per <= PER_IDLE_LIMIT_KIB as f64,
        "{per:.2} KiB per idle connection (target {PER_IDLE_LIMIT_KIB})"
    );
}

/// With few descriptors, connections beyond them wait in the backlog: the
/// server warns once, uses next to no CPU while saturated, and serves the
/// waiting connections as soon as descriptors are freed.
fn descriptor_exhaustion_pauses_accept_without_spinning(backend: &str) {
    const LIMIT: u64 = 48;
    let Some(server) = Server::start_with_nofile(backend, &[], LIMIT) else {
        return;
    };
    let base = server.fd_count() as u64;
    let room = (LIMIT - base) as usize;
    let mut conns: Vec<TcpStream> = (0..room + 20).map(|_| connect(server.addr)).collect();
    assert!(
        server.wait_stderr("Too many open files", STEP),
        "{}",
        server.stderr()
    );

    // Saturated: accept keeps failing. A server that retried at once would
    // burn a core here.
    let cpu0 = server.cpu_time();
    let t0 = Instant::now();
    let mut served = Vec::new();
    let mut waiting = Vec::new();
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(b"hi").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut got = [0u8; 2];
        match c.read(&mut got) {
            Ok(2) => served.push(i),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                waiting.push(i)
            }
            other => panic!("connection {i}: {other:?}"),
        }
    }
    // Measure over at least a second of saturation.
    let rest = Duration::from_secs(1).saturating_sub(t0.elapsed());
    std::thread::sleep(rest);
    let used = server.cpu_time() - cpu0;
    let wall = t0.elapsed();
    eprintln!(
        "{backend}: {} served, {} waiting; server CPU {used:?} over {wall:?} while saturated",
        served.len(),
        waiting.len()
    );
    assert!(!waiting.is_empty(), "the limit was never reached");
    assert!(
        served.len() >= waiting.len() + 2,
        "too few connections served to free room: {} served, {} waiting",
        served.len(),
        waiting.len()
    );
    assert!(
        used < wall / 4,
        "the server used {used:?} of CPU in {wall:?} while it could not accept"
    );
    let warnings = server.stderr().matches("accept failed").count();
    assert_eq!(warnings, 1, "one warning per episode:\n{}", server.stderr());

    // Free descriptors: every waiting connection gets its echo.
    // Shut down a few more than are waiting; the server closes its side
    // once it sees the FIN, which frees its descriptor.
    for &i in served.iter().take(waiting.len() + 2) {
        let _ = conns[i].shutdown(std::net::Shutdown::Both);
    }
    for i in waiting {
        conns[i].set_read_timeout(Some(STEP)).unwrap();
        let mut got = [0u8; 2];
        conns[i]
            .read_exact(&mut got)
            .unwrap_or_else(|e| panic!("connection {i} was never served: {e}"));
        assert_eq!(&got, b"hi");
    }
    assert!(
        wait_until(STEP, || server
            .stderr()
            .contains("accepting connections again")),
        "{}",
        server.stderr()
    );
}

per_backend!(
    idle_connections_cost_at_most_16_kib_each,
    descriptor_exhaustion_pauses_accept_without_spinning,
);
