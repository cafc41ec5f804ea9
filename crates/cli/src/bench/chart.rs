//! chart.svg: for each message size and depth, three panels against
//! connections (log scale): messages/s, p99 latency, and the figure of
//! merit, the server's CPU µs per message; below them, the most
//! connections each server held. A point is the median of the rounds, its
//! whisker their spread.
//!
//! Eleven model rows and three peers must stay apart: the first ten
//! servers each have their own colour (no two of one hue: purple and pink,
//! green and olive were mistaken for each other), their own marker, and
//! the second five dashed lines and hollow markers; from the eleventh on
//! the colours come round again, each with another marker and the other
//! line than the first time. At one connection count the servers' points
//! are spread sideways so a cluster of ten does not pile up.

use std::fmt::Write as _;

use super::report::{Held, Spread, Stat};

const COLOURS: [&str; 10] = [
    "#1f77b4", // blue
    "#e6550d", // orange
    "#2ca02c", // green
    "#d62728", // red
    "#6a3d9a", // dark purple
    "#8c564b", // brown
    "#17becf", // cyan
    "#222222", // black
    "#e7298a", // magenta
    "#8a8a8a", // grey
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Marker {
    Circle,
    Square,
    TriangleUp,
    Diamond,
    TriangleDown,
}

const MARKERS: [Marker; 5] = [
    Marker::Circle,
    Marker::Square,
    Marker::TriangleUp,
    Marker::Diamond,
    Marker::TriangleDown,
];

/// How series `i` is drawn.
struct Style {
    colour: &'static str,
    marker: Marker,
    hollow: bool,
}

fn style(i: usize) -> Style {
    // Each time round the colours, the markers shift by one and the lines
    // swap: series i + 10 differs from series i in both.
    let round = i / COLOURS.len();
    Style {
        colour: COLOURS[i % COLOURS.len()],
        marker: MARKERS[(i + round) % MARKERS.len()],
        hollow: (i / MARKERS.len() + round) % 2 == 1,
    }
}

impl Style {
    fn dash(&self) -> &'static str {
        if self.hollow {
            " stroke-dasharray=\"6 3\""
        } else {
            ""
        }
    }

    fn marker(&self, s: &mut String, x: f64, y: f64) {
        let r = 4.0;
        let fill = if self.hollow { "white" } else { self.colour };
        let paint = format!(
            "fill=\"{fill}\" stroke=\"{}\" stroke-width=\"1.5\"",
            self.colour
        );
        let poly = |pts: &[(f64, f64)]| {
            let p: Vec<String> = pts
                .iter()
                .map(|(dx, dy)| format!("{:.1},{:.1}", x + dx, y + dy))
                .collect();
            format!(
                "<polygon class=\"marker\" points=\"{}\" {paint}/>",
                p.join(" ")
            )
        };
        let el = match self.marker {
            Marker::Circle => {
                format!("<circle class=\"marker\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{r}\" {paint}/>")
            }
            Marker::Square => poly(&[(-r, -r), (r, -r), (r, r), (-r, r)]),
            Marker::TriangleUp => poly(&[(0.0, -r - 1.0), (r + 1.0, r), (-r - 1.0, r)]),
            Marker::Diamond => poly(&[
                (0.0, -r - 1.0),
                (r + 1.0, 0.0),
                (0.0, r + 1.0),
                (-r - 1.0, 0.0),
            ]),
            Marker::TriangleDown => poly(&[(0.0, r + 1.0), (r + 1.0, -r), (-r - 1.0, -r)]),
        };
        s.push_str(&el);
        s.push('\n');
    }
}

const PANEL_W: f64 = 340.0;
const PANEL_H: f64 = 230.0;
const MARGIN_L: f64 = 70.0;
const MARGIN_T: f64 = 40.0;
const GAP_X: f64 = 80.0;
const GAP_Y: f64 = 80.0;
const LEGEND_W: f64 = 170.0;
const BAR_H: f64 = 20.0;
/// The widest sideways spread of one connection count's points.
const CLUSTER_W: f64 = 56.0;

/// One plotted quantity.
struct Metric {
    title: &'static str,
    value: fn(&Stat) -> Option<Spread>,
    /// Latencies span orders of magnitude between models: log scale.
    log_y: bool,
}

