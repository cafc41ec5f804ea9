//! The peer echo servers `cport bench` measures cport against: each echoes
//! every byte value exactly and in order, on 1 and on 50 connections with
//! many messages in flight on each, to a client too slow to take its echo
//! (the server's sends come back short or find the socket full), with one
//! thread or two, with receive buffers of 64 B and of 256 KiB; each binds
//! loopback unless told otherwise and exits 0 on SIGTERM and SIGINT.

#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

/// The longest any step may take before the test fails.
const STEP: Duration = Duration::from_secs(30);

struct Peer {
    child: Child,
    addr: SocketAddr,
    first_line: String,
}

impl Peer {
    /// Starts `bin` with `args`; `None`, with the reason printed, where the
    /// kernel refuses io_uring (only `uring-echo` says so).
    fn start(bin: &str, args: &[&str]) -> Option<Peer> {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin} starts: {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut first = String::new();
            let _ = BufReader::new(out).read_line(&mut first);
            let _ = tx.send(first);
        });
        let first_line = rx.recv_timeout(STEP).unwrap_or_default();
        if first_line.is_empty() {
            let status = wait_exit(&mut child, STEP);
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            if err.contains("cannot set up io_uring") {
                eprintln!("skipped: {bin}: {}", err.trim());
                return None;
            }
            let _ = child.kill();
            panic!("{bin} printed no address ({status:?}): {err}");
        }
        let addr = first_line
            .strip_prefix("listening on ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("not `listening on ADDR ...`: {first_line:?}"));
        Some(Peer {
            child,
            addr,
            first_line,
        })
    }

    fn signal(&self, sig: Signal) {
        kill_process(Pid::from_raw(self.child.id() as i32).unwrap(), sig).unwrap();
    }

    fn threads(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, STEP).expect("connect");
    s.set_read_timeout(Some(STEP)).unwrap();
    s.set_write_timeout(Some(STEP)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// `len` bytes holding every byte value, different for each `seed`.
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_add(seed.wrapping_mul(131)) % 256) as u8 ^ ((i / 256) % 7) as u8)
        .collect()
}

fn read_exactly(s: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut got = vec![0u8; len];
    s.read_exact(&mut got).expect("the whole echo");
    got
}

/// On each of `conns` connections, `msgs` messages of `size` bytes are
/// written before any echo is read: all of them in flight at once (their
/// total stays below a socket buffer, so the writes never wait on the
/// reads). Each connection's echo must be its stream, byte for byte.
fn echoes_in_order(addr: SocketAddr, conns: usize, msgs: usize, size: usize) {
    let mut streams: Vec<TcpStream> = (0..conns).map(|_| connect(addr)).collect();
    let sent: Vec<Vec<u8>> = (0..conns).map(|c| pattern(c, msgs * size)).collect();
    for (s, data) in streams.iter_mut().zip(&sent) {
        for m in data.chunks(size) {
            s.write_all(m).unwrap();
        }
    }
    for (c, (s, data)) in streams.iter_mut().zip(&sent).enumerate() {
        let got = read_exactly(s, data.len());
        if let Some(i) = got.iter().zip(data).position(|(a, b)| a != b) {
            panic!(
                "connection {c}: byte {i} echoed {:#04x}, sent {:#04x}",
                got[i], data[i]
            );
        }
    }
}

/// The most a socket's send buffer grows to (`net.ipv4.tcp_wmem`'s
/// maximum), 4 MiB where it cannot be read.
fn send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

/// One message larger than the server's send buffer can ever hold (twice
/// its maximum, at least 1 MiB), to a client whose receive buffer is small
/// and which reads 4 KiB at a time with a pause after each: the server's
/// sends must come back short or find the socket full, and the rest must
/// still come in order.
fn slow_reader_gets_a_large_message(addr: SocketAddr) {
    let len = (2 * send_buffer_max()).max(1 << 20);
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&addr.into(), STEP).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(STEP)).unwrap();
    s.set_write_timeout(Some(STEP)).unwrap();
    let data = pattern(7, len);
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || w.write_all(&sent));
    let mut got = Vec::with_capacity(len);
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + STEP;
    while got.len() < len {
        assert!(
            Instant::now() < deadline,
            "{} of {len} bytes echoed in {STEP:?}",
            got.len()
        );
        let n = s.read(&mut chunk).expect("echo");
        assert!(n > 0, "closed after {} of {len} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
        thread::sleep(Duration::from_micros(200));
    }
    writer.join().unwrap().expect("the client's write");
    if let Some(i) = got.iter().zip(&data).position(|(a, b)| a != b) {
        panic!("byte {i} echoed {:#04x}, sent {:#04x}", got[i], data[i]);
    }
}

