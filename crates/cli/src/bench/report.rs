//! The record of a `cport bench` run: one [`Row`] per run, written as CSV
//! and as markdown tables (every run; medians and spreads per cell and
//! server; ratios to the peers paired by round; costs; most connections
//! held). Pure functions of the rows; the chart is in `chart.rs`.

use std::fmt::Write as _;

use super::costs::{Costs, COLUMNS};
use super::plan::Cell;
use super::server::Peer;

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Measured, no error.
    Ok,
    /// Measured, but the load counted errors (or the server refused
    /// connections).
    Errors,
    /// Not measured: the server did not start, the load gave no report,
    /// something timed out.
    Failed,
    /// Not run, for the reason in the note.
    Skipped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Errors => "errors",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

/// One run: a server at one cell. `None` is a figure that could not be
/// measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub server: String,
    pub backend: String,
    pub cell: Cell,
    /// `--threads`, for the servers that take it.
    pub threads: Option<u32>,
    pub pinned: bool,
    /// The round, from 1; 0 for a costs run.
    pub round: u32,
    pub messages: Option<u64>,
    pub msgs_per_s: Option<f64>,
    pub mb_per_s: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub cpu_us_per_msg: Option<f64>,
    /// The user-time part of `cpu_us_per_msg`: the server's own code.
    pub user_us_per_msg: Option<f64>,
    pub syscalls_per_msg: Option<f64>,
    pub peak_threads: Option<u64>,
    pub peak_rss_kib: Option<u64>,
    pub errors: Option<u64>,
    /// A costs run's counts.
    pub costs: Option<Costs>,
    pub status: Status,
    pub note: String,
}

impl Row {
    /// A row with nothing measured yet.
    pub fn new(server: &str, cell: Cell, round: u32) -> Row {
        Row {
            server: server.into(),
            backend: "-".into(),
            cell,
            threads: None,
            pinned: true,
            round,
            messages: None,
            msgs_per_s: None,
            mb_per_s: None,
            p50_us: None,
            p99_us: None,
            cpu_us_per_msg: None,
            user_us_per_msg: None,
            syscalls_per_msg: None,
            peak_threads: None,
            peak_rss_kib: None,
            errors: None,
            costs: None,
            status: Status::Failed,
            note: String::new(),
        }
    }

    /// Whether the server held every connection of the run: measured, no
    /// error.
    pub fn held(&self) -> bool {
        self.status == Status::Ok && self.errors == Some(0)
    }
}

const IDENTITY: &str = "server,backend,conns,size,depth,threads,pinned";

pub fn csv_header() -> String {
    format!(
        "{IDENTITY},round,messages,msgs_per_s,mb_per_s,p50_us,p99_us,cpu_us_per_msg,\
         user_us_per_msg,syscalls_per_msg,peak_threads,peak_rss_kib,errors,status,note"
    )
}

pub fn costs_csv_header() -> String {
    let cols: Vec<&str> = COLUMNS.iter().map(|c| c.csv).collect();
    format!(
        "{IDENTITY},messages,msgs_per_s,p99_us,{},errors,status,note",
        cols.join(",")
    )
}

/// A CSV field (RFC 4180): quoted when it holds a comma, a quote or a line
/// break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or(String::new(), |v| v.to_string())
}

fn opt_f(v: Option<f64>, decimals: usize) -> String {
    v.map_or(String::new(), |v| format!("{v:.decimals$}"))
}

fn identity(r: &Row) -> Vec<String> {
    vec![
        csv_field(&r.server),
        csv_field(&r.backend),
        r.cell.conns.to_string(),
        r.cell.size.to_string(),
        r.cell.depth.to_string(),
        opt(r.threads),
        if r.pinned { "yes" } else { "no" }.into(),
    ]
}

