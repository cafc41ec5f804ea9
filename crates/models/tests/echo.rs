//! Every model passes the same echo tests: each test body runs once per
//! model (and the cport models once more on the epoll backend), against a
//! server on 127.0.0.1 port 0 that is stopped, in bounded time, at the end.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use cport_models::{Model, Stats, Stop, ECHO_BUFFER, MAX_BUFFER, MIN_BUFFER};

/// How long any single step may take before the test fails.
const STEP: Duration = Duration::from_secs(30);

/// A model's `serve`: listener, stop, stats, buffer size.
type Serve = fn(TcpListener, Stop, Arc<Stats>, usize) -> io::Result<()>;

struct Running {
    addr: SocketAddr,
    stop: Stop,
    stats: Arc<Stats>,
    done: mpsc::Receiver<io::Result<()>>,
}

fn start(
    serve: impl FnOnce(TcpListener, Stop, Arc<Stats>) -> io::Result<()> + Send + 'static,
) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    let stop = Stop::new();
    let stats = Arc::new(Stats::default());
    let (tx, done) = mpsc::channel();
    {
        let (stop, stats) = (stop.clone(), stats.clone());
        thread::spawn(move || {
            let _ = tx.send(serve(listener, stop, stats));
        });
    }
    Running {
        addr,
        stop,
        stats,
        done,
    }
}

/// `serve` with buffers of `buffer` bytes.
fn start_with(serve: Serve, buffer: usize) -> Running {
    start(move |l, s, st| serve(l, s, st, buffer))
}

impl Running {
    /// Stops the server and checks it returned `Ok` within [`STEP`].
    fn finish(self) {
        self.stop.stop();
        match self.done.recv_timeout(STEP) {
            Ok(r) => r.expect("the model's serve returns Ok after a stop"),
            Err(_) => panic!("the model did not stop within {STEP:?}"),
        }
        assert_eq!(
            self.stats.open.load(Ordering::Relaxed),
            0,
            "open after stop"
        );
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect_timeout(&self.addr, STEP).expect("connect");
        s.set_read_timeout(Some(STEP)).unwrap();
        s.set_write_timeout(Some(STEP)).unwrap();
        s
    }

    fn stat(&self, f: impl Fn(&Stats) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.stats).load(Ordering::Relaxed)
    }

    /// Waits until the server has closed `n` connections.
    fn wait_closed(&self, n: u64) {
        let ok = wait_until(|| self.stat(|s| &s.closed) >= n);
        assert!(
            ok,
            "the server closed {} of {n} connections within {STEP:?}",
            self.stat(|s| &s.closed)
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed test must not leave a model (nonblocking spins) running.
        self.stop.stop();
    }
}

fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + STEP;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// `len` bytes in which every byte value occurs (for len ≥ 256), different
/// for each `seed`.
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_add(seed.wrapping_mul(131)) % 256) as u8 ^ ((i / 256) % 7) as u8)
        .collect()
}

/// Writes `data` from another thread (the echo comes back while it is
/// still being written) and reads the same number of bytes back.
fn round_trip(s: &TcpStream, data: &[u8]) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let out = data.to_vec();
    let writer = thread::spawn(move || w.write_all(&out));
    let mut got = vec![0u8; data.len()];
    (&*s).read_exact(&mut got).expect("the echo arrives");
    writer.join().unwrap().expect("the write completes");
    got
}

fn all_byte_values(serve: Serve) {
    let server = start_with(serve, ECHO_BUFFER);
    let s = server.connect();
    let data = pattern(7, 64 * 1024);
    for v in 0..=255u8 {
        assert!(data.contains(&v), "the pattern holds byte {v}");
    }
    let got = round_trip(&s, &data);
    assert!(got == data, "64 KiB of every byte value echoed exactly");
    drop(s);
    server.wait_closed(1);
    assert_eq!(server.stat(|s| &s.bytes), data.len() as u64);
    assert_eq!(server.stat(|s| &s.errors), 0);
    server.finish();
}

fn one_client_many_messages(serve: Serve) {
    let server = start_with(serve, ECHO_BUFFER);
    let s = server.connect();
    let mut total = 0;
    for i in 0..100 {
        let msg = pattern(i, 1 + i * 37 % 3000);
        total += msg.len();
        assert_eq!(round_trip(&s, &msg), msg, "message {i}");
    }
    drop(s);
    server.wait_closed(1);
    assert_eq!(server.stat(|s| &s.accepted), 1);
    assert_eq!(server.stat(|s| &s.bytes), total as u64);
    server.finish();
}

