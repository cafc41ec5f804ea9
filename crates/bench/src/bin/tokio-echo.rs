//! A plain tokio TCP echo server: the peer `bench/serve.sh` loads next to
//! `cport serve` (issue 3). It is written the way a tokio user would write
//! it, with nothing tuned for the benchmark: one task per connection that
//! reads into a buffer and writes back what it read.
//!
//! ```text
//! tokio-echo [--port N] [--workers N] [--buffer-size BYTES]
//! ```
//!
//! * `--port`: TCP port on 127.0.0.1 (default 0, any free port).
//! * `--workers`: tokio worker threads (default: the CPUs this process may
//!   run on, tokio's own default).
//! * `--buffer-size`: each connection's read buffer (default 16384, the
//!   size of `cport serve`'s receive buffers, so neither server reads in
//!   smaller pieces than the other).
//!
//! The first line on stdout is `listening on ADDR`, the address actually
//! bound; the script reads the port from it. The server runs until it is
//! killed.
//!
//! It matches `cport serve` where the issue requires it of any server that
//! is measured: a listen backlog of 4096 (with the old default of 128, 500
//! simultaneous connects overflow the queue and wait for SYN retransmits)
//! and `TCP_NODELAY` on each accepted socket (without it a partial echo
//! waits for the peer's delayed ACK).
//!
//! Exit codes: 0 after `--help` (the server itself runs until killed), 1
//! the server could not start, 2 bad usage.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Listen backlog, the same as `cport serve`'s; Linux caps it at
/// `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

/// Pause after a failed accept (EMFILE, ENFILE…): the listener stays
/// readable while descriptors are exhausted, so retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

struct Args {
    port: u16,
    workers: Option<usize>,
    buffer_size: usize,
}

const USAGE: &str = "usage: tokio-echo [--port N] [--workers N] [--buffer-size BYTES]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        port: 0,
        workers: None,
        buffer_size: 16 * 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        if !matches!(flag.as_str(), "--port" | "--workers" | "--buffer-size") {
            return Err(format!("unknown flag {flag}"));
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => a.port = number(&flag, &value)?,
            "--workers" => a.workers = Some(number::<usize>(&flag, &value)?.max(1)),
            _ => a.buffer_size = number::<usize>(&flag, &value)?.max(1),
        }
    }
    Ok(a)
}

fn number<T: FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: {value:?} is not a valid number"))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if e.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("tokio-echo: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_io().enable_time();
    if let Some(n) = args.workers {
        builder.worker_threads(n);
    }
    let result = builder
        .build()
        .and_then(|rt| rt.block_on(serve(args.port, args.buffer_size)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(port: u16, buffer_size: usize) -> io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    let listener: TcpListener = socket.listen(BACKLOG)?;
    // Only this line goes to stdout; `println!` flushes at the newline, so
    // a script reading the address does not wait on a buffer.
    println!("listening on {}", listener.local_addr()?);
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
