//! The command line: what each subcommand accepts, and every check of it
//! that needs no system call: ranges (in the value parsers, so clap reports
//! them) and contradictions between flags ([`Command::check`]). The work
//! lives in `serve`, `client`, `load` and `bench`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use cport_models::Model;

use crate::Usage;

/// The tutorials' IOCP echo server, its client, and a load generator.
#[derive(Parser, Debug)]
#[command(name = "cport", version, about, propagate_version = true)]
pub struct Cli {
    /// Log more: -v shows connects and disconnects (info), -vv debug.
    /// `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// TCP and UDP echo server on a completion port.
    Serve(ServeArgs),
    /// Talks to an echo server: interactive on a terminal, stdin to stdout
    /// otherwise.
    Client(ClientArgs),
    /// Loads an echo server and checks every echoed byte.
    Load(LoadArgs),
    /// Runs each I/O model's echo server against `cport load` over a
    /// matrix of connections and sizes, and prints the comparison table.
    Bench(BenchArgs),
}

/// `--backend`: which kernel mechanism the port runs on.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendArg {
    /// io_uring where the kernel allows it, else epoll (`CPORT_BACKEND`
    /// overrides).
    Auto,
    /// io_uring only.
    Uring,
    /// epoll only.
    Epoll,
}

impl BackendArg {
    pub fn to_backend(self) -> cport::Backend {
        match self {
            BackendArg::Auto => cport::Backend::Auto,
            BackendArg::Uring => cport::Backend::Uring,
            BackendArg::Epoll => cport::Backend::Epoll,
        }
    }
}

/// Every server's receive buffers when `--buffer-size` is not given (the
/// models' own default): the size every server of `cport bench` reads in
/// by default.
pub const DEFAULT_BUFFER_SIZE: usize = cport_models::ECHO_BUFFER;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Port for TCP and UDP (0: any free port; the first line of output
    /// names it).
    #[arg(short, long, default_value_t = 9000)]
    pub port: u16,

    /// Address to listen on. The default serves this machine only: an open
    /// UDP echo is a traffic reflector, so widening it is a choice.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,

    /// Do not serve TCP.
    #[arg(long)]
    pub no_tcp: bool,

    /// Do not serve UDP.
    #[arg(long)]
    pub no_udp: bool,

    /// Worker threads dequeuing completions (default: 2 × CPUs, as the
    /// tutorials advise).
    #[arg(long, value_parser = |s: &str| count::<u32>(s, 1, 1024))]
    pub workers: Option<u32>,

    /// Threads allowed to run completions at once, the port's concurrency
    /// value (default: number of CPUs).
    #[arg(long, value_parser = |s: &str| count::<u32>(s, 1, 1024))]
    pub concurrency: Option<u32>,

    /// Kernel mechanism of the port.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,

    /// Print the data received, as the tutorials' server does.
    #[arg(long)]
    pub print: bool,

    /// Print a line each second in which something changed: connections,
    /// completions/s, bytes/s.
    #[arg(long)]
    pub stats: bool,

    /// Refuse connections beyond this many open ones (closed at once).
    #[arg(long, value_parser = |s: &str| count::<u64>(s, 1, u64::MAX))]
    pub max_conns: Option<u64>,

    /// Close a connection that has had no completed I/O for this long
    /// (e.g. 30s, 500ms, 2m; a bare number is seconds).
    #[arg(long, value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,

    /// On Ctrl-C or SIGTERM, how long to let connections finish their echo
    /// before closing them anyway.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub shutdown_timeout: Duration,

    /// Size of each receive buffer, in bytes (64 to 1 MiB; default 16384):
    /// the port's pool buffers, a readiness model's buffer per connection,
    /// a blocking or overlapped model's read.
    #[arg(long, value_parser = buffer_size)]
    pub buffer_size: Option<u32>,

    /// The tutorials' I/O model to serve with: blocking, nonblocking,
    /// select, poll, epoll, message, event, overlapped, callback or port
    /// (the completion port with workers). Models other than port serve TCP
    /// only, without the port's options (workers, limits, timeouts).
    #[arg(long, default_value = "port", value_parser = parse_model)]
    pub model: Model,

    /// Serve with N ports of one thread each instead of one port with a
    /// worker pool: each thread its own listener on the address
    /// (SO_REUSEPORT), its own connections, a multishot receive per
    /// connection (the shape of the leanest servers; io_uring rings with
    /// SINGLE_ISSUER | DEFER_TASKRUN). TCP only.
    #[arg(long, value_name = "N", value_parser = |s: &str| count::<u32>(s, 1, 256))]
    pub shards: Option<u32>,
}