fn concurrent_clients_get_their_own_bytes(serve: Serve) {
    const CLIENTS: usize = 200;
    const LEN: usize = 8 * 1024;
    let server = start_with(serve, ECHO_BUFFER);
    // Every client is connected before any sends, so all 200 are held at
    // once and their echoes interleave.
    let clients: Vec<TcpStream> = (0..CLIENTS).map(|_| server.connect()).collect();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                let data = pattern(i, LEN);
                barrier.wait();
                let (a, b) = data.split_at(LEN / 3);
                s.write_all(a).unwrap();
                let mut got = vec![0u8; LEN];
                s.read_exact(&mut got[..a.len()]).expect("first part");
                s.write_all(b).unwrap();
                s.read_exact(&mut got[a.len()..]).expect("second part");
                got == data
            })
        })
        .collect();
    let wrong: Vec<usize> = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .enumerate()
        .filter(|&(_, right)| !right)
        .map(|(i, _)| i)
        .collect();
    assert!(
        wrong.is_empty(),
        "clients {wrong:?} got bytes not their own"
    );
    server.wait_closed(CLIENTS as u64);
    assert_eq!(server.stat(|s| &s.accepted), CLIENTS as u64);
    assert_eq!(server.stat(|s| &s.bytes), (CLIENTS * LEN) as u64);
    server.finish();
}

fn half_close_echoes_everything_then_eof(serve: Serve) {
    let server = start_with(serve, ECHO_BUFFER);
    let mut s = server.connect();
    // More than the server's buffer and the socket buffers hold, so the
    // end of the stream arrives while echoes are still pending.
    let data = pattern(3, 512 * 1024);
    let mut w = s.try_clone().unwrap();
    let out = data.clone();
    let writer = thread::spawn(move || {
        w.write_all(&out)?;
        w.shutdown(Shutdown::Write)
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("echo, then end of stream");
    writer.join().unwrap().expect("write and shutdown");
    assert_eq!(got.len(), data.len(), "every byte echoed before EOF");
    assert!(got == data, "the echo matches");
    server.wait_closed(1);
    assert_eq!(server.stat(|s| &s.errors), 0);
    server.finish();
}

fn peer_reset_does_not_stop_the_server(serve: Serve) {
    let server = start_with(serve, ECHO_BUFFER);
    let mut s = server.connect();
    s.write_all(&pattern(1, 32 * 1024)).unwrap();
    let mut some = [0u8; 1024];
    s.read_exact(&mut some).expect("part of the echo");
    // SO_LINGER 0: close sends RST, with echoes still in flight.
    let sock = socket2::Socket::from(s);
    sock.set_linger(Some(Duration::ZERO)).unwrap();
    drop(sock);
    server.wait_closed(1);
    // The next client is still served.
    let s = server.connect();
    let data = pattern(2, 4096);
    assert_eq!(round_trip(&s, &data), data);
    drop(s);
    server.wait_closed(2);
    server.finish();
}

/// With the least buffer a model takes (64 B), a message of many buffers
/// from each of two clients at once comes back whole and in order: every
/// read fills the buffer, and the next waits for its echo.
fn the_least_buffers_echo_every_byte_in_order(serve: Serve) {
    let server = start_with(serve, MIN_BUFFER);
    let (a, b) = (server.connect(), server.connect());
    let (da, db) = (pattern(3, 40_000), pattern(4, 40_000));
    let other = {
        let db = db.clone();
        thread::spawn(move || round_trip(&b, &db))
    };
    assert!(
        round_trip(&a, &da) == da,
        "client a's 40,000 bytes echoed exactly"
    );
    assert!(
        other.join().unwrap() == db,
        "client b's 40,000 bytes echoed exactly"
    );
    drop(a);
    server.wait_closed(2);
    assert_eq!(server.stat(|s| &s.bytes), 80_000);
    assert_eq!(server.stat(|s| &s.errors), 0);
    server.finish();
}

/// A buffer below 64 B or above 1 MiB is refused before anything is
/// served: an empty one would read as end of stream, or never be read into.
fn a_buffer_outside_the_range_is_refused(serve: Serve) {
    for size in [0, MIN_BUFFER - 1, MAX_BUFFER + 1] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let err =
            serve(listener, Stop::new(), Arc::new(Stats::default()), size).expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{size}: {err}");
        assert!(err.to_string().contains(&format!("{size} bytes")), "{err}");
    }
}

fn stops_with_clients_connected(serve: Serve) {
    let server = start_with(serve, ECHO_BUFFER);
    let clients: Vec<TcpStream> = (0..3).map(|_| server.connect()).collect();
    for (i, c) in clients.iter().enumerate() {
        let msg = pattern(i, 100);
        assert_eq!(round_trip(c, &msg), msg);
    }
    server.finish();
    // Stopping closed them: a read ends (EOF or reset) instead of waiting.
    for mut c in clients {
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!("{n} unexpected bytes after the stop"),
            Err(e) => assert_ne!(e.kind(), io::ErrorKind::WouldBlock, "the read timed out"),
        }
    }
}

