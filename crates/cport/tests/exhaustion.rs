//! SEMANTICS R2: exhaustion of the descriptor table (EMFILE) on accept is
//! one error completion, never a busy loop, and the listener works again
//! once descriptors are free.
//!
//! The descriptor table is per process and so is RLIMIT_NOFILE: while it is
//! full, any thread that opens anything fails, including the other
//! backend's test probing its backend. So each test runs its body in a
//! child process of this test binary that runs that one test alone
//! (`--exact`), and the parent checks that it passed. The child lowers its
//! own soft limit with `prlimit(1)` (no unsafe code needed), fills the
//! table with /dev/null opens, and restores the limit at the end.

// Linux only: it needs prlimit(1), /proc/self/fd and /dev/null (tests/platform_skips.rs says so on
// other systems).
#![cfg(target_os = "linux")]

mod common;

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_empty, next, original, Tagged, LONG};
use cport::{GetError, OpKind, Payload};

/// Set in the child process that runs one test's body.
const CHILD: &str = "CPORT_TEST_EXHAUSTION_CHILD";

/// In the parent: runs `<backend>::<name>` alone in a child process and
/// checks it passed; returns `false`. In the child: returns `true`, and the
/// caller runs the body.
fn in_child(backend: &str, name: &str) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let test = format!("{backend}::{name}");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- child running {test} ---\n{stdout}{stderr}--- end of child ---");
    assert!(
        out.status.success(),
        "{test} failed in its child process ({})",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "the child did not run {test} (filtered out?)"
    );
    false
}

use common::fds::{fill_table, highest_fd, nofile, set_nofile};

/// CPU time this process has used (user + system, all threads, the
/// kernel's io_uring workers included), read through a file opened before
/// the table was filled.
fn cpu_time(stat: &File) -> Duration {
    let mut buf = [0u8; 1024];
    let n = stat.read_at(&mut buf, 0).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line, in clock ticks (100 per second).
    let after = &text[text.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[track_caller]
fn assert_emfile(r: &io::Result<usize>) {
    match r {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}"),
        Ok(n) => panic!("expected EMFILE, got Ok({n})"),
    }
}

#[track_caller]
fn assert_idle(port: &cport::CompletionPort<Tagged>, stat: &File, what: &str) {
    let cpu = cpu_time(stat);
    let start = Instant::now();
    match port.get(Some(Duration::from_millis(300))) {
        Err(GetError::Timeout) => {}
        other => panic!("{what}: nothing may follow the error completion, got {other:?}"),
    }
    let used = cpu_time(stat) - cpu;
    println!(
        "{what}: {used:?} of CPU in {:?} of waiting",
        start.elapsed()
    );
    // Waiting uses no CPU; a retry loop on a listener that stays readable
    // would burn most of the window.
    assert!(
        used < Duration::from_millis(100),
        "{what}: busy while idle ({used:?})"
    );
}

fn connected_client(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(LONG).unwrap();
    c
}

backends! {
    /// With a connection waiting and the table full, accept completes once
    /// with EMFILE and nothing follows; accept_multi ends at once with its
    /// final completion (more == false, the original value); after
    /// descriptors are freed, a new accept takes the waiting connection.
    fn r2_emfile_on_accept_is_one_error_completion_then_recovers(backend: Backend) {
        if !in_child(backend.name(), "r2_emfile_on_accept_is_one_error_completion_then_recovers") {
            return;
        }
        let port = common::port::<Tagged>(backend, 4);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let lh = port.associate(l, 1).unwrap();
        let client = connected_client(addr);
        let stat = File::open("/proc/self/stat").unwrap();

        let (soft, hard) = nofile();
        let lowered = (highest_fd() + 1 + 32).to_string();
        if let Err(e) = set_nofile(&lowered, &hard) {
            println!("skipped: cannot lower RLIMIT_NOFILE with prlimit(1): {e}");
            return;
        }
        let fillers = fill_table();
        println!("{backend}: RLIMIT_NOFILE {soft} -> {lowered}, {} fillers", fillers.len());

        let op = port.accept(lh, original(1)).unwrap();
        let c = next(&port);
        assert_eq!((c.op, c.kind, c.key, c.more), (Some(op), OpKind::Accept, 1, false));
        assert_emfile(&c.result);
        assert_eq!(c.value, original(1));
        assert!(matches!(c.payload, Payload::None));
        assert_idle(&port, &stat, "after a failed accept");

        let op = port.accept_multi(lh, original(2)).unwrap();
        let c = next(&port);
        assert_eq!(c.op, Some(op));
        assert!(!c.more, "an error ends a multishot accept");
        assert_eq!(c.value, original(2), "the final completion carries the original value");
        assert_emfile(&c.result);
        assert_idle(&port, &stat, "after a failed multishot accept");

        drop(fillers);
        let op = port.accept(lh, original(3)).unwrap();
        let c = next(&port);
        assert_eq!(c.op, Some(op));
        assert_eq!(c.result.unwrap(), 0);
        match c.payload {
            Payload::Accepted { peer, .. } => {
                assert_eq!(peer, client.local_addr().unwrap(), "the connection that waited");
            }
            p => panic!("expected the waiting connection, got {p:?}"),
        }
        assert_empty(&port);
        set_nofile(&soft, &hard).expect("restore RLIMIT_NOFILE");
        assert_eq!(nofile().0, soft);
    }
}
