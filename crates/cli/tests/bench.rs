//! `cport bench` from the real binary: a small matrix writes a complete
//! record with measured figures and leaves no process behind; bad usage
//! is one line and exit 2; Ctrl-C kills the children and exits 1.

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

/// Whether `pid` is a live (or unreaped) cport server, load or perf: a pid
/// reused since by an unrelated process does not count.
fn is_our_child(pid: u32) -> bool {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(c) => {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains(BIN) || c.starts_with("perf ")
        }
        Err(_) => false,
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

fn csv_rows(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    // The notes of these runs are empty, so no field is quoted.
    let rows = lines
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    (header, rows)
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
        "server,backend,conns,size,messages,msgs_per_s,mb_per_s,p50_us,p99_us,\
         cpu_us_per_msg,syscalls_per_msg,peak_threads,peak_rss_kib,errors,status,note"
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
        assert!(num(row, "messages") > 0.0, "{row:?}");
        assert!(num(row, "msgs_per_s") > 0.0, "{row:?}");
        assert_eq!(num(row, "errors"), 0.0, "{row:?}");
        assert!(num(row, "cpu_us_per_msg") > 0.0, "{row:?}");
        assert!(num(row, "peak_threads") >= 1.0, "{row:?}");
        assert!(num(row, "peak_rss_kib") > 0.0, "{row:?}");
        assert!(num(row, "p99_us") >= num(row, "p50_us"), "{row:?}");
        cells.push((row[col("server")].clone(), row[col("conns")].clone()));
    }
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
    assert!(summary.contains("| server | backend | conns | size | msgs/s |"));
    assert!(summary.contains("## Most connections held"));
    assert!(summary.contains("## How each column was counted"));
    assert!(
        summary.contains("--models epoll,blocking"),
        "the command is recorded"
    );
    let svg = fs::read_to_string(out.join("chart.svg")).unwrap();
    assert!(svg.starts_with("<svg "));
    // Two servers × (messages/s, p99) × one size.
    assert_eq!(svg.matches("<polyline ").count(), 4);
    assert!(stdout.contains("| epoll | - | 8 | 128 |"), "{stdout}");
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

#[test]
fn ctrl_c_kills_the_children_and_exits_1() {
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
    assert_eq!(status.code(), Some(1));
    for k in kids {
        assert!(
            wait_until(STEP, || !is_our_child(k)),
            "child {k} outlived the bench"
        );
    }
    let _ = fs::remove_dir_all(&out);
}