/// One line of raw.csv (without its line break). An unmeasured figure is
/// an empty field.
pub fn csv_row(r: &Row) -> String {
    let mut f = identity(r);
    f.extend([
        r.round.to_string(),
        opt(r.messages),
        opt_f(r.msgs_per_s, 1),
        opt_f(r.mb_per_s, 3),
        opt_f(r.p50_us, 1),
        opt_f(r.p99_us, 1),
        opt_f(r.cpu_us_per_msg, 3),
        opt_f(r.user_us_per_msg, 3),
        opt_f(r.syscalls_per_msg, 3),
        opt(r.peak_threads),
        opt(r.peak_rss_kib),
        opt(r.errors),
        r.status.name().to_string(),
        csv_field(&r.note),
    ]);
    f.join(",")
}

/// One line of costs.csv.
pub fn costs_csv_row(r: &Row) -> String {
    let mut f = identity(r);
    f.extend([opt(r.messages), opt_f(r.msgs_per_s, 1), opt_f(r.p99_us, 1)]);
    let costs = r.costs.unwrap_or([None; COLUMNS.len()]);
    f.extend(costs.iter().map(|c| opt_f(*c, 4)));
    f.extend([
        opt(r.errors),
        r.status.name().to_string(),
        csv_field(&r.note),
    ]);
    f.join(",")
}

fn na(v: Option<String>) -> String {
    v.unwrap_or_else(|| "n/a".into())
}

/// Microseconds, with a decimal only where it matters.
fn us(v: f64) -> String {
    if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn rss(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A markdown table cell: `|` would end it.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// What ended a run, in the errors column, when it was not measured.
fn errors_cell(r: &Row) -> String {
    match r.status {
        Status::Failed | Status::Skipped => r.status.name().to_string(),
        _ => na(r.errors.map(|e| e.to_string())),
    }
}

/// Every run, one line each.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| server | backend | conns | size | depth | round | msgs/s | MB/s | p50 µs | p99 µs \
         | CPU µs/msg | user µs/msg | syscalls/msg | threads | peak RSS | errors |\n\
         |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&r.server),
            cell(&r.backend),
            r.cell.conns,
            r.cell.size,
            r.cell.depth,
            r.round,
            na(r.msgs_per_s.map(|v| format!("{v:.0}"))),
            na(r.mb_per_s.map(|v| format!("{v:.2}"))),
            na(r.p50_us.map(us)),
            na(r.p99_us.map(us)),
            na(r.cpu_us_per_msg.map(|v| format!("{v:.2}"))),
            na(r.user_us_per_msg.map(|v| format!("{v:.2}"))),
            na(r.syscalls_per_msg.map(|v| format!("{v:.2}"))),
            na(r.peak_threads.map(|v| v.to_string())),
            na(r.peak_rss_kib.map(rss)),
            errors_cell(r),
        );
    }
    t
}

/// The median and the extremes of some runs' figure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// `median (min–max)`, or the value alone when there is one run.
    fn show(&self, runs: usize, fmt: fn(f64) -> String) -> String {
        if runs > 1 {
            format!("{} ({}–{})", fmt(self.median), fmt(self.min), fmt(self.max))
        } else {
            fmt(self.median)
        }
    }
}

/// One server in one cell, over the rounds: figures of the runs measured
/// without error.
#[derive(Clone, Debug, PartialEq)]
pub struct Stat {
    pub server: String,
    pub backend: String,
    pub cell: Cell,
    /// Rounds run (skipped ones included).
    pub runs: usize,
    /// Of those, measured without error: the runs the figures are of.
    pub ok: usize,
    pub errors: u64,
    pub msgs_per_s: Option<Spread>,
    pub cpu_us_per_msg: Option<Spread>,
    pub user_us_per_msg: Option<Spread>,
    pub p99_us: Option<Spread>,
}

