//! `cport bench` from the real binary: a small matrix writes a complete
//! record with measured figures and leaves no process behind; peers run in
//! rounds and the summary gives medians and spreads; costs are counted per
//! message, or left empty with the reason where perf is missing; bad usage
//! is one line and exit 2; Ctrl-C kills the children and exits 1.

// Linux only, as tests/common is (see there).
#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{lines, run_cport, wait_until, BIN, STEP};
use rustix::process::{kill_process, Pid, Signal};

/// A fresh directory under the system's temporary directory.
fn temp_dir(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!(
        "cport-bench-test-{tag}-{}-{nanos}",
        std::process::id()
    ));
    fs::create_dir_all(&d).unwrap();
    d
}

/// Whether `pid` is a live (or unreaped) cport server, load, peer or perf:
/// a pid reused since by an unrelated process does not count.
fn is_our_child(pid: u32) -> bool {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(c) => {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains(BIN) || c.starts_with("perf ") || c.contains("-echo --port 0")
        }
        Err(_) => false,
    }
}

/// The peers are built by cargo beside `cport` when crates/bench is built
/// with it (`cargo test -p cport-cli -p cport-bench`, or the workspace);
/// `None`, with the reason printed, when one is not there.
fn peers_built(names: &[&str]) -> Option<()> {
    for n in names {
        let p = Path::new(BIN).with_file_name(n);
        if !p.is_file() {
            println!(
                "skipped: {} is not built (cargo test -p cport-cli -p cport-bench builds it)",
                p.display()
            );
            return None;
        }
    }
    Some(())
}

/// Whether perf can count system calls here, or why not.
fn perf_usable() -> Result<(), String> {
    let out = Command::new("perf")
        .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "--", "true"])
        .output()
        .map_err(|e| format!("cannot run perf: {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    match err.lines().find(|l| l.contains("raw_syscalls:sys_enter")) {
        Some(l)
            if l.split(',')
                .next()
                .is_some_and(|n| n.parse::<u64>().is_ok()) =>
        {
            Ok(())
        }
        _ => Err(format!("perf counts nothing here: {}", err.trim())),
    }
}

