//! What the peer echo servers (`tokio-echo`, `uring-echo`, `epoll-echo`)
//! share: their common flags, their listeners, the line that announces
//! them and their exit on SIGTERM or SIGINT. `cport bench` runs them beside
//! `cport serve` and treats every server alike, so these must match what
//! it expects of `cport serve` (crates/cli/src/bench/run.rs reads the
//! first line).

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

use socket2::{Domain, Socket, Type};

/// Listen backlog, the same as `cport serve`'s: with the old default of
/// 128, 500 simultaneous connects overflow the queue and wait for SYN
/// retransmits. Linux caps it at `net.core.somaxconn`.
pub const BACKLOG: i32 = 4096;

/// Receive buffer size, the same as `cport serve`'s default: no server
/// reads in smaller pieces than another.
pub const BUFFER_SIZE: usize = 16 * 1024;

/// The receive buffer sizes `--buffer-size` takes, as `cport serve`'s.
pub const BUFFER_SIZES: std::ops::RangeInclusive<i64> = 64..=(1 << 20);

/// The flags every peer takes.
#[derive(clap::Args, Debug, Clone)]
pub struct PeerArgs {
    /// TCP port (0: any free port; the first line of output names it).
    #[arg(short, long, default_value_t = 0)]
    pub port: u16,

    /// Address to listen on. The default serves this machine only; a wider
    /// address is a choice to make explicitly.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,

    /// Threads serving connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,

    /// Each receive buffer, in bytes (64 to 1 MiB): `cport bench
    /// --buffer-size` gives every server the same.
    #[arg(long, default_value_t = BUFFER_SIZE as u32, value_parser = clap::value_parser!(u32).range(BUFFER_SIZES))]
    pub buffer_size: u32,
}

/// `n` listeners on one address. With more than one, each has
/// SO_REUSEPORT and the kernel spreads new connections over them, so that
/// `n` threads can each own a listener and share nothing. The first binds
/// the port asked for (0: any); the others bind the port it got. Windows
/// has no SO_REUSEPORT: there, more than one is refused.
pub fn listeners(bind: IpAddr, port: u16, n: u32) -> io::Result<Vec<TcpListener>> {
    if n > 1 && cfg!(not(unix)) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "several listeners on one port need SO_REUSEPORT, which this system lacks",
        ));
    }
    let mut out: Vec<TcpListener> = Vec::new();
    let mut addr = SocketAddr::new(bind, port);
    for _ in 0..n.max(1) {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        #[cfg(unix)]
        if n > 1 {
            s.set_reuse_port(true)?;
        }
        s.bind(&addr.into())?;
        s.listen(BACKLOG)?;
        let l: TcpListener = s.into();
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// The first line on stdout, in `cport serve`'s form: `listening on ADDR
/// (tcp) backend=NAME threads=N`. Flushed at once: the reader waits for it.
pub fn announce(addr: SocketAddr, backend: &str, threads: u32) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "listening on {addr} (tcp) backend={backend} threads={threads}"
    )?;
    out.flush()
}

/// On SIGTERM or SIGINT the process exits with 0 at once. A peer keeps no
/// state worth a graceful end, and its threads may be blocked in the
/// kernel (io_uring_enter, epoll_wait), where a flag would not reach them.
#[cfg(unix)]
pub fn exit_on_signal() -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                std::process::exit(0);
            }
        })?;
    Ok(())
}

/// Elsewhere (Windows) Ctrl-C and Ctrl-Break already end the process, and
/// `cport bench` stops a peer with `TerminateProcess`: nothing to set up.
#[cfg(not(unix))]
pub fn exit_on_signal() -> io::Result<()> {
    Ok(())
}

/// The `main` of a Linux-only peer built for another system: says so on
/// stderr and fails (exit code 1), as `cport bench` expects of a server
/// that cannot start.
pub fn linux_only(name: &str) -> std::process::ExitCode {
    eprintln!("{name}: this peer runs on Linux only (it is written on Linux's own calls)");
    std::process::ExitCode::FAILURE
}

/// A panic in any thread ends the process (after the usual message), so
/// that a peer never goes on serving with a thread missing.
pub fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::exit(101);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn listeners_share_one_port() {
        let ls = listeners(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, 3).unwrap();
        assert_eq!(ls.len(), 3);
        let port = ls[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for l in &ls {
            assert_eq!(
                l.local_addr().unwrap(),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
            );
        }
    }

    #[test]
    fn one_listener_does_not_share_its_port() {
        let ls = listeners(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, 1).unwrap();
        let taken = ls[0].local_addr().unwrap().port();
        // Without SO_REUSEPORT a second bind of a listening port fails.
        assert!(listeners(IpAddr::V4(Ipv4Addr::LOCALHOST), taken, 1).is_err());
    }
}
