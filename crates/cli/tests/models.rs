//! `cport serve --model NAME`: every model other than `port` (whose
//! behaviour the other test files cover) serves TCP echo from the real
//! binary, says it serves TCP only, and stops on SIGTERM in bounded time.

// Linux only, as tests/common is (see there).
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{connect, pattern, run_cport, BIN, STEP};
use rustix::process::{kill_process, Pid, Signal};

const MODELS: [&str; 9] = [
    "blocking",
    "nonblocking",
    "select",
    "poll",
    "epoll",
    "message",
    "event",
    "overlapped",
    "callback",
];

struct Served {
    child: Child,
    addr: SocketAddr,
    first_line: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn serve(model: &str) -> Served {
    serve_with(&["--model", model])
}

/// `cport serve --port 0` with these arguments; waits (bounded) for its
/// first line.
fn serve_with(args: &[&str]) -> Served {
    let model = args.join(" ");
    let mut child = Command::new(BIN)
        .args(["serve", "--port", "0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cport starts");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
        // Keep reading so the server never blocks on a full pipe.
        for _ in lines {}
    });
    let first_line = rx
        .recv_timeout(STEP)
        .unwrap_or_else(|_| panic!("cport serve {model} printed no address"));
    let addr = first_line
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first_line:?}"));
    Served {
        child,
        addr,
        first_line,
    }
}

/// Writes `data` from another thread (the echo comes back while it is
/// still being written) and reads as many bytes back.
fn round_trip(s: &TcpStream, data: &[u8]) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let out = data.to_vec();
    let writer = thread::spawn(move || w.write_all(&out));
    let mut got = vec![0u8; data.len()];
    (&*s).read_exact(&mut got).expect("echo");
    writer.join().unwrap().unwrap();
    got
}

#[test]
fn every_model_serves_tcp_echo_and_stops_on_sigterm() {
    for model in MODELS {
        let mut server = serve(model);
        assert!(
            server.first_line.contains(&format!("model={model}"))
                && server.first_line.contains("tcp only"),
            "{}",
            server.first_line
        );
        let mut s = connect(server.addr);
        let data = pattern(5, 64 * 1024);
        assert!(
            round_trip(&s, &data) == data,
            "{model}: 64 KiB echoed exactly"
        );

        let pid = Pid::from_raw(server.child.id() as i32).unwrap();
        kill_process(pid, Signal::TERM).expect("kill(2)");
        let deadline = Instant::now() + STEP;
        let status = loop {
            if let Some(st) = server.child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "{model}: no exit after SIGTERM");
            thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "{model}: {status:?}");
        // The client's connection was closed by the stop.
        let mut b = [0u8; 1];
        assert!(matches!(s.read(&mut b), Ok(0) | Err(_)), "{model}");
    }
}

/// `--buffer-size` reaches every model: with the least buffer (64 B) each
/// echoes a message of hundreds of buffers exactly.
#[test]
fn every_model_takes_a_buffer_size() {
    for model in MODELS {
        let server = serve_with(&["--model", model, "--buffer-size", "64"]);
        let s = connect(server.addr);
        let data = pattern(6, 20_000);
        assert!(
            round_trip(&s, &data) == data,
            "{model}: 20,000 bytes echoed exactly through 64 B buffers"
        );
    }
}

/// The callback model runs on a port; its first line names the backend
/// that port runs on, never `auto`.
#[test]
fn callback_model_names_the_backend_it_runs_on() {
    names_its_backend("callback");
}

#[test]
fn overlapped_model_names_the_backend_it_runs_on() {
    names_its_backend("overlapped");
}

/// A model built on a port says which backend it runs on in its first
/// line, follows CPORT_BACKEND, and takes --backend.
fn names_its_backend(model: &str) {
    let server = serve(model);
    let named = server
        .first_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("backend="))
        .unwrap_or_else(|| panic!("no backend in {:?}", server.first_line))
        .to_string();
    match std::env::var("CPORT_BACKEND").as_deref() {
        Ok(b @ ("uring" | "epoll")) => assert_eq!(named, b),
        _ => assert!(named == "uring" || named == "epoll", "{named}"),
    }
    drop(server);

    let server = serve_with(&["--model", model, "--backend", "epoll"]);
    assert!(
        server.first_line.contains(" backend=epoll"),
        "{}",
        server.first_line
    );
}

#[test]
fn port_options_are_refused_by_other_models() {
    for extra in [
        &["--workers", "2"][..],
        &["--no-tcp"][..],
        &["--max-conns", "5"][..],
        &["--backend", "epoll"][..],
    ] {
        let mut args = vec!["serve", "--port", "0", "--model", "poll"];
        args.extend_from_slice(extra);
        let out = run_cport(&args, b"", STEP);
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--model poll does not support"), "{err}");
    }
    let out = run_cport(&["serve", "--model", "iocp"], b"", STEP);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown model") && err.contains("blocking"),
        "{err}"
    );
}
