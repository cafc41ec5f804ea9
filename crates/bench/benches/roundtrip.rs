//! Loopback TCP echo round trips through a cport echo server.
//!
//! * `echo_1conn/<server>`: one connection, one 64-byte message in flight;
//!   one iteration is one round trip (client write 64 bytes, read 64 back).
//!   `cport-uring` and `cport-epoll` are the cport echo server of
//!   `cport_bench::EchoServer` (one worker thread) on each backend;
//!   `std-thread` is a blocking thread per connection, the floor set by the
//!   loopback itself.
//! * `echo_32conns/<server>`: 32 connections with one message in flight on
//!   each; one iteration is one round of 32 messages (the throughput line
//!   reads in messages). The server can reap several completions per
//!   kernel entry here: the batching figure.
//!
//! The client is the bench thread (blocking `std` sockets); the server runs
//! on its own thread. Everything binds 127.0.0.1:0 and stops by itself.
//! How to read the figures: docs/design/benchmark-method.md.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use cport::Backend;
use cport_bench::{usable_backends, EchoClient, EchoServer, STALL};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

/// Server threads of the cport echo server: one, so that the 2-core
/// machine has a core for the client and one for the server.
const SERVER_THREADS: usize = 1;

fn measure(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    client: &mut EchoClient,
) {
    g.bench_function(name, |bench| {
        bench.iter_custom(|iters| {
            let t = Instant::now();
            for i in 0..iters {
                client.round(i as u8).expect("echo round");
            }
            t.elapsed()
        })
    });
}

/// Runs one cport echo benchmark with `conns` connections and shuts the
/// server down: the client's close ends every connection, and the server
/// must see each end before it stops.
fn cport_echo(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    backend: Backend,
    conns: usize,
) {
    let server = EchoServer::start(backend, SERVER_THREADS).expect("start the echo server");
    let mut client = EchoClient::connect(server.addr(), conns).expect("connect");
    measure(g, &format!("cport-{backend}"), &mut client);
    drop(client);
    server
        .wait_closed(conns as u64, Instant::now() + STALL)
        .expect("every connection closes");
    server.stop().expect("stop the echo server");
}

/// A blocking echo thread per connection, for `conns` connections.
struct ThreadEcho {
    addr: SocketAddr,
    acceptor: JoinHandle<io::Result<()>>,
}

impl ThreadEcho {
    fn start(conns: usize) -> io::Result<ThreadEcho> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let acceptor = thread::Builder::new()
            .name("thread-echo".into())
            .spawn(move || {
                let mut echoers = Vec::new();
                for _ in 0..conns {
                    let (mut s, _) = listener.accept()?;
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(STALL * 6))?;
                    echoers.push(thread::spawn(move || -> io::Result<()> {
                        let mut buf = [0u8; 4096];
                        loop {
                            // 0 bytes: the client closed, the normal end.
                            match s.read(&mut buf)? {
                                0 => return Ok(()),
                                n => s.write_all(&buf[..n])?,
                            }
                        }
                    }));
                }
                for e in echoers {
                    e.join()
                        .map_err(|_| io::Error::other("an echo thread panicked"))??;
                }
                Ok(())
            })?;
        Ok(ThreadEcho { addr, acceptor })
    }

    fn stop(self) -> io::Result<()> {
        self.acceptor
            .join()
            .map_err(|_| io::Error::other("the acceptor panicked"))?
    }
}

fn thread_echo(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, conns: usize) {
    let server = ThreadEcho::start(conns).expect("start the thread echo server");
    let mut client = EchoClient::connect(server.addr, conns).expect("connect");
    measure(g, "std-thread", &mut client);
    drop(client);
    server.stop().expect("stop the thread echo server");
}

fn one_connection(c: &mut Criterion) {
    let backends = usable_backends();
    let mut g = c.benchmark_group("echo_1conn");
    g.throughput(Throughput::Elements(1));
    for &b in &backends {
        cport_echo(&mut g, b, 1);
    }
    thread_echo(&mut g, 1);
    g.finish();
}

fn many_connections(c: &mut Criterion) {
    const CONNS: usize = 32;
    let backends = usable_backends();
    let mut g = c.benchmark_group("echo_32conns");
    // Read per message: one iteration is one message on each connection.
    g.throughput(Throughput::Elements(CONNS as u64));
    // An iteration is ~32 round trips: fewer samples keep the time modest.
    g.sample_size(30);
    for &b in &backends {
        cport_echo(&mut g, b, CONNS);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = one_connection, many_connections
}
criterion_main!(benches);
