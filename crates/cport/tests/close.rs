//! SEMANTICS X2 and X4: closing a handle aborts what is pending on it and
//! ends the connection; a descriptor number reused after a close never
//! receives a completion meant for the old handle.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;

use common::{assert_empty, next, pair, pattern, wait_until, LONG};
use cport::{is_aborted, Builder, CompletionPort, Handle, OpKind, Payload};

/// Reads until the end of the stream or a reset, bounded by the stream's
/// read timeout; returns the bytes read and how it ended.
fn read_until_end(peer: &mut TcpStream) -> (Vec<u8>, &'static str) {
    let mut got = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => return (got, "FIN"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // io_uring runs a request's task work on the thread that
            // submitted it, interrupting a blocking call there: the read
            // is simply repeated.
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, "reset"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the peer saw neither FIN nor reset within {LONG:?}")
            }
            Err(e) => panic!("the peer did not see the connection end: {e}"),
        }
    }
}

/// Every use of a closed handle is refused, an operation or a second close
/// as invalid input.
#[track_caller]
fn assert_refused<T: Send + 'static + std::fmt::Debug>(
    port: &CompletionPort<T>,
    h: Handle,
    value: T,
) {
    match port.recv(h, Vec::with_capacity(8), value) {
        Ok(op) => panic!("recv on a closed handle was accepted as {op:?}"),
        Err(r) => assert_eq!(r.error.kind(), ErrorKind::InvalidInput, "{}", r.error),
    }
    match port.close(h) {
        Ok(()) => panic!("a second close was accepted"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}"),
    }
    assert!(
        port.cancel_handle(h).is_err(),
        "cancel_handle on a closed handle"
    );
    assert!(
        port.shutdown(h, Shutdown::Both).is_err(),
        "shutdown on a closed handle"
    );
    assert!(port.local_addr(h).is_err(), "local_addr of a closed handle");
}

/// Sends on `h` (keyed `key`) until it names its descriptor by its file
/// slot where the table has one, then receives once, each checked against
/// `peer`.
fn exchange(port: &CompletionPort<u32>, h: Handle, peer: &mut TcpStream, key: u64) {
    common::send_past_the_file_slot(port, h, key, peer, |i| i, |v| *v);
    port.recv(h, Vec::with_capacity(8), 99).unwrap();
    peer.write_all(b"pong").unwrap();
    let c = next(port);
    assert_eq!((c.key, c.kind), (key, OpKind::Recv));
    assert_eq!(c.payload.into_buf().unwrap(), b"pong");
}

