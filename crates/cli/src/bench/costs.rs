//! `--costs`: what each server asks of the kernel per echoed message. A
//! run of its own per cell and server, after the measured rounds, in which
//! `perf stat -p SERVER` counts over the load's whole measured period and
//! every count is divided by the messages the load reports for that
//! period. Tracepoints and the malloc uprobe slow the server, so these
//! runs' messages/s and CPU figures are not the measured ones; the ratios
//! of counts to messages are exact.
//!
//! A column perf cannot count here (perf missing, not permitted, a kernel
//! without the tracepoint, no uprobe on libc) stays empty, and [`Counter`]
//! says why; that is not a failure of the bench.

use std::fs;
use std::process::{Command, Stdio};

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
