//! The tutorials' IOCP echo server, on cport.
//!
//! As in the seed: a port whose concurrency is the number of CPUs, twice
//! as many worker threads blocked in `get`, the main thread accepting
//! connections and associating each one under its own completion key, then
//! one receive per connection. A receive completion starts a send of the
//! same buffer; a send completion starts the next receive; a receive of 0
//! bytes means the client closed, so the server closes too.
//!
//! ```text
//! cargo run --release -p cport --example echo            # 127.0.0.1:9000
//! cargo run --release -p cport --example echo -- 0.0.0.0:9000
//! ```
//!
//! It binds 127.0.0.1 unless told otherwise: an echo server open to the
//! network answers anyone. Stop it with Ctrl-C.

use std::env;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::process;

use cport::{Completion, CompletionPort, OpKind, Workers};

/// Per-I/O data (the tutorials' `SOCKETINFO` without the buffer, which
/// the operation itself owns): the client's address, for the log lines.
#[derive(Debug)]
struct Conn {
    peer: Option<SocketAddr>,
}

/// Receive room per connection, as the seed's `BUFSIZE`.
const BUFSIZE: usize = 4096;

fn main() {
    let addr = env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".to_string());
    if let Err(e) = serve(&addr) {
        eprintln!("echo: {e}");
        process::exit(1);
    }
}

fn serve(addr: &str) -> io::Result<()> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    let port = CompletionPort::<Conn>::new(0)?;
    let workers = Workers::spawn(&port, 0, on_completion)?;
    println!(
        "[TCP server] listening on {} (backend {}, concurrency {}, {} workers)",
        listener.local_addr()?,
        port.backend(),
        port.concurrency(),
        workers.len()
    );

    // Accept on the main thread, as the tutorials do; each connection's
    // completion key is its number.
    for (key, stream) in (1u64..).zip(listener.incoming()) {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: report and go on, as the seed's
                // `continue`; the next accept may succeed.
                eprintln!("[TCP server] accept: {e}");
                continue;
            }
        };
        let peer = stream.peer_addr().ok();
        stream.set_nodelay(true)?;
        let handle = port.associate(stream, key)?;
        println!("[TCP server] client connected: {}", show(peer));
        if let Err(r) = port.recv(handle, Vec::with_capacity(BUFSIZE), Conn { peer }) {
            eprintln!("[TCP server] recv: {}", r.error);
            let _ = port.close(handle);
        }
    }
    Ok(())
}

// README excerpt: begin (README.md quotes these lines; crates/models/src/port/readme.rs checks it)
/// One completion, on a worker thread. An error returned here (an
/// operation the port refused) is logged by the pool with the worker's name
/// and the completion's key; the worker goes on.
fn on_completion(port: &CompletionPort<Conn>, c: Completion<Conn>) -> io::Result<()> {
    let handle = c.handle.expect("I/O completions carry their handle");
    let conn = c.value; // the per-I/O data, back unchanged
    let mut buf = match c.payload.into_buf() {
        Some(buf) => buf, // the buffer the operation owned, back too
        None => return Ok(()),
    };
    match (c.kind, c.result) {
        // The client closed: a receive of 0 bytes.
        (OpKind::Recv, Ok(0)) => {
            println!("[TCP server] client closed: {}", show(conn.peer));
            port.close(handle)?;
        }
        // A reset, or any other failure: the connection is done.
        (kind, Err(e)) => {
            println!(
                "[TCP server] client lost: {} ({kind:?}: {e})",
                show(conn.peer)
            );
            port.close(handle)?;
        }
        // Received: send the same bytes back.
        (OpKind::Recv, Ok(_)) => {
            port.send(handle, buf, conn)?;
        }
        // Sent, all of it (a send completes only then): receive again.
        _ => {
            buf.clear();
            port.recv(handle, buf, conn)?;
        }
    }
    Ok(())
}
// README excerpt: end

fn show(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "unknown peer".to_string(), |p| p.to_string())
}
