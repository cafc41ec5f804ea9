//! SEMANTICS O6 and R3: the receive that pins no buffer while idle
//! (`recv_pooled`), and what happens when its pool runs dry.
//!
//! `common::port` makes a pool of 4 buffers of 1024 bytes, so sixteen
//! connections receiving at once are four times what the pool holds; one
//! test takes a pool of a single buffer.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::Duration;

use common::{assert_empty, next, pair};
use cport::{is_aborted, Builder, CompletionPort, Handle, OpKind, Payload};

/// The pool geometry `common::port` sets up.
const POOL_BUFFERS: usize = 4;
const POOL_SIZE: usize = 1024;

/// The bytes connection `k` sends, distinct per connection and position,
/// so a byte delivered to the wrong connection or out of order shows.
fn stream_of(k: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + k * 31 + i / 253) % 256) as u8)
        .collect()
}

fn pairs(port: &CompletionPort<usize>, n: usize) -> (Vec<Handle>, Vec<TcpStream>) {
    (0..n).map(|k| pair(port, k as u64)).unzip()
}

#[track_caller]
fn pooled_buf(p: Payload) -> Vec<u8> {
    match p {
        Payload::Buf(b) => b,
        p => panic!("a pooled receive that succeeded carries Payload::Buf, got {p:?}"),
    }
}