const METRICS: [Metric; 3] = [
    Metric {
        title: "messages/s",
        value: |s| s.msgs_per_s,
        log_y: false,
    },
    Metric {
        title: "p99 latency (µs, log scale)",
        value: |s| s.p99_us,
        log_y: true,
    },
    Metric {
        title: "server CPU µs per message",
        value: |s| s.cpu_us_per_msg,
        log_y: false,
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

/// The whole chart. Cells without a measured figure are left out of their
/// line; servers keep their style in every panel.
pub fn svg_chart(stats: &[Stat], held: &[Held]) -> String {
    let mut servers: Vec<&str> = Vec::new();
    let mut groups: Vec<(u32, u32)> = Vec::new();
    let mut conns: Vec<u32> = Vec::new();
    for s in stats {
        if !servers.contains(&s.server.as_str()) {
            servers.push(&s.server);
        }
        if !groups.contains(&(s.cell.size, s.cell.depth)) {
            groups.push((s.cell.size, s.cell.depth));
        }
        if !conns.contains(&s.cell.conns) {
            conns.push(s.cell.conns);
        }
    }
    for h in held {
        if !servers.contains(&h.server.as_str()) {
            servers.push(&h.server);
        }
    }
    groups.sort_unstable();
    conns.sort_unstable();
    let span = (
        f64::from(conns.first().copied().unwrap_or(1)),
        f64::from(conns.last().copied().unwrap_or(1)),
    );

    let width = MARGIN_L + 3.0 * PANEL_W + 2.0 * GAP_X + 20.0 + LEGEND_W;
    let held_h = 40.0 + servers.len() as f64 * BAR_H;
    let height = MARGIN_T + groups.len() as f64 * (PANEL_H + GAP_Y) + held_h + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{MARGIN_L}\" y=\"20\" font-size=\"15\">cport bench: echo servers under cport \
         load (connections on a log scale; a point is the median of the rounds, its whisker \
         their range)</text>"
    );
    for (row_i, &(size, depth)) in groups.iter().enumerate() {
        for (col_i, m) in METRICS.iter().enumerate() {
            let x0 = MARGIN_L + col_i as f64 * (PANEL_W + GAP_X);
            let y0 = MARGIN_T + row_i as f64 * (PANEL_H + GAP_Y) + 20.0;
            let group: Vec<&Stat> = stats
                .iter()
                .filter(|s| (s.cell.size, s.cell.depth) == (size, depth))
                .collect();
            let title = format!("{} — {size} B, depth {depth}", m.title);
            panel(&mut s, &group, &servers, m, &title, (x0, y0), span, &conns);
        }
    }
    let y0 = MARGIN_T + groups.len() as f64 * (PANEL_H + GAP_Y) + 20.0;
    held_panel(&mut s, held, &servers, y0);
    legend(
        &mut s,
        &servers,
        MARGIN_L + 3.0 * PANEL_W + 2.0 * GAP_X + 20.0,
    );
    s.push_str("</svg>\n");
    s
}

fn legend(s: &mut String, servers: &[&str], lx: f64) {
    for (i, name) in servers.iter().enumerate() {
        let st = style(i);
        let y = MARGIN_T + 30.0 + i as f64 * 20.0;
        let _ = writeln!(
            s,
            "<g class=\"legend\"><line x1=\"{lx}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{}\" \
             stroke-width=\"2\"{}/>",
            lx + 28.0,
            st.colour,
            st.dash()
        );
        st.marker(s, lx + 14.0, y);
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\">{}</text></g>",
            lx + 34.0,
            y + 4.0,
            xml_escape(name)
        );
    }
}

/// Sideways offset of server `i` of `n` at one connection count.
fn dodge(i: usize, n: usize) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let step = (CLUSTER_W / (n - 1) as f64).min(8.0);
    (i as f64 - (n - 1) as f64 / 2.0) * step
}