/// The pids runs.log records for every run.
fn logged_pids(log: &str) -> Vec<u32> {
    log.lines()
        .filter_map(|l| l.strip_prefix("pids: "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.split_once('=')?.1.parse().ok())
        .collect()
}

/// The fields of one CSV line (RFC 4180 quoting; no line breaks in
/// fields, which the record never writes).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

fn csv_rows(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = csv_fields(lines.next().unwrap());
    let rows = lines.map(csv_fields).collect();
    (header, rows)
}

/// A column of a CSV read by [`csv_rows`], by name.
fn column(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

#[test]
fn a_small_matrix_writes_the_record_and_leaves_no_process() {
    let out = temp_dir("matrix");
    let out_s = out.to_str().unwrap();
    let r = run_cport(
        &[
            "bench",
            "--models",
            "epoll,blocking",
            "--conns",
            "1,8",
            "--sizes",
            "128",
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
            "--out",
            out_s,
        ],
        b"",
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&r.stderr);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(
        r.status.code(),
        Some(0),
        "stderr: {stderr}\nstdout: {stdout}"
    );

    let (header, rows) = csv_rows(&out.join("raw.csv"));
    assert_eq!(
        header.join(","),
        "server,backend,conns,size,depth,threads,pinned,round,messages,msgs_per_s,mb_per_s,\
         p50_us,p99_us,cpu_us_per_msg,user_us_per_msg,syscalls_per_msg,peak_threads,peak_rss_kib,\
         errors,status,note"
    );
    assert_eq!(rows.len(), 4, "{rows:?}");
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let num = |row: &[String], name: &str| -> f64 {
        row[col(name)]
            .parse()
            .unwrap_or_else(|_| panic!("{name} is {:?} in {row:?}", row[col(name)]))
    };
    let mut cells: Vec<(String, String)> = Vec::new();
    for row in &rows {
        assert_eq!(row.len(), header.len(), "{row:?}");
        assert_eq!(row[col("status")], "ok", "{row:?}");
        assert_eq!(
            (row[col("depth")].as_str(), row[col("round")].as_str()),
            ("1", "1")
        );
        assert!(num(row, "messages") > 0.0, "{row:?}");
        assert!(num(row, "msgs_per_s") > 0.0, "{row:?}");
        assert_eq!(num(row, "errors"), 0.0, "{row:?}");
        // CPU time comes in 10 ms ticks: a 300 ms run of a server starved
        // by a busy machine can read none (seen once, with CI and a build
        // running beside it). Every row reads a figure; one at least is
        // above zero (below).
        assert!(num(row, "cpu_us_per_msg") >= 0.0, "{row:?}");
        // The user part is a share of the whole: never negative, never
        // more (both come from one read of the same counters).
        let user = num(row, "user_us_per_msg");
        assert!(
            (0.0..=num(row, "cpu_us_per_msg")).contains(&user),
            "{row:?}"
        );
        assert!(num(row, "peak_threads") >= 1.0, "{row:?}");
        assert!(num(row, "peak_rss_kib") > 0.0, "{row:?}");
        assert!(num(row, "p99_us") >= num(row, "p50_us"), "{row:?}");
        cells.push((row[col("server")].clone(), row[col("conns")].clone()));
    }
    assert!(
        rows.iter().any(|r| num(r, "cpu_us_per_msg") > 0.0),
        "no run measured any CPU time: {rows:?}"
    );
    cells.sort();
    let want: Vec<(String, String)> = [
        ("blocking", "1"),
        ("blocking", "8"),
        ("epoll", "1"),
        ("epoll", "8"),
    ]
    .iter()
    .map(|(s, c)| (s.to_string(), c.to_string()))
    .collect();
    assert_eq!(cells, want);
    // A thread per connection: at 8 connections the blocking server ran
    // more threads than the connections.
    let blocking8 = rows
        .iter()
        .find(|r| r[col("server")] == "blocking" && r[col("conns")] == "8")
        .unwrap();
    assert!(num(blocking8, "peak_threads") > 8.0, "{blocking8:?}");

    let summary = fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("| conns | size | depth | server | backend | ok runs | msgs/s |"));
    assert!(summary.contains("| server | backend | conns | size | depth | round | msgs/s |"));
    assert!(summary.contains("## Most connections held"));
    assert!(summary.contains("## How each column was counted"));
    assert!(
        summary.contains("--models epoll,blocking"),
        "the command is recorded"
    );
    let svg = fs::read_to_string(out.join("chart.svg")).unwrap();
    assert!(svg.starts_with("<svg "));
    // Two servers × (messages/s, p99, CPU per message) × one size.
    assert_eq!(svg.matches("<polyline ").count(), 6);
    assert!(
        stdout.contains("| 8 | 128 | 1 | epoll | - | 1/1 |"),
        "{stdout}"
    );
    assert!(stdout.contains("most conns held"), "{stdout}");

    let log = fs::read_to_string(out.join("runs.log")).unwrap();
    let pids = logged_pids(&log);
    // Server and load for each run, perf too where it runs.
    assert!(pids.len() >= 8, "{pids:?}\n{log}");
    for pid in pids {
        assert!(!is_our_child(pid), "process {pid} is still there");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 {
        let pinned: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" on CPUs "))
            .filter_map(|l| l.rsplit(' ').next())
            .collect();
        assert_eq!(pinned.len(), 8, "{log}");
        for pair in pinned.chunks(2) {
            assert!(!pair[0].contains(['-', ',']), "server on one CPU: {pair:?}");
            assert!(!pair[1].contains(['-', ',']), "load on one CPU: {pair:?}");
            assert_ne!(pair[0], pair[1], "server and load on separate CPUs");
        }
    } else {
        println!("skipped the pinning check: {cpus} CPU");
    }
    let _ = fs::remove_dir_all(&out);
}

