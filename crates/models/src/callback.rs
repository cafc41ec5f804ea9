//! Overlapped I/O with completion routines (APCs): an operation's routine
//! runs only on the thread that issued it, and only while that thread is
//! in an alertable wait (SleepEx, WaitForSingleObjectEx, …).
//!
//! It is the [`port`] server's echo with one thread that
//! issues every operation and is the only one that dequeues, on a port of
//! concurrency 1: each completion runs on its issuer, and only when that
//! thread waits in [`CompletionPort::get`](cport::CompletionPort::get) —
//! the alertable wait. One thread serves everything, as in the tutorials,
//! where the accepting thread also runs every routine.

use std::io;
use std::net::TcpListener;
use std::sync::Arc;

use crate::{port, Stats, Stop};

/// Runs the echo server until `stop` is set; see the [crate] docs.
pub fn serve(
    listener: TcpListener,
    stop: Stop,
    stats: Arc<Stats>,
    buffer: usize,
) -> io::Result<()> {
    serve_on(listener, stop, stats, cport::Backend::Auto, buffer)
}

/// [`serve`] on a port of the given backend (`Auto` follows
/// `CPORT_BACKEND`).
pub fn serve_on(
    listener: TcpListener,
    stop: Stop,
    stats: Arc<Stats>,
    backend: cport::Backend,
    buffer: usize,
) -> io::Result<()> {
    Server::new(listener, backend, stats, buffer)?.serve(stop)
}

/// The callback model with its port already built, so a caller can say
/// which backend `Auto` chose before it serves.
#[derive(Debug)]
pub struct Server(port::Server);

impl Server {
    /// Builds the one-thread port (`Auto` follows `CPORT_BACKEND`), whose
    /// pool buffers hold `buffer` bytes, and associates `listener` with it.
    pub fn new(
        listener: TcpListener,
        backend: cport::Backend,
        stats: Arc<Stats>,
        buffer: usize,
    ) -> io::Result<Server> {
        port::Server::on_caller(backend, listener, stats, buffer).map(Server)
    }

    /// The backend the port runs on: never `Auto`.
    pub fn backend(&self) -> cport::Backend {
        self.0.backend()
    }

    /// Runs the echo server on this thread until `stop` is set; see the
    /// [crate] docs.
    pub fn serve(self, stop: Stop) -> io::Result<()> {
        self.0.serve(stop)
    }
}