backends! {
    /// close with a receive pending, while a worker waits in `get` (as a
    /// server's would): the receive completes aborted with its buffer, the
    /// peer sees its FIN, and the handle is refused from then on.
    fn x2_close_aborts_pending_recv_and_peer_sees_fin(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, mut peer) = pair(&port, 1);
        let buf = Vec::with_capacity(32);
        let ptr = buf.as_ptr();
        let op = port.recv(h, buf, 5).unwrap();
        let worker = {
            let port = port.clone();
            thread::spawn(move || next(&port))
        };
        wait_until("the worker waits in get", || port.stats().waiting >= 1);
        port.close(h).unwrap();
        assert_refused(&port, h, 6);
        let (rest, how) = read_until_end(&mut peer);
        assert!(rest.is_empty());
        // closesocket with nothing unread ends the connection gracefully.
        assert_eq!(how, "FIN", "{backend}: the peer saw {how}");
        let c = worker.join().unwrap();
        assert_eq!((c.op, c.key, c.value, c.kind), (Some(op), 1, 5, OpKind::Recv));
        let e = c.result.unwrap_err();
        assert!(is_aborted(&e), "{e}");
        let b = c.payload.into_buf().unwrap();
        assert_eq!((b.as_ptr(), b.len()), (ptr, 0));
        assert_empty(&port);
    }

    /// closesocket ends the connection at once: the peer sees its FIN even
    /// while no thread is in `get` (SEMANTICS X2: on io_uring, close(2)
    /// alone sends no FIN while a receive is pending, so the port must
    /// shut the socket down itself). The aborted completion waits for the
    /// next `get`.
    fn x2_close_ends_the_connection_with_nobody_in_get(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, mut peer) = pair(&port, 1);
        let op = port.recv(h, Vec::with_capacity(8), 1).unwrap();
        port.close(h).unwrap();
        let (rest, how) = read_until_end(&mut peer);
        assert!(rest.is_empty());
        assert_eq!(how, "FIN", "{backend}: the peer saw {how} before anyone dequeued");
        let c = next(&port);
        assert_eq!(c.op, Some(op));
        let e = c.result.unwrap_err();
        assert!(is_aborted(&e), "{e}");
        assert_empty(&port);
    }

    /// Without anyone waiting: the aborted completion is there for the
    /// next `get`, and the peer sees its FIN right after.
    fn x2_close_then_get_gives_aborted_and_peer_sees_end(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, mut peer) = pair(&port, 1);
        let op1 = port.recv(h, Vec::with_capacity(8), 1).unwrap();
        let op2 = port.recv_pooled(h, 2).unwrap();
        port.close(h).unwrap();
        let mut ops = vec![next(&port), next(&port)];
        ops.sort_by_key(|c| c.value);
        assert_eq!(ops[0].op, Some(op1));
        assert_eq!(ops[1].op, Some(op2));
        for c in &ops {
            let e = c.result.as_ref().unwrap_err();
            assert!(is_aborted(e), "{e}");
        }
        assert_empty(&port);
        let (rest, how) = read_until_end(&mut peer);
        assert!(rest.is_empty());
        assert_eq!(how, "FIN", "{backend}: the peer saw {how}");
    }

    /// closesocket with nothing pending closes the descriptor at once: the
    /// peer sees the end, and a closed listener refuses connections. On
    /// io_uring a handle's descriptor goes into the ring's table of
    /// registered files once the handle has issued a few dozen operations,
    /// and a slot by itself holds the file open, so closing must empty the
    /// slot too. Run with the default table, with none, with one slot (the
    /// listener's index, which issues too little to take it: the stream's
    /// index is beyond the table), and with more than the kernel allows
    /// (the port still builds and serves).
    fn x2_close_with_nothing_pending_ends_connection_and_listener(backend: Backend) {
        for slots in [16384, 0, 1, u32::MAX] {
            let port = Builder::new()
                .backend(backend)
                .concurrency(1)
                .registered_files(slots)
                .build::<u32>()
                .unwrap();
            let listener = port.associate(TcpListener::bind("127.0.0.1:0").unwrap(), 9).unwrap();
            let addr = port.local_addr(listener).unwrap();
            let (h, mut peer) = pair(&port, 1);
            exchange(&port, h, &mut peer, 1);
            port.close(h).unwrap();
            let (rest, how) = read_until_end(&mut peer);
            assert!(rest.is_empty());
            assert_eq!(how, "FIN", "{backend}, {slots} slots: the peer saw {how}");
            // The next handle takes the closed one's place (and slot): its
            // requests reach its own descriptor.
            let (h2, mut peer2) = pair(&port, 3);
            exchange(&port, h2, &mut peer2, 3);
            port.close(h2).unwrap();
            let (rest, how) = read_until_end(&mut peer2);
            assert!(rest.is_empty());
            assert_eq!(how, "FIN", "{backend}, {slots} slots: the second peer saw {how}");
            port.close(listener).unwrap();
            match TcpStream::connect(addr) {
                Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
                Ok(_) => panic!("{backend}, {slots} slots: a closed listener took a connection"),
            }
            assert_empty(&port);
        }
    }

    /// close with a 32 MiB send under way (the peer reads only some):
    /// the send completes exactly once, aborted or whole, with its buffer;
    /// the peer gets a prefix of it and then the end.
    fn x2_close_with_pending_large_send_completes_it_once(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, mut peer) = pair(&port, 1);
        let total = 32 << 20;
        let data = pattern(total);
        let ptr = data.as_ptr();
        let op = port.send(h, data, 3).unwrap();
        let mut first = vec![0; 64 * 1024];
        peer.read_exact(&mut first).unwrap();
        port.close(h).unwrap();
        let reader = thread::spawn(move || read_until_end(&mut peer));
        let c = next(&port);
        assert_eq!((c.op, c.kind, c.value), (Some(op), OpKind::Send, 3));
        let buf = match c.payload {
            Payload::Buf(b) => b,
            p => panic!("the send's buffer must come back, got {p:?}"),
        };
        assert_eq!((buf.as_ptr(), buf.len()), (ptr, total));
        match &c.result {
            Ok(n) => assert_eq!(*n, total, "a send that completed sent everything"),
            Err(e) => assert!(is_aborted(e), "{e}"),
        }
        assert_empty(&port);
        let (rest, how) = reader.join().unwrap();
        let got = first.len() + rest.len();
        assert!(got <= total);
        assert!(first == buf[..first.len()], "the start of the send");
        assert!(rest == buf[first.len()..got], "then the rest of a prefix of it");
        if c.result.is_ok() {
            assert_eq!((got, how), (total, "FIN"), "a completed send reached the peer whole");
        }
        let r = &c.result;
        println!("{backend}: send {r:?} after {got} of {total} bytes; the peer saw {how}");
        assert_refused(&port, h, 4);
    }

    /// Handle A (key 1) with a pending receive and data in flight is
    /// closed; stream B (key 2), associated next, very likely gets A's
    /// descriptor number. Data sent to B completes only B's receive, with
    /// key 2; A's stale handle is refused and A's peer's late bytes go
    /// nowhere.
    fn x4_reused_descriptor_never_gets_the_old_handles_completions(backend: Backend) {
        let port = common::port::<&'static str>(backend, 4);
        let la = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(la.local_addr().unwrap()).unwrap();
        // `la` stays open to the end: freeing its (lower) number would let
        // B take that one instead of A's.
        let (mut peer_a, _) = la.accept().unwrap();
        let fd_a = common::raw_id(&a);
        let ha = port.associate(a, 1).unwrap();
        let op_a = port.recv(ha, Vec::with_capacity(64), "A").unwrap();

        // B's listener and client exist before A closes, so that the
        // accepted end, made after, takes the lowest free number: A's.
        let lb = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer_b = TcpStream::connect(lb.local_addr().unwrap()).unwrap();
        peer_b.set_read_timeout(LONG).unwrap();

        port.close(ha).unwrap();
        let c = next(&port);
        assert_eq!((c.op, c.key, c.value), (Some(op_a), 1, "A"));
        assert!(is_aborted(&c.result.unwrap_err()));
        // A's peer writes into the closed connection: any readiness or CQE
        // this causes belongs to A, never to whatever reuses its number.
        let _ = peer_a.write_all(b"late bytes for A");

        let (b, _) = lb.accept().unwrap();
        let fd_b = common::raw_id(&b);
        println!(
            "{backend}: A had descriptor {fd_a}, B has {fd_b}: {}",
            if fd_a == fd_b { "reused" } else { "not reused (another thread took it)" }
        );
        let hb = port.associate(b, 2).unwrap();
        assert_ne!(ha, hb, "a new handle, even on the same slot");
        let op_b = port.recv(hb, Vec::with_capacity(64), "B").unwrap();
        assert_empty(&port);
        peer_b.write_all(b"for B").unwrap();
        let c = next(&port);
        assert_eq!((c.op, c.key, c.handle, c.value), (Some(op_b), 2, Some(hb), "B"));
        assert_eq!(c.result.unwrap(), 5);
        assert_eq!(c.payload.into_buf().unwrap(), b"for B");
        assert_empty(&port);

        assert_refused(&port, ha, "stale A");
        assert_eq!(port.cancel(op_a).unwrap_err().kind(), ErrorKind::NotFound);
        // B still works after every refused use of A.
        port.send(hb, b"from B".to_vec(), "B send").unwrap();
        assert_eq!(next(&port).result.unwrap(), 6);
        let mut back = [0; 6];
        peer_b.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"from B");
        assert_empty(&port);
    }
}
