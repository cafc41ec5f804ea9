//! The completion port with a worker pool, as `cport serve` runs it: any
//! worker runs any completion, at most `concurrency` at once.
//!
//! Each connection has one operation in flight, a receive or the send of
//! what it received, so a connection's echo needs no lock. Receives are
//! `recv_pooled`: no buffer is pinned while a connection is idle.

use std::io;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;

use cport::{Backend, Completion, CompletionPort, Handle, OpKind, Payload, Workers};

use crate::{Stats, Stop, ACCEPT_BACKOFF, ECHO_BUFFER};

#[derive(Clone, Debug)]
enum Tag {
    Accept,
    Conn,
    Quit,
}

/// Receive buffers in the port's pool (as `cport serve`).
const POOL_BUFFERS: u16 = 256;

/// Runs the echo server until `stop` is set, on the backend
/// `CPORT_BACKEND` names (io_uring where allowed, else epoll), with 2 ×
/// CPUs workers; see the [crate] docs.
pub fn serve(listener: TcpListener, stop: Stop, stats: Arc<Stats>) -> io::Result<()> {
    serve_on(listener, stop, stats, Backend::Auto, 0)
}

/// [`serve`] on the given backend with `workers` worker threads (0: 2 ×
/// CPUs).
pub fn serve_on(
    listener: TcpListener,
    stop: Stop,
    stats: Arc<Stats>,
    backend: Backend,
    workers: usize,
) -> io::Result<()> {
    let _me = stats.thread();
    let port: CompletionPort<Tag> = cport::Builder::new()
        .backend(backend)
        .pool(POOL_BUFFERS, ECHO_BUFFER)
        .batch_submissions(true)
        .build()?;
    let listener = port.associate(listener, 0)?;
    let (stopped_tx, stopped_rx) = mpsc::channel();
    stop.on_stop(move || {
        let _ = stopped_tx.send(());
    });
    let handler = {
        let stats = stats.clone();
        move |port: &CompletionPort<Tag>, c: Completion<Tag>| complete(port, listener, c, &stats)
    };
    let pool = Workers::spawn(&port, workers, handler)?;
    // Counted here: the pool's threads are not spawned through `spawn`.
    stats.add_threads(pool.len() as i64);
    let started = port.accept_multi(listener, Tag::Accept).map(|_| ());
    if started.is_ok() {
        let _ = stopped_rx.recv();
    }
    let threads = pool.len();
    let stopped = pool.stop(Tag::Quit);
    stats.add_threads(-(threads as i64));
    port.close_port();
    stats.end_all();
    started?;
    stopped.map_err(|p| io::Error::other(p.to_string()))
}

fn complete(port: &CompletionPort<Tag>, listener: Handle, c: Completion<Tag>, stats: &Stats) {
    match c.value {
        Tag::Quit => {}
        Tag::Accept => {
            if let (Ok(_), Payload::Accepted { stream, .. }) = (&c.result, c.payload) {
                let _ = stream.set_nodelay(true);
                match port.associate(stream, 0) {
                    Ok(h) => {
                        stats.opened();
                        recv(port, h, stats);
                    }
                    Err(_) => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if !c.more && !port.is_closed() {
                // Ended by an error such as EMFILE: re-arm after a pause,
                // with this worker's slot given up meanwhile (LESSONS 6).
                port.blocking(|| std::thread::sleep(ACCEPT_BACKOFF));
                let _ = port.accept_multi(listener, Tag::Accept);
            }
        }
        Tag::Conn => {
            let h = c.handle.expect("an I/O completion has its handle");
            match (c.kind, c.result, c.payload) {
                (OpKind::RecvPooled, Ok(n), Payload::Buf(buf)) if n > 0 => {
                    if let Err(r) = port.send(h, buf, Tag::Conn) {
                        if let Some(b) = r.payload.into_buf() {
                            port.recycle(b);
                        }
                        end(port, h, stats, true);
                    }
                }
                (OpKind::RecvPooled, Ok(_), p) => {
                    if let Some(b) = p.into_buf() {
                        port.recycle(b);
                    }
                    end(port, h, stats, false);
                }
                (OpKind::Send, Ok(n), Payload::Buf(buf)) => {
                    stats.echoed(n);
                    port.recycle(buf);
                    recv(port, h, stats);
                }
                (_, _, p) => {
                    if let Some(b) = p.into_buf() {
                        port.recycle(b);
                    }
                    end(port, h, stats, true);
                }
            }
        }
    }
}

fn recv(port: &CompletionPort<Tag>, h: Handle, stats: &Stats) {
    if port.recv_pooled(h, Tag::Conn).is_err() {
        end(port, h, stats, true);
    }
}

fn end(port: &CompletionPort<Tag>, h: Handle, stats: &Stats, error: bool) {
    let _ = port.close(h);
    stats.ended(error);
}
