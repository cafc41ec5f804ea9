//! Drives the real `cport` binary: starts `cport serve` on an ephemeral
//! port, reads the address it prints, and watches its output, descriptors
//! and memory through /proc.
//!
//! The tests built on it are Linux's (they read /proc, send Unix signals
//! and run each case on io_uring and on epoll): on Windows they compile to
//! nothing. The Windows build of the command is checked under wine by
//! scripts/windows-cmd.sh (`test`: serve, client, load, bench; `models`:
//! the Winsock models' echo tests).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub use rustix::process::Signal;
use rustix::process::{kill_process, Pid};

pub const BIN: &str = env!("CARGO_BIN_EXE_cport");

/// How long any single step of a test may take before it fails.
pub const STEP: Duration = Duration::from_secs(30);

/// The lines of a command's stderr that carry text.
pub fn lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Expands one test body per backend: `uring::name` and `epoll::name`.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $( #[test] fn $name() { super::$name("uring") } )*
        }
        mod epoll {
            $( #[test] fn $name() { super::$name("epoll") } )*
        }
    };
}

/// A running `cport serve`. Killed on drop if still running.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    pub first_line: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// `cport -v serve --port 0 --backend <backend> <extra>`; `None` (with
    /// the reason printed) when io_uring is refused on this machine. With
    /// `auto` (which `CPORT_BACKEND` overrides) it is never `None`.
    pub fn start(backend: &str, extra: &[&str]) -> Option<Server> {
        Server::start_with(Command::new(BIN), backend, extra)
    }

    /// As [`start`](Server::start), with at most `nofile` descriptors
    /// (through prlimit(1), which execs the server in place).
    pub fn start_with_nofile(backend: &str, extra: &[&str], nofile: u64) -> Option<Server> {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(BIN);
        Server::start_with(cmd, backend, extra)
    }

    fn start_with(mut cmd: Command, backend: &str, extra: &[&str]) -> Option<Server> {
        let mut child = cmd
            .args(["-v", "serve", "--port", "0", "--backend", backend])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cport starts");
        let pid = child.id();
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let stderr = stderr.clone();
            let mut pipe = child.stderr.take().expect("stderr piped");
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    stderr
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (first_tx, first_rx) = mpsc::channel();
        {
            let stdout = stdout.clone();
            let pipe = child.stdout.take().expect("stdout piped");
            thread::spawn(move || {
                let mut first = Some(first_tx);
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Some(tx) = first.take() {
                        let _ = tx.send(line.clone());
                    }
                    stdout.lock().unwrap().push(line);
                }
            });
        }
        let first_line = match first_rx.recv_timeout(STEP) {
            Ok(l) => l,
            Err(_) => {
                let status = wait_exit(&mut child, Duration::from_secs(5));
                let err = stderr.lock().unwrap().clone();
                if backend == "uring" && err.contains("cannot start the io_uring backend") {
                    eprintln!("skipped: io_uring is refused here: {}", err.trim());
                    return None;
                }
                let _ = child.kill();
                panic!("cport serve printed no address (status {status:?}); stderr:\n{err}");
            }
        };
        // "listening on 127.0.0.1:PORT (tcp, udp) backend=uring ..."
        let addr = listening_addr(&first_line);
        assert!(
            backend == "auto" || first_line.contains(&format!("backend={backend}")),
            "{first_line}"
        );
        Some(Server {
            child,
            addr,
            pid,
            first_line,
            stdout,
            stderr,
        })
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until stderr contains `what`.
    pub fn wait_stderr(&self, what: &str, within: Duration) -> bool {
        wait_until(within, || self.stderr().contains(what))
    }

    /// Waits until the log reports at least `n` connections closed and
    /// none open (the server closes the descriptor before it logs that).
    pub fn wait_closed(&self, n: usize, within: Duration) -> bool {
        wait_until(within, || {
            let log = self.stderr();
            let closed = log.matches(": disconnect ").count();
            closed >= n && log.matches(": connect ").count() == closed
        })
    }

    /// Open descriptors of the server process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .expect("/proc/PID/fd is readable")
            .count()
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("/proc/PID/status is readable");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// CPU time (user + system) the server has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .expect("/proc/PID/stat is readable");
        // Fields after the command name, which is in parentheses and may
        // hold spaces; utime and stime are fields 14 and 15 of the line.
        let rest = &stat[stat.rfind(')').expect("(comm)") + 2..];
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        // /proc reports clock ticks of USER_HZ, 100 on every Linux ABI.
        Duration::from_millis((f[11] + f[12]) * 10)
    }

    /// Sends `signal` to the server.
    pub fn signal(&self, signal: Signal) {
        send_signal(self.pid, signal);
    }

    /// Waits for the server to exit; `None` if it is still running after
    /// `within`.
    pub fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, within)
    }

    /// One TCP round trip, to show the server still serves.
    pub fn assert_echoes(&self) {
        let mut s = connect(self.addr);
        let msg = b"still serving";
        s.write_all(msg).unwrap();
        let mut got = [0u8; 13];
        s.read_exact(&mut got).expect("echo");
        assert_eq!(&got, msg);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `signal` to the process `pid` (a child of the test).
pub fn send_signal(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(pid as i32).expect("a child's pid is positive");
    kill_process(pid, signal).expect("kill(2) on a child");
}

/// Waits for `child` to exit; `None` if it is still running after
/// `within`.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
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

/// Polls `cond` every 10 ms until it holds or `within` passes.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A connected client with read and write timeouts, so a broken server
/// fails the test instead of hanging it.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, STEP).expect("connect to the server");
    s.set_read_timeout(Some(STEP)).unwrap();
    s.set_write_timeout(Some(STEP)).unwrap();
    s
}

