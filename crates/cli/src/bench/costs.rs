//! `--costs`: what each server asks of the kernel per echoed message. A
//! run of its own per cell and server, after the measured rounds, in which
//! `perf stat -p SERVER` counts over the load's whole measured period and
//! every count is divided by the messages the load reports for that
//! period. Tracepoints and the malloc uprobe slow the server, so these
//! runs' messages/s and CPU figures are not the measured ones; the ratios
//! of counts to messages are exact.
//!
//! perf must count over exactly the load's period, or the ratios are off:
//! started at the period's start, it would count only once it has
//! attached, tens of milliseconds later on a busy machine, and on past the
//! period's end into the idle tail. So it attaches during the warm-up with
//! its counters off (`-D -1`) and the runner switches them on and off at
//! the period's ends through perf's control FIFOs ([`Gate`]), waiting for
//! perf's acknowledgement each time.
//!
//! A column perf cannot count here (perf missing, not permitted, a kernel
//! without the tracepoint, no uprobe on libc) stays empty, and [`Counter`]
//! says why; that is not a failure of the bench.
//!
//! Windows has neither perf nor /proc/interrupts: `--costs` is refused
//! there ([`UNAVAILABLE`]), and [`Gate`] is a stub that never opens.

use std::fs;
#[cfg(unix)]
use std::fs::{File, OpenOptions};
use std::io;
#[cfg(unix)]
use std::io::{Read, Write};
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
#[cfg(unix)]
use std::path::PathBuf;
use std::process::{Command, Stdio};
#[cfg(unix)]
use std::thread;
#[cfg(unix)]
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Why the costs cannot be counted on Windows.
#[cfg(windows)]
pub const UNAVAILABLE: &str = "--costs counts with Linux's perf (system calls, context switches, \
     io_uring requests, malloc calls through a uprobe) and /proc/interrupts; Windows has \
     neither, so every costs column would be empty";

use super::child;
use super::proc;

/// Where a column's count comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A perf event named here.
    Event(&'static str),
    /// A uprobe on the C library's `malloc`, added for the bench.
    Malloc,
    /// The `RES` row of /proc/interrupts, over the server's CPUs.
    Reschedules,
}

/// One column of costs.csv and of the summary's costs table.
#[derive(Debug)]
pub struct Column {
    pub csv: &'static str,
    pub title: &'static str,
    pub source: Source,
}

pub const COLUMNS: [Column; 6] = [
    Column {
        csv: "syscalls_per_msg",
        title: "syscalls",
        source: Source::Event("raw_syscalls:sys_enter"),
    },
    Column {
        csv: "switches_per_msg",
        title: "context switches",
        source: Source::Event("sched:sched_switch"),
    },
    Column {
        csv: "uring_requests_per_msg",
        title: "io_uring requests",
        source: Source::Event("io_uring:io_uring_submit_req"),
    },
    Column {
        csv: "poll_arms_per_msg",
        title: "poll arms",
        source: Source::Event("io_uring:io_uring_poll_arm"),
    },
    Column {
        csv: "res_ipis_per_msg",
        title: "RES IPIs",
        source: Source::Reschedules,
    },
    Column {
        csv: "mallocs_per_msg",
        title: "mallocs",
        source: Source::Malloc,
    },
];

/// Per column of [`COLUMNS`], a count per message.
pub type Costs = [Option<f64>; COLUMNS.len()];

/// The event perf knows a uprobe on libc's malloc by.
const MALLOC_EVENT: &str = "probe_libc:malloc";

/// What can be counted here, set up once for the whole bench.
#[derive(Debug)]
pub struct Counter {
    /// Per column: the perf event (for the interrupts, the CPUs), or why
    /// the column stays empty.
    pub sources: Vec<Result<String, String>>,
    /// The CPUs whose rescheduling interrupts count.
    cpus: Vec<usize>,
    /// `perf probe -d EVENT`, when the bench added the malloc probe.
    undo: Option<Vec<String>>,
}

