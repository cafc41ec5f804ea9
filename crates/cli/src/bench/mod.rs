//! `cport bench`: echo servers measured side by side. Each server (the
//! tutorials' I/O models as `cport serve --model NAME` runs them, and the
//! peers of crates/bench: tokio-echo, uring-echo, epoll-echo) runs in its
//! own child process against a `cport load --json` child, cell by cell
//! and round by round; the record (raw.csv, costs.csv, chart.svg,
//! summary.md, runs.log) goes to one directory and the tables to stdout.
//!
//! - `plan`: the arguments, checked (pure); `server`: what each server is
//!   and how it starts;
//! - `run`: one run, measured as docs/design/benchmark-method.md says;
//! - `costs`: what a costs run counts with perf and /proc/interrupts;
//! - `child`: pinned children, reaped, killed on Ctrl-C;
//! - `proc`: what is read from /proc and perf; `winproc`: what is read
//!   from Windows' process APIs instead (`os` is the one of this system);
//!   `output`: from the children's output;
//! - `report`, `chart`, `summary`: CSV, markdown and SVG from the rows
//!   (pure).
//!
//! On Windows the tutorials' models run as on Linux, but epoll (Linux's),
//! and the port is one row, port-iocp; CPU time, threads and peak memory
//! come from Windows' own process APIs; the Linux peers, `--costs` and
//! the system-call count (perf) are not there, and the record says why.

mod chart;
mod child;
mod costs;
mod output;
mod plan;
mod proc;
mod report;
mod run;
mod server;
mod summary;
#[cfg(windows)]
mod winproc;

