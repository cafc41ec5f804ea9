//! SEMANTICS P1–P5: the port, its handles, their keys and the
//! per-operation value.

mod common;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;

use cport::{
    Completion, CompletionPort, GetError, Handle, OpId, OpKind, Payload, Rejected, Workers,
};

/// Handles of each kind in the P2 test: enough that slot reuse and table
/// growth are exercised, few enough to stay fast.
const PER_KIND: usize = 8;

/// A per-operation value as the tutorials' PER_IO_DATA is: not `Copy`,
/// not `Clone`, owning heap memory, so that a port that copied, cloned,
/// dropped or mixed up values would be caught.
#[derive(Debug, PartialEq)]
struct PerIo {
    mode: Mode,
    label: String,
    extra: Box<[u64; 4]>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Posted,
    Reading,
    Connecting,
}

impl PerIo {
    fn new(mode: Mode, label: &str, seed: u64) -> PerIo {
        PerIo {
            mode,
            label: label.to_string(),
            extra: Box::new([seed, !seed, seed.rotate_left(17), 42]),
        }
    }

    /// Where its heap parts live: the same addresses after the round trip
    /// prove the value was moved through the port, not rebuilt.
    fn heap(&self) -> (usize, usize) {
        (
            self.label.as_ptr() as usize,
            &*self.extra as *const [u64; 4] as usize,
        )
    }

    /// An equal value with heap parts of its own, to compare against
    /// (`PerIo` is not `Clone`, on purpose).
    fn same(&self) -> PerIo {
        PerIo {
            mode: self.mode,
            label: self.label.clone(),
            extra: self.extra.clone(),
        }
    }
}

/// A file with `contents`, already unlinked, so nothing is left behind
/// whatever happens to the test.
fn temp_file(tag: &str, contents: &[u8]) -> File {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "cport-test-{}-{tag}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    fs::remove_file(&path).unwrap();
    f.write_all(contents).unwrap();
    f
}

#[track_caller]
fn refused<T>(r: Result<OpId, Rejected<T>>) -> Rejected<T> {
    match r {
        Ok(op) => panic!("expected the operation to be refused, it was accepted as {op:?}"),
        Err(rej) => rej,
    }
}

fn assert_send_sync<T: Send + Sync>() {}
fn assert_send<T: Send>() {}

