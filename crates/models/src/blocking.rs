//! Blocking sockets, a thread per connection: the tutorials' first server.
//!
//! The accepting thread blocks in `accept`; each connection's thread
//! blocks in `read` and then in `write_all`. Its cost is a thread (and its
//! stack) per connection and a context switch per message.
//!
//! The same code on both platforms: the standard library's blocking
//! `accept`, `recv` and `send`. Only stopping differs: on Windows a
//! `shutdown` does not end a `recv` another thread is blocked in, so the
//! stop also cancels the socket's pending I/O (`CancelIoEx`).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::{accept_blocking, lock, spawn, Stats, Stop};

/// Runs the echo server until `stop` is set; see the [crate] docs.
pub fn serve(
    listener: TcpListener,
    stop: Stop,
    stats: Arc<Stats>,
    buffer: usize,
) -> io::Result<()> {
    crate::check_buffer(buffer)?;
    let _me = stats.thread();
    listener.set_nonblocking(false)?;
    // Clones of the open streams, so that stopping can end the threads
    // blocked in read.
    let open: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
    {
        let open = open.clone();
        stop.on_stop(move || {
            for s in lock(&open).values() {
                let _ = s.shutdown(Shutdown::Both);
                #[cfg(windows)]
                crate::win::cancel_io(s);
            }
        });
    }
    stop.wake_accept(listener.local_addr()?);
    let next = AtomicU64::new(0);
    let mut threads = Vec::new();
    while let Some(stream) = accept_blocking(&listener, &stop) {
        let id = next.fetch_add(1, Ordering::Relaxed);
        {
            let mut map = lock(&open);
            // Registered under the lock the stop waker takes, and checked
            // after: a connection accepted as the stop happens is shut down
            // by one or the other.
            match stream.try_clone() {
                Ok(c) => map.insert(id, c),
                Err(_) => continue,
            };
            if stop.is_stopped() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            // (Here no recv is pending yet: on Windows the thread's first
            // recv fails on the shut-down socket.)
        }
        stats.opened();
        let (stats2, open2) = (stats.clone(), open.clone());
        let spawned = spawn("model-blocking", &stats, move || {
            let error = echo(stream, &stats2, buffer).is_err();
            lock(&open2).remove(&id);
            stats2.ended(error);
        });
        match spawned {
            Ok(t) => threads.push(t),
            Err(_) => {
                lock(&open).remove(&id);
                stats.ended(true);
            }
        }
        threads.retain(|t| !t.is_finished());
    }
    crate::join_all(threads)
}

fn echo(mut stream: TcpStream, stats: &Stats, buffer: usize) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; buffer];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        stream.write_all(&buf[..n])?;
        stats.echoed(n);
    }
}
