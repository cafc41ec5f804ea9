//! summary.md: what a reader needs to trust or redo the record (the exact
//! command, machine, versions, how the CPUs were shared), the tables, and
//! how each column was counted (on Linux from /proc and perf, on Windows
//! from its process APIs, and why the system-call column is empty there).

use std::fmt::Write as _;
use std::fs;

use super::costs;
#[cfg(unix)]
use super::costs::COLUMNS;
use super::plan::Plan;
use super::report::Row;
use super::run::{self, Setup};
use super::{os, output_of, shell_word};

pub struct Info<'a> {
    pub plan: &'a Plan,
    pub setup: &'a Setup,
    pub pinning: String,
    pub nofile_note: String,
    pub perf_line: String,
    pub date: String,
    pub took_s: f64,
    pub load_before: String,
    pub load_after: String,
}

/// The markdown tables, as printed to stdout too.
pub struct Tables {
    pub stats: String,
    /// [`report::paired_table`]: `None` without peers, or with peers only.
    pub paired: Option<String>,
    pub costs: Option<String>,
    pub held: String,
    pub runs: String,
}

/// Versions of the crates the peers are built with, from the Cargo.lock
/// of the current directory (the checkout the binaries come from).
fn locked_versions(names: &[&str]) -> String {
    match fs::read_to_string("Cargo.lock") {
        Ok(lock) => parse_locked_versions(&lock, names),
        Err(_) => "no Cargo.lock in the current directory".into(),
    }
}

fn parse_locked_versions(lock: &str, names: &[&str]) -> String {
    let mut found = Vec::new();
    let mut name = None;
    for l in lock.lines() {
        if let Some(n) = l.strip_prefix("name = ") {
            name = Some(n.trim_matches('"'));
        } else if let (Some(n), Some(v)) = (name, l.strip_prefix("version = ")) {
            if names.contains(&n) {
                found.push(format!("{n} {}", v.trim_matches('"')));
            }
            name = None;
        }
    }
    found.join(", ")
}

/// The kernel's CPU vulnerability mitigations: they set the price of a
/// system call, so a record taken under others is not comparable.
#[cfg(windows)]
fn mitigations() -> String {
    "not read on Windows".into()
}

/// The kernel's CPU vulnerability mitigations: they set the price of a
/// system call, so a record taken under others is not comparable.
#[cfg(unix)]
fn mitigations() -> String {
    let Ok(dir) = fs::read_dir("/sys/devices/system/cpu/vulnerabilities") else {
        return "unknown".into();
    };
    let mut v: Vec<String> = dir
        .flatten()
        .filter_map(|e| {
            let state = fs::read_to_string(e.path()).ok()?;
            Some(format!(
                "{}: {}",
                e.file_name().to_string_lossy(),
                state.trim()
            ))
        })
        .collect();
    v.sort();
    v.join("; ")
}

#[cfg(unix)]
fn first_line_of(path: &str) -> String {
    fs::read_to_string(path).map_or_else(
        |_| "absent".into(),
        |s| s.lines().next().unwrap_or("").trim().to_string(),
    )
}