fn serves_one_and_fifty_connections(bin: &str, extra: &[&str]) {
    let mut args = vec!["--port", "0"];
    args.extend_from_slice(extra);
    let Some(p) = Peer::start(bin, &args) else {
        return;
    };
    assert_eq!(p.addr.ip().to_string(), "127.0.0.1", "{}", p.first_line);
    echoes_in_order(p.addr, 1, 16, 1000);
    echoes_in_order(p.addr, 50, 16, 1000);
    slow_reader_gets_a_large_message(p.addr);
}

fn one_thread(bin: &str) {
    serves_one_and_fifty_connections(bin, &[]);
}

fn two_threads(bin: &str) {
    let Some(p) = Peer::start(bin, &["--threads", "2"]) else {
        return;
    };
    assert!(p.first_line.contains("threads=2"), "{}", p.first_line);
    // Two serving threads, main and the signal thread at least.
    assert!(p.threads() >= 3, "{} threads", p.threads());
    echoes_in_order(p.addr, 50, 16, 1000);
    slow_reader_gets_a_large_message(p.addr);
}

fn exits_0_on_sigterm_and_sigint(bin: &str) {
    for sig in [Signal::TERM, Signal::INT] {
        let Some(mut p) = Peer::start(bin, &[]) else {
            return;
        };
        // With a connection open and one echo done.
        echoes_in_order(p.addr, 1, 1, 100);
        let _open = connect(p.addr);
        p.signal(sig);
        let st = wait_exit(&mut p.child, STEP).unwrap_or_else(|| panic!("{bin} ignored {sig:?}"));
        assert_eq!(st.code(), Some(0), "{bin} after {sig:?}");
    }
}

fn binds_ipv6_loopback_when_told(bin: &str) {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    }
    let Some(p) = Peer::start(bin, &["--bind", "::1"]) else {
        return;
    };
    assert_eq!(p.addr.ip().to_string(), "::1", "{}", p.first_line);
    echoes_in_order(p.addr, 2, 4, 300);
}

/// `--buffer-size` at its least (a 1000-byte message takes 16 receives)
/// and well above the default: every byte still echoed in order.
fn any_buffer_size(bin: &str) {
    for size in ["64", "262144"] {
        serves_one_and_fifty_connections(bin, &["--buffer-size", size]);
    }
    let refused = Command::new(bin)
        .args(["--buffer-size", "63"])
        .output()
        .unwrap_or_else(|e| panic!("{bin} starts: {e}"));
    assert!(!refused.status.success(), "{bin} took a 63-byte buffer");
}

macro_rules! per_peer {
    ($($name:ident),* $(,)?) => {
        mod uring_echo {
            $( #[test] fn $name() { super::$name(env!("CARGO_BIN_EXE_uring-echo")) } )*
        }
        mod epoll_echo {
            $( #[test] fn $name() { super::$name(env!("CARGO_BIN_EXE_epoll-echo")) } )*
        }
        mod tokio_echo {
            $( #[test] fn $name() { super::$name(env!("CARGO_BIN_EXE_tokio-echo")) } )*
        }
    };
}

per_peer!(
    one_thread,
    two_threads,
    exits_0_on_sigterm_and_sigint,
    binds_ipv6_loopback_when_told,
    any_buffer_size
);

/// With a pool of four buffers, receives run dry all the time: each
/// connection's multishot receive ends with ENOBUFS and must be re-armed
/// once a send gives a buffer back, without losing or reordering a byte.
#[test]
fn uring_echo_survives_a_pool_that_runs_dry() {
    serves_one_and_fifty_connections(env!("CARGO_BIN_EXE_uring-echo"), &["--buffers", "4"]);
}
