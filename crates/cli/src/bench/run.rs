//! One run: a server at one cell of the matrix, measured as
//! bench/serve.sh measures (docs/design/benchmark-method.md).
//!
//! The server starts (on the server CPU) and prints `listening on ADDR
//! ...`; `cport load ADDR --json` starts (on the load CPU) and connects
//! every connection before its clock starts, which the runner sees as the
//! sockets in /proc/LOAD/fd. From then the schedule is known: warm-up,
//! then the measured period. Inside that period, away from its ends
//! ([`Window`]), the server's CPU time is sampled over the first half and
//! its system calls counted by perf over the second, so that perf's
//! tracepoints do not slow the server while its CPU time is taken.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::child::{self, Proc};
use super::plan::{Server, Window};
use super::proc;
use super::report::{Row, Status};

/// The event perf counts: every system call entry.
pub const PERF_EVENT: &str = "raw_syscalls:sys_enter";
/// How long the server may take to print its address.
const START: Duration = Duration::from_secs(10);
/// How long the load may take to open its connections.
const CONNECT: Duration = Duration::from_secs(60);
/// Beyond its warm-up and period: load's own grace for the last echoes
/// (5 s) and a margin; then it is killed.
const LOAD_SLACK: Duration = Duration::from_secs(20);
/// SIGTERM to SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Threads are sampled this often.
const SAMPLE: Duration = Duration::from_millis(100);
/// Kept of a child's output in runs.log.
const LOG_CAP: usize = 16 * 1024;
/// Descriptors a process needs besides its connections (stdio, epoll,
/// eventfds, io_uring, the listener).
const FD_SLACK: u64 = 64;

/// What every run shares.
#[derive(Debug)]
pub struct Setup {
    pub exe: std::path::PathBuf,
    pub server_cpu: Option<usize>,
    pub load_cpu: Option<usize>,
    /// RLIMIT_NOFILE each child starts with.
    pub nofile: u64,
    /// Whether io_uring can be used here, and if not why.
    pub uring: Result<(), String>,
    /// What `--backend auto` resolves to here (for the summary).
    pub auto_backend: String,
    /// Whether perf can count [`PERF_EVENT`], and if not why.
    pub perf: Result<(), String>,
    pub warmup: Duration,
    pub duration: Duration,
    pub ticks_per_sec: u64,
}

/// A child's output, read by a thread so the child never blocks on a full
/// pipe; capped for the log.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<String>>);

impl Captured {
    fn push(&self, s: &str) {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() < LOG_CAP {
            b.push_str(s);
            if b.len() >= LOG_CAP {
                b.push_str("\n[... cut]\n");
            }
        }
    }

    fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn read_into(r: impl Read + Send + 'static, into: Captured) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => into.push(&line),
            }
        }
    })
}

fn first_line(s: &str) -> &str {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// The address and backend from `listening on ADDR (...) ... backend=NAME`.
pub fn parse_listening(line: &str) -> Option<(String, Option<String>)> {
    let addr = line
        .strip_prefix("listening on ")?
        .split_whitespace()
        .next()?;
    let backend = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("backend="))
        .map(str::to_string);
    Some((addr.to_string(), backend))
}

/// The command line as it would be typed, for the log.
fn shown(cmd: &Command) -> String {
    let mut v = vec![cmd.get_program().to_string_lossy().into_owned()];
    v.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    v.join(" ")
}

