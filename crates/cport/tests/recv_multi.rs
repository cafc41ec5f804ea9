//! SEMANTICS O9: the multishot receive. A completion per arrival, each
//! owning its buffer and a clone of the value, until end of stream, error,
//! cancel or close, with exactly one final completion carrying the value
//! itself; and memory bounded by the pool when the handler lags (R3: the
//! receive pauses and goes on, it is never ended by an empty pool).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use common::{next, original, pair, pattern, Tagged};
use cport::{is_aborted, Completion, OpKind};

/// Takes the bytes of a `more` completion and gives its buffer back.
#[track_caller]
fn bytes_of(port: &cport::CompletionPort<Tagged>, c: Completion<Tagged>) -> Vec<u8> {
    assert_eq!(c.kind, OpKind::RecvMulti);
    assert!(c.more, "an arrival is not the last completion");
    assert_eq!(
        c.value,
        Tagged { id: 1, clone: true },
        "each arrival has a clone"
    );
    let n = c.result.expect("an arrival carries bytes");
    let buf = c.payload.into_buf().expect("an arrival owns a buffer");
    assert!(
        n > 0 && buf.len() == n,
        "{n} bytes in a buffer of {}",
        buf.len()
    );
    let data = buf.clone();
    port.recycle(buf);
    data
}

