//! SEMANTICS X1: cancel one operation or every operation of a handle.
//! Cancellation is asynchronous; the cancelled operation still completes
//! exactly once (aborted, or with its real result if it won the race), and
//! cancelling nothing is NotFound.

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;

use common::{assert_empty, next, pair, pattern, LONG};
use cport::{is_aborted, Completion, CompletionPort, OpId, OpKind, Payload};

/// The per-operation value of the race test: the round, or the quit signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Round(u32),
    Drain,
    Quit,
}

/// Cancels `op`, counting the times it had already completed.
fn cancel_counting<T: Send + 'static>(port: &CompletionPort<T>, op: OpId, not_found: &mut u32) {
    match port.cancel(op) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => *not_found += 1,
        Err(e) => panic!("cancel failed: {e}"),
    }
}

backends! {
    /// A pending receive, cancelled: one aborted completion with its value
    /// and buffer; cancelling it again is NotFound.
    fn x1_cancel_pending_recv_aborts_it_with_its_buffer(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, _peer) = pair(&port, 1);
        let buf = Vec::with_capacity(32);
        let ptr = buf.as_ptr();
        let op = port.recv(h, buf, 77).unwrap();
        assert_empty(&port);
        port.cancel(op).unwrap();
        let c = next(&port);
        assert_eq!((c.op, c.key, c.value, c.more), (Some(op), 1, 77, false));
        let e = c.result.unwrap_err();
        assert!(is_aborted(&e), "{e}");
        let b = c.payload.into_buf().expect("the buffer comes back");
        assert_eq!((b.as_ptr(), b.len(), b.capacity()), (ptr, 0, 32));
        assert_empty(&port);
        assert_eq!(port.cancel(op).unwrap_err().kind(), ErrorKind::NotFound);
    }

    /// An operation that already completed cannot be cancelled: NotFound,
    /// and no second completion.
    fn x1_cancel_of_a_finished_op_is_not_found(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, mut peer) = pair(&port, 1);
        let op = port.send(h, b"done".to_vec(), 1).unwrap();
        let c = next(&port);
        assert_eq!((c.op, c.result.unwrap()), (Some(op), 4));
        assert_eq!(port.cancel(op).unwrap_err().kind(), ErrorKind::NotFound);
        peer.write_all(b"x").unwrap();
        let op = port.recv(h, Vec::with_capacity(8), 2).unwrap();
        let c = next(&port);
        assert_eq!((c.op, c.result.unwrap()), (Some(op), 1));
        assert_eq!(port.cancel(op).unwrap_err().kind(), ErrorKind::NotFound);
        assert_empty(&port);
    }

    /// 300 rounds of a receive racing the peer's write and a cancel, with a
    /// thread waiting in `get` all along (so the backend completes the
    /// receive while the cancel runs): each receive completes exactly once,
    /// aborted with no bytes or with its bytes, and over the whole run no
    /// byte is lost or received twice.
    fn x1_cancel_racing_completion_loses_and_duplicates_nothing(backend: Backend) {
        let port = common::port::<Tag>(backend, 4);
        let (h, peer) = pair(&port, 1);
        let rounds = 300u32;
        let chunk = 16;
        let stream = pattern(rounds as usize * chunk);

        let (tx, rx) = mpsc::channel::<Completion<Tag>>();
        let consumer = {
            let port = port.clone();
            thread::spawn(move || loop {
                let c = next(&port);
                if c.value == Tag::Quit {
                    return;
                }
                tx.send(c).unwrap();
            })
        };
        let go = Arc::new(Barrier::new(2));
        let writer = {
            let go = go.clone();
            let stream = stream.clone();
            thread::spawn(move || {
                let mut peer = peer;
                for piece in stream.chunks(chunk) {
                    go.wait();
                    peer.write_all(piece).unwrap();
                }
                peer.shutdown(Shutdown::Write).unwrap();
                peer
            })
        };

        let mut received = Vec::new();
        let (mut aborted, mut won, mut not_found) = (0, 0, 0u32);
        let mut seen: HashMap<OpId, u32> = HashMap::new();
        for round in 0..rounds {
            let op = port.recv(h, Vec::with_capacity(64), Tag::Round(round)).unwrap();
            let not_found_before = not_found;
            // Vary who is ahead: the cancel before the write is released,
            // right after it, or a few yields after it.
            let yields = round % 4;
            if yields == 0 {
                cancel_counting(&port, op, &mut not_found);
                go.wait();
            } else {
                go.wait();
                for _ in 1..yields {
                    thread::yield_now();
                }
                cancel_counting(&port, op, &mut not_found);
            }
            let c = rx.recv_timeout(LONG.unwrap()).expect("the receive's one completion");
            assert_eq!(c.op, Some(op));
            assert_eq!(c.value, Tag::Round(round));
            *seen.entry(op).or_default() += 1;
            let buf = c.payload.into_buf().expect("the buffer comes back");
            match c.result {
                Ok(n) => {
                    assert!(n > 0, "round {round}: the peer has not closed yet");
                    assert_eq!(buf.len(), n);
                    received.extend_from_slice(&buf);
                    won += 1;
                }
                Err(e) if is_aborted(&e) => {
                    assert!(buf.is_empty(), "round {round}: an aborted receive moved no bytes");
                    assert_eq!(
                        not_found, not_found_before,
                        "round {round}: the cancel said NotFound, yet it aborted the receive"
                    );
                    aborted += 1;
                    // Take this round's chunk now, so that the next round
                    // starts with an empty socket and races again instead of
                    // finding data at issue.
                    port.recv(h, Vec::with_capacity(64), Tag::Drain).unwrap();
                    let c = rx.recv_timeout(LONG.unwrap()).expect("the chunk of an aborted round");
                    assert_eq!(c.value, Tag::Drain);
                    assert!(c.result.unwrap() > 0);
                    received.extend_from_slice(&c.payload.into_buf().unwrap());
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        let _peer = writer.join().unwrap();
        // Drain what the cancelled receives left in the socket.
        loop {
            port.recv(h, Vec::with_capacity(4096), Tag::Drain).unwrap();
            let c = rx.recv_timeout(LONG.unwrap()).expect("a drain completion");
            let n = c.result.unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&c.payload.into_buf().unwrap());
        }
        assert!(seen.values().all(|&n| n == 1), "one completion per operation");
        assert_eq!(seen.len(), rounds as usize);
        assert_eq!(received.len(), stream.len(), "bytes lost or duplicated");
        assert!(received == stream, "the stream arrived in order");
        println!(
            "{backend}: {rounds} rounds: {aborted} aborted, {won} completed first \
             ({not_found} of them before the cancel was asked)"
        );
        port.post(0, 0, Tag::Quit).unwrap();
        consumer.join().unwrap();
        assert!(rx.try_recv().is_err(), "nothing after the last completion");
        assert_empty(&port);
    }

    /// cancel_handle reports how many operations were in flight (a receive,
    /// a pooled receive and a send that cannot finish), ends all of them,
    /// and then finds none: NotFound.
    fn x1_cancel_handle_counts_ops_in_flight(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, mut peer) = pair(&port, 1);
        assert_eq!(port.cancel_handle(h).unwrap_err().kind(), ErrorKind::NotFound);
        port.recv(h, Vec::with_capacity(8), 1).unwrap();
        port.recv_pooled(h, 2).unwrap();
        let big = pattern(32 << 20);
        port.send(h, big, 3).unwrap();
        assert_eq!(port.cancel_handle(h).unwrap(), 3);
        let mut kinds = Vec::new();
        let mut big = Vec::new();
        for _ in 0..3 {
            let c = next(&port);
            kinds.push((c.value, c.kind));
            let e = c.result.expect_err("none of them could have finished");
            assert!(is_aborted(&e), "value {}: {e}", c.value);
            match (c.value, c.payload) {
                (1, Payload::Buf(b)) => assert_eq!((b.len(), b.capacity()), (0, 8)),
                (2, Payload::None) => {}
                (3, Payload::Buf(b)) => big = b,
                (v, p) => panic!("value {v}: unexpected payload {p:?}"),
            }
        }
        kinds.sort_by_key(|k| k.0);
        assert_eq!(kinds, [(1, OpKind::Recv), (2, OpKind::RecvPooled), (3, OpKind::Send)]);
        assert_empty(&port);
        assert_eq!(port.cancel_handle(h).unwrap_err().kind(), ErrorKind::NotFound);
        // The handle itself is still usable. The peer gets a prefix of the
        // cancelled send (a cancelled send may have put part of its buffer
        // on the wire), then "after", then FIN.
        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).map(|_| got)
        });
        port.send(h, b"after".to_vec(), 4).unwrap();
        assert_eq!(next(&port).result.unwrap(), 5);
        port.close(h).unwrap();
        let got = reader.join().unwrap().unwrap();
        let cut = got.len() - 5;
        assert_eq!(&got[cut..], b"after");
        assert!(got[..cut] == big[..cut], "a prefix of the cancelled send, nothing else");
    }

    /// An OpId belongs to its port: another port knows nothing of it, and
    /// cancelling it there disturbs neither port.
    fn x1_cancel_with_another_ports_op_id_is_not_found(backend: Backend) {
        let a = common::port::<u32>(backend, 4);
        let b = common::port::<u32>(backend, 4);
        let (ha, _pa) = pair(&a, 1);
        let (hb, _pb) = pair(&b, 1);
        let op_a = a.recv(ha, Vec::with_capacity(8), 1).unwrap();
        let op_b = b.recv(hb, Vec::with_capacity(8), 2).unwrap();
        assert_eq!(b.cancel(op_a).unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(a.cancel(op_b).unwrap_err().kind(), ErrorKind::NotFound);
        assert!(b.cancel_handle(ha).is_err(), "another port's handle");
        assert_empty(&a);
        assert_empty(&b);
        a.cancel(op_a).unwrap();
        let c = next(&a);
        assert_eq!(c.op, Some(op_a));
        assert!(is_aborted(&c.result.unwrap_err()));
        assert_empty(&b);
        b.cancel(op_b).unwrap();
        assert_eq!(next(&b).op, Some(op_b));
    }
}
