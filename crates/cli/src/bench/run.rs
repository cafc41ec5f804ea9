//! One run: a server at one cell, measured as
//! docs/design/benchmark-method.md describes.
//!
//! The server starts (on the server CPU when pinned) and prints `listening
//! on ADDR ...`; `cport load ADDR --json` starts (on the load CPU) and
//! connects every connection before its clock starts, which the runner
//! sees as the sockets in /proc/LOAD/fd. From then the schedule is known:
//! warm-up, then the measured period. In a round, inside that period and
//! away from its ends ([`Window`]), the server's CPU time is sampled over
//! the first half and its system calls counted by perf over the second, so
//! that perf's tracepoints do not slow the server while its CPU time is
//! taken. In a costs run, perf counts over the whole period instead,
//! switched on and off at its ends (costs.rs).
//!
//! On Windows the same schedule holds, with Windows' own readers
//! (winproc.rs): the load's connections are seen in the TCP table, CPU
//! time, threads and peak memory come from the process APIs, and there is
//! no perf, so no system call is counted (and no costs run is made).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::child::{self, read_into, Captured, Proc};
use super::costs::{Counter, Gate};
use super::os;
use super::output::{first_line, parse_listening, parse_load_json, shown};
use super::plan::{Cell, Window};
use super::proc;
use super::report::{Row, Status};
use super::server::Server;

/// The event perf counts in a round: every system call entry.
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
/// Descriptors a process needs besides its connections (stdio, epoll,
/// eventfds, io_uring, the listener).
const FD_SLACK: u64 = 64;

/// What every run shares.
#[derive(Debug)]
pub struct Setup {
    pub exe: PathBuf,
    pub server_cpu: Option<usize>,
    pub load_cpu: Option<usize>,
    /// `--threads`, for the servers that take it.
    pub threads: u32,
    /// `--buffer-size`, for the servers that take it (all that run).
    pub buffer_size: Option<u32>,
    /// RLIMIT_NOFILE each child starts with.
    pub nofile: u64,
    /// Whether io_uring can be used here, and if not why.
    pub uring: Result<(), String>,
    /// What `--backend auto` resolves to here (for the summary).
    pub auto_backend: String,
    /// Whether perf can count [`PERF_EVENT`], and if not why.
    pub perf: Result<(), String>,
    /// What costs runs count (`--costs`).
    pub counter: Option<Counter>,
    pub warmup: Duration,
    pub duration: Duration,
    pub ticks_per_sec: u64,
}

/// A measured round (from 1), or a costs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Round(u32),
    Costs,
}

/// A perf counting while the run goes on: its process, the window it
/// counts over, and its output once it ends.
struct Perf {
    proc: Proc,
    window: Duration,
    output: JoinHandle<String>,
}

/// What is taken while the run goes on.
#[derive(Default)]
struct Samples {
    peak_threads: Option<u64>,
    /// (ticks, when) at the CPU window's start and end.
    cpu: [Option<(os::CpuTime, Instant)>; 2],
    /// Rescheduling interrupts at the costs period's start and end.
    reschedules: [Option<u64>; 2],
    perf: Option<Perf>,
    /// A costs run's switch of perf's counters.
    gate: Option<Gate>,
    /// The switch failed: perf's counts are not the period's.
    perf_failed: bool,
    perf_note: Option<String>,
}

impl Samples {
    fn threads(&mut self, pid: u32) {
        if let Some(n) = os::threads(pid) {
            self.peak_threads = Some(self.peak_threads.map_or(n, |p| p.max(n)));
        }
    }
}

/// What happens at a point of the schedule.
#[derive(Clone, Copy, Debug)]
enum Step {
    CpuFrom,
    /// The CPU window ends and perf counts system calls until `perf_to`.
    PerfFrom,
    /// perf attaches, its counters off.
    CostsAttach,
    /// Its counters on: the period starts.
    CostsFrom,
    /// Off: the period ends.
    CostsTo,
}

