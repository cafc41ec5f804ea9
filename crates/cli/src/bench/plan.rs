//! What `cport bench` will run: the servers, the cells (connections,
//! message size, messages in flight), the rounds, the timing, where the
//! record goes. Pure: every mistake in the arguments is a [`Usage`] error
//! of one line.

use std::path::PathBuf;
use std::time::Duration;

use crate::args::BenchArgs;
use crate::Usage;

use super::server::{self, Peer, Server};

/// One point of the matrix: `conns` connections each keeping `depth`
/// messages of `size` bytes in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cell {
    pub conns: u32,
    pub size: u32,
    pub depth: u32,
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} conns × {} B, depth {}",
            self.conns, self.size, self.depth
        )
    }
}

/// A comma-separated list of whole numbers in `min..=max`, sorted, each
/// once.
pub fn parse_list(flag: &str, s: &str, min: u32, max: u32) -> Result<Vec<u32>, Usage> {
    let mut v = Vec::new();
    for item in s.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(Usage(format!(
                "{flag} {s:?}: empty item in the list (expected numbers separated by commas)"
            )));
        }
        let n: u32 = crate::args::count(item, u64::from(min), u64::from(max))
            .map_err(|e| Usage(format!("{flag}: {e}")))?;
        v.push(n);
    }
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// Where the record goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutDir {
    /// `--out DIR`.
    Given(PathBuf),
    /// `bench/runs/<UTC date>/models` under the current directory
    /// (`-<HHMMSS>` appended if it exists).
    Dated,
    /// A new directory in the system's temporary directory (`--quick`).
    Temp,
}

/// `--cells 50x128,500x4096x16`: each `CONNSxSIZE[xDEPTH]`, `depth` where
/// a cell names none; in the order given, each once.
pub fn parse_cells(s: &str, depth: u32) -> Result<Vec<Cell>, Usage> {
    let mut v: Vec<Cell> = Vec::new();
    for item in s.split(',').map(str::trim) {
        let bad = |why: &str| {
            Usage(format!(
                "--cells: {item:?} {why} (expected CONNSxSIZE or CONNSxSIZExDEPTH, e.g. \
                 500x4096x16)"
            ))
        };
        let parts: Vec<&str> = item.split('x').collect();
        if item.is_empty() || !(2..=3).contains(&parts.len()) {
            return Err(bad("is not a cell"));
        }
        let num = |i: usize, what: &str, max: u32| -> Result<u32, Usage> {
            match parts[i].parse::<u32>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(bad(&format!("has no valid {what} (1 to {max})"))),
            }
        };
        let cell = Cell {
            conns: num(0, "connection count", MAX_CONNS)?,
            size: num(1, "size", MAX_SIZE)?,
            depth: if parts.len() == 3 {
                num(2, "depth", MAX_DEPTH)?
            } else {
                depth
            },
        };
        if !v.contains(&cell) {
            v.push(cell);
        }
    }
    Ok(v)
}

/// Everything a run of `cport bench` does, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub servers: Vec<Server>,
    /// Servers of the list (the default's or a group's) that cannot run on
    /// this system, each with the reason: left out of the runs.
    pub skipped: Vec<(Server, String)>,
    pub cells: Vec<Cell>,
    pub rounds: u32,
    pub threads: u32,
    /// `--buffer-size`, given to every server (all take it).
    pub buffer_size: Option<u32>,
    pub pinned: bool,
    pub costs: bool,
    /// The server the others are compared with.
    pub reference: Server,
    pub duration: Duration,
    pub warmup: Duration,
    pub out: OutDir,
    pub quick: bool,
}

