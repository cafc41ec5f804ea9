//! What a hostile or careless client cannot do to `cport serve`, on each
//! backend: leak descriptors with resets and connect/close storms, or grow
//! the server's memory by sending without reading.

// Linux only, as tests/common is (see there).
#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use common::{connect, fill_until_stalled, pattern, wait_until, Server, STEP};
use socket2::SockRef;

/// Closes `s` with SO_LINGER 0: the peer gets a reset, not a FIN.
fn reset(s: std::net::TcpStream) {
    SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
}

/// Resets before, during and after transfers, and a storm of connects
/// closed at once: afterwards the server holds exactly the descriptors it
/// held before, logs the resets as such, and still echoes.
fn resets_and_storms_leave_no_descriptor_behind(backend: &str) {
    let Some(server) = Server::start(backend, &[]) else {
        return;
    };
    // Whatever the first connection allocates for good (nothing is
    // expected) belongs to the baseline, not to a leak.
    server.assert_echoes();
    assert!(server.wait_closed(1, STEP), "{}", server.stderr());
    let baseline = server.fd_count();

    // Connect and close at once, 300 times, from several threads.
    let storm: Vec<_> = (0..4)
        .map(|_| {
            let addr = server.addr;
            thread::spawn(move || {
                for i in 0..75 {
                    let s = connect(addr);
                    if i % 2 == 0 {
                        reset(s);
                    } else {
                        drop(s);
                    }
                }
            })
        })
        .collect();
    for t in storm {
        t.join().unwrap();
    }

    // Reset in the middle of a transfer: data sent, some echo unread.
    for i in 0..40 {
        let mut s = connect(server.addr);
        let data = pattern(i, 256 * 1024);
        s.write_all(&data[..64 * 1024]).unwrap();
        let mut some = [0u8; 1024];
        s.read_exact(&mut some).unwrap();
        assert_eq!(&some[..], &data[..1024]);
        reset(s);
    }

    // Reset while the server is blocked sending to a client that did not
    // read.
    for _ in 0..5 {
        let s = connect(server.addr);
        fill_until_stalled(&s, 64 << 20);
        reset(s);
    }

    eprintln!(
        "{backend}: {baseline} descriptors before the storm, {} right after",
        server.fd_count()
    );
    assert!(
        wait_until(STEP, || server.fd_count() == baseline),
        "descriptors: {} now, {baseline} before",
        server.fd_count()
    );
    assert!(
        server.wait_stderr("reset by peer", STEP),
        "{}",
        server.stderr()
    );
    server.assert_echoes();
    assert!(
        wait_until(STEP, || server.fd_count() == baseline),
        "descriptors after the last echo: {} now, {baseline} before",
        server.fd_count()
    );
}

/// A client that sends but never reads: the server stops reading from it
/// once its echo cannot be sent (the client's writes stall long before it
/// has sent much), the server's memory does not grow with what the client
/// tries to send, and another client keeps getting prompt echoes.
fn a_client_that_never_reads_is_held_back_and_others_are_served(backend: &str) {
    hog_is_held_back(backend, &[]);
}

/// The same with a port per thread (`--shards`), where a connection's
/// receive runs on without waiting for its echo: it is cancelled once too
/// many echoes wait to be sent.
fn shards_hold_back_a_client_that_never_reads(backend: &str) {
    hog_is_held_back(backend, &["--shards", "2"]);
}

fn hog_is_held_back(backend: &str, extra: &[&str]) {
    let Some(server) = Server::start(backend, extra) else {
        return;
    };
    server.assert_echoes();
    let rss_before = server.rss_kib();

    const OFFERED: usize = 256 << 20;
    let hog = connect(server.addr);
    let taken = fill_until_stalled(&hog, OFFERED);
    // What loopback socket buffers hold on both sides (a few MiB with
    // autotuning), far below what was offered.
    assert!(
        taken < 64 << 20,
        "the server kept reading from a client that never reads: {} MiB taken",
        taken >> 20
    );

    let mut other = connect(server.addr);
    let msg = pattern(9, 1024);
    let mut got = vec![0u8; msg.len()];
    let mut slowest = Duration::ZERO;
    for _ in 0..100 {
        let t = Instant::now();
        other.write_all(&msg).unwrap();
        other.read_exact(&mut got).unwrap();
        slowest = slowest.max(t.elapsed());
        assert!(got == msg);
    }
    assert!(
        slowest < Duration::from_secs(1),
        "another client's round trip took {slowest:?}"
    );

    // The hog is still held back: nothing more is taken from it.
    let more = fill_until_stalled(&hog, OFFERED);
    assert!(
        more < 4 << 20,
        "{} MiB more were taken from the hog",
        more >> 20
    );
    let rss_after = server.rss_kib();
    eprintln!(
        "{backend}: {} KiB taken from the hog before it stalled, {} KiB more after; \
         server RSS {rss_before} KiB -> {rss_after} KiB; slowest other round trip {slowest:?}",
        taken >> 10,
        more >> 10
    );
    assert!(
        rss_after < rss_before + 32 * 1024,
        "server RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

per_backend!(
    resets_and_storms_leave_no_descriptor_behind,
    a_client_that_never_reads_is_held_back_and_others_are_served,
    shards_hold_back_a_client_that_never_reads,
);
