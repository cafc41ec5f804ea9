//! Fixed workloads for counting system calls per operation with
//! `strace -f -c` or `perf stat -e 'syscalls:sys_enter_*'`.
//!
//! ```text
//! syscalls serve   <uring|epoll> --conns N [--threads T] [--addr-file PATH]
//! syscalls client  --addr-file PATH --conns N --rounds R
//! syscalls handoff <uring|epoll|crossbeam|condvar> --count N
//! syscalls post    <uring|epoll|crossbeam> --count N
//! ```
//!
//! * `serve` runs the cport echo server of `cport_bench::EchoServer` until
//!   N connections were accepted and closed again. Its client is a
//!   separate process (`client`), so that a tracer attached to the server
//!   counts the server's system calls only.
//! * `client` opens N connections to the address in PATH (written by
//!   `serve`) and runs R rounds of one 64-byte message on each.
//! * `handoff` runs N ping-pong round trips (2 N hand-offs) between two
//!   threads; `post` runs N posts and gets on one thread.
//!
//! Each run prints one `result` line of `name=value` fields, with `ops`
//! the number of operations to divide the system calls by. Running the
//! same command with N or R = 0 gives the fixed cost (start, connections,
//! shutdown) to subtract; `bench/run.sh` does both.
//!
//! Exit codes: 0 done, 1 the workload failed, 2 bad usage.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use cport::Backend;
use cport_bench::{
    channel_same_thread, port, post_get_same_thread, ChannelPingPong, CondvarPingPong, EchoClient,
    EchoServer, PingPong, MSG, STALL,
};

/// How long a whole `serve` or `client` run may take before it gives up.
const RUN_LIMIT: Duration = Duration::from_secs(600);

const USAGE: &str = "usage:
  syscalls serve   <uring|epoll> --conns N [--threads T] [--addr-file PATH]
  syscalls client  --addr-file PATH --conns N --rounds R
  syscalls handoff <uring|epoll|crossbeam|condvar> --count N
  syscalls post    <uring|epoll|crossbeam> --count N";

/// A queue to hand off through: a cport backend, crossbeam's channel, or
/// a `Mutex` + `Condvar` queue (hand-off only).
#[derive(Clone, Copy, Debug)]
enum Queue {
    Port(Backend),
    Crossbeam,
    Condvar,
}

impl Queue {
    fn name(self) -> String {
        match self {
            Queue::Port(b) => b.to_string(),
            Queue::Crossbeam => "crossbeam".into(),
            Queue::Condvar => "condvar".into(),
        }
    }
}

#[derive(Debug)]
enum Command {
    Serve {
        backend: Backend,
        conns: u64,
        threads: usize,
        addr_file: Option<PathBuf>,
    },
    Client {
        addr_file: PathBuf,
        conns: usize,
        rounds: u64,
    },
    Handoff {
        queue: Queue,
        count: u64,
    },
    Post {
        queue: Queue,
        count: u64,
    },
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("syscalls: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syscalls: {e}");
            ExitCode::from(1)
        }
    }
}

fn parse(args: &[String]) -> Result<Command, String> {
    let (cmd, rest) = args.split_first().ok_or("no command")?;
    let mut positional = Vec::new();
    let mut flags = Vec::new();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.strip_prefix("--") {
            Some(name) => {
                let v = it.next().ok_or(format!("--{name} needs a value"))?;
                flags.push((name.to_string(), v.clone()));
            }
            None => positional.push(a.clone()),
        }
    }
    let flag = |name: &str| {
        flags
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let number = |name: &str| -> Result<u64, String> {
        let v = flag(name).ok_or(format!("--{name} is required"))?;
        v.parse().map_err(|e| format!("--{name} {v:?}: {e}"))
    };
    let known: &[&str] = match cmd.as_str() {
        "serve" => &["conns", "threads", "addr-file"],
        "client" => &["addr-file", "conns", "rounds"],
        "handoff" | "post" => &["count"],
        other => return Err(format!("unknown command {other:?}")),
    };
    if let Some((n, _)) = flags.iter().find(|(n, _)| !known.contains(&n.as_str())) {
        return Err(format!("{cmd} takes no --{n}"));
    }
    let want_positional = usize::from(cmd != "client");
    if positional.len() != want_positional {
        return Err(format!("{cmd}: wrong number of arguments {positional:?}"));
    }
    let queue = |s: &str| -> Result<Queue, String> {
        match s {
            "crossbeam" => Ok(Queue::Crossbeam),
            "condvar" => Ok(Queue::Condvar),
            _ => Backend::from_str(s)
                .map(Queue::Port)
                .map_err(|e| e.to_string()),
        }
    };
    let backend = |s: &str| -> Result<Backend, String> {
        match queue(s)? {
            // A count must name the backend it measured: no `auto`.
            Queue::Port(Backend::Auto) | Queue::Crossbeam | Queue::Condvar => {
                Err(format!("{cmd} needs uring or epoll, not {s:?}"))
            }
            Queue::Port(b) => Ok(b),
        }
    };
    Ok(match cmd.as_str() {
        "serve" => Command::Serve {
            backend: backend(&positional[0])?,
            conns: number("conns")?,
            threads: match flag("threads") {
                Some(_) => number("threads")? as usize,
                None => 1,
            },
            addr_file: flag("addr-file").map(PathBuf::from),
        },
        "client" => Command::Client {
            addr_file: flag("addr-file").ok_or("--addr-file is required")?.into(),
            conns: number("conns")? as usize,
            rounds: number("rounds")?,
        },
        "handoff" => Command::Handoff {
            queue: match queue(&positional[0])? {
                Queue::Port(Backend::Auto) => return Err("handoff needs a named backend".into()),
                q => q,
            },
            count: number("count")?,
        },
        _ => Command::Post {
            queue: match queue(&positional[0])? {
                Queue::Port(Backend::Auto) => return Err("post needs a named backend".into()),
                Queue::Condvar => return Err("post measures cport and crossbeam only".into()),
                q => q,
            },
            count: number("count")?,
        },
    })
}