/// Runs `server` at `cell`, appending what happened to `log`. Every child
/// it starts is reaped before it returns.
pub fn run(setup: &Setup, server: Server, cell: Cell, kind: Kind, log: &mut String) -> Row {
    let round = match kind {
        Kind::Round(r) => r,
        Kind::Costs => 0,
    };
    let mut row = Row::new(server.name(), cell, round);
    row.threads = server.takes_threads().then_some(setup.threads);
    row.pinned = setup.server_cpu.is_some();
    let what = match kind {
        Kind::Round(r) => format!("round {r}"),
        Kind::Costs => "costs".into(),
    };
    let _ = writeln!(log, "## {} {cell}, {what}", server.name());
    if let Some(why) = skip_reason(setup, server, cell.conns) {
        row.status = Status::Skipped;
        row.note = why;
        let _ = writeln!(log, "skipped: {}\n", row.note);
        return row;
    }
    measure(setup, server, kind, log, &mut row);
    let _ = writeln!(log, "status: {} {}\n", row.status.name(), row.note);
    row
}

fn skip_reason(setup: &Setup, server: Server, conns: u32) -> Option<String> {
    if let (true, Err(why)) = (server.needs_uring(), &setup.uring) {
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

/// A started server: its process, the address it printed, its output.
struct Started {
    srv: Proc,
    addr: String,
    readers: Vec<JoinHandle<()>>,
    out: Captured,
    err: Captured,
}

/// Starts the server and reads its first line; on failure, why (the
/// server is stopped and reaped).
fn start_server(
    setup: &Setup,
    server: Server,
    log: &mut String,
    row: &mut Row,
) -> Result<Started, String> {
    let (program, args) = server.command(&setup.exe, setup.threads, setup.buffer_size);
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let _ = writeln!(log, "server command: {}", shown(&cmd));
    let mut srv = child::spawn(&mut cmd, setup.server_cpu).map_err(|e| format!("{e:#}"))?;
    let out = Captured::default();
    let err = Captured::default();
    let (line_tx, line_rx) = mpsc::channel();
    let mut readers = Vec::new();
    if let Some(stdout) = srv.child().stdout.take() {
        let rest = out.clone();
        readers.push(thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = line_tx.send(l);
            }
            for l in lines.map_while(Result::ok) {
                rest.push(&l);
                rest.push("\n");
            }
        }));
    }
    if let Some(stderr) = srv.child().stderr.take() {
        readers.push(read_into(stderr, err.clone()));
    }
    let got = line_rx.recv_timeout(START);
    let timed_out = matches!(got, Err(mpsc::RecvTimeoutError::Timeout));
    let listening = got.ok();
    let Some((addr, backend)) = listening.as_deref().and_then(parse_listening) else {
        let (st, _) = srv.stop(STOP_GRACE);
        let pid = srv.pid;
        drop(srv);
        join_all(readers);
        let err = err.text();
        let _ = write!(
            log,
            "pids: server={pid}\nserver first line: {listening:?}\nserver: {}\n{}",
            status_text(st),
            prefixed("server stderr", &err)
        );
        return Err(match listening {
            Some(l) => format!("the server's first line is not `listening on ADDR`: {l}"),
            None if timed_out => format!("the server printed no address within {START:?}"),
            None => format!(
                "the server exited at start ({}): {}",
                status_text(st),
                first_line(&err)
            ),
        });
    };
    row.backend = backend.unwrap_or_else(|| "-".into());
    let _ = writeln!(
        log,
        "server first line: {}\nserver pid {} on CPUs {}",
        listening.unwrap_or_default(),
        srv.pid,
        os::cpus_allowed(srv.pid)
    );
    Ok(Started {
        srv,
        addr,
        readers,
        out,
        err,
    })
}

