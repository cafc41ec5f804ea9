//! `cport bench`: the tutorials' I/O model comparison, measured. Each
//! model's echo server runs in its own child process (`cport serve
//! --model NAME`) against a `cport load --json` child, over a matrix of
//! connections and message sizes; the record (raw.csv, chart.svg,
//! summary.md, runs.log) goes to one directory and the table to stdout.
//!
//! - `plan`: the arguments, checked (pure);
//! - `run`: one run, measured as bench/serve.sh measures;
//! - `child`: pinned children, reaped, killed on Ctrl-C;
//! - `proc`: what is read from /proc and perf;
//! - `report`: CSV, markdown and SVG from the rows (pure).

mod child;
mod plan;
mod proc;
mod report;
mod run;

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::args::BenchArgs;
use plan::{OutDir, Plan, Server};
use report::{Row, Status};
use run::Setup;

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = Plan::from_args(&args)?;
    let began = Instant::now();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (date, hms) = plan::utc_date(now);
    let out = make_out_dir(&plan.out, &date, &hms)?;
    let load_before = loadavg();

    // Children must be killed on Ctrl-C from the first one on.
    child::kill_children_on_signal()?;
    let (nofile, nofile_note) = raise_nofile();
    let cpus = child::allowed_cpus();
    let (server_cpu, load_cpu) = if cpus.len() >= 2 {
        (Some(cpus[0]), Some(cpus[1]))
    } else {
        (None, None)
    };
    let setup = Setup {
        exe: std::env::current_exe().context("cannot find the cport executable")?,
        server_cpu,
        load_cpu,
        nofile,
        uring: probe_uring(),
        auto_backend: probe_auto(),
        perf: run::probe_perf(&out),
        warmup: plan.warmup,
        duration: plan.duration,
        ticks_per_sec: rustix::param::clock_ticks_per_second().max(1),
    };

    let pinning = match (server_cpu, load_cpu) {
        (Some(s), Some(l)) => {
            format!("server pinned to CPU {s}, load to CPU {l} (`cport load --threads 1`)")
        }
        _ => format!(
            "unpinned: this process may run on {} CPU(s), pinning needs 2",
            cpus.len().max(1)
        ),
    };
    let perf_line = match &setup.perf {
        Ok(()) => format!("perf stat -e {} -p SERVER", run::PERF_EVENT),
        Err(why) => format!("n/a ({why})"),
    };
    let notices = [
        format!("{} runs; record in {}", plan.runs(), out.display()),
        pinning.clone(),
        format!("descriptors: {nofile_note}"),
        format!("system calls: {perf_line}"),
    ];
    for n in &notices {
        eprintln!("cport bench: {n}");
    }
    if let (Err(why), true) = (&setup.uring, plan.servers.contains(&Server::PortUring)) {
        eprintln!("cport bench: port-uring is skipped: io_uring is unavailable here: {why}");
    }

    let mut csv = File::create(out.join("raw.csv")).context("cannot create raw.csv")?;
    writeln!(csv, "{}", report::CSV_HEADER)?;
    let mut runs_log = File::create(out.join("runs.log")).context("cannot create runs.log")?;
    let bar = progress_bar(plan.runs());
    let mut rows = Vec::new();
    let mut i = 0;
    for &server in &plan.servers {
        for &conns in &plan.conns {
            for &size in &plan.sizes {
                i += 1;
                if let Some(b) = &bar {
                    b.set_message(format!("{} {conns} conns {size} B", server.name()));
                }
                let mut log = String::new();
                let row = run::run(&setup, server, conns, size, &mut log);
                runs_log.write_all(log.as_bytes())?;
                writeln!(csv, "{}", report::csv_row(&row))?;
                let line = progress_line(i, plan.runs(), &row);
                match &bar {
                    Some(b) => {
                        b.println(line);
                        b.inc(1);
                    }
                    None => eprintln!("{line}"),
                }
                rows.push(row);
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    drop(csv);

    let held = report::most_conns_held(&rows);
    let table = report::markdown_table(&rows);
    let held_table = report::held_table(&held);
    fs::write(out.join("chart.svg"), report::svg_chart(&rows)).context("cannot write chart.svg")?;
    let info = Info {
        plan: &plan,
        setup: &setup,
        pinning,
        nofile_note,
        perf_line,
        date: format!("{date} {}:{}:{} UTC", &hms[..2], &hms[2..4], &hms[4..]),
        took_s: began.elapsed().as_secs_f64(),
        load_before,
        load_after: loadavg(),
    };
    fs::write(
        out.join("summary.md"),
        summary(&info, &rows, &table, &held_table),
    )
    .context("cannot write summary.md")?;

    println!("{table}");
    println!("Most connections held (largest count run without an error):\n");
    println!("{held_table}");
    let failed = rows.iter().filter(|r| r.status == Status::Failed).count();
    if failed > 0 {
        println!(
            "{failed} run(s) failed to measure; reasons in the notes of raw.csv and in runs.log."
        );
    }
    println!(
        "Record in {} (raw.csv, chart.svg, summary.md, runs.log); {:.0} s.",
        out.display(),
        began.elapsed().as_secs_f64()
    );
    Ok(())
}

fn progress_bar(len: usize) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    // The elapsed time moves while a run goes on, not only between runs.
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    Some(bar)
}

fn progress_line(i: usize, n: usize, r: &Row) -> String {
    let mut s = format!(
        "[{i}/{n}] {} {} conns {} B: {}",
        r.server,
        r.conns,
        r.size,
        r.status.name()
    );
    if let Some(m) = r.msgs_per_s {
        let _ = write!(s, ", {m:.0} msg/s");
    }
    if let Some(c) = r.cpu_us_per_msg {
        let _ = write!(s, ", {c:.2} µs CPU/msg");
    }
    if let Some(e) = r.errors.filter(|&e| e > 0) {
        let _ = write!(s, ", {e} errors");
    }
    if !r.note.is_empty() && r.status != Status::Ok {
        let _ = write!(s, " ({})", r.note);
    }
    s
}

fn make_out_dir(out: &OutDir, date: &str, hms: &str) -> anyhow::Result<PathBuf> {
    let dir = match out {
        OutDir::Given(d) => d.clone(),
        OutDir::Dated => {
            let d = Path::new("bench/runs").join(date).join("models");
            if d.exists() {
                Path::new("bench/runs")
                    .join(date)
                    .join(format!("models-{hms}"))
            } else {
                d
            }
        }
        OutDir::Temp => std::env::temp_dir().join(format!(
            "cport-bench-quick-{date}-{hms}-{}",
            std::process::id()
        )),
    };
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Raises the soft descriptor limit to the hard one, so that 5,000
/// connections fit in the server and in the load, which inherit it.
fn raise_nofile() -> (u64, String) {
    let lim = getrlimit(Resource::Nofile);
    // An unlimited hard limit cannot be the soft one: the kernel caps it
    // at fs.nr_open.
    let hard = lim.maximum.or_else(|| {
        fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
    });
    let soft = lim.current.unwrap_or(u64::MAX);
    match hard {
        Some(h) if h > soft => match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(h),
                maximum: lim.maximum,
            },
        ) {
            Ok(()) => (h, format!("RLIMIT_NOFILE raised from {soft} to {h}")),
            Err(e) => (
                soft,
                format!("RLIMIT_NOFILE stays {soft} (raising it to {h} failed: {e})"),
            ),
        },
        _ => (soft, format!("RLIMIT_NOFILE {soft} (the hard limit)")),
    }
}