backends! {
    fn p1_concurrency_value_and_backend(backend: Backend) {
        let cpus = thread::available_parallelism().unwrap().get();
        let auto = common::port::<()>(backend, 0);
        assert_eq!(
            auto.concurrency(),
            cpus,
            "concurrency 0 means the number of CPUs"
        );
        assert_eq!(
            auto.backend(),
            backend,
            "the port runs on the backend asked for"
        );

        let port = common::port::<u32>(backend, 3);
        assert_eq!(port.concurrency(), 3);
        assert_eq!(port.backend(), backend);

        // The value is enforced, not just stored: three threads may run,
        // a fourth waiter is held back while they do (C1 with N = 3).
        let (tx, rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = std::sync::Arc::new(std::sync::Mutex::new(go_rx));
        let mut threads = Vec::new();
        for i in 0..4u32 {
            let p = port.clone();
            let tx = tx.clone();
            let go_rx = go_rx.clone();
            threads.push(thread::spawn(move || {
                let c = p.get(common::LONG).expect("a packet for every thread");
                tx.send((i, c.value)).unwrap();
                // Stay running until the test says so; a leave would hide
                // the limit.
                let _ = go_rx.lock().unwrap().recv_timeout(common::LONG.unwrap());
            }));
            // One at a time, so the fourth is surely parked when counted.
            common::wait_until("the thread waits", || port.stats().waiting == 1);
            if i < 3 {
                port.post(1, 0, i).unwrap();
                let got = rx.recv_timeout(common::LONG.unwrap()).unwrap();
                assert_eq!(got, (i, i));
            }
        }
        port.post(1, 0, 3).unwrap();
        let s = port.stats();
        assert_eq!(
            (s.queued, s.waiting, s.running),
            (1, 1, 3),
            "with 3 threads running on a port of concurrency 3 a fourth must not be released"
        );
        // One of the three stops: the fourth runs.
        go_tx.send(()).unwrap();
        let got = rx.recv_timeout(common::LONG.unwrap()).unwrap();
        assert_eq!(got, (3, 3));
        for _ in 0..3 {
            go_tx.send(()).unwrap();
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(port.stats().running, 0, "exited threads stop counting");
    }

    fn p2_many_handles_of_every_kind_on_one_port(backend: Backend) {
        let port = common::port::<usize>(backend, 2);
        let mut key_of: HashMap<Handle, u64> = HashMap::new();
        let mut expect: HashMap<u64, (OpKind, Vec<u8>)> = HashMap::new();
        let mut keep = Vec::new();
        let mut clients = Vec::new();

        for i in 0..PER_KIND {
            // Listener: an accept per listener, one client each.
            let key = 1000 + i as u64;
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let h = port.associate(l, key).unwrap();
            assert_eq!(port.local_addr(h).unwrap(), addr);
            port.accept(h, i).unwrap();
            let c = TcpStream::connect(addr).unwrap();
            expect.insert(
                key,
                (
                    OpKind::Accept,
                    c.local_addr().unwrap().to_string().into_bytes(),
                ),
            );
            clients.push(c);
            key_of.insert(h, key);

            // Stream: a receive of what the peer wrote.
            let key = 2000 + i as u64;
            let (h, mut peer) = common::pair(&port, key);
            let msg = format!("stream {i}").into_bytes();
            peer.write_all(&msg).unwrap();
            port.recv(h, Vec::with_capacity(64), i).unwrap();
            expect.insert(key, (OpKind::Recv, msg));
            keep.push(peer);
            key_of.insert(h, key);

            // UDP socket: one datagram received.
            let key = 3000 + i as u64;
            let u = UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = u.local_addr().unwrap();
            let h = port.associate(u, key).unwrap();
            port.recv_from(h, Vec::with_capacity(64), i).unwrap();
            let msg = format!("datagram {i}").into_bytes();
            UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .send_to(&msg, addr)
                .unwrap();
            expect.insert(key, (OpKind::RecvFrom, msg));
            key_of.insert(h, key);

            // Regular file: a positioned read.
            let key = 4000 + i as u64;
            let msg = format!("file {i}").into_bytes();
            let h = port.associate(temp_file("p2", &msg), key).unwrap();
            port.read_at(h, Vec::with_capacity(64), 0, i).unwrap();
            expect.insert(key, (OpKind::ReadAt, msg));
            key_of.insert(h, key);
        }
        assert_eq!(
            key_of.len(),
            4 * PER_KIND,
            "every association yields its own handle"
        );

        for _ in 0..4 * PER_KIND {
            let c = common::next(&port);
            let h = c.handle.expect("an I/O completion names its handle");
            assert_eq!(key_of.get(&h), Some(&c.key), "completion key of {h:?}");
            let (kind, want) = expect.remove(&c.key).expect("one completion per handle");
            assert_eq!(c.kind, kind);
            assert_eq!(c.value, (c.key % 1000) as usize);
            let n = c
                .result
                .unwrap_or_else(|e| panic!("{kind:?} on key {}: {e}", c.key));
            let got = match c.payload {
                Payload::Accepted { peer, .. } => peer.to_string().into_bytes(),
                Payload::Buf(b) => b,
                Payload::Datagram { buf, .. } => buf,
                other => panic!("unexpected payload {other:?}"),
            };
            if kind != OpKind::Accept {
                assert_eq!(n, want.len());
            }
            assert_eq!(got, want, "{kind:?} on key {}", c.key);
        }
        assert!(expect.is_empty());
        common::assert_empty(&port);
        // Still usable after all that: every handle can be closed.
        for h in key_of.keys() {
            port.close(*h).unwrap();
        }
    }

    fn p2_handle_of_another_port_is_refused(backend: Backend) {
        let a = common::port::<&'static str>(backend, 2);
        let b = common::port::<&'static str>(backend, 2);
        // Both ports get a handle in the same slot: a port that looked the
        // slot up without checking the owner would act on its own handle.
        let (ha, mut peer_a) = common::pair(&a, 1);
        let (hb, mut peer_b) = common::pair(&b, 2);
        let fa = a.associate(temp_file("p2x", b"file of port a"), 3).unwrap();
        peer_a.write_all(b"for a").unwrap();
        peer_b.write_all(b"for b").unwrap();

        for (handle, port) in [(ha, &b), (hb, &a)] {
            let buf = Vec::with_capacity(32);
            let at = buf.as_ptr();
            let r = refused(port.recv(handle, buf, "stray recv"));
            assert_eq!(r.error.kind(), io::ErrorKind::InvalidInput, "{}", r.error);
            assert_eq!(r.value, "stray recv");
            let back = r.payload.into_buf().expect("the buffer comes back");
            assert_eq!((back.as_ptr(), back.capacity()), (at, 32));

            let r = refused(port.send(handle, b"stray".to_vec(), "stray send"));
            assert_eq!(r.error.kind(), io::ErrorKind::InvalidInput, "{}", r.error);
            assert_eq!(r.value, "stray send");
            assert_eq!(r.payload.into_buf().unwrap(), b"stray");

            for e in [
                port.close(handle).unwrap_err(),
                port.local_addr(handle).unwrap_err(),
                port.shutdown(handle, std::net::Shutdown::Both).unwrap_err(),
                port.cancel_handle(handle).unwrap_err(),
            ] {
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
            }
        }
        let r = refused(b.read_at(fa, Vec::with_capacity(8), 0, "stray read"));
        assert_eq!(r.error.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(r.value, "stray read");

        // Nothing reached either port: the first receive each port runs on
        // its own handle gets all the data and is the first completion.
        for (port, h, want) in [(&a, ha, &b"for a"[..]), (&b, hb, &b"for b"[..])] {
            let op = port.recv(h, Vec::with_capacity(32), "own recv").unwrap();
            let c = common::next(port);
            assert_eq!((c.op, c.value), (Some(op), "own recv"));
            assert_eq!(c.payload.into_buf().unwrap(), want);
            common::assert_empty(port);
        }
        let op = a
            .read_at(fa, Vec::with_capacity(32), 0, "own read")
            .unwrap();
        let c = common::next(&a);
        assert_eq!((c.op, c.value), (Some(op), "own read"));
        assert_eq!(c.payload.into_buf().unwrap(), b"file of port a");
        // The handles still belong to their own ports after the refusals;
        // closed there, their peers see the end of a stream that carried
        // none of the refused sends.
        a.close(ha).unwrap();
        b.close(hb).unwrap();
        a.close(fa).unwrap();
        for peer in [&mut peer_a, &mut peer_b] {
            let mut rest = Vec::new();
            peer.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "a refused send reached a peer: {rest:?}");
        }
    }

    fn p3_every_completion_carries_its_handle_key(backend: Backend) {
        let port = common::port::<u32>(backend, 2);
        // Keys are opaque 64-bit values: extremes included.
        let keys = [
            0,
            1,
            7,
            0xdead_beef,
            1 << 40,
            u64::MAX - 1,
            u64::MAX,
            0x8000_0000_0000_0000,
        ];
        let mut key_of = HashMap::new();
        let mut peers = Vec::new();
        for &key in &keys {
            let (h, peer) = common::pair(&port, key);
            key_of.insert(h, key);
            peers.push((h, peer));
        }
        // Two rounds of send + receive on every handle, so a key stays with
        // its handle across operations of both directions.
        for round in 0..2u32 {
            for (i, (h, _)) in peers.iter().enumerate() {
                port.send(*h, format!("ping{i}").into_bytes(), round)
                    .unwrap();
                port.recv(*h, Vec::with_capacity(16), round).unwrap();
            }
            // The peers answer on their own thread while this one dequeues,
            // as a remote end would.
            thread::scope(|s| {
                s.spawn(|| {
                    for (i, (_, peer)) in peers.iter_mut().enumerate() {
                        let mut b = vec![0; format!("ping{i}").len()];
                        peer.read_exact(&mut b).unwrap();
                        assert_eq!(b, format!("ping{i}").into_bytes());
                        peer.write_all(format!("pong{i}").as_bytes()).unwrap();
                    }
                });
                let mut seen = HashSet::new();
                for _ in 0..2 * keys.len() {
                    let c = common::next(&port);
                    let h = c.handle.expect("an I/O completion names its handle");
                    assert_eq!(c.key, key_of[&h], "key of a {:?} on {h:?}", c.kind);
                    assert_eq!(c.value, round);
                    assert!(c.result.is_ok(), "{:?}", c.result);
                    assert!(
                        seen.insert((h, c.kind)),
                        "two {:?} completions for {h:?}",
                        c.kind
                    );
                }
            });
        }
        // A handle made by connect carries the key given to connect, on
        // success and on failure.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (h_ok, _) = port.connect(l.local_addr().unwrap(), 0xc0ffee, 1).unwrap();
        let (h_err, _) = port.connect(common::closed_addr(), 0xbad, 2).unwrap();
        let mut got = HashMap::new();
        for _ in 0..2 {
            let c = common::next(&port);
            assert_eq!(c.kind, OpKind::Connect);
            got.insert(c.handle.unwrap(), (c.key, c.result.is_ok()));
        }
        assert_eq!(got[&h_ok], (0xc0ffee, true));
        assert_eq!(got[&h_err], (0xbad, false));
    }

    fn p4_per_operation_value_comes_back_unchanged(backend: Backend) {
        let port = common::port::<PerIo>(backend, 2);

        let posted = PerIo::new(Mode::Posted, "a posted packet", 11);
        let (want, heap) = (posted.same(), posted.heap());
        port.post(5, 0, posted).unwrap();
        let c = common::next(&port);
        assert_eq!(c.value, want);
        assert_eq!(c.value.heap(), heap, "moved through the port, not rebuilt");

        // One per pending operation on one handle, in flight together: each
        // completion must bring back its own.
        let (h, mut peer) = common::pair(&port, 6);
        let mut wants = HashMap::new();
        for i in 0..3u64 {
            let v = PerIo::new(Mode::Reading, &format!("receive number {i}"), i);
            let want = (v.same(), v.heap());
            let op = port.recv(h, Vec::with_capacity(1), v).unwrap();
            wants.insert(op, want);
        }
        peer.write_all(b"abc").unwrap();
        for _ in 0..3 {
            let c = common::next(&port);
            assert_eq!(c.result.unwrap(), 1);
            let (want, heap) = wants.remove(&c.op.unwrap()).expect("a completion per op");
            assert_eq!(c.value, want);
            assert_eq!(c.value.heap(), heap);
        }

        // A failed operation brings its value back too (Q5).
        let v = PerIo::new(Mode::Connecting, "a refused connect", 99);
        let (want, heap) = (v.same(), v.heap());
        let (_, op) = port.connect(common::closed_addr(), 7, v).unwrap();
        let c = common::next(&port);
        assert_eq!(c.op, Some(op));
        assert!(c.result.is_err());
        assert_eq!(c.value, want);
        assert_eq!(c.value.heap(), heap);
    }

    fn p5_issue_on_one_thread_dequeue_on_another(backend: Backend) {
        // Values need only be Send: the port moves them, never shares them.
        assert_send_sync::<CompletionPort<Cell<u64>>>();
        assert_send_sync::<Handle>();
        assert_send_sync::<OpId>();
        assert_send::<Completion<Cell<u64>>>();
        assert_send::<Rejected<Cell<u64>>>();
        assert_send_sync::<GetError>();
        assert_send::<Workers<Cell<u64>>>();

        let port = common::port::<Cell<u64>>(backend, 2);
        let (h, mut peer) = common::pair(&port, 9);
        // Shared by reference across scoped threads: that is Sync at work.
        let port = &port;
        thread::scope(|s| {
            // The issuing thread is gone before anything completes (on
            // io_uring the kernel cancels an exited thread's requests).
            let op = s
                .spawn(move || port.recv(h, Vec::with_capacity(8), Cell::new(41)).unwrap())
                .join()
                .unwrap();
            let consumer = s.spawn(move || common::next(port));
            common::wait_until("the consumer waits", || port.stats().waiting == 1);
            peer.write_all(b"hi").unwrap();
            let c = consumer.join().unwrap();
            assert_eq!((c.op, c.key, c.value.get()), (Some(op), 9, 41));
            assert_eq!(c.payload.into_buf().unwrap(), b"hi");

            // Many issuers and many consumers at once: every completion is
            // dequeued exactly once, by some thread.
            const ISSUERS: u64 = 3;
            const EACH: u64 = 50;
            const STOP: u64 = u64::MAX - 3;
            let (tx, rx) = mpsc::channel();
            let mut consumers = Vec::new();
            for _ in 0..2 {
                let tx = tx.clone();
                consumers.push(s.spawn(move || loop {
                    let c = common::next(port);
                    if c.key == STOP {
                        break;
                    }
                    tx.send(c.value.get()).unwrap();
                }));
            }
            for t in 0..ISSUERS {
                s.spawn(move || {
                    for i in 0..EACH {
                        let v = Cell::new(t * EACH + i);
                        if i % 2 == 0 {
                            port.post(t, 0, v).unwrap();
                        } else {
                            port.send(h, vec![b'x'; 8], v).unwrap();
                        }
                    }
                });
            }
            let mut seen = HashSet::new();
            for _ in 0..ISSUERS * EACH {
                let v = rx
                    .recv_timeout(common::LONG.unwrap())
                    .expect("a completion");
                assert!(seen.insert(v), "value {v} dequeued twice");
            }
            for _ in 0..2 {
                port.post(STOP, 0, Cell::new(0)).unwrap();
            }
            for c in consumers {
                c.join().unwrap();
            }
            assert_eq!(seen.len() as u64, ISSUERS * EACH);
            let mut sent = vec![0; (ISSUERS * EACH / 2 * 8) as usize];
            peer.read_exact(&mut sent).unwrap();
            assert!(sent.iter().all(|&b| b == b'x'));
        });
    }

    fn p5_operation_issued_by_a_running_thread_starts_at_once(backend: Backend) {
        // A worker issues a send while handling a completion and, before it
        // comes back to `get`, waits for something that needs the send to
        // have happened (here: the peer reading it). On Windows WSASend
        // starts at the call; a port that held the operation back until the
        // worker returns to the port would deadlock this worker.
        let port = common::port::<u32>(backend, 2);
        let (h, mut peer) = common::pair(&port, 3);
        let (done_tx, done_rx) = mpsc::channel::<()>();
        port.post(0, 0, 0).unwrap();
        let worker = thread::spawn({
            let port = port.clone();
            move || {
                let c = port.get(common::LONG).unwrap();
                assert_eq!(c.kind, OpKind::Post);
                port.send(h, b"sent by a worker".to_vec(), 1).unwrap();
                // Still running: handling its completion until told, which
                // is after the peer's bounded read (the bound here only
                // ends the thread if the test fails).
                let _ = done_rx.recv_timeout(3 * common::LONG.unwrap());
            }
        });
        let mut got = [0; 16];
        let read = peer.read_exact(&mut got);
        let _ = done_tx.send(());
        worker.join().unwrap();
        read.unwrap_or_else(|e| {
            panic!("a send issued by a running worker did not reach the peer meanwhile: {e}")
        });
        assert_eq!(&got, b"sent by a worker");
        let c = common::next(&port);
        assert_eq!((c.kind, c.value, c.result.unwrap()), (OpKind::Send, 1, 16));
    }

    fn p5_operations_issued_by_a_thread_that_exited_still_complete(backend: Backend) {
        // io_uring runs a request's completion work on the task that
        // submitted it: once that thread is gone the kernel must hand the
        // work to another. p5_issue_on_one_thread_dequeue_on_another does
        // it for a receive; here a receive with a pooled one queued behind
        // it, a multishot accept, and a connect still in its handshake when
        // the issuing thread exits.
        let port = common::port::<u32>(backend, 2);
        let (h, mut peer) = common::pair(&port, 1);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let lh = port.associate(l, 2).unwrap();
        // A listener whose accept queue is full (listen(0) holds one): Linux
        // drops the SYN of the connect, which stays in its handshake until
        // room is made, long after the issuing thread is gone. (Windows
        // refuses such a SYN; wine runs on Linux's sockets.)
        let backlog =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        backlog
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let full_queue = cfg!(unix) || common::under_wine();
        backlog.listen(if full_queue { 0 } else { 128 }).unwrap();
        let to = backlog.local_addr().unwrap().as_socket().unwrap();
        let _filler = if full_queue {
            Some(TcpStream::connect(to).unwrap())
        } else {
            None
        };

        let (accept, (ch, connect)) = thread::spawn({
            let port = port.clone();
            move || {
                port.recv(h, Vec::with_capacity(16), 1).unwrap();
                port.recv_pooled(h, 2).unwrap();
                (
                    port.accept_multi(lh, 3).unwrap(),
                    port.connect(to, 4, 4).unwrap(),
                )
            }
        })
        .join()
        .unwrap();

        let mut got: HashMap<u32, Completion<u32>> = HashMap::new();
        let mut until = |value: u32| {
            while !got.contains_key(&value) {
                let c = common::next(&port);
                assert!(got.insert(c.value, c).is_none(), "a second completion");
            }
            got.remove(&value).unwrap()
        };
        peer.write_all(b"abc").unwrap();
        let c = until(1);
        assert_eq!((c.kind, c.result.unwrap()), (OpKind::Recv, 3));
        assert_eq!(c.payload.into_buf().unwrap(), b"abc");
        peer.write_all(b"de").unwrap();
        let c = until(2);
        assert_eq!((c.kind, c.result.unwrap()), (OpKind::RecvPooled, 2));
        assert_eq!(c.payload.into_buf().unwrap(), b"de");

        let client = TcpStream::connect(addr).unwrap();
        let c = until(3);
        assert_eq!((c.kind, c.op, c.more), (OpKind::Accept, Some(accept), true));
        match c.payload {
            Payload::Accepted { peer, .. } => assert_eq!(peer, client.local_addr().unwrap()),
            p => panic!("expected the accepted connection, got {p:?}"),
        }

        if full_queue {
            // Room: the connect completes with the SYN's retransmission.
            let _room = backlog.accept().unwrap();
        }
        let c = until(4);
        assert_eq!((c.kind, c.op, c.handle), (OpKind::Connect, Some(connect), Some(ch)));
        assert_eq!(c.result.unwrap(), 0);
        assert_eq!(port.peer_addr(ch).unwrap(), to);

        port.cancel(accept).unwrap();
        let c = until(3);
        assert!(!c.more, "the multishot accept's last completion");
        assert!(cport::is_aborted(&c.result.unwrap_err()));
        assert!(got.is_empty(), "completions nobody issued: {:?}", got.keys());
        common::assert_empty(&port);
    }

    fn p5_echo_under_concurrent_workers_and_clients(backend: Backend) {
        // The tutorials' server: four worker threads on one port accept,
        // receive and send each echo back, issuing on connections the
        // others serve too; eight clients send 200 messages of 1 to 40,000
        // bytes each and must get each back exactly. Workers stop on posted
        // quit packets (PQ3), which wine delivers as Windows does.
        const QUIT: u64 = u64::MAX;
        let port = common::port::<u32>(backend, 0);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let lh = port.associate(l, 0).unwrap();
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let port = port.clone();
                thread::spawn(move || loop {
                    let c = match port.get(common::LONG) {
                        Ok(c) => c,
                        // The most recent waiter is woken first (Q2): an
                        // idle worker may wait longer than the bound.
                        Err(GetError::Timeout) => continue,
                        Err(e) => panic!("a worker's get: {e}"),
                    };
                    if c.key == QUIT {
                        return;
                    }
                    let h = c.handle.expect("an I/O completion names its handle");
                    match c.kind {
                        OpKind::Accept => match c.payload {
                            Payload::Accepted { stream, .. } => {
                                stream.set_nodelay(true).unwrap();
                                let s = port.associate(stream, 1).unwrap();
                                port.recv(s, Vec::with_capacity(8192), 0).unwrap();
                            }
                            p => panic!("an accept without its stream: {p:?}"),
                        },
                        OpKind::Recv => match (c.result, c.payload.into_buf()) {
                            (Ok(n), Some(buf)) if n > 0 => drop(port.send(h, buf, 0).unwrap()),
                            _ => port.close(h).unwrap(),
                        },
                        OpKind::Send => {
                            let mut buf = c.payload.into_buf().unwrap();
                            c.result.unwrap();
                            buf.clear();
                            port.recv(h, buf, 0).unwrap();
                        }
                        k => panic!("unexpected {k:?}"),
                    }
                })
            })
            .collect();
        port.accept_multi(lh, 0).unwrap();
        let clients: Vec<_> = (0..8u32)
            .map(|t| {
                thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(common::LONG).unwrap();
                    for round in 0..200u32 {
                        let len = 1 + ((t * 7919 + round * 104_729) % 40_000) as usize;
                        let msg: Vec<u8> = (0..len).map(|i| (i as u32 ^ round ^ t) as u8).collect();
                        s.write_all(&msg).unwrap();
                        let mut back = vec![0u8; len];
                        s.read_exact(&mut back).unwrap();
                        assert!(back == msg, "client {t} round {round}: the echo differs");
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        for _ in 0..workers.len() {
            port.post(QUIT, 0, 0).unwrap();
        }
        for w in workers {
            w.join().expect("a worker panicked");
        }
    }
}
