//! How connections and the server itself end, on each backend: half-close,
//! idle timeout, the connection limit, SIGTERM, and the log lines that say
//! why a connection ended.

// Linux only, as tests/common is (see there).
#![cfg(target_os = "linux")]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

use common::{connect, fill_until_stalled, pattern, wait_until, Server, Signal, STEP};

/// The client's shutdown(SHUT_WR) after 1 MiB: every byte comes back, then
/// the server closes its side (a clean EOF, not a reset), and the log says
/// the peer closed.
fn half_close_echoes_every_byte_then_server_closes(backend: &str) {
    let Some(server) = Server::start(backend, &[]) else {
        return;
    };
    let s = connect(server.addr);
    let data = pattern(3, 1 << 20);
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let t = thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    let mut r = s;
    r.read_to_end(&mut got).expect("a clean end of stream");
    t.join().unwrap();
    assert!(
        got == data,
        "echo differs ({} of {} bytes)",
        got.len(),
        data.len()
    );
    let local = r.local_addr().unwrap();
    assert!(
        server.wait_stderr(&format!("disconnect {local}"), STEP),
        "{}",
        server.stderr()
    );
    let log = server.stderr();
    assert!(log.contains(&format!("connect {local}")), "{log}");
    assert!(log.contains("peer closed; 1048576 bytes echoed"), "{log}");
}

/// `--idle-timeout`: a connection with no I/O is closed, and the log says
/// why; an active one is not.
fn idle_connections_are_closed_after_the_timeout(backend: &str) {
    let Some(server) = Server::start(backend, &["--idle-timeout", "300ms"]) else {
        return;
    };
    // Taken before connecting: the server's clock for this connection
    // starts at its accept, which may come before connect() returns here.
    let started = Instant::now();
    let mut idle = connect(server.addr);
    let mut buf = [0u8; 1];
    match idle.read(&mut buf) {
        Ok(0) => {}
        other => panic!("expected the server to close the idle connection, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
    assert!(
        server.wait_stderr("idle timeout", STEP),
        "{}",
        server.stderr()
    );
    // A connection busier than the timeout keeps being served.
    let mut busy = connect(server.addr);
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        busy.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        busy.read_exact(&mut got)
            .expect("a busy connection is not timed out");
        thread::sleep(Duration::from_millis(50));
    }
}

/// `--max-conns 2`: a third connection is closed at once, and a place
/// freed is taken again.
fn connections_beyond_the_limit_are_refused(backend: &str) {
    let Some(server) = Server::start(backend, &["--max-conns", "2"]) else {
        return;
    };
    let mut a = connect(server.addr);
    let mut b = connect(server.addr);
    for s in [&mut a, &mut b] {
        s.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap();
    }
    let mut c = connect(server.addr);
    let mut buf = [0u8; 1];
    match c.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the third connection should be closed, got {other:?}"),
    }
    assert!(
        server.wait_stderr("(--max-conns)", STEP),
        "{}",
        server.stderr()
    );
    drop(a);
    // The server sees the close asynchronously: retry until admitted.
    let admitted = wait_until(STEP, || {
        let mut d = connect(server.addr);
        d.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        d.write_all(b"y").is_ok() && {
            let mut one = [0u8; 1];
            matches!(d.read(&mut one), Ok(1))
        }
    });
    assert!(admitted, "a freed place is taken again");
}

/// SIGTERM: idle clients see their connection end, echoes in progress are
/// finished, and the server exits 0 promptly.
fn sigterm_closes_clients_and_exits_zero(backend: &str) {
    sigterm_closes_clients(backend, &[]);
}

/// The same with a port per thread (`--shards`).
fn shards_close_clients_on_sigterm_and_exit_zero(backend: &str) {
    sigterm_closes_clients(backend, &["--shards", "2"]);
}

fn sigterm_closes_clients(backend: &str, extra: &[&str]) {
    let Some(mut server) = Server::start(backend, extra) else {
        return;
    };
    let mut idle: Vec<_> = (0..3).map(|_| connect(server.addr)).collect();
    for s in &mut idle {
        s.write_all(b"hi").unwrap();
        let mut two = [0u8; 2];
        s.read_exact(&mut two).unwrap();
    }
    let started = Instant::now();
    server.signal(Signal::TERM);
    let status = server.wait(STEP).expect("the server exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    for s in &mut idle {
        let mut buf = [0u8; 8];
        assert!(
            matches!(s.read(&mut buf), Ok(0)),
            "an idle client sees a clean close"
        );
    }
    assert!(
        server.stderr().contains("server shutting down"),
        "{}",
        server.stderr()
    );
    // No thread of the server panicked on the way out, caught or not (a
    // shard's stop once printed one from the signal thread).
    assert!(
        !server.stderr().contains(" panicked at "),
        "{}",
        server.stderr()
    );
}

/// SIGTERM with a client that never reads (its echo cannot finish): the
/// server gives up after --shutdown-timeout and still exits 0.
fn sigterm_with_a_stuck_client_exits_within_the_shutdown_timeout(backend: &str) {
    stuck_client_holds_the_exit_for_the_timeout(backend, &[]);
}

