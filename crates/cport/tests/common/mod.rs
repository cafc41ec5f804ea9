//! What every contract test shares: one body run per backend, bounded
//! waits, loopback pairs.
//!
//! Each test file starts with `mod common;` and wraps its bodies in
//! [`backends!`], which expands every `fn name(backend: Backend)` into a
//! `#[test]` per backend (`uring::name`, `epoll::name`). The io_uring variant
//! skips, printing why, when the kernel refuses io_uring (SEMANTICS R1);
//! nothing else is ever skipped.

#![allow(dead_code)]

pub mod agent;
#[cfg(target_os = "linux")]
pub mod fds;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use cport::{Backend, Builder, Completion, CompletionPort, Handle};

/// The raw OS error of a datagram larger than the receive's room (O7).
#[cfg(unix)]
pub const EMSGSIZE: i32 = libc::EMSGSIZE;
/// The raw OS error of a datagram larger than the receive's room (O7):
/// WSAEMSGSIZE.
#[cfg(windows)]
pub const EMSGSIZE: i32 = 10040;

/// Whether this Windows program runs under wine, which differs from
/// Windows in a few places the tests name where they adapt.
pub fn under_wine() -> bool {
    cfg!(windows) && std::path::Path::new(r"C:\windows\system32\wineboot.exe").exists()
}

/// The descriptor number (SOCKET on Windows) of a stream, for messages.
pub fn raw_id(s: &TcpStream) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        s.as_raw_fd() as u64
    }
    #[cfg(windows)]
    {
        use std::os::windows::io::AsRawSocket;
        s.as_raw_socket()
    }
}

/// Reads exactly `buf.len()` bytes at `offset` through another handle of
/// the file, leaving the file position where it was: on Windows the
/// positional read moves the position it shares with the port's handle,
/// so it is put back.
pub fn read_exact_at(f: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        f.read_exact_at(buf, offset)
    }
    #[cfg(windows)]
    {
        use std::io::{Seek, SeekFrom};
        use std::os::windows::fs::FileExt;
        let mut file = f;
        let pos = file.stream_position()?;
        let mut done = 0;
        let r = loop {
            if done == buf.len() {
                break Ok(());
            }
            match f.seek_read(&mut buf[done..], offset + done as u64) {
                Ok(0) => break Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(e) => break Err(e),
            }
        };
        file.seek(SeekFrom::Start(pos))?;
        r
    }
}

/// The longest any single wait in a test may take before it fails.
pub const LONG: Option<Duration> = Some(Duration::from_secs(10));

/// Expands each `fn name(backend: Backend) { .. }` into `uring::name` and
/// `epoll::name` tests (on Windows: `windows::name`, on the native port).
#[macro_export]
macro_rules! backends {
    ($(
        $(#[$meta:meta])*
        fn $name:ident($backend:ident : Backend) $body:block
    )*) => {
        $(
            $(#[$meta])*
            fn $name($backend: cport::Backend) $body
        )*
        #[cfg(not(windows))]
        mod uring {
            $(
                #[test]
                fn $name() {
                    if let Some(b) = $crate::common::available(cport::Backend::Uring) {
                        super::$name(b);
                    }
                }
            )*
        }
        #[cfg(not(windows))]
        mod epoll {
            $(
                #[test]
                fn $name() {
                    if let Some(b) = $crate::common::available(cport::Backend::Epoll) {
                        super::$name(b);
                    }
                }
            )*
        }
        // Windows has one backend, the native completion port (`Auto`).
        #[cfg(windows)]
        mod windows {
            $(
                #[test]
                fn $name() {
                    if let Some(b) = $crate::common::available(cport::Backend::Auto) {
                        super::$name(b);
                    }
                }
            )*
        }
    };
}

/// `Some(backend)` when a port can run on it here. io_uring may be refused
/// by the kernel (disabled, seccomp): then the test prints why and is
/// skipped. epoll must always start.
pub fn available(backend: Backend) -> Option<Backend> {
    match Builder::new().backend(backend).build::<()>() {
        Ok(_) => Some(backend),
        Err(e) if backend == Backend::Uring => {
            eprintln!("skipped on io_uring: the kernel refuses it here: {e}");
            None
        }
        Err(e) => panic!("the {backend} backend must start: {e}"),
    }
}

/// A port on `backend` with concurrency `concurrency` and a small receive
/// pool (4 × 1024), so pool exhaustion is easy to reach.
pub fn port<T: Send + 'static>(backend: Backend, concurrency: usize) -> CompletionPort<T> {
    Builder::new()
        .backend(backend)
        .concurrency(concurrency)
        .pool(4, 1024)
        .build()
        .unwrap_or_else(|e| panic!("a {backend} port: {e}"))
}

/// The next completion, failing the test after [`LONG`].
#[track_caller]
pub fn next<T: Send + 'static>(port: &CompletionPort<T>) -> Completion<T> {
    match port.get(LONG) {
        Ok(c) => c,
        Err(e) => panic!("expected a completion within {LONG:?}: {e}"),
    }
}

/// Asserts that nothing is queued right now (a `get` that does not wait).
#[track_caller]
pub fn assert_empty<T: Send + std::fmt::Debug + 'static>(port: &CompletionPort<T>) {
    match port.get(Some(Duration::ZERO)) {
        Err(cport::GetError::Timeout) => {}
        other => panic!("expected nothing queued, got {other:?}"),
    }
}

/// A connected TCP pair on 127.0.0.1: one end associated with `port` under
/// `key`, the other a plain blocking stream with bounded reads and writes.
pub fn pair<T: Send + 'static>(port: &CompletionPort<T>, key: u64) -> (Handle, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    b.set_read_timeout(LONG).unwrap();
    b.set_write_timeout(LONG).unwrap();
    (port.associate(a, key).unwrap(), b)
}

/// Sends 40 one-byte messages on `h` (keyed `key`), one at a time, each
/// checked at its completion (the value made by `value(i)`, read back by
/// `id`) and at `peer`: more operations than a handle issues before
/// io_uring names its descriptor by a slot of the ring's table of
/// registered files (its 32nd), so the last ones go by the slot where the
/// table has one.
pub fn send_past_the_file_slot<T: Send + 'static>(
    port: &CompletionPort<T>,
    h: Handle,
    key: u64,
    peer: &mut TcpStream,
    value: impl Fn(u32) -> T,
    id: impl Fn(&T) -> u32,
) {
    use std::io::Read;
    for i in 0..40u8 {
        port.send(h, vec![i], value(u32::from(i))).unwrap();
        let c = next(port);
        assert_eq!(
            (c.key, c.kind, id(&c.value)),
            (key, cport::OpKind::Send, u32::from(i))
        );
        assert_eq!(c.result.unwrap(), 1);
        let mut got = [0u8; 1];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got[0], i);
    }
}

/// An address on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A per-operation value that tells the original from its clones: a
/// multishot operation's last completion must carry the value itself.
#[derive(Debug, PartialEq, Eq)]
pub struct Tagged {
    pub id: u32,
    pub clone: bool,
}

impl Clone for Tagged {
    fn clone(&self) -> Self {
        Tagged {
            id: self.id,
            clone: true,
        }
    }
}

/// The original (not a clone) with this id.
pub fn original(id: u32) -> Tagged {
    Tagged { id, clone: false }
}

/// Waits until `cond` holds, failing the test after [`LONG`]: for states
/// another thread reaches (a waiter parked, a count reached), never a
/// fixed sleep.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG.unwrap();
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Bytes 0..len with every byte value, in a pattern that shows shifts.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}