pub fn summary(info: &Info, rows: &[Row], tables: &Tables) -> String {
    let plan = info.plan;
    let setup = info.setup;
    let mut args: Vec<String> = std::env::args().skip(1).map(|a| shell_word(&a)).collect();
    args.insert(0, "cport".into());
    let cwd = std::env::current_dir().map_or("?".into(), |d| d.display().to_string());
    let commit = output_of("git", &["rev-parse", "--short=12", "HEAD"]);
    let dirty = output_of("git", &["--no-optional-locks", "status", "--porcelain"])
        .map(|s| s.lines().count());
    let system = system();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let servers: Vec<&str> = plan.servers.iter().map(|s| s.name()).collect();
    let cells: Vec<String> = plan.cells.iter().map(|c| c.to_string()).collect();

    let mut s = String::new();
    let _ = writeln!(s, "# cport bench: echo servers measured side by side\n");
    let _ = writeln!(s, "- command: `{}` (in `{cwd}`)", args.join(" "));
    let _ = writeln!(
        s,
        "- date: {}; took {:.0} s{}",
        info.date,
        info.took_s,
        if plan.quick {
            " (`--quick`: a trial, not a record)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "- machine: {nproc} CPUs ({}), {system}; load average {} before, {} after",
        os::cpu_model(),
        info.load_before,
        info.load_after
    );
    let _ = writeln!(s, "- CPU vulnerability mitigations: {}", mitigations());
    let _ = writeln!(
        s,
        "- versions: cport {}; {}; {}; git commit {}",
        env!("CARGO_PKG_VERSION"),
        output_of("rustc", &["-V"])
            .map_or("rustc not on PATH".into(), |v| format!("{v} (on PATH)")),
        locked_versions(&["tokio", "io-uring", "mio"]),
        match (commit, dirty) {
            (Some(c), Some(0)) => c,
            // The checkout's state when the run started, not necessarily
            // the binaries': they may have been built before later edits.
            (Some(c), Some(n)) => format!(
                "{c} with {n} uncommitted file(s) in the working tree at the start (the binaries \
                 may predate them)"
            ),
            (Some(c), None) => c,
            (None, _) => "unknown (not a git checkout)".into(),
        }
    );
    let _ = writeln!(
        s,
        "- servers: {}; the reference for ratios: {}",
        servers.join(", "),
        plan.reference.name()
    );
    for (server, why) in &plan.skipped {
        let _ = writeln!(s, "- skipped: {} ({why})", server.name());
    }
    let _ = writeln!(
        s,
        "- cells: {}; {} round(s); {:.2} s measured after a {:.2} s warm-up per run",
        cells.join("; "),
        plan.rounds,
        plan.duration.as_secs_f64(),
        plan.warmup.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "- server threads (`--threads {}`): the peers run {0}; the port runs {0} at once with {} \
         workers; the other models keep their own threading",
        plan.threads,
        plan.threads.max(2)
    );
    let _ = match plan.buffer_size {
        Some(n) => writeln!(
            s,
            "- receive buffers (`--buffer-size {n}`): {n} B for every server"
        ),
        None => writeln!(
            s,
            "- receive buffers: 16384 B for every server (its default; `--buffer-size` sets it)"
        ),
    };
    let _ = writeln!(s, "- CPUs: {}", info.pinning);
    let _ = writeln!(s, "- descriptors: {}", info.nofile_note);
    backends_and_perf(&mut s, info);

    let _ = writeln!(
        s,
        "\n## Medians over the rounds\n\nPer cell and server, over the rounds measured without \
         error (`ok runs`): the median, and in parentheses the least and the most. `vs {}` is \
         the median CPU µs per message over {0}'s in the same cell.\n\n{}",
        plan.reference.name(),
        tables.stats
    );
    if let Some(t) = &tables.paired {
        let _ = writeln!(
            s,
            "## Ratios to the peers, paired by round\n\nPer cell, each server's CPU µs per \
             message over a peer's in the same round, for the rounds where both ran without \
             error: the median of those ratios, and in parentheses the least and the most. \
             The two runs of a pair are at most a round apart, so a change in the host's \
             speed between rounds moves both: on a host whose speed shifts, this median \
             moves less than the ratio of the two medians above.\n\n{t}"
        );
    }
    if let (Some(t), Some(c)) = (&tables.costs, &setup.counter) {
        let _ = writeln!(
            s,
            "## Costs per message\n\nOne more run of each server per cell (`--costs`), counted \
             over the load's whole measured period and divided by the messages the load \
             reports for it. Tracing slows the server: these runs' messages/s are not the \
             rounds'.\n\n{t}"
        );
        for l in costs::describe(c) {
            let _ = writeln!(s, "- {l}");
        }
        s.push('\n');
    }
    #[cfg(windows)]
    let _ = writeln!(
        s,
        "## Costs per message\n\nNot counted: {}.\n",
        costs::UNAVAILABLE
    );
    let _ = writeln!(s, "## Most connections held\n\n{}", tables.held);
    let _ = writeln!(s, "## Every run\n\n{}", tables.runs);
    let noted: Vec<&Row> = rows.iter().filter(|r| !r.note.is_empty()).collect();
    if !noted.is_empty() {
        let _ = writeln!(s, "## Notes\n");
        for r in noted {
            let _ = writeln!(
                s,
                "- {}, {}, {} ({}): {}",
                r.server,
                r.cell,
                match r.round {
                    0 => "costs".to_string(),
                    n => format!("round {n}"),
                },
                r.status.name(),
                r.note
            );
        }
        s.push('\n');
    }
    method(&mut s, plan, setup);
    s
}

/// The system the record was taken on.
#[cfg(unix)]
fn system() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    format!("Linux {kernel}")
}

/// The system the record was taken on, and wine when it runs under wine:
/// then the figures are wine's on Linux, not Windows'.
#[cfg(windows)]
fn system() -> String {
    let ver = output_of("cmd", &["/c", "ver"]).unwrap_or_else(|| "Windows".into());
    match os::wine_version() {
        Some(w) => format!("{ver} under wine {w} (the figures are wine's on Linux, not Windows')"),
        None => ver,
    }
}