fn run(cmd: Command) -> io::Result<()> {
    match cmd {
        Command::Serve {
            backend,
            conns,
            threads,
            addr_file,
        } => serve(backend, conns, threads, addr_file.as_deref()),
        Command::Client {
            addr_file,
            conns,
            rounds,
        } => client(&addr_file, conns, rounds),
        Command::Handoff { queue, count } => {
            let t = Instant::now();
            match queue {
                Queue::Port(b) => {
                    let pp = PingPong::start(b)?;
                    pp.round_trips(count)?;
                    pp.stop()?;
                }
                Queue::Crossbeam => {
                    let cp = ChannelPingPong::start()?;
                    cp.round_trips(count)?;
                    cp.stop()?;
                }
                Queue::Condvar => {
                    let cv = CondvarPingPong::start()?;
                    cv.round_trips(count)?;
                    cv.stop()?;
                }
            }
            println!(
                "result workload=handoff backend={} round_trips={count} ops={} secs={:.3}",
                queue.name(),
                2 * count,
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Post { queue, count } => {
            let t = Instant::now();
            match queue {
                Queue::Port(b) => post_get_same_thread(&port(b)?, count)?,
                Queue::Crossbeam => {
                    let (tx, rx) = crossbeam_channel::unbounded();
                    channel_same_thread(&tx, &rx, count)?;
                }
                Queue::Condvar => unreachable!("refused by parse"),
            }
            println!(
                "result workload=post backend={} ops={count} secs={:.3}",
                queue.name(),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

fn serve(backend: Backend, conns: u64, threads: usize, addr_file: Option<&Path>) -> io::Result<()> {
    let server = EchoServer::start(backend, threads)?;
    let addr = server.addr();
    if let Some(path) = addr_file {
        // Renamed into place so the client never reads half an address.
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, addr.to_string())?;
        fs::rename(&tmp, path)?;
    }
    println!("listening {addr}");
    let t = Instant::now();
    server.wait_closed(conns, t + RUN_LIMIT)?;
    let secs = t.elapsed().as_secs_f64();
    let bytes = server.echoed_bytes();
    server.stop()?;
    println!(
        "result workload=echo backend={backend} threads={threads} conns={conns} bytes={bytes} ops={} secs={secs:.3}",
        bytes / MSG as u64
    );
    Ok(())
}

fn client(addr_file: &Path, conns: usize, rounds: u64) -> io::Result<()> {
    // The server writes the file once it listens; poll for it with a bound.
    let deadline = Instant::now() + STALL;
    let text = loop {
        match fs::read_to_string(addr_file) {
            Ok(t) => break t,
            Err(e) if e.kind() == io::ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "reading the server address from {}: {e}",
                        addr_file.display()
                    ),
                ));
            }
        }
    };
    let addr = text.trim().parse().map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidData, format!("address {text:?}: {e}"))
    })?;
    let t = Instant::now();
    let mut c = EchoClient::connect(addr, conns)?;
    for r in 0..rounds {
        c.round(r as u8)?;
        if t.elapsed() > RUN_LIMIT {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("client: only {r} of {rounds} rounds within {RUN_LIMIT:?}"),
            ));
        }
    }
    let n = c.conns() as u64;
    drop(c);
    println!(
        "result workload=echo-client conns={n} rounds={rounds} messages={} secs={:.3}",
        n * rounds,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