macro_rules! per_model {
    ($($(#[$attr:meta])* $name:ident => $serve:expr),* $(,)?) => {
        $(
            $(#[$attr])*
            mod $name {
                use super::*;
                const SERVE: Serve = $serve;
                #[test]
                fn all_byte_values() { super::all_byte_values(SERVE) }
                #[test]
                fn one_client_many_messages() { super::one_client_many_messages(SERVE) }
                #[test]
                fn concurrent_clients_get_their_own_bytes() {
                    super::concurrent_clients_get_their_own_bytes(SERVE)
                }
                #[test]
                fn half_close_echoes_everything_then_eof() {
                    super::half_close_echoes_everything_then_eof(SERVE)
                }
                #[test]
                fn peer_reset_does_not_stop_the_server() {
                    super::peer_reset_does_not_stop_the_server(SERVE)
                }
                #[test]
                fn stops_with_clients_connected() { super::stops_with_clients_connected(SERVE) }
                #[test]
                fn a_buffer_outside_the_range_is_refused() {
                    super::a_buffer_outside_the_range_is_refused(SERVE)
                }
                #[test]
                fn the_least_buffers_echo_every_byte_in_order() {
                    super::the_least_buffers_echo_every_byte_in_order(SERVE)
                }
            }
        )*
    };
}

per_model! {
    blocking => cport_models::blocking::serve,
    nonblocking => cport_models::nonblocking::serve,
    select => cport_models::select::serve,
    poll => cport_models::poll::serve,
    #[cfg(unix)]
    epoll => cport_models::epoll::serve,
    message => cport_models::message::serve,
    event => cport_models::event::serve,
    // Backend::Auto: io_uring where allowed (CPORT_BACKEND overrides).
    overlapped => cport_models::overlapped::serve,
    callback => cport_models::callback::serve,
    port => cport_models::port::serve,
    #[cfg(unix)]
    overlapped_on_epoll => |l, s, st, b| cport_models::overlapped::serve_on(l, s, st, cport::Backend::Epoll, b),
    #[cfg(unix)]
    callback_on_epoll => |l, s, st, b| cport_models::callback::serve_on(l, s, st, cport::Backend::Epoll, b),
    #[cfg(unix)]
    port_on_epoll => |l, s, st, b| cport_models::port::serve_on(l, s, st, cport::Backend::Epoll, 0, b),
}

#[test]
fn model_names_round_trip() {
    for m in Model::ALL {
        assert_eq!(m.name().parse::<Model>(), Ok(m));
        assert_eq!(m.to_string(), m.name());
    }
    let names: Vec<&str> = Model::ALL.iter().map(|m| m.name()).collect();
    assert_eq!(
        names,
        [
            "blocking",
            "nonblocking",
            "select",
            "poll",
            "epoll",
            "message",
            "event",
            "overlapped",
            "callback",
            "port"
        ]
    );
    let err = "iocp".parse::<Model>().unwrap_err().to_string();
    assert!(
        err.contains("\"iocp\"") && err.contains("blocking"),
        "{err}"
    );
}

#[test]
fn the_enum_dispatches_to_each_model() {
    for m in Model::ALL {
        if let Some(why) = m.unavailable() {
            println!("skipped {m}: {why}");
            continue;
        }
        let server = start_model(m);
        let s = server.connect();
        let msg = pattern(9, 1000);
        assert_eq!(round_trip(&s, &msg), msg, "{m}");
        drop(s);
        server.wait_closed(1);
        server.finish();
    }
}

fn start_model(m: Model) -> Running {
    start(move |l, s, st| m.serve(l, s, st, ECHO_BUFFER))
}

/// The thread cost each model is built to show, with 200 connections held:
/// a thread per connection, one per group of 64 sockets (select) or of 63
/// sockets plus a control event (event, overlapped), a worker pool (port),
/// or a fixed few.
#[test]
fn threads_each_model_runs_for_200_connections() {
    const CLIENTS: usize = 200;
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    // On Unix one thread stands in for the kernel's signalling (event
    // objects, window messages, overlapped completions); on Windows the
    // kernel does it.
    let signal = usize::from(cfg!(unix));
    for m in Model::ALL {
        let expected = match m {
            // The accepting thread and one per connection.
            Model::Blocking => 1 + CLIENTS,
            // The accepting thread and ⌈200 / 64⌉ groups.
            Model::Select => 1 + CLIENTS.div_ceil(cport_models::select::GROUP),
            // The accepting thread, the signalling one, ⌈200 / 63⌉ groups.
            Model::Event => 1 + signal + CLIENTS.div_ceil(cport_models::event::GROUP),
            // The accepting thread, the completing one, ⌈200 / 63⌉ groups.
            Model::Overlapped => 1 + signal + CLIENTS.div_ceil(cport_models::overlapped::GROUP),
            // The message loop and the signalling thread.
            Model::Message => 1 + signal,
            // The waiting thread and 2 × CPUs workers.
            Model::Port => 1 + 2 * cpus,
            Model::Nonblocking | Model::Poll | Model::Epoll | Model::Callback => 1,
        };
        if let Some(why) = m.unavailable() {
            println!("skipped {m}: {why}");
            continue;
        }
        let server = start_model(m);
        let clients: Vec<TcpStream> = (0..CLIENTS).map(|_| server.connect()).collect();
        // One echo each: every connection has reached its thread or group.
        for (i, c) in clients.iter().enumerate() {
            let msg = pattern(i, 16);
            assert_eq!(round_trip(c, &msg), msg, "{m}");
        }
        assert_eq!(server.stat(|s| &s.open), CLIENTS as u64, "{m}");
        assert_eq!(server.stat(|s| &s.threads), expected as u64, "{m}");
        drop(clients);
        server.wait_closed(CLIENTS as u64);
        server.finish();
    }
}