impl Counter {
    /// Probes each source. `cpus` are the server's: its one CPU when
    /// pinned, else every CPU (the load's interrupts then count too).
    pub fn set_up(cpus: Vec<usize>) -> Counter {
        let mut undo = None;
        let sources = COLUMNS
            .iter()
            .map(|c| match c.source {
                Source::Event(ev) => probe_event(ev).map(|()| ev.to_string()),
                Source::Malloc => {
                    let added = add_malloc_probe()?;
                    if added {
                        let cmd: Vec<String> = ["perf", "probe", "-d", MALLOC_EVENT]
                            .map(String::from)
                            .to_vec();
                        child::undo_on_interrupt(cmd.clone());
                        undo = Some(cmd);
                    }
                    probe_event(MALLOC_EVENT).map(|()| MALLOC_EVENT.to_string())
                }
                Source::Reschedules => proc::interrupts("RES", &cpus).map(|_| cpu_list(&cpus)),
            })
            .collect();
        Counter {
            sources,
            cpus,
            undo,
        }
    }

    /// The events for `perf stat -e`, comma-separated; empty when perf can
    /// count none.
    pub fn events(&self) -> String {
        COLUMNS
            .iter()
            .zip(&self.sources)
            .filter(|(c, _)| c.source != Source::Reschedules)
            .filter_map(|(_, s)| s.as_deref().ok())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Rescheduling interrupts so far on the server's CPUs.
    pub fn reschedules(&self) -> Option<u64> {
        let i = COLUMNS
            .iter()
            .position(|c| c.source == Source::Reschedules)?;
        self.sources[i].as_ref().ok()?;
        proc::interrupts("RES", &self.cpus).ok()
    }

    /// The costs of one run: `perf_out` is perf's output (None: perf did
    /// not run), `reschedules` the interrupts over the period, `messages`
    /// the load's. Returns the columns and, for a column that could have
    /// been counted and was not, why.
    pub fn costs(
        &self,
        perf_out: Option<&str>,
        reschedules: Option<u64>,
        messages: u64,
    ) -> (Costs, Vec<String>) {
        let mut costs: Costs = [None; COLUMNS.len()];
        let mut notes = Vec::new();
        if messages == 0 {
            return (costs, notes);
        }
        let per = |n: u64| Some(n as f64 / messages as f64);
        for (i, (c, src)) in COLUMNS.iter().zip(&self.sources).enumerate() {
            let Ok(src) = src else { continue };
            costs[i] = match (c.source, perf_out) {
                (Source::Reschedules, _) => match reschedules {
                    Some(n) => per(n),
                    None => {
                        notes.push(format!("{}: /proc/interrupts not read", c.csv));
                        None
                    }
                },
                (_, None) => {
                    notes.push(format!("{}: perf did not run", c.csv));
                    None
                }
                (_, Some(out)) => match proc::parse_perf_count(out, src) {
                    Ok(n) => per(n),
                    Err(e) => {
                        notes.push(format!("{}: {e}", c.csv));
                        None
                    }
                },
            };
        }
        (costs, notes)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        if let Some(cmd) = self.undo.take() {
            let _ = Command::new(&cmd[0]).args(&cmd[1..]).output();
            child::forget_undo(&cmd);
        }
    }
}

/// How long perf may take to acknowledge a command.
#[cfg(unix)]
const ACK: Duration = Duration::from_secs(5);

/// perf stat's control FIFOs (`--control fifo:CTL,ACK`): counting starts
/// and stops when the runner says.
#[cfg(unix)]
#[derive(Debug)]
pub struct Gate {
    dir: PathBuf,
    ctl: File,
    ack: File,
}

#[cfg(unix)]
impl Gate {
    pub fn new() -> io::Result<Gate> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("cport-bench-perf-{}-{nanos}", std::process::id()));
        fs::create_dir(&dir)?;
        let open = || -> io::Result<(File, File)> {
            let mode = rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR;
            rustix::fs::mkfifoat(rustix::fs::CWD, dir.join("ctl"), mode)?;
            rustix::fs::mkfifoat(rustix::fs::CWD, dir.join("ack"), mode)?;
            // Read and write: opening a FIFO so never waits for the other
            // end, whether perf opens it first or not at all.
            let rw = |name: &str| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(dir.join(name))
            };
            Ok((rw("ctl")?, rw("ack")?))
        };
        match open() {
            Ok((ctl, ack)) => Ok(Gate { dir, ctl, ack }),
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// perf stat's arguments: counters off at the start, and the FIFOs.
    pub fn perf_args(&self) -> Vec<String> {
        vec![
            "-D".into(),
            "-1".into(),
            "--control".into(),
            format!(
                "fifo:{},{}",
                self.dir.join("ctl").display(),
                self.dir.join("ack").display()
            ),
        ]
    }

    /// Sends `enable` or `disable` and waits for perf's `ack`.
    pub fn send(&mut self, cmd: &str) -> Result<(), String> {
        self.ctl
            .write_all(format!("{cmd}\n").as_bytes())
            .map_err(|e| format!("cannot tell perf to {cmd}: {e}"))?;
        let deadline = Instant::now() + ACK;
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        // perf 6.1 writes "ack\n" and a NUL.
        while !got.windows(4).any(|w| w == b"ack\n") {
            match self.ack.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(format!("perf did not acknowledge `{cmd}` within {ACK:?}"));
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(format!("perf's acknowledgement of `{cmd}`: {e}")),
            }
        }
        Ok(())
    }
}