fn measure(setup: &Setup, server: Server, kind: Kind, log: &mut String, row: &mut Row) {
    let cell = row.cell;
    let Started {
        mut srv,
        addr,
        mut readers,
        out: srv_out,
        err: srv_err,
    } = match start_server(setup, server, log, row) {
        Ok(s) => s,
        Err(why) => return fail(row, why),
    };
    let mut samples = Samples::default();
    samples.threads(srv.pid);

    // ----- the load -----
    let mut cmd = Command::new(&setup.exe);
    cmd.arg("load")
        .arg(&addr)
        .args(["--conns", &cell.conns.to_string()])
        .args(["--size", &cell.size.to_string()])
        .args(["--depth", &cell.depth.to_string(), "--threads", "1"])
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
        os::cpus_allowed(load.pid)
    );

    // ----- wait for its connections -----
    let started = Instant::now();
    let mut opened = 0;
    let mut failure: Option<String> = None;
    // The last look, its start and length: the load's clock started about
    // when what it saw was read, somewhere inside the look. A look at
    // /proc takes microseconds; at Windows' TCP table, under wine on a
    // machine with tens of thousands of connections, up to a second (wine
    // reads and converts every connection of the machine): the middle of
    // the look places the period best.
    let mut looked = (started, Duration::ZERO);
    loop {
        if load.try_wait().is_some() {
            break;
        }
        let before = Instant::now();
        opened = connections(&load, &addr).unwrap_or(0);
        looked = (before, before.elapsed());
        if opened >= cell.conns as usize {
            break;
        }
        if started.elapsed() >= CONNECT {
            failure = Some(format!(
                "the load opened {opened} of {} connections in {CONNECT:?}",
                cell.conns
            ));
            load.kill();
            break;
        }
        samples.threads(srv.pid);
        thread::sleep(Duration::from_millis(5));
    }
    let t0 = looked.0 + looked.1 / 2;
    let _ = writeln!(
        log,
        "{opened} of {} connections open after {} ms{}",
        cell.conns,
        t0.duration_since(started).as_millis(),
        if cfg!(windows) {
            format!(
                " (seen in the TCP table, read in {} ms)",
                looked.1.as_millis()
            )
        } else {
            String::new()
        }
    );

    // ----- the measured period -----
    let win = Window::new(setup.warmup, setup.duration);
    let period_end = setup.warmup + setup.duration;
    let steps = match kind {
        Kind::Round(_) => vec![
            (win.cpu_from, Step::CpuFrom),
            (win.perf_from, Step::PerfFrom),
        ],
        Kind::Costs => vec![
            (Duration::ZERO, Step::CostsAttach),
            (setup.warmup, Step::CostsFrom),
            (period_end, Step::CostsTo),
        ],
    };
    let mut next = 0;
    let load_deadline = t0 + period_end + LOAD_SLACK;
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
        while next < steps.len() && now >= t0 + steps[next].0 {
            match steps[next].1 {
                Step::CpuFrom => {
                    samples.cpu[0] = cpu_sample(srv.pid, log);
                }
                Step::PerfFrom => {
                    samples.cpu[1] = cpu_sample(srv.pid, log);
                    let window = (t0 + win.perf_to).saturating_duration_since(Instant::now());
                    // The counted window is perf's workload, `sleep`: it
                    // starts once the counters are attached.
                    let counted =
                        Duration::from_secs_f64((window.as_secs_f64() * 1e3).round() / 1e3);
                    if setup.perf.is_ok() {
                        start_perf(
                            &srv,
                            PERF_EVENT,
                            &[],
                            Some(window),
                            counted,
                            setup,
                            &mut samples,
                        );
                    }
                }
                Step::CostsAttach => attach_costs_perf(setup, &srv, &mut samples),
                Step::CostsFrom => {
                    if let Some(c) = &setup.counter {
                        samples.reschedules[0] = c.reschedules();
                    }
                    gate(&mut samples, "enable");
                }
                Step::CostsTo => end_costs(setup, &mut samples),
            }
            next += 1;
        }
        let mut wake = next_sample.min(load_deadline);
        if let Some((due, _)) = steps.get(next) {
            wake = wake.min(t0 + *due);
        }
        // Short naps: the load's exit is noticed within 10 ms.
        let nap = wake
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(10));
        thread::sleep(nap);
    }
    let load_status = load.try_wait();
    // The load ends a few milliseconds before the period's end as this
    // runner places it (its clock started before the connections were
    // seen): the costs period then ends with it.
    if kind == Kind::Costs && next < steps.len() {
        end_costs(setup, &mut samples);
    }

    // ----- stop, reap, collect -----
    samples.threads(srv.pid);
    let server_alive = srv.try_wait().is_none();
    row.peak_rss_kib = os::peak_rss_kib(srv.pid);
    row.peak_threads = samples.peak_threads;
    let perf = samples.perf.take().map(|mut p| {
        // Its `sleep` ends at the window's end, or it was told to stop;
        // the bound covers a perf that hangs.
        if p.proc
            .wait_for(p.window + Duration::from_secs(10))
            .is_none()
        {
            p.proc.kill();
        }
        (p.proc.pid, p.window, p.output.join().unwrap_or_default())
    });
    let (srv_status, killed) = srv.stop(STOP_GRACE);
    if let Some(why) = srv.stop_failure.take() {
        let _ = writeln!(log, "server not asked to stop ({}): {why}", child::GRACEFUL);
    }
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
            format!(" ({} after {})", child::FORCED, child::GRACEFUL)
        } else {
            String::new()
        },
        status_text(load_status)
    );
    if let [Some((c1, i1)), Some((c2, i2))] = samples.cpu {
        let _ = writeln!(
            log,
            "cpu window {}..{} ms after the connections: ticks user {} -> {}, system {} -> {}",
            i1.duration_since(t0).as_millis(),
            i2.duration_since(t0).as_millis(),
            c1.user,
            c2.user,
            c1.system,
            c2.system
        );
    }
    if let [Some(r1), Some(r2)] = samples.reschedules {
        let _ = writeln!(log, "rescheduling interrupts {r1} -> {r2}");
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
    if let Some((_, window, perf_out)) = &perf {
        let _ = writeln!(log, "perf window {:.3} s", window.as_secs_f64());
        let _ = write!(log, "{}", prefixed("perf", perf_out));
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
    match kind {
        Kind::Round(_) if rep.msgs_per_s > 0.0 => {
            if let [Some((c1, i1)), Some((c2, i2))] = samples.cpu {
                let secs = i2.duration_since(i1).as_secs_f64();
                let per_msg = |a: u64, b: u64| {
                    let cpu = b.saturating_sub(a) as f64 / setup.ticks_per_sec as f64;
                    cpu / secs / rep.msgs_per_s * 1e6
                };
                if secs > 0.0 {
                    row.cpu_us_per_msg = Some(per_msg(c1.total(), c2.total()));
                    row.user_us_per_msg = Some(per_msg(c1.user, c2.user));
                }
            }
            if let Some((_, window, perf_out)) = &perf {
                match proc::parse_perf_count(perf_out, PERF_EVENT) {
                    Ok(n) => {
                        row.syscalls_per_msg =
                            Some(n as f64 / window.as_secs_f64() / rep.msgs_per_s);
                    }
                    Err(e) => notes.push(format!("syscalls not counted: {e}")),
                }
            }
        }
        Kind::Round(_) => {}
        Kind::Costs => {
            if let Some(c) = &setup.counter {
                let res = match samples.reschedules {
                    [Some(a), Some(b)] => Some(b.saturating_sub(a)),
                    _ => None,
                };
                let perf_out = perf
                    .as_ref()
                    .filter(|_| !samples.perf_failed)
                    .map(|p| p.2.as_str());
                let (costs, why) = c.costs(perf_out, res, rep.messages);
                row.costs = Some(costs);
                notes.extend(why);
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
        notes.push(format!("the server needed {} to stop", child::FORCED));
    }
    if let Some(line) = panic_line(&srv_stderr) {
        // A panic is a bug even where the figures look sound (one at the
        // stop, on another thread, once passed for "ok" in five records).
        notes.push(format!("the server panicked: {line}"));
        if row.status == Status::Ok {
            row.status = Status::Errors;
        }
    } else if !srv_stderr.trim().is_empty() {
        notes.push(format!("server: {}", first_line(&srv_stderr)));
    }
    if next < steps.len() && row.status == Status::Ok && kind != Kind::Costs {
        notes.push("the CPU window was not reached".into());
    }
    row.note = notes.join("; ");
}

/// Switches a costs run's perf counters. A failure is noted, perf is
/// stopped (its output still goes to the log) and its counts are not used.
fn gate(samples: &mut Samples, cmd: &str) {
    let Some(g) = &mut samples.gate else {
        return;
    };
    if let Err(e) = g.send(cmd) {
        samples.perf_note = Some(e);
        samples.gate = None;
        if let Some(p) = &samples.perf {
            p.proc.interrupt();
        }
        samples.perf_failed = true;
    }
}

/// The costs period is over: counters off, interrupts read, perf asked to
/// print its counts and exit.
fn end_costs(setup: &Setup, samples: &mut Samples) {
    gate(samples, "disable");
    samples.reschedules[1] = setup.counter.as_ref().and_then(Counter::reschedules);
    if let Some(p) = &samples.perf {
        p.proc.interrupt();
    }
}

/// A costs run's perf attaches to the server during the warm-up, its
/// counters off, with no workload: it counts until the SIGINT that ends
/// the period.
fn attach_costs_perf(setup: &Setup, srv: &Proc, samples: &mut Samples) {
    let Some(events) = setup.counter.as_ref().map(Counter::events) else {
        return;
    };
    if events.is_empty() {
        return;
    }
    match Gate::new() {
        Ok(g) => {
            let args = g.perf_args();
            samples.gate = Some(g);
            start_perf(srv, &events, &args, None, setup.duration, setup, samples);
        }
        Err(e) => samples.perf_note = Some(format!("cannot make perf's control FIFOs: {e}")),
    }
}

/// Starts `perf stat -e events [extra] -p SERVER`, which counts over
/// `counted`: `-- sleep SLEEP` when given, else until SIGINT.
fn start_perf(
    srv: &Proc,
    events: &str,
    extra: &[String],
    sleep: Option<Duration>,
    counted: Duration,
    setup: &Setup,
    samples: &mut Samples,
) {
    if sleep.is_some_and(|s| s < Duration::from_millis(10)) {
        samples.perf_note = Some("no time left for perf's window".into());
        return;
    }
    let mut cmd = Command::new("perf");
    cmd.args(["stat", "-x,", "-e", events])
        .args(extra)
        .arg("-p")
        .arg(srv.pid.to_string());
    if let Some(sleep) = sleep {
        cmd.args(["--", "sleep"])
            .arg(format!("{:.3}", sleep.as_secs_f64()));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // perf runs beside the load: the server's CPU keeps only its own work.
    match child::spawn(&mut cmd, setup.load_cpu) {
        Ok(mut p) => {
            let out = Captured::default();
            let reader = p.child().stderr.take().map(|e| read_into(e, out.clone()));
            let output = thread::spawn(move || {
                if let Some(r) = reader {
                    let _ = r.join();
                }
                out.text()
            });
            samples.perf = Some(Perf {
                proc: p,
                window: counted,
                output,
            });
        }
        Err(e) => samples.perf_note = Some(format!("{e:#}")),
    }
}

/// The line of a Rust panic's report in a server's stderr
/// ("thread 'name' (id) panicked at file:line:col:"), if there is one.
fn panic_line(stderr: &str) -> Option<&str> {
    stderr
        .lines()
        .find(|l| l.starts_with("thread '") && l.contains(" panicked at "))
        .map(str::trim)
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

/// The server's CPU time, at the middle of its read, or `None` with the
/// reason in the log. (A read takes microseconds on Linux; on Windows
/// under wine, on a busy machine, up to hundreds of milliseconds: it is
/// logged.)
fn cpu_sample(pid: u32, log: &mut String) -> Option<(os::CpuTime, Instant)> {
    let before = Instant::now();
    match os::cpu_ticks(pid) {
        Ok(c) => {
            let took = before.elapsed();
            if cfg!(windows) {
                let _ = writeln!(log, "server CPU time read in {} ms", took.as_millis());
            }
            Some((c, before + took / 2))
        }
        Err(e) => {
            let _ = writeln!(log, "server CPU time not read: {e}");
            None
        }
    }
}

/// The load's connections open so far: on Linux its sockets in
/// /proc/LOAD/fd; on Windows the connections established towards the
/// server in the TCP table (winproc.rs says why not the load's handles).
#[cfg(unix)]
fn connections(load: &Proc, _server: &str) -> std::io::Result<usize> {
    proc::socket_count(load.pid)
}

#[cfg(windows)]
fn connections(_load: &Proc, server: &str) -> std::io::Result<usize> {
    os::connections_to(server)
}

/// Why system calls are not counted on Windows.
#[cfg(windows)]
pub const NO_SYSCALLS: &str = "not counted on Windows: system calls per message are counted \
     with Linux's perf (raw_syscalls:sys_enter), and Windows offers no per-process count of \
     system calls to a program (ETW's kernel tracing needs an administrator and is not a count)";

/// Whether perf can count [`PERF_EVENT`] here: a count of `true`'s system
/// calls, or why not.
#[cfg(windows)]
pub fn probe_perf() -> Result<(), String> {
    Err(NO_SYSCALLS.into())
}

/// Whether perf can count [`PERF_EVENT`] here: a count of `true`'s system
/// calls, or why not.
#[cfg(unix)]
pub fn probe_perf() -> Result<(), String> {
    let out = Command::new("perf")
        .args(["stat", "-x,", "-e", PERF_EVENT, "--", "true"])
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
    use crate::bench::server::Peer;

    #[test]
    fn a_panic_in_the_server_stderr_is_found_in_either_format() {
        let now = "listening\nthread 'cport-signals' (25881) panicked at src/lock.rs:71:9:\nwhy\n";
        assert_eq!(
            panic_line(now),
            Some("thread 'cport-signals' (25881) panicked at src/lock.rs:71:9:")
        );
        let before = "thread '<unnamed>' panicked at src/main.rs:2:5:\nboom";
        assert_eq!(
            panic_line(before),
            Some("thread '<unnamed>' panicked at src/main.rs:2:5:")
        );
        assert_eq!(
            panic_line("WARN accept failed: the peer panicked at us\n"),
            None
        );
        assert_eq!(panic_line(""), None);
    }

    #[test]
    fn descriptor_limits_and_io_uring_skip_cells_with_the_reason() {
        let setup = Setup {
            exe: "cport".into(),
            server_cpu: None,
            load_cpu: None,
            threads: 1,
            buffer_size: None,
            nofile: 1024,
            uring: Err("io_uring_setup: EPERM".into()),
            auto_backend: "epoll".into(),
            perf: Ok(()),
            counter: None,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            ticks_per_sec: 100,
        };
        use cport_models::Model;
        assert_eq!(skip_reason(&setup, Server::Model(Model::Epoll), 900), None);
        let why = skip_reason(&setup, Server::Model(Model::Epoll), 5000).unwrap();
        assert!(why.contains("1024") && why.contains("5064"), "{why}");
        // The event and overlapped models hold an eventfd per socket.
        assert!(skip_reason(&setup, Server::Model(Model::Event), 500).is_some());
        assert!(skip_reason(&setup, Server::Model(Model::Overlapped), 500).is_some());
        for s in [Server::PortUring, Server::Peer(Peer::Uring)] {
            let why = skip_reason(&setup, s, 1).unwrap();
            assert!(why.contains("io_uring") && why.contains("EPERM"), "{why}");
        }
        assert_eq!(skip_reason(&setup, Server::PortEpoll, 1), None);
        assert_eq!(skip_reason(&setup, Server::Peer(Peer::Epoll), 1), None);
    }
}