/// [`Stat`]s of the measured rounds (costs runs left out), by cell and
/// server in the order the rows first name them.
pub fn stats(rows: &[Row]) -> Vec<Stat> {
    let mut keys: Vec<(Cell, &str)> = Vec::new();
    for r in rows.iter().filter(|r| r.round > 0) {
        if !keys.contains(&(r.cell, r.server.as_str())) {
            keys.push((r.cell, &r.server));
        }
    }
    keys.into_iter()
        .map(|(c, s)| {
            let runs: Vec<&Row> = rows
                .iter()
                .filter(|r| r.round > 0 && r.cell == c && r.server == s)
                .collect();
            let ok: Vec<&Row> = runs.iter().copied().filter(|r| r.held()).collect();
            Stat {
                server: s.to_string(),
                backend: runs
                    .iter()
                    .map(|r| r.backend.as_str())
                    .find(|b| *b != "-")
                    .unwrap_or("-")
                    .to_string(),
                cell: c,
                runs: runs.len(),
                ok: ok.len(),
                errors: runs.iter().filter_map(|r| r.errors).sum(),
                msgs_per_s: Spread::of(ok.iter().filter_map(|r| r.msgs_per_s)),
                cpu_us_per_msg: Spread::of(ok.iter().filter_map(|r| r.cpu_us_per_msg)),
                user_us_per_msg: Spread::of(ok.iter().filter_map(|r| r.user_us_per_msg)),
                p99_us: Spread::of(ok.iter().filter_map(|r| r.p99_us)),
            }
        })
        .collect()
}

/// The median CPU per message of `server` over `reference`'s, in one cell.
pub fn cpu_ratio(stats: &[Stat], cell: Cell, server: &str, reference: &str) -> Option<f64> {
    let median = |name: &str| {
        stats
            .iter()
            .find(|s| s.cell == cell && s.server == name)
            .and_then(|s| s.cpu_us_per_msg)
            .map(|c| c.median)
    };
    let (a, b) = (median(server)?, median(reference)?);
    (b > 0.0).then(|| a / b)
}

/// `server`'s CPU per message over `peer`'s in the same round, one ratio
/// per round in which both ran without error, in one cell.
///
/// Each round runs every server once, one after another, so the two runs
/// of a pair are at most a round apart. On a host whose speed shifts
/// between rounds (the AMD host's two modes,
/// bench/runs/2026-12-07/serve/reading.md), both runs of a pair mostly
/// see the same speed, and the median of these ratios moves less than the
/// ratio of the two medians, which may take each median from another mode.
pub fn paired_ratios(rows: &[Row], cell: Cell, server: &str, peer: &str) -> Option<Spread> {
    let cpu = |name: &str, round: u32| {
        rows.iter()
            .find(|r| r.round == round && r.cell == cell && r.server == name && r.held())
            .and_then(|r| r.cpu_us_per_msg)
    };
    let rounds = rows
        .iter()
        .filter(|r| r.round > 0 && r.cell == cell && r.server == server)
        .map(|r| r.round);
    Spread::of(rounds.filter_map(|round| {
        let (a, b) = (cpu(server, round)?, cpu(peer, round)?);
        (b > 0.0).then(|| a / b)
    }))
}

/// Per cell, every server but the peers against each peer that ran
/// ([`paired_ratios`]): `median (least–most)`. `None` when the run had no
/// peer, or nothing but peers.
pub fn paired_table(rows: &[Row], stats: &[Stat]) -> Option<String> {
    let ran = |name: &str| stats.iter().any(|s| s.server == name);
    let peers: Vec<&str> = Peer::ALL
        .iter()
        .map(|p| p.name())
        .filter(|&p| ran(p))
        .collect();
    let others: Vec<&Stat> = stats
        .iter()
        .filter(|s| !peers.contains(&s.server.as_str()))
        .collect();
    if peers.is_empty() || others.is_empty() {
        return None;
    }
    let mut t = String::from("| conns | size | depth | server |");
    for p in &peers {
        let _ = write!(t, " vs {} |", cell(p));
    }
    t.push_str("\n|--:|--:|--:|---|");
    t.push_str(&"--:|".repeat(peers.len()));
    t.push('\n');
    for s in others {
        t.push_str(&key_columns(s.cell, &s.server));
        for p in &peers {
            let r = paired_ratios(rows, s.cell, &s.server, p);
            let _ = write!(t, " {} |", na(r.map(|r| r.show(2, |v| format!("{v:.2}")))));
        }
        t.push('\n');
    }
    Some(t)
}

