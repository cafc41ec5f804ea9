//! SEMANTICS R1: how a backend is chosen (`Backend::Auto`, the
//! `CPORT_BACKEND` override) and what a backend that cannot start says.
//!
//! One test in a binary of its own: it changes the process environment, the
//! global logger and the descriptor limit, none of which may change under
//! another test.

// Linux only: it chooses between the Linux backends and needs prlimit(1) and /proc/self/fd (tests/platform_skips.rs says so on
// other systems).
#![cfg(target_os = "linux")]

mod common;

use std::env;
use std::io;
use std::sync::Mutex;

use cport::{Backend, Builder};

/// Log records seen: (target, message).
static LINES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = (record.target().to_string(), record.args().to_string());
        LINES.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

/// Takes the log records seen so far.
fn take_lines() -> Vec<(String, String)> {
    std::mem::take(&mut *LINES.lock().unwrap_or_else(|p| p.into_inner()))
}

fn build(b: Builder) -> io::Result<Backend> {
    b.build::<()>().map(|p| p.backend())
}

use common::fds::{fill_table, highest_fd, nofile, set_nofile};

#[track_caller]
fn assert_mentions(e: &io::Error, words: &[&str]) {
    let msg = e.to_string();
    for w in words {
        assert!(msg.contains(w), "the error should mention {w:?}: {msg}");
    }
}

#[test]
fn r1_backend_choice_and_startup_failures_name_their_cause() {
    log::set_logger(&CAPTURE).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    env::remove_var("CPORT_BACKEND");
    let uring = common::available(Backend::Uring).is_some();

    // No override: Auto is io_uring where it starts, else epoll.
    let auto = build(Builder::new()).unwrap();
    assert_eq!(
        auto,
        if uring {
            Backend::Uring
        } else {
            Backend::Epoll
        }
    );
    if uring {
        assert!(
            take_lines().iter().all(|(t, _)| t != "cport"),
            "no fallback line when io_uring starts"
        );
    }

    // CPORT_BACKEND=epoll selects epoll for Auto, and only for Auto.
    env::set_var("CPORT_BACKEND", "epoll");
    assert_eq!(build(Builder::new()).unwrap(), Backend::Epoll);
    if uring {
        assert_eq!(
            build(Builder::new().backend(Backend::Uring)).unwrap(),
            Backend::Uring
        );
    }
    env::set_var("CPORT_BACKEND", "uring");
    match build(Builder::new()) {
        Ok(b) => assert_eq!(b, Backend::Uring),
        Err(e) => {
            assert!(
                !uring,
                "CPORT_BACKEND=uring failed although io_uring starts: {e}"
            );
            assert_mentions(&e, &["io_uring"]);
        }
    }

    // A value that names no backend is an error naming the variable.
    env::set_var("CPORT_BACKEND", "bogus");
    let e = build(Builder::new()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    assert_mentions(&e, &["CPORT_BACKEND", "bogus"]);
    assert_eq!(
        build(Builder::new().backend(Backend::Epoll)).unwrap(),
        Backend::Epoll
    );
    env::remove_var("CPORT_BACKEND");

    // io_uring cannot start with a pool buffer over 4 GiB (its ring entries
    // hold 32-bit lengths); epoll can. Explicit io_uring says why; Auto
    // falls back to epoll with one log line naming the reason.
    let huge = Builder::new().pool(1, (1 << 32) + 1);
    let e = build(huge.clone().backend(Backend::Uring)).unwrap_err();
    assert_mentions(&e, &["io_uring"]);
    if uring {
        assert_mentions(&e, &["32 bits"]);
    }
    take_lines();
    assert_eq!(build(huge).unwrap(), Backend::Epoll);
    let lines: Vec<String> = take_lines()
        .into_iter()
        .filter(|(t, _)| t == "cport")
        .map(|(_, m)| m)
        .collect();
    assert_eq!(lines.len(), 1, "one log line for the fallback: {lines:?}");
    assert!(
        lines[0].contains("io_uring") && lines[0].contains("epoll"),
        "{}",
        lines[0]
    );
    if uring {
        assert!(
            lines[0].contains("32 bits"),
            "the line names the reason: {}",
            lines[0]
        );
    }
    println!("fallback line: {}", lines[0]);

    // With the descriptor table full neither backend can start: each says
    // which backend and why.
    let (soft, hard) = nofile();
    let lowered = (highest_fd() + 1 + 16).to_string();
    if let Err(e) = set_nofile(&lowered, &hard) {
        println!("skipped the descriptor-exhaustion case: cannot run prlimit(1): {e}");
        return;
    }
    let fillers = fill_table();
    let epoll = build(Builder::new().backend(Backend::Epoll));
    let uring_full = build(Builder::new().backend(Backend::Uring));
    take_lines();
    let auto_full = build(Builder::new());
    let fallback = take_lines();
    drop(fillers);
    set_nofile(&soft, &hard).expect("restore RLIMIT_NOFILE");
    assert_eq!(nofile().0, soft);

    let e = epoll.unwrap_err();
    println!("epoll with the table full: {e}");
    assert_mentions(&e, &["epoll", "Too many open files"]);
    let e = uring_full.unwrap_err();
    println!("io_uring with the table full: {e}");
    assert_mentions(&e, &["io_uring", "Too many open files"]);
    let e = auto_full.unwrap_err();
    assert_mentions(&e, &["epoll", "Too many open files"]);
    if uring {
        assert!(
            fallback
                .iter()
                .any(|(t, m)| t == "cport" && m.contains("Too many open files")),
            "Auto logged why io_uring did not start: {fallback:?}"
        );
    }
}