/// Runs `cport bench ARGS --out DIR` to completion (2 minutes at most)
/// and returns its stdout; the run must succeed.
fn bench(args: &[&str], out: &Path, path: Option<&Path>) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("bench")
        .args(args)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let mut child = cmd.spawn().unwrap();
    let within = Duration::from_secs(120);
    if !wait_until(within, || matches!(child.try_wait(), Ok(Some(_)))) {
        let _ = child.kill();
        let _ = child.wait();
        panic!("cport bench {args:?} did not finish within {within:?}");
    }
    let r = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout).into_owned();
    assert_eq!(
        r.status.code(),
        Some(0),
        "{args:?}\nstderr: {}\nstdout: {stdout}",
        String::from_utf8_lossy(&r.stderr)
    );
    stdout
}

/// Two peers, two rounds, two threads each, unpinned: a row per round
/// with its errors column, and a summary with medians, spreads and the
/// ratio to the chosen reference.
#[test]
fn peers_run_in_rounds_and_the_summary_gives_medians_and_spreads() {
    if peers_built(&["epoll-echo", "tokio-echo"]).is_none() {
        return;
    }
    let out = temp_dir("peers");
    let stdout = bench(
        &[
            "--servers",
            "epoll-echo,tokio-echo",
            "--cells",
            "8x128x2",
            "--repeat",
            "2",
            "--threads",
            "2",
            "--unpinned",
            "--reference",
            "epoll-echo",
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
        ],
        &out,
        None,
    );
    let (header, rows) = csv_rows(&out.join("raw.csv"));
    let col = |name: &str| column(&header, name);
    let mut seen: Vec<(String, String)> = Vec::new();
    for row in &rows {
        assert_eq!(row.len(), header.len(), "{row:?}");
        assert_eq!(row[col("status")], "ok", "{row:?}");
        assert_eq!(row[col("errors")], "0", "{row:?}");
        assert_eq!(
            (
                row[col("conns")].as_str(),
                row[col("size")].as_str(),
                row[col("depth")].as_str()
            ),
            ("8", "128", "2")
        );
        assert_eq!(
            (row[col("threads")].as_str(), row[col("pinned")].as_str()),
            ("2", "no")
        );
        assert_eq!(row[col("backend")], "epoll", "{row:?}");
        assert!(
            row[col("cpu_us_per_msg")].parse::<f64>().unwrap() > 0.0,
            "{row:?}"
        );
        // Two threads serving, main and the signal thread.
        assert!(
            row[col("peak_threads")].parse::<u32>().unwrap() >= 3,
            "{row:?}"
        );
        seen.push((row[col("round")].clone(), row[col("server")].clone()));
    }
    // Rounds in turn: A B A B.
    let want: Vec<(String, String)> = [
        ("1", "tokio-echo"),
        ("1", "epoll-echo"),
        ("2", "tokio-echo"),
        ("2", "epoll-echo"),
    ]
    .iter()
    .map(|(r, s)| (r.to_string(), s.to_string()))
    .collect();
    assert_eq!(seen, want);

    let summary = fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("## Medians over the rounds"), "{summary}");
    assert!(summary.contains("| vs epoll-echo |"), "{summary}");
    let line = summary
        .lines()
        .find(|l| l.starts_with("| 8 | 128 | 2 | epoll-echo | epoll | 2/2 |"))
        .unwrap_or_else(|| panic!("no median line for epoll-echo: {summary}"));
    // median (min–max) of messages/s and of CPU per message, the
    // reference's ratio to itself.
    assert_eq!(line.matches('–').count(), 2, "{line}");
    assert!(line.contains("| 1.00 |"), "{line}");
    assert!(summary.contains("`--unpinned`"), "{summary}");
    assert!(
        stdout.contains("| 8 | 128 | 2 | tokio-echo | epoll | 2/2 |"),
        "{stdout}"
    );
    assert!(!out.join("costs.csv").exists());

    let log = fs::read_to_string(out.join("runs.log")).unwrap();
    let pids = logged_pids(&log);
    assert!(pids.len() >= 8, "{pids:?}");
    for pid in pids {
        assert!(!is_our_child(pid), "process {pid} is still there");
    }
    assert!(log.contains("--port 0 --threads 2"), "{log}");
    let _ = fs::remove_dir_all(&out);
}