/// Runs `cport <args>` to completion with `stdin` as its input, killing
/// it if it takes longer than `within`.
pub fn run_cport(args: &[&str], stdin: &[u8], within: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cport starts");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let feeder = thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send(());
        out
    });
    if rx.recv_timeout(within).is_err() {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("cport {args:?} did not finish within {within:?}");
    }
    let _ = feeder.join();
    waiter.join().unwrap().expect("cport output")
}

/// `len` bytes in which every byte value occurs (for len ≥ 256), different
/// for each `seed`.
pub fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_add(seed.wrapping_mul(131)) % 256) as u8 ^ ((i / 256) % 7) as u8)
        .collect()
}

/// Writes to `s` (made non-blocking) until the server has taken nothing
/// for half a second: it has stopped reading. Returns the bytes written.
pub fn fill_until_stalled(s: &TcpStream, limit: usize) -> usize {
    s.set_nonblocking(true).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut w = s;
    let mut total = 0;
    let mut stalled_since: Option<Instant> = None;
    let deadline = Instant::now() + STEP;
    while stalled_since.is_none_or(|t| t.elapsed() < Duration::from_millis(500)) {
        assert!(Instant::now() < deadline, "the writes never stalled");
        if total >= limit {
            break;
        }
        match w.write(&chunk) {
            Ok(n) => {
                total += n;
                stalled_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stalled_since.get_or_insert_with(Instant::now);
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    total
}

/// A child process killed (and reaped) on drop if still running, so that a
/// failed test leaves nothing behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Reads `pipe` on a thread of its own up to the first line that starts
/// with `prefix` and returns that line; then, with `close`, closes the
/// pipe (its reader has gone, as `head -1` goes), else keeps draining it.
pub fn read_until_line(pipe: impl Read + Send + 'static, prefix: &str, close: bool) -> String {
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn({
        let prefix = prefix.to_string();
        move || {
            let mut lines = BufReader::new(pipe).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if line.starts_with(&prefix) {
                    let _ = tx.send(line);
                    break;
                }
            }
            if !close {
                for _ in lines {}
            }
        }
    });
    let line = rx
        .recv_timeout(STEP)
        .unwrap_or_else(|_| panic!("no line starting with {prefix:?} within {STEP:?}"));
    if close {
        reader.join().expect("the reading thread");
    }
    line
}

/// The address in a `listening on ADDR …` line.
pub fn listening_addr(line: &str) -> SocketAddr {
    line.split_whitespace()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}
