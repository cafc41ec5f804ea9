//! `epoll-echo`: a plain epoll TCP echo server, the readiness reference
//! `cport serve` on epoll is measured against (`cport bench --servers
//! epoll-echo`). Nothing in it is clever; it is what a careful C
//! programmer would write.
//!
//! ```text
//! epoll-echo [--port N] [--bind ADDR] [--threads N] [--buffer-size BYTES]
//! ```
//!
//! Each thread owns one epoll instance and one listener (SO_REUSEPORT, so
//! the kernel spreads connections over the threads and they share
//! nothing). Sockets are non-blocking and registered once, edge-triggered,
//! for input and output: no `epoll_ctl` per message. On an event the
//! connection reads into the thread's one buffer and writes what it read at
//! once; in steady state a message costs one `read` and one `write`, and
//! `epoll_wait` is shared by every connection ready at the same time. A
//! read shorter than the buffer means the socket is drained (epoll(7)), so
//! no `read` is spent to learn EAGAIN. What a write does not take waits in
//! the connection's pending buffer, and the connection reads nothing more
//! until the next output edge has flushed it: memory per connection stays
//! at one buffer, and the client is held back by TCP flow control. The
//! pending buffer keeps its capacity, so steady state allocates nothing.
//!
//! The first line on stdout is `listening on ADDR (tcp) backend=epoll
//! threads=N`. SIGTERM or SIGINT ends it with exit code 0.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use rustix::buffer::spare_capacity;
use rustix::event::{epoll, Timespec};
use rustix::io::Errno;
use rustix::net::SocketFlags;

use cport_bench::peer::{self, PeerArgs};

#[derive(Parser, Debug)]
#[command(name = "epoll-echo", about = "A plain epoll TCP echo server")]
struct Args {
    #[command(flatten)]
    peer: PeerArgs,
}

/// The listener's epoll data; a connection's is its descriptor.
const LISTENER: u64 = u64::MAX;
/// After EMFILE and the like, accepting pauses this long: the listener
/// stays readable while descriptors are exhausted, and retrying at once
/// would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const EVENTS: usize = 1024;

