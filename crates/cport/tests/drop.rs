//! SEMANTICS X3: dropping the port (its last clone) with operations in
//! flight neither hangs nor leaks a descriptor, and every peer sees its
//! connection end.
//!
//! A binary of its own because it compares this process's descriptor
//! table (/proc/self/fd) before and after; the backends' bodies take
//! turns through [`SERIAL`]. The other backend's test may still be
//! probing its backend (a port made and dropped at once) while this one
//! runs, so the check is that every descriptor open afterwards was open
//! before, waited for with a deadline: the io_uring backend releases
//! descriptors as the cancelled operations are reaped.

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::{next, pair, pattern, LONG};
use cport::{GetError, OpKind};

static SERIAL: Mutex<()> = Mutex::new(());

/// This process's open descriptors and what each refers to (socket:[inode],
/// anon_inode:[io_uring], ...), without the directory handle of the listing
/// itself.
fn fd_table() -> BTreeMap<i32, String> {
    let mut t = BTreeMap::new();
    if cfg!(not(target_os = "linux")) {
        eprintln!("descriptor-leak check skipped: /proc/self/fd exists only on Linux");
        return t;
    }
    for e in std::fs::read_dir("/proc/self/fd").unwrap() {
        let e = e.unwrap();
        let fd: i32 = match e.file_name().to_str().and_then(|s| s.parse().ok()) {
            Some(fd) => fd,
            None => continue,
        };
        // Gone meanwhile (the listing's own handle, or another thread's
        // short-lived descriptor).
        if let Ok(target) = std::fs::read_link(e.path()) {
            let target = target.to_string_lossy().into_owned();
            if !(target.starts_with("/proc/") && target.ends_with("/fd")) {
                t.insert(fd, target);
            }
        }
    }
    t
}

/// Descriptors open now that were not open in `before`.
fn new_since(before: &BTreeMap<i32, String>) -> Vec<(i32, String)> {
    fd_table()
        .into_iter()
        .filter(|(fd, target)| before.get(fd) != Some(target))
        .collect()
}

/// How the peer saw its connection end: "FIN" or "reset", after `n` bytes.
fn end_of(peer: &mut TcpStream) -> (usize, &'static str) {
    let mut n = 0;
    let mut buf = vec![0; 256 * 1024];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => return (n, "FIN"),
            Ok(k) => n += k,
            // io_uring runs a request's task work on the thread that
            // submitted it, interrupting a blocking call there: the read
            // is simply repeated.
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (n, "reset"),
            Err(e) => panic!("the peer did not see its connection end: {e}"),
        }
    }
}

/// A pair whose associated end already holds `data` when associated.
fn pair_with_pending(
    port: &cport::CompletionPort<u32>,
    key: u64,
    data: &[u8],
) -> (cport::Handle, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut b, _) = l.accept().unwrap();
    b.set_read_timeout(LONG).unwrap();
    b.write_all(data).unwrap();
    a.set_read_timeout(LONG).unwrap();
    let mut peek = vec![0; data.len()];
    common::wait_until("the data reached the receiving socket", || {
        match a.peek(&mut peek) {
            Ok(n) => n == data.len(),
            // io_uring runs task work of this thread's requests by interrupting
            // its blocking calls.
            Err(e) if e.kind() == ErrorKind::Interrupted => false,
            Err(e) => panic!("peek: {e}"),
        }
    });
    (port.associate(a, key).unwrap(), b)
}

fn connected_client(addr: std::net::SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(LONG).unwrap();
    c
}

