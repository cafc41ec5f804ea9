//! How the commands end when told to, wherever their output goes: a server
//! whose log pipe's reader has gone, or whose descriptors are closed,
//! still stops on a signal; `serve --stats | head -1` ends with `head`;
//! `client` dies of the signal; `load` interrupted reports what it measured
//! and exits 128 + the signal.

// Linux only, as tests/common is (see there).
#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{
    connect, listening_addr, read_until_line, send_signal, wait_exit, wait_until, KillOnDrop,
    Server, Signal, BIN, STEP,
};

/// How long a command may take to end once told to.
const PROMPT: Duration = Duration::from_secs(5);

/// One echo on a new connection: the server still serves.
fn echoes(addr: std::net::SocketAddr) {
    let mut s = connect(addr);
    s.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).expect("an echo");
    assert_eq!(&got, b"ping");
}

/// Waits (bounded by [`PROMPT`]) for `child` to exit after it was told to.
fn ends(child: &mut KillOnDrop, what: &str) -> ExitStatus {
    let asked = Instant::now();
    let status = wait_exit(&mut child.0, PROMPT)
        .unwrap_or_else(|| panic!("{what}: still running {PROMPT:?} after it was told to stop"));
    eprintln!("{what}: ended in {:?} with {status:?}", asked.elapsed());
    status
}

/// `cport -v serve` with its logs in a pipe whose reader has gone (alone,
/// or with stdout as in `2>&1 | tee log` once tee has exited): logging
/// fails from the first line on, the server keeps serving, and SIGTERM
/// still ends it with 0.
#[test]
fn a_server_whose_log_reader_has_gone_serves_and_stops_on_sigterm() {
    for shared in [false, true] {
        let mut cmd = Command::new(BIN);
        cmd.args(["-v", "serve", "--port", "0"])
            .stdin(Stdio::null());
        let (addr, mut server) = if shared {
            let (reader, writer) = std::io::pipe().expect("a pipe");
            cmd.stdout(writer.try_clone().unwrap()).stderr(writer);
            let server = KillOnDrop(cmd.spawn().expect("cport starts"));
            // Our copies of the writing end went with `cmd`: the reader
            // read here is the pipe's only one.
            drop(cmd);
            let line = read_until_line(reader, "listening on", true);
            (listening_addr(&line), server)
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut server = KillOnDrop(cmd.spawn().expect("cport starts"));
            drop(server.0.stderr.take());
            let stdout = server.0.stdout.take().unwrap();
            let line = read_until_line(stdout, "listening on", false);
            (listening_addr(&line), server)
        };
        // Each connection logs a connect and a disconnect into the broken
        // pipe; a worker that died of it would leave the second unserved.
        echoes(addr);
        echoes(addr);
        send_signal(server.0.id(), Signal::TERM);
        let status = ends(&mut server, "serve with its log reader gone");
        assert_eq!(status.code(), Some(0), "shared with stdout: {shared}");
    }
}

/// `cport serve --stats | head -1` (and `--print`, and a model's stats):
/// once the reader of stdout has gone the server ends by itself, with 0,
/// although no line may be due for a long time.
#[test]
fn serve_with_output_ends_when_its_reader_has_gone() {
    for extra in [
        &["--stats"][..],
        &["--print"],
        &["--model", "poll", "--stats"],
    ] {
        let mut server = KillOnDrop(
            Command::new(BIN)
                .args(["serve", "--port", "0"])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("cport starts"),
        );
        let stdout = server.0.stdout.take().unwrap();
        read_until_line(stdout, "listening on", true);
        let status = ends(&mut server, &format!("serve {extra:?} after head -1"));
        let mut err = String::new();
        server
            .0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(0), "{extra:?}: {err}");
        assert!(err.is_empty(), "{extra:?}: quietly, but: {err}");
    }
}

