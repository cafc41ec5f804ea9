//! Overlapped I/O with completion routines (APCs): an operation's routine
//! runs only on the thread that issued it, and only while that thread is
//! in an alertable wait (SleepEx, WaitForSingleObjectEx, …).
//!
//! Built on a cport completion port that exactly one thread uses: it
//! issues every operation and is the only thread that dequeues, so each
//! completion runs on its issuer, and only when that thread waits in
//! [`CompletionPort::get`] — the alertable wait. The per-operation value
//! names the routine to run. One thread serves everything, as in the
//! tutorials, where the accepting thread also runs every routine.

use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::thread;

use cport::{Completion, CompletionPort, Handle, Payload};

use crate::{Stats, Stop, ACCEPT_BACKOFF, ECHO_BUFFER};

/// The completion routine an operation runs.
#[derive(Clone, Debug)]
enum Routine {
    Accepted,
    Received,
    Sent,
    /// Queued by the stop (QueueUserAPC): leave the alertable loop.
    Quit,
}

/// Runs the echo server until `stop` is set; see the [crate] docs.
pub fn serve(listener: TcpListener, stop: Stop, stats: Arc<Stats>) -> io::Result<()> {
    serve_on(listener, stop, stats, cport::Backend::Auto)
}

/// [`serve`] on a port of the given backend (`Auto` follows
/// `CPORT_BACKEND`).
pub fn serve_on(
    listener: TcpListener,
    stop: Stop,
    stats: Arc<Stats>,
    backend: cport::Backend,
) -> io::Result<()> {
    Server::new(backend)?.serve(listener, stop, stats)
}

/// The callback model with its port already built, so a caller can say
/// which backend `Auto` chose before it serves.
pub struct Server {
    port: CompletionPort<Routine>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("backend", &self.backend())
            .finish()
    }
}

impl Server {
    /// Builds the one-thread port (`Auto` follows `CPORT_BACKEND`).
    pub fn new(backend: cport::Backend) -> io::Result<Server> {
        let port = cport::Builder::new()
            .concurrency(1)
            .backend(backend)
            .build()?;
        Ok(Server { port })
    }

    /// The backend the port runs on: never `Auto`.
    pub fn backend(&self) -> cport::Backend {
        self.port.backend()
    }

    /// Runs the echo server until `stop` is set; see the [crate] docs.
    pub fn serve(self, listener: TcpListener, stop: Stop, stats: Arc<Stats>) -> io::Result<()> {
        let _me = stats.thread();
        let port = self.port;
        let listener = port.associate(listener, 0)?;
        {
            let port = port.clone();
            stop.on_stop(move || {
                let _ = port.post(0, 0, Routine::Quit);
            });
        }
        port.accept_multi(listener, Routine::Accepted)?;
        let result = alertable_loop(&port, listener, &stats);
        // Closing the port drops every connection still open with its
        // pending receive.
        port.close_port();
        stats.end_all();
        result
    }
}

fn alertable_loop(
    port: &CompletionPort<Routine>,
    listener: Handle,
    stats: &Stats,
) -> io::Result<()> {
    loop {
        let c = port.get(None)?;
        match c.value {
            Routine::Quit => return Ok(()),
            Routine::Accepted => accepted(port, listener, c, stats)?,
            Routine::Received => received(port, c, stats),
            Routine::Sent => sent(port, c, stats),
        }
    }
}

fn accepted(
    port: &CompletionPort<Routine>,
    listener: Handle,
    c: Completion<Routine>,
    stats: &Stats,
) -> io::Result<()> {
    if let (Ok(_), Payload::Accepted { stream, .. }) = (&c.result, c.payload) {
        let _ = stream.set_nodelay(true);
        match port.associate(stream, 0) {
            Ok(h) => {
                stats.opened();
                recv(port, h, Vec::with_capacity(ECHO_BUFFER), stats);
            }
            Err(_) => {
                stats
                    .refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    if !c.more {
        // The multishot accept ended (descriptor exhaustion…): re-arm it
        // after a pause, or the listener's readiness would spin (LESSONS 6).
        thread::sleep(ACCEPT_BACKOFF);
        port.accept_multi(listener, Routine::Accepted)?;
    }
    Ok(())
}

fn recv(port: &CompletionPort<Routine>, h: Handle, buf: Vec<u8>, stats: &Stats) {
    if port.recv(h, buf, Routine::Received).is_err() {
        let _ = port.close(h);
        stats.ended(true);
    }
}

fn received(port: &CompletionPort<Routine>, c: Completion<Routine>, stats: &Stats) {
    let h = c.handle.expect("an I/O completion has its handle");
    match (c.result, c.payload) {
        (Ok(n), Payload::Buf(buf)) if n > 0 => {
            if port.send(h, buf, Routine::Sent).is_err() {
                let _ = port.close(h);
                stats.ended(true);
            }
        }
        (Ok(_), _) => {
            // 0 bytes: the peer closed, and everything it sent before was
            // echoed (one operation in flight per connection).
            let _ = port.close(h);
            stats.ended(false);
        }
        (Err(_), _) => {
            let _ = port.close(h);
            stats.ended(true);
        }
    }
}

fn sent(port: &CompletionPort<Routine>, c: Completion<Routine>, stats: &Stats) {
    let h = c.handle.expect("an I/O completion has its handle");
    match (c.result, c.payload) {
        (Ok(n), Payload::Buf(mut buf)) => {
            stats.echoed(n);
            buf.clear();
            recv(port, h, buf, stats);
        }
        _ => {
            let _ = port.close(h);
            stats.ended(true);
        }
    }
}
