//! `tokio-echo`: a plain tokio TCP echo server, the reference `cport serve`
//! is measured against (`cport bench --servers tokio-echo`, issue 3). It is
//! written the way a tokio user would write it, with nothing tuned for the
//! benchmark: one task per connection that reads into a buffer and writes
//! back what it read.
//!
//! ```text
//! tokio-echo [--port N] [--bind ADDR] [--threads N] [--buffer-size BYTES]
//! ```
//!
//! `--threads` is the runtime's worker threads (one listener: tokio spreads
//! the connections' tasks itself). `--buffer-size` is each connection's
//! read buffer (default 16384, the size of `cport serve`'s receive buffers,
//! so neither server reads in smaller pieces than the other; every peer
//! takes it, crates/bench/src/peer.rs).
//!
//! It matches `cport serve` where the issue requires it of any server that
//! is measured: a listen backlog of 4096 and `TCP_NODELAY` on each accepted
//! socket (crates/bench/src/peer.rs says why).
//!
//! The first line on stdout is `listening on ADDR (tcp) backend=epoll
//! threads=N`. SIGTERM or SIGINT ends it with exit code 0; 1 means it could
//! not start.

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use cport_bench::peer::{self, PeerArgs};

#[derive(Parser, Debug)]
#[command(name = "tokio-echo", about = "A plain tokio TCP echo server")]
struct Args {
    #[command(flatten)]
    peer: PeerArgs,
}

/// Pause after a failed accept (EMFILE, ENFILE…): the listener stays
/// readable while descriptors are exhausted, so retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

fn main() -> ExitCode {
    let args = Args::parse();
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &Args) -> io::Result<()> {
    peer::exit_on_signal()?;
    let p = &args.peer;
    let mut listeners = peer::listeners(p.bind, p.port, 1)?;
    let listener = listeners.remove(0);
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(p.threads as usize)
        .enable_io()
        .enable_time()
        .build()?;
    rt.block_on(accept_loop(listener, p.threads, p.buffer_size as usize))
}

async fn accept_loop(
    listener: std::net::TcpListener,
    threads: u32,
    buffer_size: usize,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    // What tokio (mio) waits with here.
    let backend = if cfg!(windows) {
        "iocp"
    } else if cfg!(target_os = "linux") {
        "epoll"
    } else {
        "kqueue"
    };
    peer::announce(listener.local_addr()?, backend, threads)?;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(echo(stream, buffer_size));
            }
            Err(e) => {
                eprintln!("tokio-echo: accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Echoes until the peer closes or the connection fails; a failure ends
/// this connection only.
async fn echo(mut stream: TcpStream, buffer_size: usize) {
    if let Err(e) = stream.set_nodelay(true) {
        eprintln!("tokio-echo: TCP_NODELAY: {e}");
    }
    let mut buf = vec![0u8; buffer_size];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
