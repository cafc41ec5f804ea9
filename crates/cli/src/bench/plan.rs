//! What `cport bench` will run: the servers (rows), the matrix of
//! connections and sizes, the timing, where the record goes. Pure: every
//! mistake in the arguments is a [`Usage`] error of one line.

use std::path::PathBuf;
use std::time::Duration;

use cport_models::Model;

use crate::args::BenchArgs;
use crate::Usage;

/// One row of the comparison: a model's echo server as `cport serve`
/// runs it. The port model appears twice, once per backend.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Server {
    /// Any model but `port`, by `cport serve --model NAME`.
    Model(Model),
    /// `cport serve --model port --backend uring`.
    PortUring,
    /// `cport serve --model port --backend epoll`.
    PortEpoll,
}

impl Server {
    /// Every server, in the tutorials' order of the models.
    pub fn all() -> Vec<Server> {
        let mut v = Vec::new();
        for m in Model::ALL {
            if m == Model::Port {
                v.push(Server::PortUring);
                v.push(Server::PortEpoll);
            } else {
                v.push(Server::Model(m));
            }
        }
        v
    }

    /// The name of the row, in the table, the CSV and `--models`.
    pub fn name(self) -> &'static str {
        match self {
            Server::Model(m) => m.name(),
            Server::PortUring => "port-uring",
            Server::PortEpoll => "port-epoll",
        }
    }

    /// The arguments after `cport` that start this server on an ephemeral
    /// port. The port server is sized for the one core it is pinned to, as
    /// in bench/serve.sh: two workers, one running at a time.
    pub fn serve_args(self) -> Vec<String> {
        let mut a: Vec<String> = ["serve", "--port", "0", "--model"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let port = |backend: &str| {
            [
                "port",
                "--backend",
                backend,
                "--no-udp",
                "--workers",
                "2",
                "--concurrency",
                "1",
            ]
            .map(String::from)
        };
        match self {
            Server::PortUring => a.extend(port("uring")),
            Server::PortEpoll => a.extend(port("epoll")),
            Server::Model(Model::Callback) => {
                a.extend(["callback", "--backend", "auto"].map(String::from))
            }
            Server::Model(m) => a.push(m.name().to_string()),
        }
        a
    }

    /// Descriptors the server holds per connection: the event model adds
    /// an eventfd (its event object) to each socket.
    pub fn fds_per_conn(self) -> u64 {
        match self {
            Server::Model(Model::Event) => 2,
            _ => 1,
        }
    }
}

/// Names `--models` accepts, for the error message.
fn server_names() -> String {
    let mut names: Vec<&str> = Server::all().iter().map(|s| s.name()).collect();
    names.push("port");
    names.join(", ")
}

/// `--models a,b`: the servers named, in the canonical order, each once;
/// `port` stands for both port rows.
pub fn parse_models(s: &str) -> Result<Vec<Server>, Usage> {
    let mut wanted = Vec::new();
    for name in s.split(',').map(str::trim) {
        if name.is_empty() {
            return Err(Usage(format!(
                "--models {s:?}: empty name in the list (expected names separated by commas: {})",
                server_names()
            )));
        }
        let found: Vec<Server> = if name == "port" {
            vec![Server::PortUring, Server::PortEpoll]
        } else {
            Server::all()
                .into_iter()
                .filter(|sv| sv.name() == name)
                .collect()
        };
        if found.is_empty() {
            return Err(Usage(format!(
                "unknown model {name:?} in --models (expected one of: {})",
                server_names()
            )));
        }
        wanted.extend(found);
    }
    Ok(Server::all()
        .into_iter()
        .filter(|s| wanted.contains(s))
        .collect())
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
        let n: u32 = item
            .parse()
            .map_err(|_| Usage(format!("{flag}: {item:?} is not a whole number")))?;
        if !(min..=max).contains(&n) {
            return Err(Usage(format!(
                "{flag}: {n} is out of range (each must be from {min} to {max})"
            )));
        }
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

/// Everything a run of `cport bench` does, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub servers: Vec<Server>,
    pub conns: Vec<u32>,
    pub sizes: Vec<u32>,
    pub duration: Duration,
    pub warmup: Duration,
    pub out: OutDir,
    pub quick: bool,
}

/// The default matrix (the issue's).
pub const CONNS: &str = "1,50,500,5000";
pub const SIZES: &str = "128,4096";
/// `--quick`: two cells per server, short periods, so that the ten
/// servers finish within two minutes on two cores.
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