#[cfg(unix)]
use proc as os;
#[cfg(windows)]
use winproc as os;

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
#[cfg(unix)]
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::args::BenchArgs;
use crate::console;
use costs::Counter;
use plan::{OutDir, Plan};
use report::{Row, Status};
use run::{Kind, Setup};
use server::Server;

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = Plan::from_args(&args)?;
    let exe = std::env::current_exe().context("cannot find the cport executable")?;
    for s in &plan.servers {
        if let Server::Peer(p) = s {
            let path = server::peer_path(&exe, *p);
            if !path.is_file() {
                bail!(
                    "{} is not beside cport ({}): build it into the same target directory \
                     (cargo build [--release] -p cport-bench)",
                    p.name(),
                    path.display()
                );
            }
        }
    }
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
    let (server_cpu, load_cpu) = if plan.pinned && cpus.len() >= 2 {
        (Some(cpus[0]), Some(cpus[1]))
    } else {
        (None, None)
    };
    let counter = plan.costs.then(|| {
        // Pinned, the server's interrupts are its CPU's; unpinned, every
        // CPU's (the load's included).
        Counter::set_up(server_cpu.map_or_else(|| cpus.clone(), |c| vec![c]))
    });
    let setup = Setup {
        exe,
        server_cpu,
        load_cpu,
        threads: plan.threads,
        buffer_size: plan.buffer_size,
        nofile,
        uring: probe_uring(),
        auto_backend: probe_auto(),
        perf: run::probe_perf(),
        counter,
        warmup: plan.warmup,
        duration: plan.duration,
        ticks_per_sec: ticks_per_sec(),
    };

    let pinning = match (server_cpu, load_cpu) {
        (Some(s), Some(l)) => {
            format!("server pinned to CPU {s}, load to CPU {l} (`cport load --threads 1`)")
        }
        _ if !plan.pinned => format!(
            "unpinned (`--unpinned`): server and load (`cport load --threads 1`) may run on \
             any of {} CPU(s)",
            cpus.len().max(1)
        ),
        _ => format!(
            "unpinned: this process may run on {} CPU(s), pinning needs 2",
            cpus.len().max(1)
        ),
    };
    let perf_line = match &setup.perf {
        Ok(()) => format!("perf stat -e {} -p SERVER", run::PERF_EVENT),
        Err(why) => format!("n/a ({why})"),
    };
    let mut notices = vec![
        format!(
            "{} runs{}; record in {}",
            plan.runs(),
            if plan.costs {
                format!(" and {} costs runs", plan.cost_runs())
            } else {
                String::new()
            },
            out.display()
        ),
        pinning.clone(),
        format!("descriptors: {nofile_note}"),
        format!("system calls: {perf_line}"),
    ];
    if let Some(c) = &setup.counter {
        notices.extend(
            costs::describe(c)
                .into_iter()
                .map(|l| format!("costs: {l}")),
        );
    }
    for (s, why) in &plan.skipped {
        notices.push(format!("{} is skipped: {why}", s.name()));
    }
    for n in &notices {
        console::note(&format!("cport bench: {n}"));
    }
    if let Err(why) = &setup.uring {
        for s in plan.servers.iter().filter(|s| s.needs_uring()) {
            console::note(&format!(
                "cport bench: {} is skipped: io_uring is unavailable here: {why}",
                s.name()
            ));
        }
    }

    let mut csv = File::create(out.join("raw.csv")).context("cannot create raw.csv")?;
    writeln!(csv, "{}", report::csv_header())?;
    let mut costs_csv = match plan.costs {
        true => {
            let mut f = File::create(out.join("costs.csv")).context("cannot create costs.csv")?;
            writeln!(f, "{}", report::costs_csv_header())?;
            Some(f)
        }
        false => None,
    };
    let mut runs_log = File::create(out.join("runs.log")).context("cannot create runs.log")?;
    let total = plan.runs() + plan.cost_runs();
    let bar = progress_bar(total);
    let mut rows = Vec::new();
    // Round by round, the servers taking turns in each cell (A B C A B
    // C ...): a slow minute on a shared machine falls on one round of
    // every server, not on every round of one.
    let mut order: Vec<(Kind, plan::Cell, Server)> = Vec::new();
    for round in 1..=plan.rounds {
        for &cell in &plan.cells {
            order.extend(plan.servers.iter().map(|&s| (Kind::Round(round), cell, s)));
        }
    }
    if plan.costs {
        for &cell in &plan.cells {
            order.extend(plan.servers.iter().map(|&s| (Kind::Costs, cell, s)));
        }
    }
    for (i, (kind, cell, server)) in order.into_iter().enumerate() {
        if let Some(b) = &bar {
            b.set_message(format!("{} {cell}", server.name()));
        }
        let mut log = String::new();
        let row = run::run(&setup, server, cell, kind, &mut log);
        runs_log.write_all(log.as_bytes())?;
        match (kind, &mut costs_csv) {
            (Kind::Costs, Some(f)) => writeln!(f, "{}", report::costs_csv_row(&row))?,
            _ => writeln!(csv, "{}", report::csv_row(&row))?,
        }
        let line = progress_line(i + 1, total, &row);
        match &bar {
            Some(b) => {
                b.println(line);
                b.inc(1);
            }
            None => console::note(&line),
        }
        rows.push(row);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    drop(csv);
    drop(costs_csv);

    let measured: Vec<Row> = rows.iter().filter(|r| r.round > 0).cloned().collect();
    let stats = report::stats(&measured);
    let held = report::most_conns_held(&measured);
    let tables = summary::Tables {
        stats: report::stats_table(&stats, plan.reference.name()),
        paired: report::paired_table(&measured, &stats),
        costs: plan.costs.then(|| report::costs_table(&rows)),
        held: report::held_table(&held),
        runs: report::markdown_table(&measured),
    };
    fs::write(out.join("chart.svg"), chart::svg_chart(&stats, &held))
        .context("cannot write chart.svg")?;
    let info = summary::Info {
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
        summary::summary(&info, &rows, &tables),
    )
    .context("cannot write summary.md")?;

    let mut text = format!(
        "Medians over {} round(s); CPU per message against {}:\n\n{}\n",
        plan.rounds,
        plan.reference.name(),
        tables.stats
    );
    if let Some(c) = &tables.costs {
        text += &format!("Costs per message (one run per cell and server):\n\n{c}\n");
    }
    text += &format!(
        "Most connections held (largest count run without an error):\n\n{}\n",
        tables.held
    );
    let failed = rows.iter().filter(|r| r.status == Status::Failed).count();
    if failed > 0 {
        text += &format!(
            "{failed} run(s) failed to measure; reasons in the notes of raw.csv and in runs.log.\n"
        );
    }
    text += &format!(
        "Record in {} (summary.md, raw.csv{}, chart.svg, runs.log); {:.0} s.\n",
        out.display(),
        if plan.costs { ", costs.csv" } else { "" },
        began.elapsed().as_secs_f64()
    );
    // A closed stdout ends the command quietly (the record is written).
    console::print(&text)?;
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
    let what = match r.round {
        0 => "costs".to_string(),
        n => format!("round {n}"),
    };
    let mut s = format!(
        "[{i}/{n}] {} {}, {what}: {}",
        r.server,
        r.cell,
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

/// CPU time's unit: /proc's clock ticks, or Windows' 100 ns.
#[cfg(unix)]
fn ticks_per_sec() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

#[cfg(windows)]
fn ticks_per_sec() -> u64 {
    os::TICKS_PER_SEC
}

/// Windows has no descriptor limit to raise: a socket is a handle, and a
/// process's handles are bounded by memory alone.
#[cfg(windows)]
fn raise_nofile() -> (u64, String) {
    (
        u64::MAX,
        "no per-process limit on Windows (sockets are handles, bounded by memory)".into(),
    )
}

/// Raises the soft descriptor limit to the hard one, so that 5,000
/// connections fit in the server and in the load, which inherit it.
#[cfg(unix)]
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

#[cfg(windows)]
fn loadavg() -> String {
    "n/a (Windows keeps no load average)".into()
}

#[cfg(unix)]
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