/// With perf, uring-echo's io_uring requests per message are one (the
/// send; the receive is multishot) and it arms no poll; epoll-echo makes
/// no io_uring request and at least one system call per message. perf
/// counts over exactly the load's period, so the ratios hold to a few
/// messages at its ends. Without perf, see the next test.
#[test]
fn costs_are_counted_per_message() {
    if peers_built(&["uring-echo", "epoll-echo"]).is_none() {
        return;
    }
    if let Err(why) = perf_usable() {
        println!("skipped: {why}");
        return;
    }
    let probe_listed = || {
        Command::new("perf")
            .args(["probe", "-l"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("probe_libc:malloc"))
    };
    let listed_before = probe_listed();
    let out = temp_dir("costs");
    let stdout = bench(
        &[
            "--servers",
            "uring-echo,epoll-echo",
            "--cells",
            "8x128",
            "--costs",
            "--duration",
            "500ms",
            "--warmup",
            "200ms",
        ],
        &out,
        None,
    );
    let (header, rows) = csv_rows(&out.join("costs.csv"));
    let col = |name: &str| column(&header, name);
    let get = |server: &str, name: &str| -> Option<f64> {
        let row = rows.iter().find(|r| r[col("server")] == server).unwrap();
        assert_eq!(row[col("status")], "ok", "{row:?}");
        row[col(name)].parse().ok()
    };
    let summary = fs::read_to_string(out.join("summary.md")).unwrap();
    if get("uring-echo", "uring_requests_per_msg").is_none() {
        // Kernels without io_uring, or without its tracepoints.
        assert!(
            summary.contains("uring_requests_per_msg: empty,"),
            "{summary}"
        );
        println!("skipped the io_uring counts: {summary}");
    } else {
        let req = get("uring-echo", "uring_requests_per_msg").unwrap();
        assert!(
            (0.97..=1.03).contains(&req),
            "{req} io_uring requests per message"
        );
        let arms = get("uring-echo", "poll_arms_per_msg").unwrap();
        assert!(arms < 0.01, "{arms} poll arms per message");
        assert_eq!(get("epoll-echo", "uring_requests_per_msg"), Some(0.0));
    }
    assert!(get("epoll-echo", "syscalls_per_msg").unwrap() >= 1.0);
    assert!(get("epoll-echo", "res_ipis_per_msg").is_some());
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(summary.contains("## Costs per message"), "{summary}");
    assert!(
        stdout.contains("| io_uring requests | poll arms |"),
        "{stdout}"
    );
    // A malloc probe the bench added is gone.
    if !listed_before {
        assert!(!probe_listed(), "probe_libc:malloc outlived the bench");
    }
    let _ = fs::remove_dir_all(&out);
}

/// Where perf cannot be run, the columns it counts are empty and the
/// summary says why; the interrupts, read from /proc, are still there.
#[test]
fn without_perf_the_cost_columns_are_empty_with_the_reason() {
    if peers_built(&["epoll-echo"]).is_none() {
        return;
    }
    let out = temp_dir("noperf");
    // A PATH on which no perf can be found.
    let empty = temp_dir("empty-path");
    bench(
        &[
            "--servers",
            "epoll-echo",
            "--cells",
            "4x128",
            "--costs",
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
        ],
        &out,
        Some(&empty),
    );
    let (header, rows) = csv_rows(&out.join("costs.csv"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row.len(), header.len());
    assert_eq!(row[column(&header, "status")], "ok", "{row:?}");
    for c in [
        "syscalls_per_msg",
        "switches_per_msg",
        "uring_requests_per_msg",
        "poll_arms_per_msg",
        "mallocs_per_msg",
    ] {
        assert_eq!(row[column(&header, c)], "", "{c} in {row:?}");
    }
    let res: f64 = row[column(&header, "res_ipis_per_msg")].parse().unwrap();
    assert!(res >= 0.0);
    let summary = fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        summary.contains("- syscalls_per_msg: empty, cannot run perf"),
        "{summary}"
    );
    assert!(
        summary.contains("- mallocs_per_msg: empty, cannot run perf"),
        "{summary}"
    );
    // The rounds' own system call count says so too.
    let (h, r) = csv_rows(&out.join("raw.csv"));
    assert_eq!(r[0][column(&h, "syscalls_per_msg")], "");
    assert!(
        summary.contains("system calls in the rounds: n/a (cannot run perf"),
        "{summary}"
    );
    let _ = fs::remove_dir_all(&out);
    let _ = fs::remove_dir_all(&empty);
}

#[test]
fn bad_usage_is_one_line_and_exit_2() {
    let out = temp_dir("usage");
    let out_s = out.to_str().unwrap();
    for (args, needle) in [
        (&["--models", "epoll,kqueue"][..], "kqueue"),
        (&["--models", ""][..], "empty"),
        (&["--conns", "0,50"][..], "--conns"),
        (&["--conns", ""][..], "--conns"),
        (&["--sizes", "128,,4096"][..], "--sizes"),
        (&["--duration", "1ms"][..], "--duration"),
        (&["--servers", "epoll,kqueue"][..], "kqueue"),
        (&["--cells", "50x"][..], "--cells"),
        (&["--cells", "50x128x0"][..], "--cells"),
        (
            &["--servers", "peers", "--reference", "epoll"][..],
            "--reference",
        ),
    ] {
        let mut all = vec!["bench", "--out", out_s];
        all.extend_from_slice(args);
        let r = run_cport(&all, b"", STEP);
        let err = lines(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {err:?}");
        assert_eq!(err.len(), 1, "{args:?}: {err:?}");
        assert!(err[0].contains(needle), "{args:?}: {}", err[0]);
        assert!(r.stdout.is_empty(), "{args:?}");
    }
    // Flags that exclude each other are refused by the parser (exit 2).
    let r = run_cport(
        &["bench", "--out", out_s, "--cells", "8x128", "--conns", "8"],
        b"",
        STEP,
    );
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--cells"));
    // Nothing was run, so nothing was recorded.
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
    let _ = fs::remove_dir_all(&out);
}

/// The children of `parent`, from /proc/*/stat (field 4, after the ')').
fn children_of(parent: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(i) = stat.rfind(')') else { continue };
        let ppid = stat[i + 1..].split_whitespace().nth(1);
        if ppid.and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            v.push(pid);
        }
    }
    v
}