#[cfg(unix)]
fn backends_and_perf(s: &mut String, info: &Info) {
    let setup = info.setup;
    let _ = writeln!(
        s,
        "- io_uring: {} (kernel.io_uring_disabled: {}); `--backend auto` resolves to {}",
        match &setup.uring {
            Ok(()) => "available".to_string(),
            Err(why) => format!("unavailable ({why}): port-uring and uring-echo skipped"),
        },
        first_line_of("/proc/sys/kernel/io_uring_disabled"),
        setup.auto_backend
    );
    let _ = writeln!(
        s,
        "- perf: {}; system calls in the rounds: {}",
        output_of("perf", &["--version"]).unwrap_or_else(|| "not found".into()),
        info.perf_line
    );
}

#[cfg(windows)]
fn backends_and_perf(s: &mut String, info: &Info) {
    let _ = writeln!(
        s,
        "- the port: Windows' own completion port (port-iocp, `--backend auto`, which the \
         servers' first line names `backend={}`)",
        info.setup.auto_backend
    );
    let _ = writeln!(
        s,
        "- perf: none on Windows; system calls per message: {}",
        info.perf_line
    );
}

/// How each column was counted: /proc and perf.
#[cfg(unix)]
fn method(s: &mut String, plan: &Plan, setup: &Setup) {
    let cost_columns: Vec<String> = COLUMNS
        .iter()
        .map(|c| {
            let how = match c.source {
                costs::Source::Event(e) => format!("`{e}` events"),
                costs::Source::Malloc => {
                    "calls of the C library's `malloc`, through a uprobe (`perf probe -x LIBC \
                     malloc`, added for the bench unless it exists, removed at its end)"
                        .to_string()
                }
                costs::Source::Reschedules => {
                    "rescheduling interrupts (the `RES` row of /proc/interrupts) of the \
                     server's CPU, or of every CPU when unpinned, read at the period's start and \
                     end"
                    .to_string()
                }
            };
            format!("  - **{}** (`{}`): {how}", c.title, c.csv)
        })
        .collect();
    let _ = write!(
        s,
        "## How each column was counted

Each run starts the server (`cport serve --model NAME --port 0`, the port model with `--no-udp`;
a peer with `--port 0 --threads N`) and reads its first line, `listening on ADDR ...`. It then
starts `cport load ADDR --conns N --size S --depth D --threads 1 --json`, which opens every
connection before its clock starts; the runner sees them as sockets in /proc/LOAD/fd, and from
then knows the schedule: the warm-up, then the measured period. In a round, inside that period,
from 0.1 s after its start to 0.15 s before its end (a tenth and 15% of the period if shorter),
a window is cut in two halves: CPU time is taken over the first, system calls are counted over
the second, so that perf's tracepoints never slow the server while its CPU time is taken.
Rounds go cell by cell, the servers taking turns (A B C A B C ...).

- **backend**: the server's first line (`backend=`), which names the backend its port (or a
  peer's loop) runs on; tokio-echo's is epoll. `-`: the model runs on no port.
- **msgs/s, MB/s, p50 µs, p99 µs, errors**: `cport load --json` over its measured period only.
  MB/s counts each direction once. Latency runs from a message's send to the last byte of its
  echo. Errors count connections that failed, were closed by the server, echoed a wrong byte or
  left messages unanswered.
- **CPU µs/msg**, the figure of merit: the server's utime + stime (/proc/PID/stat fields 14 and
  15, every thread, in clock ticks of 1/{tck} s) read at the first half's start and end,
  divided by that window's length and by the load's messages/s. A tick is 10 ms: over a short
  window this figure is coarse.
- **user µs/msg**: the utime part of the same, the server's own code (the rest is the kernel's
  work for it: system calls, the network stack, io_uring). The kernel charges each of its
  timer ticks (250 or 1000 a second) to user or system time by where the tick finds the
  thread, so the split is a sample: a server that spends 5 % of a 2.5 s window in user space
  is seen there by some 30 ticks at 250 Hz, a sampling error near a fifth of the figure. Read
  medians, and compare servers by it only where they differ by more.
- **syscalls/msg** (rounds): `perf stat -e {ev} -p SERVER -x, -- sleep T` over the second half
  (every system call entry of every server thread), divided by T and by the load's messages/s.
  The rate is the whole period's: if perf's tracepoints slow the server during its half, the
  figure is a little low. `n/a` when perf is missing or refuses.