/// The first four columns of the per-cell tables, `| conns | size | depth
/// | server |`.
fn key_columns(c: Cell, server: &str) -> String {
    format!(
        "| {} | {} | {} | {} |",
        c.conns,
        c.size,
        c.depth,
        cell(server)
    )
}

/// Medians and spreads per cell and server, the CPU per message as a
/// ratio to `reference`'s.
pub fn stats_table(stats: &[Stat], reference: &str) -> String {
    let mut t = format!(
        "| conns | size | depth | server | backend | ok runs | msgs/s | CPU µs/msg | vs {} \
         | user µs/msg | p99 µs | errors |\n|--:|--:|--:|---|---|--:|--:|--:|--:|--:|--:|--:|\n",
        cell(reference)
    );
    for s in stats {
        let _ = writeln!(
            t,
            "{} {} | {}/{} | {} | {} | {} | {} | {} | {} |",
            key_columns(s.cell, &s.server),
            cell(&s.backend),
            s.ok,
            s.runs,
            na(s.msgs_per_s.map(|m| m.show(s.ok, |v| format!("{v:.0}")))),
            na(s.cpu_us_per_msg
                .map(|m| m.show(s.ok, |v| format!("{v:.2}")))),
            na(cpu_ratio(stats, s.cell, &s.server, reference).map(|r| format!("{r:.2}"))),
            na(s.user_us_per_msg.map(|m| format!("{:.2}", m.median))),
            na(s.p99_us.map(|m| us(m.median))),
            s.errors,
        );
    }
    t
}

/// The costs runs (round 0), one line each.
pub fn costs_table(rows: &[Row]) -> String {
    let titles: Vec<&str> = COLUMNS.iter().map(|c| c.title).collect();
    let mut t = format!(
        "| conns | size | depth | server | msgs/s | {} | errors |\n|--:|--:|--:|---|--:|{}--:|\n",
        titles.join(" | "),
        "--:|".repeat(COLUMNS.len())
    );
    for r in rows.iter().filter(|r| r.round == 0) {
        let costs = r.costs.unwrap_or([None; COLUMNS.len()]);
        let cols: Vec<String> = costs
            .iter()
            .map(|c| c.map_or(String::new(), |v| format!("{v:.3}")))
            .collect();
        let _ = writeln!(
            t,
            "{} {} | {} | {} |",
            key_columns(r.cell, &r.server),
            na(r.msgs_per_s.map(|v| format!("{v:.0}"))),
            cols.join(" | "),
            errors_cell(r),
        );
    }
    t
}

/// Per server: the largest connection count at which it ran without an
/// error, of the counts tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub server: String,
    pub backend: String,
    /// `None`: no run without errors.
    pub most: Option<u32>,
    pub tried: Vec<u32>,
    /// The first run that was not held, with its status and note.
    pub first_failure: Option<String>,
}

/// [`Held`] for each server, in the order the rows first name them.
pub fn most_conns_held(rows: &[Row]) -> Vec<Held> {
    let mut out: Vec<Held> = Vec::new();
    for r in rows {
        let i = match out.iter().position(|h| h.server == r.server) {
            Some(i) => i,
            None => {
                out.push(Held {
                    server: r.server.clone(),
                    backend: r.backend.clone(),
                    most: None,
                    tried: Vec::new(),
                    first_failure: None,
                });
                out.len() - 1
            }
        };
        let h = &mut out[i];
        if h.backend == "-" {
            h.backend = r.backend.clone();
        }
        if r.status == Status::Skipped {
            continue;
        }
        if !h.tried.contains(&r.cell.conns) {
            h.tried.push(r.cell.conns);
            h.tried.sort_unstable();
        }
        if r.held() {
            h.most = Some(h.most.map_or(r.cell.conns, |m| m.max(r.cell.conns)));
        } else if h.first_failure.is_none() {
            let mut what = format!(
                "{} conns, {} B, round {}: {}",
                r.cell.conns,
                r.cell.size,
                r.round,
                r.status.name()
            );
            if let Some(e) = r.errors.filter(|&e| e > 0) {
                let _ = write!(what, " ({e} errors)");
            }
            if !r.note.is_empty() {
                let _ = write!(what, ": {}", r.note);
            }
            h.first_failure = Some(what);
        }
    }
    out
}