pub fn main() -> ExitCode {
    let args = Args::parse();
    match serve(&args.peer) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("epoll-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(p: &PeerArgs) -> io::Result<()> {
    peer::exit_on_panic();
    peer::exit_on_signal()?;
    let listeners = peer::listeners(p.bind, p.port, p.threads)?;
    let addr = listeners[0].local_addr()?;
    let loops: Vec<Loop> = listeners
        .into_iter()
        .map(|l| Loop::new(l, p.buffer_size as usize))
        .collect::<io::Result<_>>()?;
    let (tx, rx) = mpsc::channel();
    for (i, l) in loops.into_iter().enumerate() {
        let tx = tx.clone();
        thread::Builder::new()
            .name(format!("epoll-{i}"))
            .spawn(move || {
                let end = l.run();
                let _ =
                    tx.send(end.map_err(|e| io::Error::new(e.kind(), format!("loop {i}: {e}"))));
            })?;
    }
    drop(tx);
    peer::announce(addr, "epoll", p.threads)?;
    // The loops run until the process ends; one that stops is a failure.
    match rx.recv() {
        Ok(Err(e)) => Err(e),
        _ => Err(io::Error::other("an epoll thread ended")),
    }
}

struct Conn {
    fd: OwnedFd,
    /// Echo bytes the socket has not taken yet, from `at`.
    pending: Vec<u8>,
    at: usize,
}

struct Loop {
    epoll: OwnedFd,
    listener: TcpListener,
    /// By descriptor.
    conns: Vec<Option<Conn>>,
    buf: Box<[u8]>,
    accept_paused_until: Option<Instant>,
}

impl Loop {
    fn new(listener: TcpListener, buffer_size: usize) -> io::Result<Loop> {
        listener.set_nonblocking(true)?;
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &epoll,
            &listener,
            epoll::EventData::new_u64(LISTENER),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )?;
        Ok(Loop {
            epoll,
            listener,
            conns: Vec::new(),
            buf: vec![0; buffer_size].into_boxed_slice(),
            accept_paused_until: None,
        })
    }

    fn run(mut self) -> io::Result<()> {
        let mut events = Vec::with_capacity(EVENTS);
        loop {
            let timeout = self.accept_paused_until.map(|t| {
                let d = t.saturating_duration_since(Instant::now());
                Timespec {
                    tv_sec: d.as_secs() as _,
                    tv_nsec: d.subsec_nanos() as _,
                }
            });
            events.clear();
            match epoll::wait(&self.epoll, spare_capacity(&mut events), timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            for ev in &events {
                let key = ev.data.u64();
                if key == LISTENER {
                    self.accept_all()?;
                } else {
                    self.pump(key as usize, ev.flags);
                }
            }
            if self
                .accept_paused_until
                .is_some_and(|t| Instant::now() >= t)
            {
                self.accept_paused_until = None;
                self.accept_all()?;
            }
        }
    }

    /// Accepts until the queue is empty (the listener is edge-triggered).
    fn accept_all(&mut self) -> io::Result<()> {
        if self.accept_paused_until.is_some() {
            return Ok(());
        }
        loop {
            match rustix::net::accept_with(
                &self.listener,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            ) {
                Ok(fd) => {
                    // Without TCP_NODELAY a partial echo waits for the
                    // peer's delayed ACK.
                    let _ = rustix::net::sockopt::set_tcp_nodelay(&fd, true);
                    let i = fd.as_raw_fd() as usize;
                    epoll::add(
                        &self.epoll,
                        &fd,
                        epoll::EventData::new_u64(i as u64),
                        epoll::EventFlags::IN
                            | epoll::EventFlags::OUT
                            | epoll::EventFlags::RDHUP
                            | epoll::EventFlags::ET,
                    )?;
                    if self.conns.len() <= i {
                        self.conns.resize_with(i + 1, || None);
                    }
                    self.conns[i] = Some(Conn {
                        fd,
                        pending: Vec::new(),
                        at: 0,
                    });
                }
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR | Errno::CONNABORTED) => {}
                Err(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM) => {
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Flushes what is pending, then reads and echoes until the socket is
    /// drained or will take no more. A failure closes the connection.
    fn pump(&mut self, i: usize, flags: epoll::EventFlags) {
        let Some(Some(c)) = self.conns.get_mut(i) else {
            return;
        };
        // After a hang-up the short-read shortcut would miss the end of
        // stream that arrived with the last data: read until 0 or EAGAIN.
        let drain = flags
            .intersects(epoll::EventFlags::RDHUP | epoll::EventFlags::HUP | epoll::EventFlags::ERR);
        if echo(c, &mut self.buf, drain).is_err() {
            // Dropping the descriptor closes it, which also removes it
            // from the epoll set.
            self.conns[i] = None;
        }
    }
}

/// `Err` when the connection is over (end of stream or failure).
fn echo(c: &mut Conn, buf: &mut [u8], drain: bool) -> Result<(), ()> {
    loop {
        while c.at < c.pending.len() {
            match rustix::io::write(&c.fd, &c.pending[c.at..]) {
                Ok(n) => c.at += n,
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(_) => return Err(()),
            }
        }
        c.pending.clear();
        c.at = 0;
        let n = match rustix::io::read(&c.fd, &mut *buf) {
            Ok(0) => return Err(()),
            Ok(n) => n,
            Err(Errno::AGAIN) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(_) => return Err(()),
        };
        // A short write means the socket's buffer is full: writing again
        // would only learn EAGAIN.
        let sent = loop {
            match rustix::io::write(&c.fd, &buf[..n]) {
                Ok(m) => break m,
                Err(Errno::AGAIN) => break 0,
                Err(Errno::INTR) => {}
                Err(_) => return Err(()),
            }
        };
        if sent < n {
            c.pending.extend_from_slice(&buf[sent..n]);
            return Ok(());
        }
        if n < buf.len() && !drain {
            return Ok(());
        }
    }
}