// With its log pipe gone (the reader of stderr has exited), a signal still
// stops the bench: it kills and reaps its children and exits 130, as a
// shell reports a command SIGINT ended.
#[test]
fn ctrl_c_kills_the_children_and_exits_130_with_its_log_pipe_gone() {
    let out = temp_dir("sigint");
    let mut bench = Command::new(BIN)
        .args([
            "bench", "--models", "epoll", "--conns", "1", "--sizes", "128",
        ])
        .args(["--duration", "60s", "--warmup", "100ms", "--out"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = bench.id();
    drop(bench.stderr.take());
    let mut kids = Vec::new();
    let found = wait_until(STEP, || {
        kids = children_of(pid);
        kids.len() >= 2
    });
    if !found {
        let _ = bench.kill();
        let _ = bench.wait();
        panic!("the bench did not start a server and a load: {kids:?}");
    }
    kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::INT).unwrap();
    let exited = wait_until(STEP, || matches!(bench.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = bench.kill();
        let _ = bench.wait();
        panic!("the bench did not exit on SIGINT");
    }
    let status = bench.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    for k in kids {
        assert!(
            wait_until(STEP, || !is_our_child(k)),
            "child {k} outlived the bench"
        );
    }
    let _ = fs::remove_dir_all(&out);
}