/// Most connections held per server.
pub fn held_table(held: &[Held]) -> String {
    let mut t = String::from(
        "| server | backend | most conns held | of those tried | first run not held |\n\
         |---|---|--:|---|---|\n",
    );
    for h in held {
        let tried: Vec<String> = h.tried.iter().map(u32::to_string).collect();
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} |",
            cell(&h.server),
            cell(&h.backend),
            h.most.map_or("none".into(), |m| m.to_string()),
            if tried.is_empty() {
                "none (skipped)".into()
            } else {
                tried.join(", ")
            },
            cell(h.first_failure.as_deref().unwrap_or("")),
        );
    }
    t
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn row(server: &str, conns: u32, size: u32, status: Status, errors: u64) -> Row {
        let c = Cell {
            conns,
            size,
            depth: 1,
        };
        let mut r = Row::new(server, c, 1);
        r.status = status;
        if status != Status::Skipped && status != Status::Failed {
            r.messages = Some(1000);
            r.msgs_per_s = Some(1000.0 * f64::from(conns));
            r.mb_per_s = Some(0.128);
            r.p50_us = Some(20.0);
            r.p99_us = Some(150.0 + f64::from(conns));
            r.cpu_us_per_msg = Some(3.25);
            r.user_us_per_msg = Some(0.25);
            r.peak_threads = Some(2);
            r.peak_rss_kib = Some(2048);
            r.errors = Some(errors);
        }
        r
    }

    /// Ratios pair each round of a server with the same round of a peer:
    /// a round where either had errors makes no pair, and the median of
    /// the pairs is not the ratio of the medians.
    #[test]
    fn paired_ratios_pair_runs_of_the_same_round() {
        let mut rows = Vec::new();
        // The host is fast in round 1 and slow in rounds 2 and 3; the
        // server is 1.1 times the peer in each, and fails in round 4.
        let rounds = [(1, 4.4, 4.0), (2, 6.6, 6.0), (3, 6.6, 6.0), (4, 1.0, 4.0)];
        for (round, a, b) in rounds {
            let mut x = row("port-uring", 50, 128, Status::Ok, 0);
            x.round = round;
            x.cpu_us_per_msg = Some(a);
            if round == 4 {
                x.status = Status::Errors;
                x.errors = Some(2);
            }
            let mut y = row("uring-echo", 50, 128, Status::Ok, 0);
            y.round = round;
            y.cpu_us_per_msg = Some(b);
            rows.push(x);
            rows.push(y);
        }
        // The peer's round 3 is missing altogether.
        rows.retain(|r| !(r.server == "uring-echo" && r.round == 3));
        let cell = rows[0].cell;
        let r = paired_ratios(&rows, cell, "port-uring", "uring-echo").unwrap();
        assert!((r.median - 1.1).abs() < 1e-9, "{r:?}");
        assert!(
            (r.min - 1.1).abs() < 1e-9 && (r.max - 1.1).abs() < 1e-9,
            "{r:?}"
        );
        let s = stats(&rows);
        let by_medians = cpu_ratio(&s, cell, "port-uring", "uring-echo").unwrap();
        assert!(
            (by_medians - 1.1).abs() > 0.1,
            "medians from two speeds: {by_medians}"
        );
        assert_eq!(paired_ratios(&rows, cell, "port-uring", "tokio-echo"), None);
        let t = paired_table(&rows, &s).unwrap();
        assert!(
            t.starts_with("| conns | size | depth | server | vs uring-echo |\n"),
            "{t}"
        );
        assert!(
            t.contains("| 50 | 128 | 1 | port-uring | 1.10 (1.10–1.10) |"),
            "{t}"
        );
        assert!(!t.contains("| uring-echo |"), "no row for a peer: {t}");
        let peers_only: Vec<Row> = rows
            .iter()
            .filter(|r| r.server == "uring-echo")
            .cloned()
            .collect();
        assert_eq!(paired_table(&peers_only, &stats(&peers_only)), None);
        let no_peer: Vec<Row> = rows
            .iter()
            .filter(|r| r.server == "port-uring")
            .cloned()
            .collect();
        assert_eq!(paired_table(&no_peer, &stats(&no_peer)), None);
    }

    #[test]
    fn csv_rows_have_every_column_and_quote_notes() {
        let mut r = row("epoll", 50, 128, Status::Errors, 3);
        r.note = "first: connection 7, \"closed\"".into();
        let line = csv_row(&r);
        assert_eq!(
            line,
            "epoll,-,50,128,1,,yes,1,1000,50000.0,0.128,20.0,200.0,3.250,0.250,,2,2048,3,errors,\
             \"first: connection 7, \"\"closed\"\"\""
        );
        assert_eq!(
            csv_header().split(',').count(),
            csv_row(&row("x", 1, 1, Status::Ok, 0)).split(',').count()
        );
        let mut skipped = row("port-uring", 1, 128, Status::Skipped, 0);
        skipped.threads = Some(2);
        skipped.pinned = false;
        assert_eq!(
            csv_row(&skipped),
            "port-uring,-,1,128,1,2,no,1,,,,,,,,,,,,skipped,"
        );
    }

    #[test]
    fn costs_rows_leave_uncounted_columns_empty() {
        let mut r = row("uring-echo", 50, 128, Status::Ok, 0);
        r.round = 0;
        r.costs = Some([Some(0.5), Some(0.01), Some(1.0), Some(0.0), None, None]);
        let line = costs_csv_row(&r);
        assert_eq!(
            line,
            "uring-echo,-,50,128,1,,yes,1000,50000.0,200.0,0.5000,0.0100,1.0000,0.0000,,,0,ok,"
        );
        assert_eq!(
            costs_csv_header().split(',').count(),
            line.split(',').count()
        );
        let t = costs_table(&[r.clone(), row("x", 1, 1, Status::Ok, 0)]);
        assert_eq!(t.lines().count(), 3, "only the costs run: {t}");
        assert!(
            t.contains(
                "| 50 | 128 | 1 | uring-echo | 50000 | 0.500 | 0.010 | 1.000 | 0.000 |  |  | 0 |"
            ),
            "{t}"
        );
    }

    #[test]
    fn the_markdown_table_has_a_line_per_run_and_says_n_a() {
        let rows = vec![
            row("epoll", 1, 128, Status::Ok, 0),
            row("select", 5000, 128, Status::Failed, 0),
            row("a|b", 1, 128, Status::Skipped, 0),
        ];
        let t = markdown_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + rows.len());
        let cols = lines[0].matches(" | ").count();
        assert!(
            lines
                .iter()
                .all(|l| l.matches('|').count() - l.matches("\\|").count() == cols + 2),
            "{t}"
        );
        assert_eq!(
            lines[2],
            "| epoll | - | 1 | 128 | 1 | 1 | 1000 | 0.13 | 20.0 | 151 | 3.25 | 0.25 | n/a | 2 | 2.0 MiB | 0 |"
        );
        assert!(lines[3].ends_with("| failed |"), "{}", lines[3]);
        assert!(lines[4].starts_with("| a\\|b |"), "{}", lines[4]);
    }

    #[test]
    fn spreads_are_medians_and_extremes() {
        let s = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of([4.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 10.0));
        assert_eq!(Spread::of([f64::NAN]), None);
        assert_eq!(Spread::of([]), None);
    }

    #[test]
    fn stats_take_the_rounds_without_errors_and_compare_with_the_reference() {
        let mut rows = Vec::new();
        for (round, (a, b)) in [(8.0, 10.0), (9.0, 12.0), (20.0, 11.0)]
            .into_iter()
            .enumerate()
        {
            let mut x = row("tokio-echo", 50, 128, Status::Ok, 0);
            x.round = round as u32 + 1;
            x.cpu_us_per_msg = Some(a);
            let mut y = row("port-uring", 50, 128, Status::Ok, 0);
            y.round = x.round;
            y.cpu_us_per_msg = Some(b);
            y.user_us_per_msg = Some(b / 10.0);
            y.backend = "uring".into();
            rows.push(x);
            rows.push(y);
        }
        let mut bad = row("port-uring", 50, 128, Status::Errors, 4);
        bad.round = 4;
        bad.cpu_us_per_msg = Some(100.0);
        rows.push(bad);
        let mut costs = row("port-uring", 50, 128, Status::Ok, 0);
        costs.round = 0;
        rows.push(costs);
        let s = stats(&rows);
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].server.as_str(), s[0].runs, s[0].ok),
            ("tokio-echo", 3, 3)
        );
        assert_eq!(s[0].cpu_us_per_msg.unwrap().median, 9.0);
        assert_eq!((s[1].runs, s[1].ok, s[1].errors), (4, 3, 4));
        assert_eq!(s[1].backend, "uring");
        let c = s[1].cpu_us_per_msg.unwrap();
        assert_eq!((c.median, c.min, c.max), (11.0, 10.0, 12.0));
        let cell = s[1].cell;
        let r = cpu_ratio(&s, cell, "port-uring", "tokio-echo").unwrap();
        assert!((r - 11.0 / 9.0).abs() < 1e-9);
        assert_eq!(cpu_ratio(&s, cell, "port-uring", "epoll-echo"), None);
        let t = stats_table(&s, "tokio-echo");
        assert!(
            t.starts_with("| conns | size | depth | server | backend | ok runs"),
            "{t}"
        );
        assert!(t.contains("| vs tokio-echo |"), "{t}");
        assert!(
            t.contains("| 50 | 128 | 1 | port-uring | uring | 3/4 | 50000 (50000–50000) | 11.00 (10.00–12.00) | 1.22 | 1.10 | 200 | 4 |"),
            "{t}"
        );
        assert!(t.contains("| 9.00 (8.00–20.00) | 1.00 | 0.25 |"), "{t}");
        let u = s[1].user_us_per_msg.unwrap();
        assert_eq!((u.median, u.min, u.max), (1.1, 1.0, 1.2));
    }

    #[test]
    fn most_conns_held_is_the_largest_run_without_errors() {
        let rows = vec![
            row("select", 1, 128, Status::Ok, 0),
            row("select", 500, 128, Status::Ok, 0),
            row("select", 5000, 128, Status::Errors, 3976),
            row("select", 50, 128, Status::Ok, 0),
            row("epoll", 1, 128, Status::Ok, 0),
            row("epoll", 5000, 4096, Status::Ok, 0),
            row("event", 1, 128, Status::Failed, 0),
            row("port-uring", 1, 128, Status::Skipped, 0),
        ];
        let h = most_conns_held(&rows);
        let names: Vec<&str> = h.iter().map(|h| h.server.as_str()).collect();
        assert_eq!(names, ["select", "epoll", "event", "port-uring"]);
        assert_eq!(h[0].most, Some(500));
        assert_eq!(h[0].tried, [1, 50, 500, 5000]);
        assert!(h[0]
            .first_failure
            .as_deref()
            .unwrap()
            .starts_with("5000 conns, 128 B, round 1: errors (3976 errors)"));
        assert_eq!(h[1].most, Some(5000));
        assert_eq!(h[1].first_failure, None);
        assert_eq!(h[2].most, None);
        assert_eq!((h[3].most, h[3].tried.len()), (None, 0));
        let t = held_table(&h);
        assert!(t.contains("| select | - | 500 | 1, 50, 500, 5000 |"), "{t}");
        assert!(
            t.contains("| port-uring | - | none | none (skipped) |"),
            "{t}"
        );
    }
}