/// The descriptor numbers of stdout and stderr closed (`>&- 2>&-`): the
/// server runs, and SIGINT ends it with 0.
#[test]
fn a_server_with_stdout_and_stderr_closed_stops_on_sigint() {
    let mut server = KillOnDrop(
        Command::new("sh")
            .args(["-c", r#"exec "$0" -v serve --port 0 >&- 2>&-"#, BIN])
            .stdin(Stdio::null())
            .spawn()
            .expect("sh starts"),
    );
    let pid = server.0.id();
    // Serving: its workers exist (the signal handler was installed before).
    let serving = wait_until(STEP, || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.starts_with("cport-worker"))
            })
    });
    assert!(serving, "no worker thread within {STEP:?}");
    send_signal(pid, Signal::INT);
    let status = ends(&mut server, "serve with stdout and stderr closed");
    assert_eq!(status.code(), Some(0));
}

/// `cport client` waiting on its input: SIGINT and SIGTERM end it (the
/// default action: it installs no handler).
#[test]
fn a_waiting_client_dies_of_sigint_and_sigterm() {
    let server = Server::start("auto", &[]).expect("auto always starts");
    for (n, signal) in [(1, Signal::INT), (2, Signal::TERM)] {
        let mut client = KillOnDrop(
            Command::new(BIN)
                .args(["client", &server.addr.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cport starts"),
        );
        assert!(
            wait_until(STEP, || server.stderr().matches(": connect ").count() >= n),
            "the client never connected: {}",
            server.stderr()
        );
        send_signal(client.0.id(), signal);
        let status = ends(&mut client, "client");
        assert_eq!(status.signal(), Some(signal.as_raw()), "{status:?}");
    }
}

/// Runs `cport load` (4 connections, 60 s, no warm-up) against a server
/// until the server reports echoes, then sends `signal`; returns how load
/// ended, its stdout and its stderr.
fn interrupted_load(signal: Signal, json: bool) -> (ExitStatus, String, String) {
    let server = Server::start("auto", &["--stats"]).expect("auto always starts");
    let addr = server.addr.to_string();
    let mut args = vec![
        "load",
        &addr,
        "--conns",
        "4",
        "--duration",
        "60s",
        "--warmup",
        "0s",
    ];
    if json {
        args.push("--json");
    }
    let mut load = KillOnDrop(
        Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cport starts"),
    );
    // "conns 4  completions/s N  …" with N > 0: the load is measuring.
    let measuring = wait_until(STEP, || {
        server.stdout_lines().iter().any(|l| {
            l.starts_with("conns 4 ")
                && l.split_whitespace()
                    .skip_while(|w| *w != "completions/s")
                    .nth(1)
                    .and_then(|n| n.parse::<f64>().ok())
                    .is_some_and(|n| n > 0.0)
        })
    });
    assert!(measuring, "no echo seen: {:?}", server.stdout_lines());
    send_signal(load.0.id(), signal);
    let status = ends(&mut load, "load");
    let mut out = String::new();
    let mut err = String::new();
    load.0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    load.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, out, err)
}

/// The value after `label` on the report line that starts with it.
fn field(report: &str, label: &str) -> f64 {
    report
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in:\n{report}"))
}

#[test]
fn load_interrupted_by_sigint_reports_what_it_measured_and_exits_130() {
    let (status, out, err) = interrupted_load(Signal::INT, false);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(out.starts_with("interrupted by SIGINT: "), "{out}");
    assert!(field(&out, "messages") > 0.0, "{out}");
    let measured = field(&out, "measured");
    assert!(measured > 0.0 && measured < 60.0, "{out}");
    assert_eq!(field(&out, "errors"), 0.0, "{out}");
    assert_eq!(err.trim(), "cport: interrupted by SIGINT");
}

#[test]
fn load_interrupted_by_sigint_writes_its_json_report_and_exits_130() {
    let (status, out, err) = interrupted_load(Signal::INT, true);
    assert_eq!(status.code(), Some(130), "{err}");
    let r: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not one JSON object ({e}): {out}"));
    assert_eq!(r["interrupted"], "SIGINT", "{r}");
    assert!(r["messages"].as_u64().unwrap() > 0, "{r}");
    let secs = r["duration_s"].as_f64().unwrap();
    assert!(secs > 0.0 && secs < 60.0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
}

#[test]
fn load_interrupted_by_sigterm_exits_143() {
    let (status, out, err) = interrupted_load(Signal::TERM, false);
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(out.starts_with("interrupted by SIGTERM: "), "{out}");
    assert!(field(&out, "messages") > 0.0, "{out}");
}