/// The same with a port per thread (`--shards`).
fn shards_with_a_stuck_client_exit_within_the_shutdown_timeout(backend: &str) {
    stuck_client_holds_the_exit_for_the_timeout(backend, &["--shards", "2"]);
}

fn stuck_client_holds_the_exit_for_the_timeout(backend: &str, extra: &[&str]) {
    let args: Vec<&str> = ["--shutdown-timeout", "1s"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    let Some(mut server) = Server::start(backend, &args) else {
        return;
    };
    let stuck = connect(server.addr);
    fill_until_stalled(&stuck, usize::MAX);
    let started = Instant::now();
    server.signal(Signal::TERM);
    let status = server.wait(STEP).expect("the server exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "took {took:?}: the stuck echo should hold the exit for the 1 s timeout, no more"
    );
    assert!(
        server.stderr().contains("still busy"),
        "{}",
        server.stderr()
    );
}

/// A second signal cuts the drain short.
fn second_signal_closes_at_once(backend: &str) {
    let Some(mut server) = Server::start(backend, &["--shutdown-timeout", "60s"]) else {
        return;
    };
    let stuck = connect(server.addr);
    fill_until_stalled(&stuck, usize::MAX);
    let started = Instant::now();
    server.signal(Signal::TERM);
    assert!(server.wait_stderr("shutting down", STEP));
    server.signal(Signal::INT);
    let status = server
        .wait(Duration::from_secs(10))
        .expect("exits after a second signal");
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// `--stats` prints one line a second with the connection count and rates.
fn stats_prints_a_line_a_second(backend: &str) {
    let Some(server) = Server::start(backend, &["--stats"]) else {
        return;
    };
    let mut s = connect(server.addr);
    s.write_all(b"abc").unwrap();
    let mut got = [0u8; 3];
    s.read_exact(&mut got).unwrap();
    let stats = |server: &Server| {
        server
            .stdout_lines()
            .into_iter()
            .filter(|l| l.starts_with("conns "))
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(STEP, || stats(&server).len() >= 2),
        "{:?}",
        server.stdout_lines()
    );
    let line = &stats(&server)[0];
    assert!(line.starts_with("conns 1 "), "{line}");
    assert!(
        line.contains("completions/s") && line.contains("recv") && line.contains("sent"),
        "{line}"
    );
}

/// The open count on each connect and disconnect line follows the order
/// of the lines, also when many connections end at once at shutdown: each
/// line's count is one more (connect) or one less (disconnect) than the
/// line before, down to 0.
fn open_counts_follow_the_order_of_the_lines(backend: &str) {
    const CONNS: usize = 24;
    let Some(mut server) = Server::start(backend, &[]) else {
        return;
    };
    let mut conns: Vec<_> = (0..CONNS).map(|_| connect(server.addr)).collect();
    for s in &mut conns {
        s.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap();
    }
    server.signal(Signal::TERM);
    let status = server.wait(STEP).expect("the server exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    let log = server.stderr();
    let mut open = 0i64;
    let mut seen = 0;
    for line in log.lines() {
        let step = if line.contains(": connect ") {
            1
        } else if line.contains(": disconnect ") {
            -1
        } else {
            continue;
        };
        let count: i64 = line
            .rsplit_once(" open")
            .and_then(|(head, _)| head.rsplit([' ', '(']).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no open count in {line:?}"));
        open += step;
        seen += 1;
        assert_eq!(count, open, "out of order at {line:?} in:\n{log}");
    }
    assert_eq!((seen, open), (2 * CONNS, 0), "{log}");
}

per_backend!(
    half_close_echoes_every_byte_then_server_closes,
    idle_connections_are_closed_after_the_timeout,
    connections_beyond_the_limit_are_refused,
    sigterm_closes_clients_and_exits_zero,
    shards_close_clients_on_sigterm_and_exit_zero,
    sigterm_with_a_stuck_client_exits_within_the_shutdown_timeout,
    shards_with_a_stuck_client_exit_within_the_shutdown_timeout,
    second_signal_closes_at_once,
    stats_prints_a_line_a_second,
    open_counts_follow_the_order_of_the_lines,
);

/// `--stats` on an idle server prints its first line and then nothing
/// while nothing changes (checked over 2.5 s, two more chances to print).
#[test]
fn stats_are_quiet_while_nothing_changes() {
    let server = Server::start("auto", &["--stats"]).expect("auto always starts");
    let stats = |server: &Server| {
        server
            .stdout_lines()
            .into_iter()
            .filter(|l| l.starts_with("conns "))
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(STEP, || !stats(&server).is_empty()),
        "no first stats line: {:?}",
        server.stdout_lines()
    );
    thread::sleep(Duration::from_millis(2500));
    let lines = stats(&server);
    assert_eq!(lines.len(), 1, "an idle server printed {lines:?}");
    assert!(lines[0].starts_with("conns 0 "), "{lines:?}");
}
