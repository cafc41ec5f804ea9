//! `cport client HOST:PORT`: the tutorials' echo client (seed 001) on a
//! terminal, and a plain stdin → server → stdout pipe otherwise.
//!
//! Blocking sockets on purpose: the client is the tutorials' client, and a
//! tool to check a server must not share the code it checks.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::args::ClientArgs;
use crate::{console, Usage};

/// The largest payload of one UDP datagram over IPv4.
const MAX_DATAGRAM: usize = 65_507;

pub fn run(a: ClientArgs) -> anyhow::Result<()> {
    let addrs = resolve(&a.addr)?;
    let interactive = a.interactive || io::stdin().is_terminal();
    if a.udp {
        let sock = udp_socket(&addrs, &a.addr)?;
        sock.set_read_timeout(Some(a.timeout))?;
        if interactive {
            udp_prompt(&sock, &a.addr)
        } else {
            udp_pipe(&sock, &a.addr)
        }
    } else {
        let stream = connect(&addrs, &a.addr, a.timeout)?;
        if interactive {
            stream.set_read_timeout(Some(a.timeout))?;
            tcp_prompt(stream, &a.addr)
        } else {
            tcp_pipe(stream)
        }
    }
}

/// `HOST:PORT` to addresses. A malformed argument is a usage error; a host
/// that does not resolve is a runtime one.
pub fn resolve(arg: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let Some((host, port)) = arg.rsplit_once(':') else {
        return Err(Usage(format!("{arg:?}: expected HOST:PORT, e.g. 127.0.0.1:9000")).into());
    };
    let port: u16 = port
        .parse()
        .map_err(|_| Usage(format!("{arg:?}: {port:?} is not a port number")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(Usage(format!("{arg:?}: the host is missing")).into());
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .collect();
    if addrs.is_empty() {
        bail!("{host} has no address");
    }
    Ok(addrs)
}

pub fn connect(addrs: &[SocketAddr], name: &str, timeout: Duration) -> anyhow::Result<TcpStream> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    let e = last.unwrap_or_else(|| io::Error::other("no address"));
    Err(anyhow!(e).context(format!("cannot connect to {name}")))
}

fn udp_socket(addrs: &[SocketAddr], name: &str) -> anyhow::Result<UdpSocket> {
    let addr = addrs[0];
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(local).context("cannot create a UDP socket")?;
    sock.connect(addr)
        .with_context(|| format!("cannot reach {name}"))?;
    Ok(sock)
}

/// The tutorials' loop: prompt, send one line, print its echo; Q quits.
fn tcp_prompt(mut stream: TcpStream, name: &str) -> anyhow::Result<()> {
    let stdin = io::stdin();
    console::line(&format!("Connected to {name}"))?;
    let mut line = String::new();
    loop {
        console::print(PROMPT)?;
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 || is_quit(&line) {
            break;
        }
        stream
            .write_all(line.as_bytes())
            .with_context(|| format!("cannot send to {name}"))?;
        let mut echo = vec![0; line.len()];
        read_echo(&mut stream, &mut echo, name)?;
        show_echo(&echo)?;
    }
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

const PROMPT: &str = "Input message (Q to quit): ";

/// The tutorials' echo line, ended by one line break.
fn show_echo(echo: &[u8]) -> anyhow::Result<()> {
    let text = String::from_utf8_lossy(echo);
    let end = if echo.ends_with(b"\n") { "" } else { "\n" };
    console::print(&format!("Message from server: {text}{end}"))
}

fn read_echo(stream: &mut TcpStream, echo: &mut [u8], name: &str) -> anyhow::Result<()> {
    stream.read_exact(echo).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => anyhow!("{name} closed the connection"),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            anyhow!("no echo from {name} in time")
        }
        _ => anyhow!(e).context(format!("cannot receive from {name}")),
    })
}

fn is_quit(line: &str) -> bool {
    matches!(line.trim_end_matches(['\r', '\n']), "q" | "Q")
}

/// stdin → server → stdout. stdin's end becomes a half-close, and the
/// command ends when the server closes its side.
fn tcp_pipe(stream: TcpStream) -> anyhow::Result<()> {
    let mut to_server = stream.try_clone()?;
    let (done_tx, done_rx) = mpsc::channel();
    thread::Builder::new().name("stdin".into()).spawn(move || {
        let r = io::copy(&mut io::stdin().lock(), &mut to_server)
            .and_then(|_| to_server.shutdown(Shutdown::Write));
        let _ = done_tx.send(r);
    })?;
    let mut from_server = stream;
    let mut out = io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from_server.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow!(e).context("cannot receive from the server")),
        };
        if let Err(e) = out.write_all(&buf[..n]) {
            // The reader of our output went away (`| head`): done.
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(console::stdout_error(e));
        }
    }
    out.flush().map_err(console::stdout_error)?;
    // The server closed: report a failed send, unless stdin is still open
    // (the server may close first, e.g. on its idle timeout).
    match done_rx.try_recv() {
        Ok(Err(e)) => Err(anyhow!(e).context("cannot send to the server")),
        _ => Ok(()),
    }
}

fn udp_prompt(sock: &UdpSocket, name: &str) -> anyhow::Result<()> {
    let stdin = io::stdin();
    let mut line = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        console::print(PROMPT)?;
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 || is_quit(&line) {
            return Ok(());
        }
        let n = udp_round_trip(sock, line.as_bytes(), &mut buf, name)?;
        show_echo(&buf[..n])?;
    }
}

/// Each line of stdin (with its line break) is one datagram; each reply is
/// written to stdout as it comes.
fn udp_pipe(sock: &UdpSocket, name: &str) -> anyhow::Result<()> {
    let mut input = io::stdin().lock();
    let mut out = io::stdout().lock();
    let mut line = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let n = udp_round_trip(sock, &line, &mut buf, name)?;
        if let Err(e) = out.write_all(&buf[..n]).and_then(|_| out.flush()) {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(console::stdout_error(e));
        }
    }
}

fn udp_round_trip(
    sock: &UdpSocket,
    msg: &[u8],
    buf: &mut [u8],
    name: &str,
) -> anyhow::Result<usize> {
    if msg.len() > MAX_DATAGRAM {
        bail!(
            "a line of {} bytes does not fit in one datagram (at most {MAX_DATAGRAM})",
            msg.len()
        );
    }
    sock.send(msg)
        .with_context(|| format!("cannot send to {name}"))?;
    match sock.recv(buf) {
        Ok(n) => Ok(n),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            bail!("no reply from {name} in time")
        }
        Err(e) => Err(anyhow!(e).context(format!("no reply from {name}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_addresses_are_usage_errors() {
        for bad in ["localhost", "127.0.0.1:", "127.0.0.1:99999", ":9000"] {
            let e = resolve(bad).unwrap_err();
            assert!(e.downcast_ref::<Usage>().is_some(), "{bad}: {e:#}");
        }
        assert_eq!(
            resolve("127.0.0.1:9000").unwrap(),
            vec![SocketAddr::from(([127, 0, 0, 1], 9000))]
        );
        assert_eq!(resolve("[::1]:7").unwrap()[0].port(), 7);
    }

    #[test]
    fn q_quits_in_either_case() {
        assert!(is_quit("q\n"));
        assert!(is_quit("Q\r\n"));
        assert!(!is_quit("quit\n"));
    }
}