fn parse_model(s: &str) -> Result<Model, String> {
    s.parse()
        .map_err(|e: cport_models::UnknownModel| e.to_string())
}

impl Command {
    /// The contradictions between flags: a usage error (exit 2) before any
    /// work starts.
    pub fn check(&self) -> anyhow::Result<()> {
        match self {
            Command::Serve(a) => a.check().map_err(Into::into),
            Command::Client(_) | Command::Load(_) | Command::Bench(_) => Ok(()),
        }
    }
}

impl ServeArgs {
    /// `--buffer-size`, or its default.
    pub fn buffer_size(&self) -> usize {
        self.buffer_size.map_or(DEFAULT_BUFFER_SIZE, |n| n as usize)
    }

    fn check(&self) -> Result<(), Usage> {
        if let Some(why) = self.model.unavailable() {
            return Err(Usage(why));
        }
        if cfg!(windows) {
            self.check_windows()?;
        }
        if self.model != Model::Port {
            return self.check_model_options();
        }
        if self.no_tcp && self.no_udp {
            return Err(Usage(
                "--no-tcp and --no-udp together leave nothing to serve".into(),
            ));
        }
        if self.shards.is_some() {
            return self.check_shard_options();
        }
        Ok(())
    }

    /// What the port server cannot do on Windows: io_uring and epoll are
    /// Linux's, and the shards' listeners share their address through
    /// SO_REUSEPORT, which Windows lacks.
    fn check_windows(&self) -> Result<(), Usage> {
        if self.backend != BackendArg::Auto {
            return Err(Usage(format!(
                "--backend {} exists only on Linux: on Windows the port is the \
                 native completion port (--backend auto)",
                self.backend.to_backend()
            )));
        }
        if self.shards.is_some() {
            return Err(Usage(
                "--shards is not available on Windows: the shards' listeners share \
                 their address through SO_REUSEPORT, which Windows lacks"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The sharded server serves TCP echo alone: the options of the worker
    /// pool and of the full server are refused rather than ignored.
    fn check_shard_options(&self) -> Result<(), Usage> {
        let given = [
            (self.no_tcp, "--no-tcp (shards serve TCP)"),
            (
                self.workers.is_some(),
                "--workers (each shard is one thread)",
            ),
            (
                self.concurrency.is_some(),
                "--concurrency (each shard is one thread)",
            ),
            (self.print, "--print"),
            (self.max_conns.is_some(), "--max-conns"),
            (self.idle_timeout.is_some(), "--idle-timeout"),
        ];
        let unsupported: Vec<&str> = given
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, s)| *s)
            .collect();
        if unsupported.is_empty() {
            Ok(())
        } else {
            Err(Usage(format!(
                "--shards does not support {}",
                unsupported.join(", ")
            )))
        }
    }

    /// The models other than port have none of the port server's options:
    /// those given are refused rather than ignored (`--shutdown-timeout`,
    /// which has a default, is ignored).
    fn check_model_options(&self) -> Result<(), Usage> {
        let model = self.model;
        let mut unsupported = Vec::new();
        if self.no_tcp {
            unsupported.push("--no-tcp (this model serves TCP only)");
        }
        if self.workers.is_some() {
            unsupported.push("--workers");
        }
        if self.concurrency.is_some() {
            unsupported.push("--concurrency");
        }
        if self.print {
            unsupported.push("--print");
        }
        if self.max_conns.is_some() {
            unsupported.push("--max-conns");
        }
        if self.idle_timeout.is_some() {
            unsupported.push("--idle-timeout");
        }
        if self.shards.is_some() {
            unsupported.push("--shards");
        }
        if self.backend != BackendArg::Auto && !matches!(model, Model::Callback | Model::Overlapped)
        {
            unsupported.push("--backend (only the port, callback and overlapped models take it)");
        }
        if unsupported.is_empty() {
            Ok(())
        } else {
            Err(Usage(format!(
                "--model {model} does not support {}; these are options of --model port",
                unsupported.join(", ")
            )))
        }
    }
}

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The server, as HOST:PORT.
    pub addr: String,

    /// Use UDP: each line is one datagram.
    #[arg(long)]
    pub udp: bool,

    /// Prompt for messages even when stdin is not a terminal.
    #[arg(short, long)]
    pub interactive: bool,

    /// How long to wait for the connection (and, with --udp, for each
    /// reply).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// The server, as HOST:PORT.
    #[arg(default_value = "127.0.0.1:9000")]
    pub addr: String,

    /// TCP connections.
    #[arg(short, long, default_value_t = 50, value_parser = |s: &str| count::<u32>(s, 1, 100_000))]
    pub conns: u32,

    /// Bytes per message.
    #[arg(short, long, default_value_t = 128, value_parser = |s: &str| count::<u32>(s, 1, 64 << 20))]
    pub size: u32,

    /// Messages in flight per connection.
    #[arg(short, long, default_value_t = 1, value_parser = |s: &str| count::<u32>(s, 1, 4096))]
    pub depth: u32,

    /// How long to measure, after the warm-up (more than 0).
    #[arg(long, value_parser = parse_period, default_value = "10s")]
    pub duration: Duration,

    /// How long to run before measuring.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,

    /// Total messages per second across all connections (default: as fast
    /// as the server answers). Latency is then measured from each message's
    /// scheduled time, so a stalled server is not hidden.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Client threads (default: number of CPUs, at most one per connection).
    #[arg(long, value_parser = |s: &str| count::<u32>(s, 1, 256))]
    pub threads: Option<u32>,

    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Servers to run, separated by commas: blocking, nonblocking, select,
    /// poll, epoll, message, event, overlapped, callback, port-uring,
    /// port-epoll (the models, as `cport serve --model` runs them; on
    /// Windows the port is port-iocp and epoll is not there), tokio-echo,
    /// uring-echo, epoll-echo (the peers of crates/bench, Linux only, found
    /// beside this executable), or the groups models, port, peers (default:
    /// models).
    #[arg(long, alias = "models", value_name = "LIST")]
    pub servers: Option<String>,

    /// Connection counts, separated by commas (default 1,50,500,5000;
    /// with --quick 1,50).
    #[arg(long, value_name = "LIST", conflicts_with = "cells")]
    pub conns: Option<String>,

    /// Message sizes in bytes, separated by commas (default 128,4096; with
    /// --quick 128).
    #[arg(long, value_name = "LIST", conflicts_with = "cells")]
    pub sizes: Option<String>,

    /// Messages in flight per connection (`cport load --depth`), for every
    /// cell that does not name its own.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub depth: u32,

    /// The cells to run instead of connections × sizes, separated by
    /// commas: CONNSxSIZE or CONNSxSIZExDEPTH (e.g. 50x128,500x4096x16).
    #[arg(long, value_name = "LIST")]
    pub cells: Option<String>,

    /// Rounds: every cell runs each server once per round, the servers
    /// taking turns (A B C A B C ...); the summary gives medians and
    /// spreads over the rounds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,

    /// Threads of the servers that take a count: the peers' --threads, and
    /// the port's concurrency (with at least 2 workers). The other models
    /// keep their own threading.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,

    /// Each server's receive buffers, in bytes (64 to 1 MiB; default 16384
    /// for every server), passed to each as `--buffer-size`: the port's and
    /// the shards' pool buffers, the other models' buffer per connection,
    /// the peers' receive buffers.
    #[arg(long, value_name = "BYTES", value_parser = buffer_size)]
    pub buffer_size: Option<u32>,

    /// Leave server and load free to run on any CPU (default: the server on
    /// one CPU, the load on another).
    #[arg(long)]
    pub unpinned: bool,

    /// After the rounds, run each server once more per cell to count per
    /// message what it asks of the kernel (perf: system calls, context
    /// switches, io_uring requests and poll arms, malloc calls;
    /// rescheduling interrupts from /proc/interrupts). Columns perf cannot
    /// count here stay empty, with the reason in the summary.
    #[arg(long)]
    pub costs: bool,

    /// The server the others' CPU per message is compared with (default
    /// tokio-echo when it runs, else the first server).
    #[arg(long, value_name = "SERVER")]
    pub reference: Option<String>,

    /// Measured period of each run (default 5s; with --quick 1s).
    #[arg(long, value_parser = parse_period)]
    pub duration: Option<Duration>,

    /// Warm-up of each run, before its measured period (default 1s; with
    /// --quick 400ms).
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,

    /// Directory for the record (default bench/runs/<UTC date>/models under
    /// the current directory, -<HHMMSS> appended if it exists; with
    /// --quick a new temporary directory).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// A trial within two minutes: 1 and 50 connections, 128 B, 1 s
    /// measured per run.
    #[arg(long)]
    pub quick: bool,
}

/// `30s`, `500ms`, `2m`, `1.5` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let scale = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    let secs = n * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration that measures something: more than 0.
fn parse_period(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!(
            "a period of {s:?} measures nothing: give more than 0 (e.g. 10s)"
        )),
        d => Ok(d),
    }
}