/// What the load's JSON report says.
#[derive(Debug, PartialEq)]
pub struct LoadReport {
    pub messages: u64,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

pub fn parse_load_json(s: &str) -> Option<LoadReport> {
    let v: serde_json::Value = serde_json::from_str(s.trim()).ok()?;
    Some(LoadReport {
        messages: v["messages"].as_u64()?,
        msgs_per_s: v["messages_per_sec"].as_f64()?,
        mb_per_s: v["mb_per_sec"].as_f64()?,
        p50_us: v["latency_us"]["p50"].as_f64()?,
        p99_us: v["latency_us"]["p99"].as_f64()?,
        errors: v["errors"].as_u64()?,
        first_error: v["first_error"].as_str().map(str::to_string),
    })
}

/// Samples taken while the run goes on.
#[derive(Default)]
struct Samples {
    peak_threads: Option<u64>,
    /// (ticks, when) at the window's start and middle.
    cpu: [Option<(u64, Instant)>; 2],
    perf: Option<(Proc, Duration, JoinHandle<String>)>,
    perf_note: Option<String>,
}

impl Samples {
    fn threads(&mut self, pid: u32) {
        if let Some(n) = proc::threads(pid) {
            self.peak_threads = Some(self.peak_threads.map_or(n, |p| p.max(n)));
        }
    }
}

/// Runs `server` at `conns` × `size`, appending what happened to `log`.
/// Every child it starts is reaped before it returns.
pub fn run(setup: &Setup, server: Server, conns: u32, size: u32, log: &mut String) -> Row {
    let mut row = Row::new(server.name(), "-", conns, size);
    let _ = writeln!(log, "## {} conns={conns} size={size}", server.name());
    if let Some(why) = skip_reason(setup, server, conns) {
        row.status = Status::Skipped;
        row.note = why;
        let _ = writeln!(log, "skipped: {}\n", row.note);
        return row;
    }
    measure(setup, server, conns, size, log, &mut row);
    let _ = writeln!(log, "status: {} {}\n", row.status.name(), row.note);
    row
}

fn skip_reason(setup: &Setup, server: Server, conns: u32) -> Option<String> {
    if let (Server::PortUring, Err(why)) = (server, &setup.uring) {
        return Some(format!("io_uring is unavailable here: {why}"));
    }
    let need = (u64::from(conns) * server.fds_per_conn()).max(u64::from(conns)) + FD_SLACK;
    if need > setup.nofile {
        return Some(format!(
            "needs about {need} descriptors per process; the descriptor limit \
             (RLIMIT_NOFILE hard limit) is {}",
            setup.nofile
        ));
    }
    None
}

fn measure(setup: &Setup, server: Server, conns: u32, size: u32, log: &mut String, row: &mut Row) {
    // ----- the server -----
    let mut cmd = Command::new(&setup.exe);
    cmd.args(server.serve_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let _ = writeln!(log, "server command: {}", shown(&cmd));
    let mut srv = match child::spawn(&mut cmd, setup.server_cpu) {
        Ok(p) => p,
        Err(e) => return fail(row, format!("{e:#}")),
    };
    let srv_out = Captured::default();
    let srv_err = Captured::default();
    let (line_tx, line_rx) = mpsc::channel();
    let mut readers = Vec::new();
    if let Some(out) = srv.child().stdout.take() {
        let rest = srv_out.clone();
        readers.push(thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = line_tx.send(l);
            }
            for l in lines.map_while(Result::ok) {
                rest.push(&l);
                rest.push("\n");
            }
        }));
    }
    if let Some(err) = srv.child().stderr.take() {
        readers.push(read_into(err, srv_err.clone()));
    }
    let mut samples = Samples::default();
    samples.threads(srv.pid);
    let got = line_rx.recv_timeout(START);
    let timed_out = matches!(got, Err(mpsc::RecvTimeoutError::Timeout));
    let listening = got.ok();
    let Some((addr, backend)) = listening.as_deref().and_then(parse_listening) else {
        let (st, _) = srv.stop(STOP_GRACE);
        let pid = srv.pid;
        drop(srv);
        join_all(readers);
        let err = srv_err.text();
        let _ = write!(
            log,
            "pids: server={pid}\nserver first line: {listening:?}\nserver: {}\n{}",
            status_text(st),
            prefixed("server stderr", &err)
        );
        let why = match listening {
            Some(l) => format!("the server's first line is not `listening on ADDR`: {l}"),
            None if timed_out => format!("the server printed no address within {START:?}"),
            None => format!(
                "the server exited at start ({}): {}",
                status_text(st),
                first_line(&err)
            ),
        };
        return fail(row, why);
    };
    row.backend = backend.unwrap_or_else(|| "-".into());
    let first = listening.unwrap_or_default();
    let _ = writeln!(
        log,
        "server first line: {first}\nserver pid {} on CPUs {}",
        srv.pid,
        proc::cpus_allowed(srv.pid)
    );

    // ----- the load -----
    let mut cmd = Command::new(&setup.exe);
    cmd.arg("load")
        .arg(&addr)
        .args(["--conns", &conns.to_string()])
        .args(["--size", &size.to_string()])
        .args(["--depth", "1", "--threads", "1"])
        .arg("--duration")
        .arg(format!("{}ms", setup.duration.as_millis()))
        .arg("--warmup")
        .arg(format!("{}ms", setup.warmup.as_millis()))
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let _ = writeln!(log, "load command: {}", shown(&cmd));
    let mut load = match child::spawn(&mut cmd, setup.load_cpu) {
        Ok(p) => p,
        Err(e) => {
            srv.stop(STOP_GRACE);
            drop(srv);
            join_all(readers);
            return fail(row, format!("{e:#}"));
        }
    };
    let load_out = Captured::default();
    let load_err = Captured::default();
    if let Some(o) = load.child().stdout.take() {
        readers.push(read_into(o, load_out.clone()));
    }
    if let Some(e) = load.child().stderr.take() {
        readers.push(read_into(e, load_err.clone()));
    }
    let _ = writeln!(
        log,
        "load pid {} on CPUs {}",
        load.pid,
        proc::cpus_allowed(load.pid)
    );

    // ----- wait for its connections -----
    let started = Instant::now();
    let mut opened = 0;
    let mut failure: Option<String> = None;
    loop {
        if load.try_wait().is_some() {
            break;
        }
        opened = proc::socket_count(load.pid).unwrap_or(0);
        if opened >= conns as usize {
            break;
        }
        if started.elapsed() >= CONNECT {
            failure = Some(format!(
                "the load opened {opened} of {conns} connections in {CONNECT:?}"
            ));
            load.kill();
            break;
        }
        samples.threads(srv.pid);
        thread::sleep(Duration::from_millis(5));
    }
    let t0 = Instant::now();
    let _ = writeln!(
        log,
        "{opened} of {conns} connections open after {} ms",
        t0.duration_since(started).as_millis()
    );

    // ----- the measured period -----
    let win = Window::new(setup.warmup, setup.duration);
    let load_deadline = t0 + setup.warmup + setup.duration + LOAD_SLACK;
    let mut next_sample = Instant::now();
    while failure.is_none() && load.try_wait().is_none() {
        let now = Instant::now();
        if now >= load_deadline {
            failure = Some(format!(
                "the load did not finish within {:?} of opening its connections",
                load_deadline - t0
            ));
            load.kill();
            break;
        }
        if now >= next_sample {
            samples.threads(srv.pid);
            next_sample = now + SAMPLE;
        }
        if samples.cpu[0].is_none() && now >= t0 + win.cpu_from {
            samples.cpu[0] = proc::cpu_ticks(srv.pid).ok().map(|c| (c, Instant::now()));
        }
        if samples.cpu[0].is_some() && samples.cpu[1].is_none() && now >= t0 + win.perf_from {
            samples.cpu[1] = proc::cpu_ticks(srv.pid).ok().map(|c| (c, Instant::now()));
            start_perf(setup, &srv, t0 + win.perf_to, &mut samples);
        }
        let mut wake = next_sample.min(load_deadline);
        for (due, pending) in [
            (t0 + win.cpu_from, samples.cpu[0].is_none()),
            (t0 + win.perf_from, samples.cpu[1].is_none()),
        ] {
            if pending {
                wake = wake.min(due);
            }
        }
        // Short naps: the load's exit is noticed within 10 ms.
        let nap = wake
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(10));
        thread::sleep(nap);
    }
    let load_status = load.try_wait();

    // ----- stop, reap, collect -----
    samples.threads(srv.pid);
    let server_alive = srv.try_wait().is_none();
    row.peak_rss_kib = proc::peak_rss_kib(srv.pid);
    row.peak_threads = samples.peak_threads;
    let perf = samples.perf.take().map(|(mut p, window, out)| {
        // Its `sleep` ends at the window's end; the bound covers a perf
        // that hangs.
        if p.wait_for(window + Duration::from_secs(10)).is_none() {
            p.kill();
        }
        let pid = p.pid;
        drop(p);
        (pid, window, out.join().unwrap_or_default())
    });
    let (srv_status, killed) = srv.stop(STOP_GRACE);
    let srv_pid = srv.pid;
    let load_pid = load.pid;
    drop(srv);
    drop(load);
    join_all(readers);

    let out = load_out.text();
    let err = load_err.text();
    let srv_stderr = srv_err.text();
    let _ = writeln!(
        log,
        "pids: server={srv_pid} load={load_pid} perf={}",
        perf.as_ref().map_or("-".into(), |p| p.0.to_string())
    );
    let _ = writeln!(
        log,
        "server: {}{}; alive when the load ended: {server_alive}; load: {}",
        status_text(srv_status),
        if killed {
            " (SIGKILL after SIGTERM)"
        } else {
            ""
        },
        status_text(load_status)
    );
    if let [Some((c1, i1)), Some((c2, i2))] = samples.cpu {
        let _ = writeln!(
            log,
            "cpu window {}..{} ms after the connections: ticks {c1} -> {c2}",
            i1.duration_since(t0).as_millis(),
            i2.duration_since(t0).as_millis()
        );
    }
    let _ = write!(
        log,
        "load stdout: {}{}{}",
        out.trim_end(),
        if out.is_empty() { "" } else { "\n" },
        prefixed("load stderr", &err)
    );
    let _ = write!(log, "{}", prefixed("server stderr", &srv_stderr));
    let _ = write!(log, "{}", prefixed("server stdout", &srv_out.text()));
    if let Some((_, window, perf_err)) = &perf {
        let _ = writeln!(log, "perf window {:.3} s", window.as_secs_f64());
        let _ = write!(log, "{}", prefixed("perf", perf_err));
    }
    if let Some(n) = &samples.perf_note {
        let _ = writeln!(log, "perf: {n}");
    }

    // ----- the row -----
    let mut notes = Vec::new();
    let Some(rep) = parse_load_json(&out) else {
        let why = failure.unwrap_or_else(|| {
            let e = first_line(&err);
            format!(
                "the load gave no report ({}){}",
                status_text(load_status),
                if e.is_empty() {
                    String::new()
                } else {
                    format!(": {e}")
                }
            )
        });
        notes.push(why);
        if !srv_stderr.trim().is_empty() {
            notes.push(format!("server: {}", first_line(&srv_stderr)));
        }
        return fail(row, notes.join("; "));
    };
    row.messages = Some(rep.messages);
    row.msgs_per_s = Some(rep.msgs_per_s);
    row.mb_per_s = Some(rep.mb_per_s);
    row.p50_us = Some(rep.p50_us);
    row.p99_us = Some(rep.p99_us);
    row.errors = Some(rep.errors);
    if rep.msgs_per_s > 0.0 {
        if let [Some((c1, i1)), Some((c2, i2))] = samples.cpu {
            let secs = i2.duration_since(i1).as_secs_f64();
            let cpu = c2.saturating_sub(c1) as f64 / setup.ticks_per_sec as f64;
            if secs > 0.0 {
                row.cpu_us_per_msg = Some(cpu / secs / rep.msgs_per_s * 1e6);
            }
        }
        if let Some((_, window, perf_err)) = &perf {
            match proc::parse_perf_count(perf_err, PERF_EVENT) {
                Ok(n) => {
                    row.syscalls_per_msg = Some(n as f64 / window.as_secs_f64() / rep.msgs_per_s);
                }
                Err(e) => notes.push(format!("syscalls not counted: {e}")),
            }
        }
    }
    row.status = if rep.errors > 0 {
        Status::Errors
    } else if rep.messages == 0 {
        notes.push("no message was echoed in the measured period".into());
        Status::Failed
    } else if let Some(f) = failure.clone() {
        notes.push(f);
        Status::Failed
    } else {
        Status::Ok
    };
    if rep.errors > 0 {
        notes.push(format!(
            "first error: {}",
            rep.first_error.as_deref().unwrap_or("?")
        ));
    }
    if !server_alive {
        notes.push(format!(
            "the server exited during the run ({})",
            status_text(srv_status)
        ));
        if row.status == Status::Ok {
            row.status = Status::Failed;
        }
    }
    if killed {
        notes.push("the server needed SIGKILL to stop".into());
    }
    if !srv_stderr.trim().is_empty() {
        notes.push(format!("server: {}", first_line(&srv_stderr)));
    }
    if samples.cpu[1].is_none() && row.status == Status::Ok {
        notes.push("the CPU window was not reached".into());
    }
    row.note = notes.join("; ");
}