/// The default matrix (the issue's).
pub const CONNS: &str = "1,50,500,5000";
pub const SIZES: &str = "128,4096";
/// `--quick`: two cells per server, short periods, so that the ten
/// models finish within two minutes on two cores.
pub const QUICK_CONNS: &str = "1,50";
pub const QUICK_SIZES: &str = "128";
pub const QUICK_DURATION: Duration = Duration::from_secs(1);
pub const QUICK_WARMUP: Duration = Duration::from_millis(400);
/// Shorter measured periods hold too few of /proc's 10 ms clock ticks to
/// give a CPU figure.
pub const MIN_DURATION: Duration = Duration::from_millis(100);
/// `cport load`'s own limits.
const MAX_CONNS: u32 = 100_000;
const MAX_SIZE: u32 = 64 << 20;
const MAX_DEPTH: u32 = 4096;

impl Plan {
    pub fn from_args(a: &BenchArgs) -> Result<Plan, Usage> {
        let listed = match &a.servers {
            Some(s) => server::parse_servers(s)?,
            None => Server::models(),
        };
        let mut servers = Vec::new();
        let mut skipped = Vec::new();
        for s in listed {
            match s.unavailable() {
                Some(why) => skipped.push((s, why)),
                None => servers.push(s),
            }
        }
        if servers.is_empty() {
            let why: Vec<String> = skipped.iter().map(|(_, w)| w.clone()).collect();
            return Err(Usage(format!(
                "no server of --servers can run here: {}",
                why.join("; ")
            )));
        }
        #[cfg(windows)]
        if a.costs {
            return Err(Usage(super::costs::UNAVAILABLE.into()));
        }
        let (conns, sizes, duration, warmup) = if a.quick {
            (QUICK_CONNS, QUICK_SIZES, QUICK_DURATION, QUICK_WARMUP)
        } else {
            (CONNS, SIZES, Duration::from_secs(5), Duration::from_secs(1))
        };
        let cells = match &a.cells {
            Some(c) => parse_cells(c, a.depth)?,
            None => {
                let conns =
                    parse_list("--conns", a.conns.as_deref().unwrap_or(conns), 1, MAX_CONNS)?;
                let sizes =
                    parse_list("--sizes", a.sizes.as_deref().unwrap_or(sizes), 1, MAX_SIZE)?;
                conns
                    .iter()
                    .flat_map(|&c| {
                        sizes.iter().map(move |&z| Cell {
                            conns: c,
                            size: z,
                            depth: a.depth,
                        })
                    })
                    .collect()
            }
        };
        let duration = a.duration.unwrap_or(duration);
        if duration < MIN_DURATION {
            return Err(Usage(format!(
                "--duration {duration:?} is too short to measure CPU time (at least {MIN_DURATION:?})"
            )));
        }
        let reference = match &a.reference {
            Some(name) => match Server::by_name(name) {
                Some(s) if servers.contains(&s) => s,
                _ => {
                    return Err(Usage(format!(
                        "--reference {name:?} is not one of the servers run ({})",
                        servers
                            .iter()
                            .map(|s| s.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            },
            None if servers.contains(&Server::Peer(Peer::Tokio)) => Server::Peer(Peer::Tokio),
            None => servers[0],
        };
        let out = match (&a.out, a.quick) {
            (Some(d), _) => OutDir::Given(d.clone()),
            (None, true) => OutDir::Temp,
            (None, false) => OutDir::Dated,
        };
        Ok(Plan {
            servers,
            skipped,
            cells,
            rounds: a.repeat,
            threads: a.threads,
            buffer_size: a.buffer_size,
            pinned: !a.unpinned,
            costs: a.costs,
            reference,
            duration,
            warmup: a.warmup.unwrap_or(warmup),
            out,
            quick: a.quick,
        })
    }

    /// Measured runs (skipped ones included).
    pub fn runs(&self) -> usize {
        self.servers.len() * self.cells.len() * self.rounds as usize
    }

    /// Runs that count costs (`--costs`).
    pub fn cost_runs(&self) -> usize {
        if self.costs {
            self.servers.len() * self.cells.len()
        } else {
            0
        }
    }
}

/// The part of load's measured period in which the server is sampled: it
/// starts `head` after the warm-up ends and stops `tail` before the period
/// does, so that neither the warm-up nor the last echoes fall inside. The
/// first half is for CPU time, the second for counting system calls.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// From the moment the load has opened its connections (its clock
    /// starts then).
    pub cpu_from: Duration,
    pub perf_from: Duration,
    pub perf_to: Duration,
}

impl Window {
    pub fn new(warmup: Duration, duration: Duration) -> Window {
        // bench/serve.sh's margins (0.1 s, 0.15 s), shrunk for short periods.
        let head = Duration::from_millis(100).min(duration / 10);
        let tail = Duration::from_millis(150).min(duration * 15 / 100);
        let from = warmup + head;
        let to = warmup + duration - tail;
        Window {
            cpu_from: from,
            perf_from: from + (to - from) / 2,
            perf_to: to,
        }
    }
}

/// Year, month, day of a time in seconds since the Unix epoch (UTC), and
/// `HHMMSS`: the record's directory name needs no time-zone library.
pub fn utc_date(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BenchArgs {
        BenchArgs {
            servers: None,
            conns: None,
            sizes: None,
            depth: 1,
            cells: None,
            repeat: 1,
            threads: 1,
            buffer_size: None,
            unpinned: false,
            costs: false,
            reference: None,
            duration: None,
            warmup: None,
            out: None,
            quick: false,
        }
    }

    fn cell(conns: u32, size: u32, depth: u32) -> Cell {
        Cell { conns, size, depth }
    }

    #[test]
    fn lists_are_sorted_deduplicated_and_checked() {
        assert_eq!(
            parse_list("--conns", "50, 1,50", 1, 10).unwrap_err().0,
            "--conns: 50 is out of range: give from 1 to 10"
        );
        // A number too large for any integer type is out of range too,
        // not "not a whole number".
        assert_eq!(
            parse_list("--sizes", "99999999999999999999", 1, 10)
                .unwrap_err()
                .0,
            "--sizes: 99999999999999999999 is out of range: give from 1 to 10"
        );
        assert_eq!(parse_list("--conns", "5,1,5", 1, 10).unwrap(), [1, 5]);
        let zero = parse_list("--conns", "0,50", 1, 100).unwrap_err().0;
        assert!(zero.contains("--conns") && zero.contains('0'), "{zero}");
        assert!(parse_list("--conns", "", 1, 100)
            .unwrap_err()
            .0
            .contains("empty"));
        assert!(parse_list("--sizes", "128,", 1, 100).is_err());
        let nan = parse_list("--sizes", "1k", 1, 100).unwrap_err().0;
        assert!(nan.contains("\"1k\""), "{nan}");
    }

    #[test]
    fn cells_take_their_own_depth_or_the_default() {
        assert_eq!(
            parse_cells("50x128, 500x4096x16,50x65536x4,50x128", 2).unwrap(),
            [cell(50, 128, 2), cell(500, 4096, 16), cell(50, 65536, 4)]
        );
        for bad in [
            "",
            "50",
            "50x",
            "x128",
            "0x128",
            "50x128x0",
            "50x128x16x2",
            "50*128",
            "50x1k",
        ] {
            let e = parse_cells(bad, 1).unwrap_err().0;
            assert!(e.starts_with("--cells") && !e.contains('\n'), "{bad}: {e}");
        }
        assert!(parse_cells("50x128x5000", 1)
            .unwrap_err()
            .0
            .contains("depth"));
    }

    #[test]
    fn defaults_quick_and_overrides() {
        let p = Plan::from_args(&args()).unwrap();
        assert_eq!(p.cells.len(), 8);
        assert_eq!(p.cells[0], cell(1, 128, 1));
        assert_eq!(p.cells[7], cell(5000, 4096, 1));
        assert_eq!(p.duration, Duration::from_secs(5));
        assert_eq!(p.out, OutDir::Dated);
        assert_eq!(p.servers, Server::models());
        assert_eq!(
            (p.rounds, p.threads, p.pinned, p.costs),
            (1, 1, true, false)
        );
        assert_eq!(p.reference, p.servers[0]);
        assert_eq!((p.runs(), p.cost_runs()), (11 * 8, 0));

        let q = Plan::from_args(&BenchArgs {
            quick: true,
            ..args()
        })
        .unwrap();
        assert_eq!(q.cells, [cell(1, 128, 1), cell(50, 128, 1)]);
        assert_eq!(q.out, OutDir::Temp);
        assert!(q.duration + q.warmup <= Duration::from_secs(2));

        let o = Plan::from_args(&BenchArgs {
            quick: true,
            conns: Some("8".into()),
            depth: 4,
            out: Some("x".into()),
            duration: Some(Duration::from_millis(300)),
            ..args()
        })
        .unwrap();
        assert_eq!(o.cells, [cell(8, 128, 4)]);
        assert_eq!(o.out, OutDir::Given("x".into()));
        assert_eq!(o.duration, Duration::from_millis(300));

        let short = Plan::from_args(&BenchArgs {
            duration: Some(Duration::from_millis(10)),
            ..args()
        });
        assert!(short.unwrap_err().0.contains("--duration"));
    }

    #[test]
    fn a_buffer_size_is_kept_for_every_server_list() {
        for servers in [
            "port-uring,shards,peers",
            "port-uring,select,epoll",
            "models",
        ] {
            let p = Plan::from_args(&BenchArgs {
                servers: Some(servers.into()),
                buffer_size: Some(65536),
                ..args()
            })
            .unwrap();
            assert_eq!(p.buffer_size, Some(65536), "{servers}");
        }
        let p = Plan::from_args(&BenchArgs {
            servers: Some("port-uring,select".into()),
            ..args()
        })
        .unwrap();
        assert_eq!(p.buffer_size, None);
    }

    #[test]
    fn rounds_costs_and_the_reference() {
        let p = Plan::from_args(&BenchArgs {
            servers: Some("port-uring,peers".into()),
            cells: Some("50x128,500x4096x16".into()),
            repeat: 3,
            costs: true,
            unpinned: true,
            threads: 2,
            ..args()
        })
        .unwrap();
        assert_eq!(p.reference, Server::Peer(Peer::Tokio));
        assert_eq!((p.runs(), p.cost_runs()), (4 * 2 * 3, 4 * 2));
        assert!(!p.pinned);
        assert_eq!(p.threads, 2);

        let p = Plan::from_args(&BenchArgs {
            servers: Some("epoll-echo,port".into()),
            ..args()
        })
        .unwrap();
        assert_eq!(p.reference, Server::PortUring, "the first server");
        let p = Plan::from_args(&BenchArgs {
            servers: Some("peers".into()),
            reference: Some("uring-echo".into()),
            ..args()
        })
        .unwrap();
        assert_eq!(p.reference, Server::Peer(Peer::Uring));
        let e = Plan::from_args(&BenchArgs {
            servers: Some("peers".into()),
            reference: Some("port-uring".into()),
            ..args()
        })
        .unwrap_err()
        .0;
        assert!(e.contains("--reference") && e.contains("tokio-echo"), "{e}");
    }

    #[test]
    fn the_window_lies_inside_the_measured_period_and_is_split_in_two() {
        for (w, d) in [(1000, 5000), (100, 300), (0, 100)] {
            let (warm, dur) = (Duration::from_millis(w), Duration::from_millis(d));
            let win = Window::new(warm, dur);
            assert!(win.cpu_from > warm, "{win:?}");
            assert!(win.perf_to < warm + dur, "{win:?}");
            assert_eq!(win.perf_from - win.cpu_from, win.perf_to - win.perf_from);
        }
        let win = Window::new(Duration::from_secs(1), Duration::from_secs(5));
        assert_eq!(win.cpu_from, Duration::from_millis(1100));
        assert_eq!(win.perf_to, Duration::from_millis(5850));
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_date(0), ("1970-01-01".into(), "000000".into()));
        // 2024-02-29 23:59:58, a leap day.
        assert_eq!(
            utc_date(1_709_251_198),
            ("2024-02-29".into(), "235958".into())
        );
        assert_eq!(utc_date(951_782_400).0, "2000-02-29");
    }
}
