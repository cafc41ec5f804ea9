//! The limit of the models that wait on event objects (event, overlapped):
//! one thread waits on at most 64 (WSA_MAXIMUM_WAIT_EVENTS), one of them
//! its control event, so a group thread holds 63 sockets and the 64th
//! socket starts another thread. The thread count is what the limit
//! shapes, so that is what is checked, connection by connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use cport_models::{Stats, Stop, ECHO_BUFFER};

const STEP: Duration = Duration::from_secs(30);

type Serve = fn(TcpListener, Stop, Arc<Stats>, usize) -> io::Result<()>;

fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + STEP;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
    true
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, STEP).expect("connect");
    s.set_read_timeout(Some(STEP)).unwrap();
    s.set_write_timeout(Some(STEP)).unwrap();
    s
}

/// One small echo: once it is back, the connection has reached a group
/// thread, which the accepting thread counted before handing it over.
fn echo(mut s: &TcpStream, i: usize) {
    let msg = format!("message {i}");
    s.write_all(msg.as_bytes()).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).expect("the echo arrives");
    assert_eq!(got, msg.as_bytes());
}

/// Threads `serve` runs before any connection: on Unix the accepting
/// thread and the stand-in for the kernel's signalling (the signalling or
/// completion thread); on Windows the kernel sets the event objects
/// itself, and only the accepting thread runs.
const BASE: usize = if cfg!(windows) { 1 } else { 2 };

/// `serve` runs [`BASE`] threads before any connection, and a group
/// thread per `group` connections.
fn a_thread_per_63_sockets(name: &str, serve: Serve, group: usize) {
    assert_eq!(group, 63, "{name}: 64 events per thread, one the control");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Stop::new();
    let stats = Arc::new(Stats::default());
    let (tx, done) = mpsc::channel();
    {
        let (stop, stats) = (stop.clone(), stats.clone());
        thread::spawn(move || {
            let _ = tx.send(serve(listener, stop, stats, ECHO_BUFFER));
        });
    }
    let threads = || stats.threads.load(Ordering::Relaxed) as usize;
    assert!(
        wait_until(|| threads() == BASE),
        "{name}: {} threads before any connection, not {BASE}",
        threads()
    );

    // Up to the 127th socket: 63 fill the first group, the 64th starts
    // the second, the 127th the third.
    let mut clients = Vec::new();
    for n in 1..=2 * group + 1 {
        let c = connect(addr);
        echo(&c, n);
        clients.push(c);
        assert_eq!(
            threads(),
            BASE + n.div_ceil(group),
            "{name}: threads with {n} sockets"
        );
    }
    // Every group still serves every one of its sockets.
    for (i, c) in clients.iter().enumerate() {
        echo(c, i);
    }
    assert_eq!(
        stats.peak_threads.load(Ordering::Relaxed) as usize,
        BASE + 3,
        "{name}"
    );
    assert_eq!(stats.open.load(Ordering::Relaxed), 127, "{name}");

    drop(clients);
    assert!(
        wait_until(|| stats.closed.load(Ordering::Relaxed) == 127),
        "{name}: closed {} of 127",
        stats.closed.load(Ordering::Relaxed)
    );
    assert_eq!(stats.errors.load(Ordering::Relaxed), 0, "{name}");
    stop.stop();
    let r = done
        .recv_timeout(STEP)
        .unwrap_or_else(|_| panic!("{name} did not stop within {STEP:?}"));
    r.unwrap_or_else(|e| panic!("{name}'s serve returned {e}"));
}

#[test]
fn event_waits_on_64_events_per_thread() {
    a_thread_per_63_sockets(
        "event",
        cport_models::event::serve,
        cport_models::event::GROUP,
    );
}

#[test]
fn overlapped_waits_on_64_events_per_thread() {
    a_thread_per_63_sockets(
        "overlapped",
        cport_models::overlapped::serve,
        cport_models::overlapped::GROUP,
    );
}

#[cfg(unix)]
#[test]
fn overlapped_on_epoll_waits_on_64_events_per_thread() {
    a_thread_per_63_sockets(
        "overlapped on epoll",
        |l, s, st, b| cport_models::overlapped::serve_on(l, s, st, cport::Backend::Epoll, b),
        cport_models::overlapped::GROUP,
    );
}