- **costs** (`--costs`, costs.csv): in a run of their own, `perf stat -e EVENTS -p SERVER -x, -D
  -1 --control fifo:CTL,ACK` attaches during the warm-up with its counters off; the runner
  switches them on and off through the FIFOs at the ends of the load's measured period (waiting
  for perf's acknowledgement), and each count is divided by the messages the load reports for
  that period:
{cost_columns}
- **threads**: the most `Threads:` in /proc/PID/status, sampled every 100 ms from the server's
  start to the end of the run (connections open).
- **peak RSS**: `VmHWM` in /proc/PID/status just before the server is stopped (SIGTERM, SIGKILL
  after 10 s).
- **most conns held**: per server, the largest connection count of the matrix at which a run
  was measured with 0 errors (at any size and round).

Raw rows: raw.csv (one per run and round){costs_file}; per run the commands, pids, the server's
first line, the sampled window and every child's stderr: runs.log. Chart: chart.svg.
",
        tck = setup.ticks_per_sec,
        ev = run::PERF_EVENT,
        cost_columns = cost_columns.join("\n"),
        costs_file = if plan.costs {
            ", costs.csv (one per costs run)"
        } else {
            ""
        },
    );
}

/// How each column was counted: Windows' process APIs.
#[cfg(windows)]
fn method(s: &mut String, _plan: &Plan, _setup: &Setup) {
    let _ = write!(
        s,
        "## How each column was counted

Each run starts the server (`cport serve --model NAME --port 0`, the port model with `--no-udp`)
in a process group of its own and reads its first line, `listening on ADDR ...`. It then starts
`cport load ADDR --conns N --size S --depth D --threads 1 --json`, which opens every connection
before its clock starts; the runner sees them in the TCP table (`GetTcpTable`: the connections
established towards ADDR, an ephemeral port only the load connects to), and from then knows the
schedule: the warm-up, then the measured period. In a round, inside that period, from 0.1 s after
its start to 0.15 s before its end (a tenth and 15% of the period if shorter), CPU time is taken
over the first half of that window. Rounds go cell by cell, the servers taking turns (A B C A B C
...). Pinned, each process's affinity is set with `SetProcessAffinityMask` right after it starts.

- **backend**: the server's first line (`backend=`); on Windows the port's is `auto`, the
  native completion port. `-`: the model runs on no port.
- **msgs/s, MB/s, p50 µs, p99 µs, errors**: `cport load --json` over its measured period only.
  MB/s counts each direction once. Latency runs from a message's send to the last byte of its
  echo. Errors count connections that failed, were closed by the server, echoed a wrong byte or
  left messages unanswered.
- **CPU µs/msg**, the figure of merit: the server's kernel + user time, read at the first
  half's start and end, divided by that window's length and by the load's messages/s. Read with
  {cpu}.
- **user µs/msg**: the user-time part of the same, the server's own code; Windows charges each
  clock interrupt to user or kernel time by where it finds the thread, so this split is a
  sample.
- **syscalls/msg**: empty, {why}.
- **costs**: {costs}.
- **threads**: the most threads the server owned in a `CreateToolhelp32Snapshot
  (TH32CS_SNAPTHREAD)` walk, sampled every 100 ms from the server's start to the end of the run
  (connections open). Windows adds threads of its own to a process (the loader's thread pool);
  they are counted.
- **peak RSS**: `PeakWorkingSetSize` of `K32GetProcessMemoryInfo` (the most of the server's
  memory resident at once) just before the server is stopped (Ctrl-Break, TerminateProcess
  after 10 s, or at once when the bench shares no console with the server to send Ctrl-Break
  through, as under wine without a terminal: runs.log says so).
- **most conns held**: per server, the largest connection count of the matrix at which a run
  was measured with 0 errors (at any size and round).

Raw rows: raw.csv (one per run and round); per run the commands, pids, the server's first line,
the sampled window and every child's stderr: runs.log. Chart: chart.svg.
",
        cpu = os::cpu_source(),
        why = run::NO_SYSCALLS,
        costs = costs::UNAVAILABLE,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_versions_are_read_by_name() {
        let lock = r#"
[[package]]
name = "io-uring"
version = "0.7.15"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "tokio"
version = "1.54.1"

[[package]]
name = "tokio-macros"
version = "2.7.2"
"#;
        assert_eq!(
            parse_locked_versions(lock, &["tokio", "io-uring", "mio"]),
            "io-uring 0.7.15, tokio 1.54.1"
        );
        assert_eq!(parse_locked_versions("", &["tokio"]), "");
    }
}