/// A whole number from `lo` to `hi`, in the type of the option (`hi`
/// fits it).
/// `--buffer-size`: the bounds every model checks (`cport_models::MIN_BUFFER`
/// to `MAX_BUFFER`), so a size the command takes is one every server takes.
fn buffer_size(s: &str) -> Result<u32, String> {
    use cport_models::{MAX_BUFFER, MIN_BUFFER};
    count::<u32>(s, MIN_BUFFER as u64, MAX_BUFFER as u64)
}

pub fn count<T: TryFrom<u64>>(s: &str, lo: u64, hi: u64) -> Result<T, String> {
    let range = if hi == u64::MAX {
        format!("at least {lo}")
    } else {
        format!("from {lo} to {hi}")
    };
    let digits = s.trim();
    let out_of_range = || format!("{digits} is out of range: give {range}");
    let n: u64 = match digits.parse() {
        Ok(n) => n,
        Err(_) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(out_of_range());
        }
        Err(_) => return Err(format!("{s:?} is not a whole number")),
    };
    if n < lo || n > hi {
        return Err(out_of_range());
    }
    T::try_from(n).map_err(|_| out_of_range())
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of messages per second"))?;
    if r.is_finite() && r > 0.0 {
        Ok(r)
    } else {
        Err("the rate must be a positive number of messages per second".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_bare_seconds() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn counts_name_their_range() {
        assert_eq!(count::<u32>("4", 1, 1024), Ok(4));
        assert_eq!(
            count::<u64>("0", 1, u64::MAX),
            Err("0 is out of range: give at least 1".to_string())
        );
        assert_eq!(
            count::<u32>("2000", 1, 1024),
            Err("2000 is out of range: give from 1 to 1024".to_string())
        );
        assert_eq!(
            count::<u64>("99999999999999999999", 1, u64::MAX),
            Err("99999999999999999999 is out of range: give at least 1".to_string())
        );
        assert!(count::<u32>("-1", 1, 10).is_err());
        assert!(count::<u32>("many", 1, 10).is_err());
    }

    #[test]
    fn a_measured_period_is_more_than_zero() {
        assert_eq!(parse_period("2s"), Ok(Duration::from_secs(2)));
        for zero in ["0", "0s", "0ms"] {
            let e = parse_period(zero).unwrap_err();
            assert!(e.contains("measures nothing"), "{e}");
        }
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