#[allow(clippy::too_many_arguments)]
fn panel(
    s: &mut String,
    stats: &[&Stat],
    servers: &[&str],
    m: &Metric,
    title: &str,
    (x0, y0): (f64, f64),
    (cmin, cmax): (f64, f64),
    conns: &[u32],
) {
    let points = |server: &str| -> Vec<(f64, Spread)> {
        stats
            .iter()
            .filter(|st| st.server == server)
            .filter_map(|st| (m.value)(st).map(|v| (f64::from(st.cell.conns), v)))
            .filter(|(_, v)| v.min.is_finite() && v.max.is_finite() && (!m.log_y || v.min > 0.0))
            .collect()
    };
    let all: Vec<Spread> = servers
        .iter()
        .flat_map(|sv| points(sv))
        .map(|p| p.1)
        .collect();
    let (vmin, vmax) = if all.is_empty() {
        (1.0, 10.0)
    } else {
        all.iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v.min), b.max(v.max))
            })
    };
    let (vmin, vmax, ticks) = y_scale(vmin, vmax, m.log_y);
    // Room at both ends for the spread-out clusters.
    let pad = CLUSTER_W / 2.0 + 10.0;
    let xa = Axis::new(cmin, cmax, true, x0 + pad, x0 + PANEL_W - pad);
    let ya = Axis::new(vmin, vmax, m.log_y, y0 + PANEL_H, y0);
    let _ = writeln!(
        s,
        "<g class=\"panel\"><text x=\"{x0}\" y=\"{}\" font-size=\"13\">{}</text>\
         <rect x=\"{x0}\" y=\"{y0}\" width=\"{PANEL_W}\" height=\"{PANEL_H}\" fill=\"none\" \
         stroke=\"#999\"/>",
        y0 - 6.0,
        xml_escape(title)
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
        let st = style(i);
        let off = dodge(i, servers.len());
        let mut pts = points(server);
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let at = |c: f64, v: f64| (xa.at(c) + off, ya.at(v));
        let coords: Vec<String> = pts
            .iter()
            .map(|&(c, v)| {
                let (x, y) = at(c, v.median);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = writeln!(
            s,
            "<polyline class=\"series\" data-server=\"{}\" fill=\"none\" stroke=\"{}\" \
             stroke-width=\"1.5\"{} points=\"{}\"/>",
            xml_escape(server),
            st.colour,
            st.dash(),
            coords.join(" ")
        );
        for &(c, v) in &pts {
            let (x, y) = at(c, v.median);
            if v.max > v.min {
                let (_, lo) = at(c, v.min);
                let (_, hi) = at(c, v.max);
                let _ = writeln!(
                    s,
                    "<path class=\"whisker\" d=\"M{x:.1},{lo:.1}V{hi:.1}M{:.1},{lo:.1}h5M{:.1},\
                     {hi:.1}h5\" stroke=\"{}\" stroke-width=\"1\" fill=\"none\"/>",
                    x - 2.5,
                    x - 2.5,
                    st.colour
                );
            }
            st.marker(s, x, y);
        }
    }
    s.push_str("</g>\n");
}

/// Horizontal bars: the most connections each server held, on a log scale
/// of the counts tried.
fn held_panel(s: &mut String, held: &[Held], servers: &[&str], y0: f64) {
    let x0 = MARGIN_L + 90.0;
    let w = 3.0 * PANEL_W + 2.0 * GAP_X - 90.0;
    let tried: Vec<u32> = {
        let mut t: Vec<u32> = held.iter().flat_map(|h| h.tried.iter().copied()).collect();
        t.sort_unstable();
        t.dedup();
        t
    };
    let lo = f64::from(tried.first().copied().unwrap_or(1)).min(1.0);
    let hi = f64::from(tried.last().copied().unwrap_or(1)).max(lo * 10.0);
    // Bars start at the axis' left end, one decade below the least count,
    // so the least count still has a bar.
    let xa = Axis::new(lo / 10.0, hi, true, x0, x0 + w);
    let h = servers.len() as f64 * BAR_H;
    let _ = writeln!(
        s,
        "<g class=\"held\"><text x=\"{MARGIN_L}\" y=\"{}\" font-size=\"13\">most connections \
         held (largest count run without an error)</text>",
        y0 - 6.0
    );
    for &c in &tried {
        let x = xa.at(f64::from(c));
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{y0}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{c}</text>",
            y0 + h,
            y0 + h + 16.0
        );
    }
    for (i, server) in servers.iter().enumerate() {
        let st = style(i);
        let y = y0 + i as f64 * BAR_H;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 - 6.0,
            y + BAR_H * 0.7,
            xml_escape(server)
        );
        let most = held
            .iter()
            .find(|h| h.server == *server)
            .and_then(|h| h.most);
        match most {
            Some(m) => {
                let _ = writeln!(
                    s,
                    "<rect class=\"bar\" x=\"{x0}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
                     fill=\"{}\" fill-opacity=\"{}\" stroke=\"{}\"/>\
                     <text x=\"{:.1}\" y=\"{:.1}\">{m}</text>",
                    y + 3.0,
                    xa.at(f64::from(m)) - x0,
                    BAR_H - 6.0,
                    st.colour,
                    if st.hollow { "0.35" } else { "0.85" },
                    st.colour,
                    xa.at(f64::from(m)) + 4.0,
                    y + BAR_H * 0.7
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "<text x=\"{}\" y=\"{:.1}\" fill=\"#999\">none</text>",
                    x0 + 4.0,
                    y + BAR_H * 0.7
                );
            }
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
    use super::super::report::tests::row;
    use super::super::report::{most_conns_held, stats, Status};
    use super::*;

    #[test]
    fn ten_series_differ_in_colour_and_in_marker_or_line() {
        let styles: Vec<Style> = (0..10).map(style).collect();
        for (i, a) in styles.iter().enumerate() {
            for b in &styles[i + 1..] {
                assert_ne!(a.colour, b.colour);
                assert!(a.marker != b.marker || a.hollow != b.hollow);
            }
        }
        // The pairs once mistaken for each other are gone.
        for c in ["#9467bd", "#e377c2", "#bcbd22"] {
            assert!(!COLOURS.contains(&c), "{c}");
        }
    }

    #[test]
    fn past_ten_series_a_colour_returns_with_another_marker_and_line() {
        // Eleven model rows and three peers, with room to spare.
        let styles: Vec<Style> = (0..20).map(style).collect();
        for (i, a) in styles.iter().enumerate() {
            for (j, b) in styles.iter().enumerate().skip(i + 1) {
                if a.colour == b.colour {
                    assert!(
                        a.marker != b.marker && a.hollow != b.hollow,
                        "series {i} and {j}"
                    );
                }
            }
        }
        // The first ten are drawn as before.
        assert_eq!(style(0).marker, Marker::Circle);
        assert!(!style(0).hollow && style(5).hollow);
    }

    #[test]
    fn a_cluster_spreads_sideways_within_its_width() {
        let offs: Vec<f64> = (0..10).map(|i| dodge(i, 10)).collect();
        assert!(offs.windows(2).all(|w| w[1] - w[0] >= 6.0), "{offs:?}");
        assert!((offs[0] + offs[9]).abs() < 1e-9, "centred: {offs:?}");
        assert!(offs[9] - offs[0] <= CLUSTER_W + 1e-9);
        assert_eq!(dodge(0, 1), 0.0);
    }

    #[test]
    fn the_chart_has_three_panels_per_group_and_the_held_bars() {
        let mut rows = vec![
            row("epoll", 1, 128, Status::Ok, 0),
            row("epoll", 50, 128, Status::Ok, 0),
            row("<b&\"q\">", 1, 128, Status::Ok, 0),
            row("<b&\"q\">", 50, 128, Status::Failed, 0),
            row("epoll", 1, 4096, Status::Ok, 0),
        ];
        let mut again = row("epoll", 50, 128, Status::Ok, 0);
        again.round = 2;
        again.msgs_per_s = Some(1.0);
        rows.push(again);
        let svg = svg_chart(&stats(&rows), &most_conns_held(&rows));
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        // 2 servers × 3 metrics × 2 groups (128 B and 4096 B).
        assert_eq!(svg.matches("<polyline ").count(), 12);
        assert_eq!(svg.matches("<g class=\"panel\">").count(), 6);
        assert!(svg.contains("server CPU µs per message — 128 B, depth 1"));
        assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
        assert!(!svg.contains("<b&"), "the name is escaped");
        assert!(svg.contains("&lt;b&amp;&quot;q&quot;&gt;"));
        // Markers: epoll 2 + 1 per metric, the other server 1 at 128 B,
        // plus one per server in the legend.
        assert_eq!(svg.matches("class=\"marker\"").count(), 3 * (2 + 1 + 1) + 2);
        // Two rounds of epoll at 50 connections differ in messages/s only.
        assert_eq!(svg.matches("class=\"whisker\"").count(), 1);
        // Both held something.
        assert_eq!(svg.matches("class=\"bar\"").count(), 2);
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
        let rows = [row("epoll", 8, 128, Status::Ok, 0)];
        let one = svg_chart(&stats(&rows), &most_conns_held(&rows));
        assert!(!one.contains("NaN"));
        assert_eq!(one.matches("class=\"marker\"").count(), 3 + 1);
        let rows = [row("select", 8, 128, Status::Skipped, 0)];
        let none = svg_chart(&stats(&rows), &most_conns_held(&rows));
        assert!(!none.contains("NaN") && none.contains("<polyline "));
        assert!(none.contains(">none</text>"));
    }
}