/// Starts `perf stat` on the server until `until`.
fn start_perf(setup: &Setup, srv: &Proc, until: Instant, samples: &mut Samples) {
    if setup.perf.is_err() {
        return;
    }
    let window = until.saturating_duration_since(Instant::now());
    if window < Duration::from_millis(10) {
        samples.perf_note = Some("no time left for the syscall window".into());
        return;
    }
    let mut cmd = Command::new("perf");
    cmd.args(["stat", "-x,", "-e", PERF_EVENT, "-p"])
        .arg(srv.pid.to_string())
        .args(["--", "sleep"])
        .arg(format!("{:.3}", window.as_secs_f64()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // perf runs beside the load: the server's CPU keeps only its own work.
    match child::spawn(&mut cmd, setup.load_cpu) {
        Ok(mut p) => {
            let out = Captured::default();
            let reader = p.child().stderr.take().map(|e| read_into(e, out.clone()));
            let done = thread::spawn(move || {
                if let Some(r) = reader {
                    let _ = r.join();
                }
                out.text()
            });
            // The counted window is perf's workload, `sleep`: it starts
            // once the counters are attached.
            let window = Duration::from_secs_f64((window.as_secs_f64() * 1e3).round() / 1e3);
            samples.perf = Some((p, window, done));
        }
        Err(e) => samples.perf_note = Some(format!("{e:#}")),
    }
}

fn status_text(st: Option<ExitStatus>) -> String {
    st.map_or("not reaped".into(), |s| s.to_string())
}

fn fail(row: &mut Row, why: String) {
    row.status = Status::Failed;
    row.note = why;
}

fn prefixed(label: &str, text: &str) -> String {
    let mut s = String::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let _ = writeln!(s, "{label}: {l}");
    }
    s
}

fn join_all(readers: Vec<JoinHandle<()>>) {
    for r in readers {
        let _ = r.join();
    }
}

/// Whether perf can count [`PERF_EVENT`] here: a count of `true`'s system
/// calls, or why not.
pub fn probe_perf(tmp: &Path) -> Result<(), String> {
    let out = Command::new("perf")
        .args(["stat", "-x,", "-e", PERF_EVENT, "--", "true"])
        .current_dir(tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run perf: {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    match proc::parse_perf_count(&err, PERF_EVENT) {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("perf counted 0 system calls of `true`".into()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines() {
        assert_eq!(
            parse_listening(
                "listening on 127.0.0.1:4000 (tcp) backend=uring workers=2 concurrency=1"
            ),
            Some(("127.0.0.1:4000".into(), Some("uring".into())))
        );
        assert_eq!(
            parse_listening(
                "listening on [::1]:80 (tcp only: the poll model serves no udp) model=poll"
            ),
            Some(("[::1]:80".into(), None))
        );
        assert_eq!(parse_listening("error: no"), None);
    }

    #[test]
    fn load_reports() {
        let json = r#"{"addr":"127.0.0.1:1","messages":10,"messages_per_sec":5.0,
            "mb_per_sec":0.5,"latency_us":{"p50":12.5,"p99":99.0},"errors":2,
            "first_error":"connection 3: closed"}"#;
        assert_eq!(
            parse_load_json(json),
            Some(LoadReport {
                messages: 10,
                msgs_per_s: 5.0,
                mb_per_s: 0.5,
                p50_us: 12.5,
                p99_us: 99.0,
                errors: 2,
                first_error: Some("connection 3: closed".into()),
            })
        );
        assert_eq!(parse_load_json(""), None);
        assert_eq!(parse_load_json(r#"{"messages":1}"#), None);
    }

    #[test]
    fn descriptor_limits_skip_cells_with_the_reason() {
        let setup = Setup {
            exe: "cport".into(),
            server_cpu: None,
            load_cpu: None,
            nofile: 1024,
            uring: Err("io_uring_setup: EPERM".into()),
            auto_backend: "epoll".into(),
            perf: Ok(()),
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            ticks_per_sec: 100,
        };
        use cport_models::Model;
        assert_eq!(skip_reason(&setup, Server::Model(Model::Epoll), 900), None);
        let why = skip_reason(&setup, Server::Model(Model::Epoll), 5000).unwrap();
        assert!(why.contains("1024") && why.contains("5064"), "{why}");
        // The event model holds an eventfd per socket.
        assert!(skip_reason(&setup, Server::Model(Model::Event), 500).is_some());
        let why = skip_reason(&setup, Server::PortUring, 1).unwrap();
        assert!(why.contains("io_uring") && why.contains("EPERM"), "{why}");
        assert_eq!(skip_reason(&setup, Server::PortEpoll, 1), None);
    }
}