fn probe_uring() -> Result<(), String> {
    cport::Builder::new()
        .backend(cport::Backend::Uring)
        .build::<()>()
        .map(drop)
        .map_err(|e| e.to_string())
}

/// What `--backend auto` becomes here (CPORT_BACKEND included, which the
/// children inherit).
fn probe_auto() -> String {
    match cport::Builder::new().build::<()>() {
        Ok(p) => p.backend().name().to_string(),
        Err(_) => "auto".into(),
    }
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// A command's first line of output, or `None`.
fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// An argument as a shell would need it.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./,=:@%+-".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

struct Info<'a> {
    plan: &'a Plan,
    setup: &'a Setup,
    pinning: String,
    nofile_note: String,
    perf_line: String,
    date: String,
    took_s: f64,
    load_before: String,
    load_after: String,
}

fn summary(info: &Info, rows: &[Row], table: &str, held_table: &str) -> String {
    let plan = info.plan;
    let setup = info.setup;
    let mut args: Vec<String> = std::env::args().skip(1).map(|a| shell_word(&a)).collect();
    args.insert(0, "cport".into());
    let cwd = std::env::current_dir().map_or("?".into(), |d| d.display().to_string());
    let commit = output_of("git", &["rev-parse", "--short=12", "HEAD"]);
    let dirty = output_of("git", &["--no-optional-locks", "status", "--porcelain"])
        .map(|s| s.lines().count());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let servers: Vec<&str> = plan.servers.iter().map(|s| s.name()).collect();
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");

    let mut s = String::new();
    let _ = writeln!(s, "# cport bench: the tutorials' I/O models, measured\n");
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
        "- machine: {nproc} CPUs ({}), Linux {kernel}; load average {} before, {} after",
        proc::cpu_model(),
        info.load_before,
        info.load_after
    );
    let _ = writeln!(
        s,
        "- versions: cport {}; {}; git commit {}",
        env!("CARGO_PKG_VERSION"),
        output_of("rustc", &["-V"])
            .map_or("rustc not on PATH".into(), |v| format!("{v} (on PATH)")),
        match (commit, dirty) {
            (Some(c), Some(0)) => c,
            // The checkout's state when the run started, not necessarily
            // the binary's: it may have been built before later edits.
            (Some(c), Some(n)) => format!(
                "{c} with {n} uncommitted file(s) in the working tree at the start (the binary \
                 may predate them)"
            ),
            (Some(c), None) => c,
            (None, _) => "unknown (not a git checkout)".into(),
        }
    );
    let _ = writeln!(
        s,
        "- matrix: {}; connections {}; sizes {} B; depth 1; {:.2} s measured after a {:.2} s warm-up per run",
        servers.join(", "),
        list(&plan.conns),
        list(&plan.sizes),
        plan.duration.as_secs_f64(),
        plan.warmup.as_secs_f64()
    );
    let _ = writeln!(s, "- CPUs: {}", info.pinning);
    let _ = writeln!(s, "- descriptors: {}", info.nofile_note);
    let _ = writeln!(
        s,
        "- io_uring: {}; `--backend auto` resolves to {}",
        match &setup.uring {
            Ok(()) => "available".to_string(),
            Err(why) => format!("unavailable ({why}): port-uring skipped"),
        },
        setup.auto_backend
    );
    let _ = writeln!(s, "- system calls: {}", info.perf_line);

    let _ = writeln!(s, "\n## Results\n\n{table}");
    let _ = writeln!(s, "## Most connections held\n\n{held_table}");
    let noted: Vec<&Row> = rows.iter().filter(|r| !r.note.is_empty()).collect();
    if !noted.is_empty() {
        let _ = writeln!(s, "## Notes\n");
        for r in noted {
            let _ = writeln!(
                s,
                "- {}, {} conns, {} B ({}): {}",
                r.server,
                r.conns,
                r.size,
                r.status.name(),
                r.note
            );
        }
        s.push('\n');
    }
    let _ = write!(
        s,
        "## How each column was counted

Each run starts the server (`cport serve --model NAME --port 0`; the port model with
`--no-udp --workers 2 --concurrency 1`, sized for its one core as in bench/serve.sh) and reads
its first line, `listening on ADDR ...`. It then starts `cport load ADDR --conns N --size S
--depth 1 --threads 1 --json`, which opens every connection before its clock starts; the runner
sees them as sockets in /proc/LOAD/fd, and from then knows the schedule: the warm-up, then the
measured period. Inside that period, from 0.1 s after its start to 0.15 s before its end (a
tenth and 15% of the period if shorter), a window is cut in two halves: CPU time is taken over
the first, system calls are counted over the second, so that perf's tracepoints never slow the
server while its CPU time is taken.

- **backend**: the server's first line (`backend=`), which names the backend its port runs on.
  `-`: the model runs on no port.
- **msgs/s, MB/s, p50 µs, p99 µs, errors**: `cport load --json` over its measured period only.
  MB/s counts each direction once. Latency runs from a message's send to the last byte of its
  echo. Errors count connections that failed, were closed by the server, echoed a wrong byte or
  left messages unanswered.
- **CPU µs/msg**: the server's utime + stime (/proc/PID/stat fields 14 and 15, every thread, in
  clock ticks of 1/{tck} s) read at the first half's start and end, divided by that window's
  length and by the load's messages/s. A tick is 10 ms: over a short window this figure is
  coarse.
- **syscalls/msg**: `perf stat -e {ev} -p SERVER -x, -- sleep T` over the second
  half (every system call entry of every server thread), divided by T and by the load's
  messages/s. The
  rate is the whole period's: if perf's tracepoints slow the server during its half, the figure
  is a little low. `n/a` when perf is missing or refuses.
- **threads**: the most `Threads:` in /proc/PID/status, sampled every 100 ms from the server's
  start to the end of the run (connections open).
- **peak RSS**: `VmHWM` in /proc/PID/status just before the server is stopped (SIGTERM, SIGKILL
  after 10 s).
- **most conns held**: per server, the largest connection count of the matrix at which a run
  was measured with 0 errors (at any size).

Raw rows: raw.csv; per run the commands, pids, the server's first line, the sampled window and
every child's stderr: runs.log. Chart: chart.svg.
",
        tck = setup.ticks_per_sec,
        ev = run::PERF_EVENT,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(shell_word("--conns"), "--conns");
        assert_eq!(shell_word("1,50"), "1,50");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