#[cfg(unix)]
impl Drop for Gate {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// No perf, no FIFOs on Windows: a gate never opens there (and costs runs
/// are refused before any run starts).
#[cfg(windows)]
#[derive(Debug)]
pub struct Gate;

#[cfg(windows)]
impl Gate {
    pub fn new() -> io::Result<Gate> {
        Err(io::Error::new(io::ErrorKind::Unsupported, UNAVAILABLE))
    }

    pub fn perf_args(&self) -> Vec<String> {
        Vec::new()
    }

    pub fn send(&mut self, cmd: &str) -> Result<(), String> {
        Err(format!("cannot tell perf to {cmd}: {UNAVAILABLE}"))
    }
}

/// "CPU 0" or "CPUs 0, 1".
fn cpu_list(cpus: &[usize]) -> String {
    let v: Vec<String> = cpus.iter().map(usize::to_string).collect();
    match v.len() {
        1 => format!("CPU {}", v[0]),
        _ => format!("CPUs {}", v.join(", ")),
    }
}

/// Whether perf can count `event` here, by counting it over `true`.
fn probe_event(event: &str) -> Result<(), String> {
    let out = Command::new("perf")
        .args(["stat", "-x,", "-e", event, "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run perf: {e}"))?;
    proc::parse_perf_count(&String::from_utf8_lossy(&out.stderr), event).map(drop)
}

/// Adds the uprobe on malloc of the C library this process maps (the
/// servers map the same one) unless it exists; whether it was added.
fn add_malloc_probe() -> Result<bool, String> {
    let listed = Command::new("perf")
        .args(["probe", "-l"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run perf: {e}"))?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    if listed
        .lines()
        .any(|l| l.split_whitespace().next() == Some(MALLOC_EVENT))
    {
        return Ok(false);
    }
    let maps = fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("cannot read /proc/self/maps: {e}"))?;
    let libc =
        proc::parse_libc_path(&maps).ok_or("no C library in /proc/self/maps (a static build?)")?;
    let out = Command::new("perf")
        .args(["probe", "-x", libc, "malloc"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run perf: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let why = err
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no reason given");
        return Err(format!("perf probe -x {libc} malloc failed: {why}"));
    }
    Ok(true)
}

/// One line per column: what counts it, or why it stays empty.
pub fn describe(counter: &Counter) -> Vec<String> {
    COLUMNS
        .iter()
        .zip(&counter.sources)
        .map(|(c, s)| match s {
            Ok(what) => format!("{}: {what}", c.csv),
            Err(why) => format!("{}: empty, {why}", c.csv),
        })
        .collect()
}
#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// perf attaches to a sleeping process with its counters off, counts
    /// between the runner's `enable` and `disable`, and prints its counts
    /// on SIGINT.
    #[test]
    fn the_gate_switches_perfs_counters() {
        if let Err(why) = probe_event("raw_syscalls:sys_enter") {
            println!("skipped: {why}");
            return;
        }
        let mut g = Gate::new().unwrap();
        let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
        let perf = Command::new("perf")
            .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter"])
            .args(g.perf_args())
            .args(["-p", &sleeper.id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        g.send("enable").unwrap();
        g.send("disable").unwrap();
        let pid = rustix::process::Pid::from_raw(perf.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
        let started = Instant::now();
        let out = perf.wait_with_output().unwrap();
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "perf ignored SIGINT"
        );
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("Events enabled"), "{text}");
        // `sleep` makes no system call while it sleeps.
        let n = proc::parse_perf_count(&text, "raw_syscalls:sys_enter");
        assert!(
            matches!(n, Ok(0..=2)) || text.contains("<not counted>"),
            "{text}"
        );
        let dir = g.dir.clone();
        drop(g);
        assert!(!dir.exists());
    }
}
