//! select's limit: a connection whose descriptor number is FD_SETSIZE or
//! more is refused with a count and a message, never put in an fd_set
//! (FD_SET would write past the set's end). Its own test binary, because
//! it occupies every descriptor number below FD_SETSIZE in the process.
//!
//! Unix only: a Windows `fd_set` is an array of up to 64 sockets, not a
//! bitmap indexed by number, and the model's groups of 64 are checked by
//! the thread counts in `echo.rs`.
#![cfg(unix)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use cport_models::select::FD_LIMIT;
use cport_models::{Stats, Stop};

const STEP: Duration = Duration::from_secs(30);

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

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, STEP).expect("connect");
    s.set_read_timeout(Some(STEP)).unwrap();
    s.set_write_timeout(Some(STEP)).unwrap();
    s
}

#[test]
fn descriptors_past_fd_setsize_are_refused_not_corrupting() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Stop::new();
    let stats = Arc::new(Stats::default());
    let (tx, done) = mpsc::channel();
    {
        let (stop, stats) = (stop.clone(), stats.clone());
        thread::spawn(move || {
            let _ = tx.send(cport_models::select::serve(
                listener,
                stop,
                stats,
                cport_models::ECHO_BUFFER,
            ));
        });
    }
    // The accepting thread and the first group are running.
    assert!(wait_until(|| stats.threads.load(Ordering::Relaxed) >= 2));

    // Take every free descriptor number below FD_SETSIZE, then connect.
    // Another thread of the test process (the harness) may free a low
    // number meanwhile, and the server then accepts into it: take the
    // numbers again and retry.
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..20 {
        loop {
            match File::open("/dev/null") {
                Ok(f) if (f.as_raw_fd() as usize) < FD_LIMIT => held.push(f),
                Ok(_) => break,
                Err(e) => {
                    eprintln!("skipped: cannot hold {FD_LIMIT} descriptors here ({e})");
                    stop.stop();
                    return;
                }
            }
        }
        let refused_before = stats.refused.load(Ordering::Relaxed);
        let accepted_before = stats.accepted.load(Ordering::Relaxed);
        let c = connect(addr);
        assert!(
            wait_until(|| stats.refused.load(Ordering::Relaxed) > refused_before
                || stats.accepted.load(Ordering::Relaxed) > accepted_before),
            "the server took the connection: {stats:?}"
        );
        if stats.refused.load(Ordering::Relaxed) > refused_before {
            refused = Some(c);
            break;
        }
    }
    let mut refused = refused.expect("a connection got a descriptor past FD_SETSIZE");
    let mut b = [0u8; 1];
    // The server closed it: end of stream (or a reset), not an echo.
    let _ = refused.write_all(b"x");
    assert!(
        matches!(refused.read(&mut b), Ok(0) | Err(_)),
        "a refused connection gets no echo"
    );

    // With numbers free again, the server still serves. (A thread of the
    // harness may briefly hold many descriptors too: a connection refused
    // meanwhile is retried.)
    drop(held);
    let mut served = false;
    for _ in 0..20 {
        let refused_before = stats.refused.load(Ordering::Relaxed);
        let mut s = connect(addr);
        s.write_all(b"still serving").unwrap();
        let mut got = [0u8; 13];
        match s.read_exact(&mut got) {
            Ok(()) => {
                assert_eq!(&got, b"still serving");
                served = true;
                break;
            }
            Err(e) => assert!(
                stats.refused.load(Ordering::Relaxed) > refused_before,
                "no echo ({e}), and the connection was not refused: {stats:?}"
            ),
        }
    }
    assert!(served, "served again once descriptors were free: {stats:?}");

    stop.stop();
    let r = done.recv_timeout(STEP).expect("select stops in time");
    r.expect("select's serve returns Ok");
}