backends! {
    fn o9_recv_multi_completes_per_arrival_until_end_of_stream(backend: Backend) {
        let port = common::port::<Tagged>(backend, 1);
        let (h, mut peer) = pair(&port, 7);
        let op = port.recv_multi(h, original(1)).unwrap();
        let mut got = Vec::new();
        for chunk in [&b"first"[..], b"second", b"third"] {
            peer.write_all(chunk).unwrap();
            let want = got.len() + chunk.len();
            while got.len() < want {
                let c = next(&port);
                assert_eq!((c.key, c.op), (7, Some(op)));
                got.extend(bytes_of(&port, c));
            }
        }
        assert_eq!(got, b"firstsecondthird");
        peer.shutdown(Shutdown::Write).unwrap();
        let last = next(&port);
        assert!(!last.more, "end of stream is the last completion");
        assert_eq!(last.result.unwrap(), 0);
        assert_eq!(last.value, original(1), "the last completion has the value itself");
        assert_eq!(last.payload.into_buf().map(|b| b.len()), Some(0));
        common::assert_empty(&port);
        // The connection still sends.
        port.send(h, b"bye".to_vec(), original(2)).unwrap();
        assert_eq!(next(&port).result.unwrap(), 3);
    }

    fn o9_recv_multi_ends_with_the_error_and_a_reset_sticks(backend: Backend) {
        let port = common::port::<Tagged>(backend, 1);
        let (h, peer) = pair(&port, 7);
        port.recv_multi(h, original(1)).unwrap();
        socket2::SockRef::from(&peer).set_linger(Some(Duration::ZERO)).unwrap();
        drop(peer);
        let last = next(&port);
        assert!(!last.more);
        assert_eq!(last.value, original(1));
        assert_eq!(last.result.unwrap_err().kind(), ErrorKind::ConnectionReset);
        // Issued after the reset: it fails the same way at once (O5).
        port.recv_multi(h, original(2)).unwrap();
        let c = next(&port);
        assert_eq!((c.more, c.value.id), (false, 2));
        assert_eq!(c.result.unwrap_err().kind(), ErrorKind::ConnectionReset);
    }

    /// On io_uring a handle names its descriptor by a slot of the ring's
    /// table of registered files from its 32nd operation on; a multishot
    /// receive issued before goes on naming the descriptor, re-arms
    /// included. Both kinds of request on one stream: arrivals, sends and
    /// the close all still work (on epoll the same steps check nothing
    /// slot-specific).
    fn o9_recv_multi_from_before_the_handle_takes_its_file_slot(backend: Backend) {
        let port = common::port::<Tagged>(backend, 1);
        let (h, mut peer) = pair(&port, 7);
        let op = port.recv_multi(h, original(1)).unwrap();
        common::send_past_the_file_slot(&port, h, 7, &mut peer, |i| original(100 + i), |v| {
            v.id - 100
        });
        peer.write_all(b"after").unwrap();
        let mut got = Vec::new();
        while got.len() < 5 {
            let c = next(&port);
            assert_eq!((c.key, c.op), (7, Some(op)));
            got.extend(bytes_of(&port, c));
        }
        assert_eq!(got, b"after");
        port.close(h).unwrap();
        let last = next(&port);
        assert_eq!((last.more, last.value.id, last.value.clone), (false, 1, false));
        assert!(is_aborted(last.result.as_ref().unwrap_err()), "{:?}", last.result);
        common::assert_empty(&port);
        let mut rest = Vec::new();
        match peer.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty()),
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
        }
    }

    fn o9_cancel_or_close_ends_recv_multi_with_one_aborted_completion(backend: Backend) {
        let port = common::port::<Tagged>(backend, 1);
        let (h, mut peer) = pair(&port, 7);
        let op = port.recv_multi(h, original(1)).unwrap();
        peer.write_all(b"x").unwrap();
        assert_eq!(bytes_of(&port, next(&port)), b"x");
        port.cancel(op).unwrap();
        let last = next(&port);
        assert!(!last.more);
        assert!(is_aborted(last.result.as_ref().unwrap_err()), "{:?}", last.result);
        assert_eq!(last.value, original(1));
        common::assert_empty(&port);
        assert_eq!(port.cancel(op).unwrap_err().kind(), ErrorKind::NotFound);

        // Close: aborted too, and the peer sees the end.
        port.recv_multi(h, original(2)).unwrap();
        port.close(h).unwrap();
        let last = next(&port);
        assert_eq!((last.more, last.value.id, last.value.clone), (false, 2, false));
        assert!(is_aborted(last.result.as_ref().unwrap_err()), "{:?}", last.result);
        let mut rest = Vec::new();
        match peer.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty()),
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
        }
    }

    // A peer sends far more than the pool holds (4 × 1,024 bytes, from
    // common::port) to a handler that takes one completion at a time. Every
    // byte arrives, in order, and no more completions ever wait in the
    // queue than the pool has buffers.
    fn o9_recv_multi_stays_within_the_pool_when_the_handler_lags(backend: Backend) {
        let port = common::port::<Tagged>(backend, 1);
        let (h, mut peer) = pair(&port, 7);
        port.recv_multi(h, original(1)).unwrap();
        let data = pattern(1 << 20);
        let sent = data.clone();
        let writer = thread::spawn(move || {
            peer.write_all(&sent).unwrap();
            peer.shutdown(Shutdown::Write).unwrap();
            peer
        });
        let mut got = Vec::with_capacity(data.len());
        let mut most = 0;
        loop {
            let c = next(&port);
            most = most.max(port.stats().queued + 1);
            if !c.more {
                assert_eq!(c.result.unwrap(), 0, "the stream ends with its FIN");
                break;
            }
            got.extend(bytes_of(&port, c));
        }
        assert!(got == data, "every byte, in order ({} of {})", got.len(), data.len());
        assert!(most <= 4, "{most} filled buffers waited at once with a pool of 4");
        drop(writer.join().unwrap());
    }

    fn o9_recv_multi_with_data_waiting_starts_with_it(backend: Backend) {
        let port = common::port::<Tagged>(backend, 1);
        let (h, mut peer) = pair(&port, 7);
        peer.write_all(b"early").unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
        port.recv_multi(h, original(1)).unwrap();
        let mut got = Vec::new();
        loop {
            let c = next(&port);
            if !c.more {
                assert_eq!(c.result.unwrap(), 0);
                break;
            }
            got.extend(bytes_of(&port, c));
        }
        assert_eq!(got, b"early");
        assert!(matches!(port.get(Some(Duration::ZERO)), Err(cport::GetError::Timeout)));
    }

    // Data and the FIN arrive together while the receive waits: one
    // readiness event stands for both. The receive must not stop at the
    // short read of the data (the FIN's edge is spent): it ends.
    fn o9_recv_multi_sees_the_fin_that_came_with_its_data(backend: Backend) {
        let port = common::port::<Tagged>(backend, 1);
        for round in 0..20u8 {
            let (h, mut peer) = pair(&port, 7);
            port.recv_multi(h, original(1)).unwrap();
            peer.write_all(&[round; 3]).unwrap();
            peer.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            loop {
                let c = next(&port);
                if !c.more {
                    assert_eq!(c.result.unwrap(), 0, "round {round}: the stream ends");
                    break;
                }
                got.extend(bytes_of(&port, c));
            }
            assert_eq!(got, [round; 3], "round {round}");
            port.close(h).unwrap();
        }
        common::assert_empty(&port);
    }

    // Four workers take one stream's arrivals at once, as a worker pool
    // does: each arrival's `seq` is its place in the stream, so sorted by
    // it the pieces are the stream, whichever worker took which. The seqs
    // are 0, 1, 2, … without a gap, and the final completion comes last.
    fn o9_seq_restores_the_order_of_arrivals_taken_by_several_workers(backend: Backend) {
        let port = std::sync::Arc::new(common::port::<Tagged>(backend, 4));
        let (h, mut peer) = pair(&port, 7);
        port.recv_multi(h, original(1)).unwrap();
        let data = pattern(1 << 20);
        let sent = data.clone();
        let writer = thread::spawn(move || {
            peer.write_all(&sent).unwrap();
            peer.shutdown(Shutdown::Write).unwrap();
            peer
        });
        let pieces = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let last = std::sync::Arc::new(std::sync::Mutex::new(None));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (port, pieces, last) = (port.clone(), pieces.clone(), last.clone());
                thread::spawn(move || loop {
                    let c = match port.get(common::LONG) {
                        Ok(c) => c,
                        Err(cport::GetError::Timeout) => panic!("no completion within {:?}", common::LONG),
                        // Posted to end the other workers.
                        Err(e) => panic!("get: {e}"),
                    };
                    if c.kind == OpKind::Post {
                        return;
                    }
                    if !c.more {
                        *last.lock().unwrap() = Some(c.seq);
                        for _ in 0..3 {
                            port.post(0, 0, original(0)).unwrap();
                        }
                        return;
                    }
                    let seq = c.seq;
                    let bytes = bytes_of(&port, c);
                    pieces.lock().unwrap().push((seq, bytes));
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        drop(writer.join().unwrap());
        let mut pieces = std::mem::take(&mut *pieces.lock().unwrap());
        pieces.sort_by_key(|&(seq, _)| seq);
        let seqs: Vec<u64> = pieces.iter().map(|&(seq, _)| seq).collect();
        let n = seqs.len() as u64;
        assert_eq!(seqs, (0..n).collect::<Vec<_>>(), "arrivals are numbered 0, 1, 2, … without a gap");
        assert_eq!(*last.lock().unwrap(), Some(n), "the final completion is numbered last");
        let got: Vec<u8> = pieces.into_iter().flat_map(|(_, b)| b).collect();
        assert!(got == data, "sorted by seq, the arrivals are the stream ({} of {} bytes)", got.len(), data.len());
        // A single-shot operation is numbered 0.
        let (h2, mut peer2) = pair(&port, 8);
        peer2.write_all(b"x").unwrap();
        port.recv_pooled(h2, original(2)).unwrap();
        let c = next(&port);
        assert_eq!((c.more, c.seq), (false, 0));
        port.recycle(c.payload.into_buf().unwrap());
    }
}
