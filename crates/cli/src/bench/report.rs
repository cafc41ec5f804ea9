//! The record of a `cport bench` run: one [`Row`] per run, written as CSV,
//! as the markdown comparison table and as an SVG chart. Pure functions
//! of the rows.

use std::fmt::Write as _;

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

/// One run: a server at one cell of the matrix. `None` is a figure that
/// could not be measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub server: String,
    pub backend: String,
    pub conns: u32,
    pub size: u32,
    pub messages: Option<u64>,
    pub msgs_per_s: Option<f64>,
    pub mb_per_s: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub cpu_us_per_msg: Option<f64>,
    pub syscalls_per_msg: Option<f64>,
    pub peak_threads: Option<u64>,
    pub peak_rss_kib: Option<u64>,
    pub errors: Option<u64>,
    pub status: Status,
    pub note: String,
}

impl Row {
    /// A row with nothing measured yet.
    pub fn new(server: &str, backend: &str, conns: u32, size: u32) -> Row {
        Row {
            server: server.into(),
            backend: backend.into(),
            conns,
            size,
            messages: None,
            msgs_per_s: None,
            mb_per_s: None,
            p50_us: None,
            p99_us: None,
            cpu_us_per_msg: None,
            syscalls_per_msg: None,
            peak_threads: None,
            peak_rss_kib: None,
            errors: None,
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

pub const CSV_HEADER: &str = "server,backend,conns,size,messages,msgs_per_s,mb_per_s,p50_us,\
p99_us,cpu_us_per_msg,syscalls_per_msg,peak_threads,peak_rss_kib,errors,status,note";

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

/// One line of raw.csv (without its line break). An unmeasured figure is
/// an empty field.
pub fn csv_row(r: &Row) -> String {
    [
        csv_field(&r.server),
        csv_field(&r.backend),
        r.conns.to_string(),
        r.size.to_string(),
        opt(r.messages),
        opt_f(r.msgs_per_s, 1),
        opt_f(r.mb_per_s, 3),
        opt_f(r.p50_us, 1),
        opt_f(r.p99_us, 1),
        opt_f(r.cpu_us_per_msg, 3),
        opt_f(r.syscalls_per_msg, 3),
        opt(r.peak_threads),
        opt(r.peak_rss_kib),
        opt(r.errors),
        r.status.name().to_string(),
        csv_field(&r.note),
    ]
    .join(",")
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

/// The comparison table, one line per run.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| server | backend | conns | size | msgs/s | MB/s | p50 µs | p99 µs | CPU µs/msg \
         | syscalls/msg | threads | peak RSS | errors |\n\
         |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in rows {
        let errors = match r.status {
            Status::Failed | Status::Skipped => r.status.name().to_string(),
            _ => na(r.errors.map(|e| e.to_string())),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&r.server),
            cell(&r.backend),
            r.conns,
            r.size,
            na(r.msgs_per_s.map(|v| format!("{v:.0}"))),
            na(r.mb_per_s.map(|v| format!("{v:.2}"))),
            na(r.p50_us.map(us)),
            na(r.p99_us.map(us)),
            na(r.cpu_us_per_msg.map(|v| format!("{v:.2}"))),
            na(r.syscalls_per_msg.map(|v| format!("{v:.2}"))),
            na(r.peak_threads.map(|v| v.to_string())),
            na(r.peak_rss_kib.map(rss)),
            errors,
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
        if r.status == Status::Skipped {
            continue;
        }
        if !h.tried.contains(&r.conns) {
            h.tried.push(r.conns);
            h.tried.sort_unstable();
        }
        if r.held() {
            h.most = Some(h.most.map_or(r.conns, |m| m.max(r.conns)));
        } else if h.first_failure.is_none() {
            let mut what = format!("{} conns, {} B: {}", r.conns, r.size, r.status.name());
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

/// The second table: most connections held per server.
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

/// Text for an SVG element or attribute.
pub fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

const COLOURS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];
const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 260.0;
const MARGIN_L: f64 = 70.0;
const MARGIN_T: f64 = 40.0;
const GAP_X: f64 = 90.0;
const GAP_Y: f64 = 80.0;
const LEGEND_W: f64 = 150.0;

/// One plotted quantity.
struct Metric {
    title: &'static str,
    value: fn(&Row) -> Option<f64>,
    /// Latencies span orders of magnitude between models: log scale.
    log_y: bool,
}

const METRICS: [Metric; 2] = [
    Metric {
        title: "messages/s",
        value: |r| r.msgs_per_s,
        log_y: false,
    },
    Metric {
        title: "p99 latency (µs, log scale)",
        value: |r| r.p99_us,
        log_y: true,
    },
];

/// A linear or logarithmic axis mapping `lo..=hi` onto `from..=to` pixels.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    from: f64,
    to: f64,
}

impl Axis {
    fn new(lo: f64, hi: f64, log: bool, from: f64, to: f64) -> Axis {
        let (mut lo, mut hi) = if log {
            (lo.max(1e-9).log10(), hi.max(1e-9).log10())
        } else {
            (lo, hi)
        };
        if hi - lo < 1e-9 {
            lo -= 0.5;
            hi += 0.5;
        }
        Axis {
            lo,
            hi,
            log,
            from,
            to,
        }
    }

    fn at(&self, v: f64) -> f64 {
        let v = if self.log { v.max(1e-9).log10() } else { v };
        self.from + (v - self.lo) / (self.hi - self.lo) * (self.to - self.from)
    }
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Messages/s and p99 latency against connections (log scale), one line
/// per server, one pair of panels per message size. Runs without a figure
/// (failed, skipped) are left out of their line.
pub fn svg_chart(rows: &[Row]) -> String {
    let mut servers: Vec<&str> = Vec::new();
    let mut sizes: Vec<u32> = Vec::new();
    let mut conns: Vec<u32> = Vec::new();
    for r in rows {
        if !servers.contains(&r.server.as_str()) {
            servers.push(&r.server);
        }
        if !sizes.contains(&r.size) {
            sizes.push(r.size);
        }
        if !conns.contains(&r.conns) {
            conns.push(r.conns);
        }
    }
    sizes.sort_unstable();
    conns.sort_unstable();
    let (cmin, cmax) = (
        conns.first().copied().unwrap_or(1) as f64,
        conns.last().copied().unwrap_or(1) as f64,
    );

    let width = MARGIN_L + 2.0 * PANEL_W + GAP_X + 20.0 + LEGEND_W;
    let height = MARGIN_T + sizes.len().max(1) as f64 * (PANEL_H + GAP_Y);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(
        s,
        "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{MARGIN_L}\" y=\"20\" font-size=\"15\">cport bench: echo servers \
         under cport load (connections on a log scale)</text>"
    );
    for (row_i, &size) in sizes.iter().enumerate() {
        for (col_i, m) in METRICS.iter().enumerate() {
            let x0 = MARGIN_L + col_i as f64 * (PANEL_W + GAP_X);
            let y0 = MARGIN_T + row_i as f64 * (PANEL_H + GAP_Y) + 20.0;
            panel(
                &mut s,
                rows,
                &servers,
                size,
                m,
                (x0, y0),
                (cmin, cmax),
                &conns,
            );
        }
    }
    // Legend.
    let lx = MARGIN_L + 2.0 * PANEL_W + GAP_X + 20.0;
    for (i, name) in servers.iter().enumerate() {
        let y = MARGIN_T + 30.0 + i as f64 * 18.0;
        let colour = COLOURS[i % COLOURS.len()];
        let _ = writeln!(
            s,
            "<line x1=\"{lx}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{colour}\" \
             stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{}</text>",
            lx + 20.0,
            lx + 26.0,
            y + 4.0,
            xml_escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[allow(clippy::too_many_arguments)]
fn panel(
    s: &mut String,
    rows: &[Row],
    servers: &[&str],
    size: u32,
    m: &Metric,
    (x0, y0): (f64, f64),
    (cmin, cmax): (f64, f64),
    conns: &[u32],
) {
    let points = |server: &str| -> Vec<(f64, f64)> {
        let mut p: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.server == server && r.size == size)
            .filter_map(|r| (m.value)(r).map(|v| (f64::from(r.conns), v)))
            .filter(|(_, v)| v.is_finite() && (!m.log_y || *v > 0.0))
            .collect();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        p
    };
    let all: Vec<f64> = servers
        .iter()
        .flat_map(|sv| points(sv))
        .map(|(_, v)| v)
        .collect();
    let (vmin, vmax) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (vmin, vmax) = if all.is_empty() {
        (1.0, 10.0)
    } else {
        (vmin, vmax)
    };
    let (vmin, vmax, ticks) = y_scale(vmin, vmax, m.log_y);
    let xa = Axis::new(cmin, cmax, true, x0 + 10.0, x0 + PANEL_W - 10.0);
    let ya = Axis::new(vmin, vmax, m.log_y, y0 + PANEL_H, y0);
    let _ = writeln!(
        s,
        "<g class=\"panel\"><text x=\"{x0}\" y=\"{}\" font-size=\"13\">{} — {size} B messages\
         </text><rect x=\"{x0}\" y=\"{y0}\" width=\"{PANEL_W}\" height=\"{PANEL_H}\" \
         fill=\"none\" stroke=\"#999\"/>",
        y0 - 6.0,
        xml_escape(m.title)
    );
    for &c in conns {
        let x = xa.at(f64::from(c));
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{y0}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#eee\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{c}</text>",
            y0 + PANEL_H,
            y0 + PANEL_H + 16.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">connections</text>",
        x0 + PANEL_W / 2.0,
        y0 + PANEL_H + 34.0
    );
    for t in ticks {
        let y = ya.at(t);
        let _ = writeln!(
            s,
            "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 + PANEL_W,
            x0 - 4.0,
            y + 4.0,
            short(t)
        );
    }
    for (i, server) in servers.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts = points(server);
        let coords: Vec<String> = pts
            .iter()
            .map(|&(c, v)| format!("{:.1},{:.1}", xa.at(c), ya.at(v)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline class=\"series\" data-server=\"{}\" fill=\"none\" stroke=\"{colour}\" \
             stroke-width=\"2\" points=\"{}\"/>",
            xml_escape(server),
            coords.join(" ")
        );
        for &(c, v) in &pts {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                xa.at(c),
                ya.at(v)
            );
        }
    }
    s.push_str("</g>\n");
}

/// The y axis for values in `lo..=hi`: its ends and grid values. Linear
/// axes start at 0 and step by 1, 2 or 5 × 10ⁿ; log axes span whole
/// decades, gridded at 1, 2 and 5 × 10ⁿ (only 10ⁿ past four decades).
fn y_scale(lo: f64, hi: f64, log: bool) -> (f64, f64, Vec<f64>) {
    if log {
        let a = lo.max(1e-9).log10().floor() as i32;
        let mut b = hi.max(1e-9).log10().ceil() as i32;
        if b <= a {
            b = a + 1;
        }
        let steps: &[f64] = if b - a > 4 { &[1.0] } else { &[1.0, 2.0, 5.0] };
        let mut t: Vec<f64> = (a..b)
            .flat_map(|e| steps.iter().map(move |m| m * 10f64.powi(e)))
            .collect();
        t.push(10f64.powi(b));
        (10f64.powi(a), 10f64.powi(b), t)
    } else {
        let raw = (hi.max(1e-9) * 1.05) / 6.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * mag);
        let n = (hi.max(1e-9) * 1.05 / step).ceil().max(1.0) as u32;
        let t: Vec<f64> = (0..=n).map(|i| f64::from(i) * step).collect();
        (0.0, f64::from(n) * step, t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(server: &str, conns: u32, size: u32, status: Status, errors: u64) -> Row {
        let mut r = Row::new(server, "-", conns, size);
        r.status = status;
        if status != Status::Skipped && status != Status::Failed {
            r.messages = Some(1000);
            r.msgs_per_s = Some(1000.0 * f64::from(conns));
            r.mb_per_s = Some(0.128);
            r.p50_us = Some(20.0);
            r.p99_us = Some(150.0 + f64::from(conns));
            r.cpu_us_per_msg = Some(3.25);
            r.peak_threads = Some(2);
            r.peak_rss_kib = Some(2048);
            r.errors = Some(errors);
        }
        r
    }

    #[test]
    fn csv_rows_have_every_column_and_quote_notes() {
        let mut r = row("epoll", 50, 128, Status::Errors, 3);
        r.note = "first: connection 7, \"closed\"".into();
        let line = csv_row(&r);
        assert_eq!(
            line,
            "epoll,-,50,128,1000,50000.0,0.128,20.0,200.0,3.250,,2,2048,3,errors,\
             \"first: connection 7, \"\"closed\"\"\""
        );
        assert_eq!(
            CSV_HEADER.split(',').count(),
            csv_row(&row("x", 1, 1, Status::Ok, 0)).split(',').count()
        );
        let skipped = csv_row(&row("port-uring", 1, 128, Status::Skipped, 0));
        assert_eq!(skipped, "port-uring,-,1,128,,,,,,,,,,,skipped,");
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
            "| epoll | - | 1 | 128 | 1000 | 0.13 | 20.0 | 151 | 3.25 | n/a | 2 | 2.0 MiB | 0 |"
        );
        assert!(lines[3].ends_with("| failed |"), "{}", lines[3]);
        assert!(lines[4].starts_with("| a\\|b |"), "{}", lines[4]);
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
            .starts_with("5000 conns, 128 B: errors (3976 errors)"));
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

    #[test]
    fn the_chart_is_svg_with_one_line_per_server_and_panel() {
        let rows = vec![
            row("epoll", 1, 128, Status::Ok, 0),
            row("epoll", 50, 128, Status::Ok, 0),
            row("<b&\"q\">", 1, 128, Status::Ok, 0),
            row("<b&\"q\">", 50, 128, Status::Failed, 0),
            row("epoll", 1, 4096, Status::Ok, 0),
        ];
        let svg = svg_chart(&rows);
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        // 2 servers × 2 metrics × 2 sizes.
        assert_eq!(svg.matches("<polyline ").count(), 8);
        assert_eq!(svg.matches("<g class=\"panel\">").count(), 4);
        assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
        assert!(!svg.contains("<b&"), "the name is escaped");
        assert!(svg.contains("&lt;b&amp;&quot;q&quot;&gt;"));
        // The failed run has no point: the escaped server has one per panel
        // at 128 B, none at 4096 B; epoll two, then one.
        assert_eq!(svg.matches("<circle ").count(), 2 * (2 + 1) + 2);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn axes_have_round_ticks_covering_the_values() {
        let (lo, hi, t) = y_scale(9800.0, 25470.0, false);
        assert_eq!((lo, t[1]), (0.0, 5000.0));
        assert!((25470.0..=30000.0).contains(&hi), "{hi}");
        assert_eq!(*t.last().unwrap(), hi);
        let (lo, hi, t) = y_scale(2324.0, 5734.0, true);
        assert_eq!((lo, hi), (1000.0, 10000.0));
        assert_eq!(t, [1000.0, 2000.0, 5000.0, 10000.0]);
        let (lo, hi, t) = y_scale(20.0, 2.0e6, true);
        assert_eq!((lo, hi, t.len()), (10.0, 1e7, 7));
        let (lo, hi, _) = y_scale(100.0, 100.0, true);
        assert!(lo <= 100.0 && hi > 100.0);
    }

    #[test]
    fn a_chart_of_one_point_or_none_is_still_drawn() {
        let one = svg_chart(&[row("epoll", 8, 128, Status::Ok, 0)]);
        assert!(!one.contains("NaN"));
        assert_eq!(one.matches("<circle ").count(), 2);
        let none = svg_chart(&[row("select", 8, 128, Status::Skipped, 0)]);
        assert!(!none.contains("NaN") && none.contains("<polyline "));
    }
}
