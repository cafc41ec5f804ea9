//! Failures a user meets first: a port in use, a mistyped flag, a server
//! that is not there. One clear line each, exit code 2 for usage and 1 for
//! a failure while running.

// Linux only, as tests/common is (see there).
#![cfg(target_os = "linux")]

mod common;

use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use common::{lines, run_cport, STEP};

fn tcp_port_in_use_is_one_line_and_exit_1(backend: &str) {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = run_cport(&["serve", "--port", &port, "--backend", backend], b"", STEP);
    assert_eq!(out.status.code(), Some(1));
    let err = lines(&out.stderr);
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(
        err[0].contains(&format!("127.0.0.1:{port} (tcp)"))
            && err[0].to_lowercase().contains("address already in use"),
        "{}",
        err[0]
    );
    assert!(
        out.stdout.is_empty(),
        "no listening line for a failed start"
    );
}

fn udp_port_in_use_is_one_line_and_exit_1(backend: &str) {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = run_cport(
        &["serve", "--no-tcp", "--port", &port, "--backend", backend],
        b"",
        STEP,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = lines(&out.stderr);
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(
        err[0].contains("(udp)") && err[0].to_lowercase().contains("address already in use"),
        "{}",
        err[0]
    );
}

fn bad_usage_exits_2(backend: &str) {
    for args in [
        &["serve", "--backend", backend, "--no-such-flag"][..],
        &["serve", "--backend", backend, "--port", "70000"],
        &["serve", "--backend", backend, "--workers", "0"],
        &["serve", "--backend", backend, "--idle-timeout", "soon"],
        &["serve", "--backend", backend, "--no-tcp", "--no-udp"],
        &["serve", "--backend", "kqueue"],
        &["client", "no-port-here"],
        &["load", "--conns", "0"],
        &["frobnicate"],
    ] {
        let out = run_cport(args, b"", STEP);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "{args:?} says what is wrong");
    }
    let out = run_cport(
        &["serve", "--backend", backend, "--no-tcp", "--no-udp"],
        b"",
        STEP,
    );
    let err = lines(&out.stderr);
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(err[0].contains("--no-tcp and --no-udp"), "{}", err[0]);
}

/// Values out of range are refused at parse time (exit 2) in words: a
/// period of 0 for load, 0 connections for --max-conns.
#[test]
fn zero_periods_and_limits_are_refused_in_words() {
    for (args, want) in [
        (&["load", "--duration", "0s"][..], "measures nothing"),
        (&["serve", "--max-conns", "0"], "give at least 1"),
        (&["serve", "--workers", "2000"], "give from 1 to 1024"),
        (&["serve", "--shards", "0"], "give from 1 to 256"),
        // A port per thread has no pool, no limit, no idle timer: refused,
        // not ignored.
        (
            &["serve", "--shards", "2", "--workers", "4"],
            "--shards does not support --workers",
        ),
        (
            &["serve", "--shards", "2", "--idle-timeout", "1s"],
            "--idle-timeout",
        ),
        (
            &["serve", "--model", "epoll", "--shards", "2"],
            "does not support --shards",
        ),
    ] {
        let out = run_cport(args, b"", STEP);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("18446744073709551615"), "{args:?}: {err}");
    }
}

/// A client or load generator pointed at a port nobody listens on (no
/// server, so no backend to vary).
#[test]
fn nothing_listening_is_one_line_and_exit_1() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    for args in [
        &["client", &addr][..],
        &["load", &addr, "--duration", "1s", "--warmup", "0s"],
    ] {
        let out = run_cport(args, b"hello\n", Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = lines(&out.stderr);
        assert_eq!(err.len(), 1, "{args:?}: {err:?}");
        assert!(
            err[0].contains(&format!("cannot connect to {addr}"))
                && err[0].to_lowercase().contains("connection refused"),
            "{}",
            err[0]
        );
    }
}

per_backend!(
    tcp_port_in_use_is_one_line_and_exit_1,
    udp_port_in_use_is_one_line_and_exit_1,
    bad_usage_exits_2,
);