impl Plan {
    pub fn from_args(a: &BenchArgs) -> Result<Plan, Usage> {
        let servers = match &a.models {
            Some(s) => parse_models(s)?,
            None => Server::all(),
        };
        let (conns, sizes, duration, warmup) = if a.quick {
            (QUICK_CONNS, QUICK_SIZES, QUICK_DURATION, QUICK_WARMUP)
        } else {
            (CONNS, SIZES, Duration::from_secs(5), Duration::from_secs(1))
        };
        let conns = parse_list("--conns", a.conns.as_deref().unwrap_or(conns), 1, MAX_CONNS)?;
        let sizes = parse_list("--sizes", a.sizes.as_deref().unwrap_or(sizes), 1, MAX_SIZE)?;
        let duration = a.duration.unwrap_or(duration);
        if duration < MIN_DURATION {
            return Err(Usage(format!(
                "--duration {duration:?} is too short to measure CPU time (at least {MIN_DURATION:?})"
            )));
        }
        let out = match (&a.out, a.quick) {
            (Some(d), _) => OutDir::Given(d.clone()),
            (None, true) => OutDir::Temp,
            (None, false) => OutDir::Dated,
        };
        Ok(Plan {
            servers,
            conns,
            sizes,
            duration,
            warmup: a.warmup.unwrap_or(warmup),
            out,
            quick: a.quick,
        })
    }

    /// Runs in the matrix (skipped cells included).
    pub fn runs(&self) -> usize {
        self.servers.len() * self.conns.len() * self.sizes.len()
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
            models: None,
            conns: None,
            sizes: None,
            duration: None,
            warmup: None,
            out: None,
            quick: false,
        }
    }

    fn names(v: &[Server]) -> Vec<&'static str> {
        v.iter().map(|s| s.name()).collect()
    }

    #[test]
    fn every_model_is_a_row_and_port_is_two() {
        let all = names(&Server::all());
        assert_eq!(all.len(), Model::ALL.len() + 1);
        assert!(!all.contains(&"port"));
        for m in Model::ALL.iter().filter(|m| **m != Model::Port) {
            assert!(all.contains(&m.name()), "{m} missing");
        }
        assert_eq!(&all[all.len() - 2..], ["port-uring", "port-epoll"]);
    }

    #[test]
    fn models_are_parsed_in_canonical_order_with_port_meaning_both() {
        let v = parse_models("port,epoll, blocking,epoll").unwrap();
        assert_eq!(names(&v), ["blocking", "epoll", "port-uring", "port-epoll"]);
        assert_eq!(names(&parse_models("port-epoll").unwrap()), ["port-epoll"]);
    }

    #[test]
    fn unknown_and_empty_models_are_refused_by_name() {
        let e = parse_models("epoll,kqueue").unwrap_err().0;
        assert!(e.contains("\"kqueue\"") && e.contains("port-uring"), "{e}");
        assert!(!e.contains('\n'));
        let e = parse_models("epoll,,poll").unwrap_err().0;
        assert!(e.contains("empty"), "{e}");
        assert!(parse_models("").is_err());
    }

    #[test]
    fn lists_are_sorted_deduplicated_and_checked() {
        assert_eq!(
            parse_list("--conns", "50, 1,50", 1, 10).unwrap_err().0,
            "--conns: 50 is out of range (each must be from 1 to 10)"
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
    fn defaults_quick_and_overrides() {
        let p = Plan::from_args(&args()).unwrap();
        assert_eq!(p.conns, [1, 50, 500, 5000]);
        assert_eq!(p.sizes, [128, 4096]);
        assert_eq!(p.duration, Duration::from_secs(5));
        assert_eq!(p.out, OutDir::Dated);
        assert_eq!(p.runs(), 10 * 8);

        let q = Plan::from_args(&BenchArgs {
            quick: true,
            ..args()
        })
        .unwrap();
        assert_eq!(
            (q.conns.as_slice(), q.sizes.as_slice()),
            (&[1, 50][..], &[128][..])
        );
        assert_eq!(q.out, OutDir::Temp);
        assert!(q.duration + q.warmup <= Duration::from_secs(2));

        let o = Plan::from_args(&BenchArgs {
            quick: true,
            conns: Some("8".into()),
            out: Some("x".into()),
            duration: Some(Duration::from_millis(300)),
            ..args()
        })
        .unwrap();
        assert_eq!(o.conns, [8]);
        assert_eq!(o.out, OutDir::Given("x".into()));
        assert_eq!(o.duration, Duration::from_millis(300));

        let short = Plan::from_args(&BenchArgs {
            duration: Some(Duration::from_millis(10)),
            ..args()
        });
        assert!(short.unwrap_err().0.contains("--duration"));
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
    fn serve_arguments_name_the_model_and_size_the_port() {
        let a = Server::PortUring.serve_args().join(" ");
        assert_eq!(
            a,
            "serve --port 0 --model port --backend uring --no-udp --workers 2 --concurrency 1"
        );
        let a = Server::Model(Model::Callback).serve_args().join(" ");
        assert!(a.ends_with("--model callback --backend auto"), "{a}");
        let a = Server::Model(Model::Select).serve_args().join(" ");
        assert!(a.ends_with("--model select"), "{a}");
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
