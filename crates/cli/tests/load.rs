//! `cport load` against `cport serve`, on each backend: the report is
//! well-formed JSON with messages counted and no error.

// Linux only, as tests/common is (see there).
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::{run_cport, Server};

fn report(args: &[&str]) -> serde_json::Value {
    let out = run_cport(args, b"", Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn load_reports_messages_and_no_errors(backend: &str) {
    let Some(server) = Server::start(backend, &[]) else {
        return;
    };
    let addr = server.addr.to_string();
    let r = report(&[
        "load",
        &addr,
        "--conns",
        "8",
        "--size",
        "1000",
        "--depth",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--json",
    ]);
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["messages"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["conns"], 8);
    let p50 = r["latency_us"]["p50"].as_f64().unwrap();
    let p99 = r["latency_us"]["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "{r}");
    assert_eq!(
        r["bytes"].as_u64().unwrap(),
        r["messages"].as_u64().unwrap() * 1000,
        "{r}"
    );
}

/// With --rate the load generator sends about that many messages a second.
fn load_at_a_fixed_rate_sends_about_that_rate(backend: &str) {
    let Some(server) = Server::start(backend, &[]) else {
        return;
    };
    let addr = server.addr.to_string();
    let r = report(&[
        "load",
        &addr,
        "--conns",
        "4",
        "--size",
        "64",
        "--rate",
        "2000",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--json",
    ]);
    assert_eq!(r["errors"], 0, "{r}");
    let n = r["messages"].as_u64().unwrap();
    // The schedule allows 2000 in the measured second; a loaded machine may
    // fall behind, but never ahead.
    assert!(
        (200..=2100).contains(&n),
        "{n} messages at 2000/s for 1 s: {r}"
    );
}

per_backend!(
    load_reports_messages_and_no_errors,
    load_at_a_fixed_rate_sends_about_that_rate,
);