backends! {
    /// Sixteen idle connections, each with a pending pooled receive, on a
    /// pool of four buffers: when data arrives every receive completes with
    /// exactly its connection's bytes, in a pool-sized buffer that is then
    /// recycled. A receive that pinned a buffer while idle could not all be
    /// pending at once with four buffers.
    fn o6_sixteen_idle_pooled_receives_share_four_buffers(backend: Backend) {
        let port = common::port::<usize>(backend, 4);
        let n = 4 * POOL_BUFFERS;
        let len = 600;
        let (handles, mut peers) = pairs(&port, n);
        for (k, &h) in handles.iter().enumerate() {
            port.recv_pooled(h, k).unwrap();
        }
        // Idle: nothing completes, however many receives wait.
        assert_empty(&port);
        for (k, p) in peers.iter_mut().enumerate() {
            p.write_all(&stream_of(k, len)).unwrap();
        }
        let mut got = vec![Vec::new(); n];
        let mut done = 0;
        let mut completions = 0;
        while done < n {
            let c = next(&port);
            completions += 1;
            assert_eq!(c.kind, OpKind::RecvPooled);
            let k = c.value;
            assert_eq!(c.key, k as u64, "the completion carries its handle's key");
            let bytes = c.result.unwrap_or_else(|e| panic!("connection {k}: {e}"));
            assert!(bytes > 0, "connection {k} ended early");
            let buf = pooled_buf(c.payload);
            assert_eq!(buf.len(), bytes, "the buffer holds exactly the bytes received");
            assert_eq!(buf.capacity(), POOL_SIZE, "a pool buffer");
            got[k].extend_from_slice(&buf);
            assert!(got[k].len() <= len, "connection {k} received more than was sent");
            port.recycle(buf);
            if got[k].len() < len {
                port.recv_pooled(handles[k], k).unwrap();
            } else {
                done += 1;
            }
        }
        for (k, g) in got.iter().enumerate() {
            assert!(*g == stream_of(k, len), "connection {k} received its own bytes, in order");
        }
        println!("{backend}: {n} connections took {completions} pooled completions");
        assert_empty(&port);
    }

    /// At end of stream a pooled receive completes with 0 bytes and an
    /// empty buffer; a cancelled one gives back no buffer at all, since it
    /// never held one.
    fn o6_pooled_receive_at_eof_is_zero_with_empty_buffer(backend: Backend) {
        let port = common::port::<usize>(backend, 4);
        let (h, peer) = pair(&port, 1);
        let op = port.recv_pooled(h, 1).unwrap();
        port.cancel(op).unwrap();
        let c = next(&port);
        assert_eq!(c.op, Some(op));
        assert!(is_aborted(&c.result.unwrap_err()));
        assert!(matches!(c.payload, Payload::None), "no buffer was pinned: {:?}", c.payload);

        port.recv_pooled(h, 2).unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
        let c = next(&port);
        assert_eq!(c.kind, OpKind::RecvPooled);
        assert_eq!(c.result.unwrap(), 0, "0 bytes means the peer closed");
        let buf = pooled_buf(c.payload);
        assert!(buf.is_empty(), "an empty buffer at end of stream, got {} bytes", buf.len());
        port.recycle(buf);
        port.recv_pooled(h, 3).unwrap();
        assert_eq!(next(&port).result.unwrap(), 0, "end of stream stays end of stream");
        assert_empty(&port);
    }

    /// Sixteen connections stream 64 KiB each at once into four pool
    /// buffers, and some received buffers are held back before recycling:
    /// the pool runs dry again and again. Every receive still completes
    /// with data (never ENOBUFS), and every stream arrives whole and in
    /// order, then ends with its FIN.
    fn r3_dry_pool_pauses_receives_and_never_ends_a_stream(backend: Backend) {
        let port = common::port::<usize>(backend, 4);
        let n = 4 * POOL_BUFFERS;
        let len = 64 * 1024;
        let (handles, peers) = pairs(&port, n);
        for (k, &h) in handles.iter().enumerate() {
            port.recv_pooled(h, k).unwrap();
        }
        let writer = thread::spawn(move || {
            let mut peers = peers;
            // Interleaved pieces, so all sixteen have data at the same time.
            for piece in 0..16 {
                for (k, p) in peers.iter_mut().enumerate() {
                    let s = stream_of(k, len);
                    let at = piece * len / 16;
                    p.write_all(&s[at..at + len / 16]).unwrap();
                }
            }
            for p in &peers {
                p.shutdown(Shutdown::Write).unwrap();
            }
            peers
        });
        let mut got: Vec<Vec<u8>> = (0..n).map(|_| Vec::with_capacity(len)).collect();
        let mut ended = vec![false; n];
        let mut held = Vec::new();
        let mut completions = 0;
        while ended.iter().any(|e| !e) {
            let c = next(&port);
            completions += 1;
            let k = c.value;
            let bytes = match c.result {
                Ok(b) => b,
                Err(e) => panic!(
                    "connection {k} failed after {} of {len} bytes: {e} \
                     (a dry pool must pause the receive, not end it)",
                    got[k].len()
                ),
            };
            let buf = pooled_buf(c.payload);
            assert_eq!(buf.len(), bytes);
            if bytes == 0 {
                assert_eq!(got[k].len(), len, "connection {k} saw its FIN before all its bytes");
                ended[k] = true;
                continue;
            }
            got[k].extend_from_slice(&buf);
            // Keep up to eight buffers out of the pool for a while.
            held.push(buf);
            if held.len() >= 2 * POOL_BUFFERS {
                for b in held.drain(..) {
                    port.recycle(b);
                }
            }
            port.recv_pooled(handles[k], k).unwrap();
        }
        for b in held {
            port.recycle(b);
        }
        let _peers = writer.join().unwrap();
        for (k, g) in got.iter().enumerate() {
            assert!(*g == stream_of(k, len), "connection {k}: its stream, whole and in order");
        }
        println!("{backend}: {n} × {len} bytes in {completions} pooled completions");
        match port.get(Some(Duration::from_millis(50))) {
            Err(cport::GetError::Timeout) => {}
            other => panic!("nothing may follow the last FIN, got {other:?}"),
        }
    }

    /// A pool of one 64-byte buffer for eight connections that all have
    /// data, round after round: most receives find the pool empty (on
    /// io_uring, the kernel's ring of one buffer: ENOBUFS) and are re-armed,
    /// and each still completes with its own connection's bytes.
    fn r3_one_pool_buffer_serves_eight_receives_round_after_round(backend: Backend) {
        let port = Builder::new()
            .backend(backend)
            .concurrency(4)
            .pool(1, 64)
            .build::<usize>()
            .unwrap_or_else(|e| panic!("a {backend} port: {e}"));
        let n = 8;
        let (handles, mut peers) = pairs(&port, n);
        for round in 0..3u8 {
            let byte = |k: usize| round ^ k as u8;
            for (k, &h) in handles.iter().enumerate() {
                port.recv_pooled(h, k).unwrap();
            }
            for (k, p) in peers.iter_mut().enumerate() {
                p.write_all(&[byte(k); 40]).unwrap();
            }
            let mut seen = vec![0usize; n];
            let mut pending = n;
            while pending > 0 {
                let c = next(&port);
                assert_eq!(c.kind, OpKind::RecvPooled);
                let k = c.value;
                assert_eq!(c.key, k as u64, "the completion carries its handle's key");
                let got = c.result.unwrap_or_else(|e| {
                    panic!("round {round}, connection {k}: {e} (an empty pool must not end a pooled receive)")
                });
                assert!(got > 0, "round {round}: connection {k} ended early");
                let buf = pooled_buf(c.payload);
                assert_eq!(buf.len(), got);
                assert_eq!(buf.capacity(), 64, "a pool buffer");
                assert!(buf.iter().all(|&b| b == byte(k)), "round {round}: connection {k}'s own bytes");
                seen[k] += got;
                assert!(seen[k] <= 40, "round {round}: connection {k} received more than was sent");
                port.recycle(buf);
                // A receive may take fewer than the 40 bytes: another takes
                // the rest.
                if seen[k] < 40 {
                    port.recv_pooled(handles[k], k).unwrap();
                } else {
                    pending -= 1;
                }
            }
        }
        assert_empty(&port);
    }

    /// Receives that wait for a dry pool (its one buffer filled by the
    /// first receive and not yet dequeued) end aborted when one is
    /// cancelled and the other's handle closed, and the first still
    /// delivers its bytes: a receive waiting for a buffer is in no kernel
    /// request, and its end must not be lost or wait for data (SEMANTICS
    /// O3, R3).
    fn r3_receives_waiting_for_a_dry_pool_end_on_cancel_or_close(backend: Backend) {
        let port = Builder::new()
            .backend(backend)
            .concurrency(4)
            .pool(1, 64)
            .build::<usize>()
            .unwrap_or_else(|e| panic!("a {backend} port: {e}"));
        if backend == cport::Backend::Epoll {
            // Its pooled receive takes a buffer only when data is there and
            // the pool never runs dry (a new buffer is made): no receive
            // waits for one.
            println!("skipped on epoll: its pool never runs dry, so no receive waits for a buffer");
            return;
        }
        let (handles, mut peers) = pairs(&port, 3);
        for (k, p) in peers.iter_mut().enumerate() {
            p.write_all(&[k as u8; 10]).unwrap();
        }
        // The first takes the pool's buffer; the other two find it empty,
        // with data waiting.
        port.recv_pooled(handles[0], 0).unwrap();
        let cancelled = port.recv_pooled(handles[1], 1).unwrap();
        port.recv_pooled(handles[2], 2).unwrap();
        port.cancel(cancelled).unwrap();
        port.close(handles[2]).unwrap();
        let mut ended = Vec::new();
        for _ in 0..3 {
            let c = next(&port);
            match c.value {
                0 => {
                    assert_eq!(c.result.unwrap(), 10);
                    let buf = pooled_buf(c.payload);
                    assert_eq!(buf, [0; 10], "the first receive's own bytes");
                    port.recycle(buf);
                }
                k => {
                    let e = c.result.expect_err("a receive that waited for a buffer ends aborted");
                    assert!(is_aborted(&e), "connection {k}: {e}");
                }
            }
            ended.push(c.value);
        }
        ended.sort_unstable();
        assert_eq!(ended, [0, 1, 2], "one completion each");
        assert_empty(&port);
    }
}