backends! {
    /// Drop with a pending accept (and a client arriving just before the
    /// drop), a pending multishot accept, a pending recv with a pooled one
    /// queued behind it, a pending pooled recv, a 32 MiB send half read by
    /// its peer, and a completion with an accepted stream queued but never
    /// dequeued.
    fn x3_drop_with_ops_in_flight_releases_everything(backend: Backend) {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let before = fd_table();
        let port = common::port::<u32>(backend, 4);

        let total = 32 << 20;
        let half = total / 2;
        let (h_send, peer_send) = pair(&port, 4);
        port.send(h_send, pattern(total), 4).unwrap();
        let (at_half_tx, at_half) = mpsc::channel();
        let (go_on, go_on_rx) = mpsc::channel::<()>();
        let sender_peer = thread::spawn(move || {
            let mut peer = peer_send;
            let mut buf = vec![0; half];
            peer.read_exact(&mut buf).unwrap();
            at_half_tx.send(()).unwrap();
            go_on_rx.recv().unwrap();
            let (n, how) = end_of(&mut peer);
            (half + n, how)
        });
        // Continuations of the send run in `get`: drive it until the peer
        // has read half. Nothing may complete meanwhile.
        let deadline = Instant::now() + LONG.unwrap();
        while at_half.try_recv().is_err() {
            match port.get(Some(Duration::from_millis(5))) {
                Err(GetError::Timeout) => {}
                other => panic!("nothing should complete yet: {other:?}"),
            }
            assert!(Instant::now() < deadline, "the peer never read half of the send");
        }

        let (h_recv, mut peer_recv) = pair(&port, 2);
        port.recv(h_recv, Vec::with_capacity(64), 2).unwrap();
        // Queued behind that receive (io_uring parks it in the handle's
        // lane, outside the kernel).
        port.recv_pooled(h_recv, 2).unwrap();
        let (h_pool, mut peer_pool) = pair(&port, 3);
        port.recv_pooled(h_pool, 3).unwrap();
        // A multishot receive with data arriving: pool buffers the kernel
        // may be filling, and filled ones in flight, at the drop.
        let (h_multi, mut peer_multi) = pair(&port, 7);
        port.recv_multi(h_multi, 7).unwrap();
        peer_multi.write_all(&pattern(64 << 10)).unwrap();

        // A completion left in the queue: a receive with data waiting and
        // an accept with a client waiting both complete at issue; `get`
        // takes the first, the accepted stream stays queued.
        let (h_ready, peer_ready) = pair_with_pending(&port, 5, b"waiting");
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut queued_client = connected_client(l2.local_addr().unwrap());
        let l2h = port.associate(l2, 6).unwrap();
        port.recv(h_ready, Vec::with_capacity(64), 5).unwrap();
        port.accept(l2h, 6).unwrap();
        let c = next(&port);
        let queued = port.stats().queued;
        if c.kind == OpKind::Recv && queued == 1 {
            println!("{backend}: an accepted stream stays queued through the drop");
        } else {
            println!(
                "{backend}: skipped the queued-completion case: got {:?} first, {queued} queued",
                c.kind
            );
        }
        drop(c);

        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let laddr = l.local_addr().unwrap();
        let lh = port.associate(l, 1).unwrap();
        port.accept(lh, 1).unwrap();
        // Arrives while the accept is pending: on io_uring the kernel may
        // accept it before the drop, and that descriptor must be closed too.
        let mut late_client = connected_client(laddr);
        // A multishot accept with nothing to accept yet: it never ends by
        // itself, so only the drop can end it.
        let lm = TcpListener::bind("127.0.0.1:0").unwrap();
        let lmaddr = lm.local_addr().unwrap();
        let lmh = port.associate(lm, 7).unwrap();
        port.accept_multi(lmh, 7).unwrap();

        let (done, dropped) = mpsc::channel();
        let start = Instant::now();
        let dropper = thread::spawn(move || {
            drop(port);
            done.send(()).unwrap();
        });
        dropped
            .recv_timeout(LONG.unwrap())
            .expect("dropping the port with operations in flight hung");
        let took = start.elapsed();
        dropper.join().unwrap();
        println!("{backend}: the drop took {took:?}");
        // io_uring's drop stops waiting for cancelled operations after 5 s
        // and leaks them: reaching that bound means the cancellations were
        // waited out, not reaped.
        assert!(
            took < Duration::from_secs(5),
            "{backend}: the drop took {took:?}: cancellations were waited out, not reaped"
        );

        for (name, peer) in [
            ("recv", &mut peer_recv),
            ("recv_pooled", &mut peer_pool),
            ("recv_multi", &mut peer_multi),
            ("accepted late", &mut late_client),
            ("accepted and queued", &mut queued_client),
        ] {
            let (n, how) = end_of(peer);
            println!("{backend}: the {name} peer saw {how} after {n} bytes");
        }
        go_on.send(()).unwrap();
        let (n, how) = sender_peer.join().unwrap();
        assert!((half..=total).contains(&n));
        println!("{backend}: the sender's peer saw {how} after {n} of {total} bytes");
        assert!(
            TcpStream::connect(laddr).is_err(),
            "the listener was closed with the port"
        );
        assert!(
            TcpStream::connect(lmaddr).is_err(),
            "the multishot accept's listener was closed with the port"
        );

        drop((peer_recv, peer_pool, peer_multi, late_client, queued_client, peer_ready));
        let deadline = Instant::now() + LONG.unwrap();
        loop {
            let leaked = new_since(&before);
            if leaked.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{backend}: descriptors left open after the port was dropped: {leaked:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
        println!(
            "{backend}: {} descriptors before the port, {} after",
            before.len(),
            fd_table().len()
        );
    }
}
