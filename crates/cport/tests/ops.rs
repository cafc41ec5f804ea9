//! SEMANTICS O1–O5 on TCP: one completion per accepted operation, refusals
//! that complete nothing, dequeue by any thread, buffers that always come
//! back, whole sends, scatter/gather, and what a stream receive reports.

mod common;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{assert_empty, next, pair, pattern, wait_until, LONG};
use cport::{is_aborted, CompletionPort, GetError, Handle, OpId, OpKind, Payload, Rejected};

/// What a refused operation must hand back besides its value.
enum Given {
    Nothing,
    Buf(*const u8, usize),
    Bufs(Vec<(*const u8, usize)>),
}

/// Checks a refusal: the value and the very buffers come back, and the
/// error is returned (SEMANTICS O1). Returns the error for further checks.
#[track_caller]
fn refused(r: Result<OpId, Rejected<String>>, value: &str, given: Given) -> io::Error {
    let rej = match r {
        Ok(op) => {
            panic!("expected a refusal of the {value:?} operation, it was accepted as {op:?}")
        }
        Err(rej) => rej,
    };
    assert_eq!(rej.value, value, "the refused value comes back unchanged");
    match (given, rej.payload) {
        (Given::Nothing, Payload::None) => {}
        (Given::Buf(ptr, cap), Payload::Buf(b)) => {
            assert_eq!(b.as_ptr(), ptr, "{value}: the same buffer comes back");
            assert_eq!(b.capacity(), cap, "{value}: with its capacity");
        }
        (Given::Bufs(want), Payload::Bufs(bufs)) => {
            let got: Vec<(*const u8, usize)> =
                bufs.iter().map(|b| (b.as_ptr(), b.capacity())).collect();
            assert_eq!(got, want, "{value}: the same buffers come back, in order");
        }
        (_, p) => panic!("{value}: unexpected payload in the refusal: {p:?}"),
    }
    rej.error
}

/// Issues an operation with `buf` and the value `what`, and checks its
/// refusal.
#[track_caller]
fn refused_buf(
    what: &str,
    buf: Vec<u8>,
    issue: impl FnOnce(Vec<u8>, String) -> Result<OpId, Rejected<String>>,
) -> io::Error {
    let given = Given::Buf(buf.as_ptr(), buf.capacity());
    refused(issue(buf, what.to_string()), what, given)
}

/// Issues an operation that takes no buffer with the value `what`, and
/// checks its refusal.
#[track_caller]
fn refused_none(
    what: &str,
    issue: impl FnOnce(String) -> Result<OpId, Rejected<String>>,
) -> io::Error {
    refused(issue(what.to_string()), what, Given::Nothing)
}

/// A connected pair whose associated end has a small send buffer and whose
/// peer has a small receive buffer (autotuning off), so that a large send
/// cannot be taken in one piece and must wait for the peer.
fn narrow_pair<T: Send + 'static>(port: &CompletionPort<T>, key: u64) -> (Handle, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    a.set_send_buffer_size(64 * 1024).unwrap();
    a.connect(&l.local_addr().unwrap().into()).unwrap();
    let (b, _) = l.accept().unwrap();
    socket2::SockRef::from(&b)
        .set_recv_buffer_size(64 * 1024)
        .unwrap();
    b.set_read_timeout(LONG).unwrap();
    b.set_write_timeout(LONG).unwrap();
    (port.associate(TcpStream::from(a), key).unwrap(), b)
}

/// A pair whose associated end already holds `data` in its receive queue
/// when it is associated, so a receive issued next sees all of it at once.
fn pair_with_pending<T: Send + 'static>(
    port: &CompletionPort<T>,
    key: u64,
    data: &[u8],
) -> (Handle, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut b, _) = l.accept().unwrap();
    b.set_read_timeout(LONG).unwrap();
    b.write_all(data).unwrap();
    a.set_read_timeout(LONG).unwrap();
    let mut peek = vec![0; data.len()];
    wait_until("the data reached the receiving socket", || {
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

/// An empty file, already unlinked, so nothing is left behind whatever
/// happens to the test; named per backend because both backends' bodies
/// run at once.
fn unlinked_file(backend: &str) -> File {
    let path = std::env::temp_dir().join(format!("cport-ops-{}-{backend}", std::process::id()));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}

#[track_caller]
fn expect_buf(p: Payload) -> Vec<u8> {
    match p {
        Payload::Buf(b) => b,
        p => panic!("expected Payload::Buf, got {p:?}"),
    }
}

#[track_caller]
fn expect_bufs(p: Payload) -> Vec<Vec<u8>> {
    match p {
        Payload::Bufs(b) => b,
        p => panic!("expected Payload::Bufs, got {p:?}"),
    }
}

backends! {
    /// Eight sends (which epoll completes inside the call) and eight
    /// one-byte receives: sixteen completions, one per operation, each
    /// with its own value, then nothing.
    fn o1_n_accepted_ops_give_exactly_n_completions_then_nothing(backend: Backend) {
        let port = common::port::<u64>(backend, 4);
        let (h, mut peer) = pair(&port, 7);
        let n = 8u64;
        let mut outstanding = HashSet::new();
        let mut sent = Vec::new();
        for i in 0..n {
            let buf = vec![i as u8; 10 + i as usize];
            sent.extend_from_slice(&buf);
            assert!(outstanding.insert(port.send(h, buf, i).unwrap()));
        }
        for i in 0..n {
            assert!(outstanding.insert(port.recv(h, Vec::with_capacity(1), 100 + i).unwrap()));
        }
        // The peer runs on its own thread: on io_uring a send queued behind
        // another on the same stream is issued when the one ahead is reaped,
        // which happens inside `get`.
        let peer = thread::spawn(move || {
            let mut got = vec![0; sent.len()];
            peer.read_exact(&mut got).unwrap();
            assert!(got == sent, "the sends arrive whole and in issue order");
            peer.write_all(b"abcdefgh").unwrap();
            peer
        });

        for _ in 0..2 * n {
            let c = next(&port);
            assert_eq!(c.key, 7);
            assert_eq!(c.handle, Some(h));
            assert!(!c.more);
            let op = c.op.expect("an I/O completion names its operation");
            assert!(outstanding.remove(&op), "a second completion for {op:?} (value {})", c.value);
            match c.kind {
                OpKind::Send => {
                    assert!(c.value < n);
                    assert_eq!(c.result.unwrap(), 10 + c.value as usize);
                }
                OpKind::Recv => {
                    assert_eq!(c.result.unwrap(), 1);
                    let b = expect_buf(c.payload);
                    assert_eq!(
                        b,
                        [b'a' + (c.value - 100) as u8],
                        "receives on a stream are filled in issue order"
                    );
                }
                k => panic!("unexpected completion kind {k:?}"),
            }
        }
        assert!(outstanding.is_empty());
        assert_empty(&port);
        peer.join().unwrap();
    }

    /// A small send is taken by the kernel at once (on epoll inside the
    /// call): its completion is still queued and dequeued like any other.
    fn o1_op_completing_at_once_still_comes_through_get(backend: Backend) {
        let port = common::port::<&'static str>(backend, 4);
        let (h, mut peer) = pair(&port, 3);
        let id = port.send(h, b"ping".to_vec(), "small send").unwrap();
        let c = next(&port);
        assert_eq!(c.op, Some(id));
        assert_eq!(c.kind, OpKind::Send);
        assert_eq!(c.key, 3);
        assert_eq!(c.value, "small send");
        assert_eq!(c.result.unwrap(), 4);
        assert_eq!(expect_buf(c.payload), b"ping");
        assert_empty(&port);
        let mut b = [0; 4];
        peer.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
    }

    /// Refusals at issue time (no room, wrong kind of handle, closed
    /// handle, another port's handle, closed port) hand back the value and
    /// the same buffers and produce no completion.
    fn o1_refused_ops_return_value_and_buffer_and_complete_nothing(backend: Backend) {
        let port = common::port::<String>(backend, 4);
        let (h, _peer) = pair(&port, 1);
        let lh = port.associate(TcpListener::bind("127.0.0.1:0").unwrap(), 2).unwrap();
        let uh = port.associate(UdpSocket::bind("127.0.0.1:0").unwrap(), 3).unwrap();
        let to = "127.0.0.1:9".parse().unwrap();

        let e = refused_buf("recv, no room", vec![7u8; 16], |b, v| port.recv(h, b, v));
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        let fulls = vec![vec![1u8; 4], vec![2u8; 8]];
        let g = Given::Bufs(fulls.iter().map(|b| (b.as_ptr(), b.capacity())).collect());
        let what = "recv_vectored, no room";
        refused(port.recv_vectored(h, fulls, what.into()), what, g);

        // Operations that do not fit the kind of handle.
        let room = || Vec::with_capacity(32);
        refused_buf("read_at on a stream", room(), |b, v| port.read_at(h, b, 0, v));
        refused_buf("write_at on udp", b"w".to_vec(), |b, v| port.write_at(uh, b, 0, v));
        refused_none("accept on a stream", |v| port.accept(h, v));
        refused_none("recv_multi on udp", |v| port.recv_multi(uh, v));
        refused_none("recv_pooled on udp", |v| port.recv_pooled(uh, v));
        refused_buf("recv on a listener", room(), |b, v| port.recv(lh, b, v));
        refused_buf("recv_from on a stream", room(), |b, v| port.recv_from(h, b, v));
        refused_buf("send_to on a stream", b"d".to_vec(), |b, v| port.send_to(h, b, to, v));
        let fh = port.associate(unlinked_file(backend.name()), 6).unwrap();
        let e = refused_buf("recv on a file", room(), |b, v| port.recv(fh, b, v));
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");

        // A closed handle.
        let (closed, _p2) = pair(&port, 4);
        port.close(closed).unwrap();
        refused_buf("recv on a closed handle", room(), |b, v| port.recv(closed, b, v));
        refused_buf("send on a closed handle", b"x".to_vec(), |b, v| port.send(closed, b, v));
        assert!(port.close(closed).is_err(), "a second close is refused");

        // A handle of another port.
        let other = common::port::<String>(backend, 1);
        let (foreign, _p3) = pair(&other, 5);
        refused_buf("recv on a foreign handle", room(), |b, v| port.recv(foreign, b, v));
        assert!(port.close(foreign).is_err(), "another port's handle cannot be closed here");
        assert_empty(&port);
        assert_empty(&other);

        // A closed port.
        port.close_port();
        let e = refused_buf("recv on a closed port", room(), |b, v| port.recv(h, b, v));
        assert_eq!(e.kind(), ErrorKind::NotConnected, "{e}");
        refused_none("accept on a closed port", |v| port.accept(lh, v));
        match port.get(Some(Duration::ZERO)) {
            Err(GetError::Closed) => {}
            other => panic!("a closed port must say so, got {other:?}"),
        }
        // The other port is unaffected and still quiet.
        assert_empty(&other);
    }

    /// The issuing thread never calls `get`: every completion goes to the
    /// thread waiting in it, sometimes before the issuing call returned.
    fn o2_completions_are_dequeued_by_another_thread(backend: Backend) {
        let port = common::port::<u64>(backend, 2);
        let (h, mut peer) = pair(&port, 1);
        let rounds = 200u64;
        let returned = Arc::new(AtomicU64::new(0));
        let taker = {
            let port = port.clone();
            let returned = returned.clone();
            thread::spawn(move || {
                let mut got = Vec::new();
                for _ in 0..rounds {
                    let c = next(&port);
                    let early = returned.load(Ordering::SeqCst) <= c.value;
                    got.push((c.op, c.value, c.result.unwrap(), early));
                }
                got
            })
        };
        let mut ids = Vec::new();
        for i in 0..rounds {
            wait_until("the other thread waits in get", || port.stats().waiting >= 1);
            ids.push(port.send(h, i.to_le_bytes().to_vec(), i).unwrap());
            returned.store(i + 1, Ordering::SeqCst);
        }
        let got = taker.join().unwrap();
        assert_eq!(got.len(), rounds as usize);
        let mut early = 0;
        for (i, (op, value, n, before)) in got.into_iter().enumerate() {
            assert_eq!(value, i as u64, "one consumer sees completions in order");
            assert_eq!(op, Some(ids[i]));
            assert_eq!(n, 8);
            early += usize::from(before);
        }
        println!(
            "{backend}: {early} of {rounds} completions were dequeued \
             before their issuing call returned"
        );
        let mut stream = vec![0; 8 * rounds as usize];
        peer.read_exact(&mut stream).unwrap();
        for (i, chunk) in stream.chunks(8).enumerate() {
            assert_eq!(chunk, (i as u64).to_le_bytes());
        }
        assert_empty(&port);
    }

    /// The buffer handed in is the buffer handed back (same allocation,
    /// same capacity) after success, after an error and after a cancel.
    fn o3_buffers_come_back_on_success_error_and_cancel(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, mut peer) = pair(&port, 1);

        // Success: recv, send, and their vectored forms.
        let buf = Vec::with_capacity(64);
        let (ptr, cap) = (buf.as_ptr(), buf.capacity());
        port.recv(h, buf, 1).unwrap();
        peer.write_all(b"hello").unwrap();
        let c = next(&port);
        assert_eq!(c.result.unwrap(), 5);
        let b = expect_buf(c.payload);
        assert_eq!((b.as_ptr(), b.capacity()), (ptr, cap));
        assert_eq!(b, b"hello");

        port.send(h, b, 2).unwrap();
        let c = next(&port);
        assert_eq!(c.result.unwrap(), 5);
        let b = expect_buf(c.payload);
        assert_eq!((b.as_ptr(), b.capacity()), (ptr, cap), "a send gives its buffer back");
        let mut echo = [0; 5];
        peer.read_exact(&mut echo).unwrap();

        let bufs = vec![b"ab".to_vec(), b"cde".to_vec()];
        let want: Vec<_> = bufs.iter().map(|b| (b.as_ptr(), b.capacity())).collect();
        port.send_vectored(h, bufs, 3).unwrap();
        let c = next(&port);
        assert_eq!(c.result.unwrap(), 5);
        let bufs = expect_bufs(c.payload);
        let got: Vec<_> = bufs.iter().map(|b| (b.as_ptr(), b.capacity())).collect();
        assert_eq!(got, want);
        peer.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"abcde");

        // Cancellation: single and vectored receives.
        let buf = Vec::with_capacity(64);
        let (ptr, cap) = (buf.as_ptr(), buf.capacity());
        let op = port.recv(h, buf, 4).unwrap();
        port.cancel(op).unwrap();
        let c = next(&port);
        assert_eq!(c.op, Some(op));
        let e = c.result.unwrap_err();
        assert!(is_aborted(&e), "{e}");
        let b = expect_buf(c.payload);
        assert_eq!((b.as_ptr(), b.capacity(), b.len()), (ptr, cap, 0));

        let bufs = vec![Vec::with_capacity(8), Vec::with_capacity(16)];
        let want: Vec<_> = bufs.iter().map(|b| (b.as_ptr(), b.capacity())).collect();
        let op = port.recv_vectored(h, bufs, 5).unwrap();
        port.cancel(op).unwrap();
        let c = next(&port);
        assert!(is_aborted(&c.result.unwrap_err()));
        let bufs = expect_bufs(c.payload);
        let got: Vec<_> = bufs.iter().map(|b| (b.as_ptr(), b.capacity())).collect();
        assert_eq!(got, want);

        // Error: the peer resets the connection under a pending receive,
        // then a send fails on the dead connection.
        let buf = Vec::with_capacity(64);
        let (ptr, cap) = (buf.as_ptr(), buf.capacity());
        port.recv(h, buf, 6).unwrap();
        socket2::SockRef::from(&peer).set_linger(Some(Duration::ZERO)).unwrap();
        drop(peer);
        let c = next(&port);
        let e = c.result.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
        let b = expect_buf(c.payload);
        assert_eq!((b.as_ptr(), b.capacity(), b.len()), (ptr, cap, 0));

        let buf = b"after the reset".to_vec();
        let (ptr, cap) = (buf.as_ptr(), buf.capacity());
        port.send(h, buf, 7).unwrap();
        let c = next(&port);
        assert_eq!(c.value, 7);
        assert!(c.result.is_err(), "a send on a reset connection fails: {:?}", c.result);
        let b = expect_buf(c.payload);
        assert_eq!((b.as_ptr(), b.capacity()), (ptr, cap));
        assert_eq!(b, b"after the reset", "a failed send leaves the buffer as it was");
        assert_empty(&port);
    }

    /// 32 MiB, far more than the socket buffers hold: the send completes
    /// once, with every byte, and only after the peer has taken them.
    fn o4_send_of_32_mib_completes_once_when_all_taken(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, peer) = narrow_pair(&port, 1);
        let total = 32 << 20;
        let data = pattern(total);
        let ptr = data.as_ptr();
        let id = port.send(h, data, 9).unwrap();
        // While the peer reads nothing, at most the socket buffers' worth
        // can have gone: a completion now would be a short send reported
        // as whole.
        match port.get(Some(Duration::from_millis(200))) {
            Err(GetError::Timeout) => {}
            other => panic!("the send completed before the peer read anything: {other:?}"),
        }
        let reader = thread::spawn(move || {
            let mut peer = peer;
            let mut got = Vec::with_capacity(total);
            peer.read_to_end(&mut got).map(|_| got)
        });
        let c = next(&port);
        assert_eq!(c.op, Some(id));
        assert_eq!(c.value, 9);
        assert_eq!(c.result.unwrap(), total, "one completion for the whole buffer");
        let b = expect_buf(c.payload);
        assert_eq!((b.as_ptr(), b.len()), (ptr, total));
        assert_empty(&port);
        // FIN right after the completion: had any byte not been taken yet,
        // the peer would see the stream end short.
        port.shutdown(h, Shutdown::Write).unwrap();
        let got = reader.join().unwrap().expect("the peer reads to the end");
        assert_eq!(got.len(), total);
        assert!(got == b, "the peer received every byte in order");
    }

    /// Gather: three buffers go out as one stream, in order.
    fn o4_send_vectored_of_three_buffers_arrives_in_order(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, mut peer) = pair(&port, 1);
        let bufs = vec![vec![b'a'; 1000], vec![b'b'], pattern(70_000)];
        let want = bufs.concat();
        let ptrs: Vec<_> = bufs.iter().map(|b| b.as_ptr()).collect();
        port.send_vectored(h, bufs, 2).unwrap();
        let mut got = vec![0; want.len()];
        peer.read_exact(&mut got).unwrap();
        assert!(got == want, "the buffers arrive whole and in order");
        let c = next(&port);
        assert_eq!(c.kind, OpKind::Send);
        assert_eq!(c.result.unwrap(), want.len());
        let back = expect_bufs(c.payload);
        assert_eq!(back.iter().map(|b| b.as_ptr()).collect::<Vec<_>>(), ptrs);
        assert_eq!(back.concat(), want);
        assert_empty(&port);
    }

    /// Gather beyond IOV_MAX (1024 on Linux: the most buffers one sendmsg
    /// takes): 1500 buffers go out as one stream, in order, in one
    /// completion that gives every buffer back.
    fn o4_send_vectored_of_1500_buffers_goes_past_iov_max(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, mut peer) = pair(&port, 1);
        // Each buffer says which it is, so a skipped or repeated one shows.
        let bufs: Vec<Vec<u8>> = (0..1500u16)
            .map(|i| {
                let [lo, hi] = i.to_le_bytes();
                vec![lo, hi, 0xa5]
            })
            .collect();
        let want = bufs.concat();
        let ptrs: Vec<_> = bufs.iter().map(|b| b.as_ptr()).collect();
        port.send_vectored(h, bufs, 2).unwrap();
        // Dequeued before the peer reads: on io_uring the send is continued
        // past the first 1024 buffers when its first part is reaped, in `get`.
        let c = next(&port);
        assert_eq!((c.kind, c.value), (OpKind::Send, 2));
        let back = expect_bufs(c.payload);
        assert_eq!(back.iter().map(|b| b.as_ptr()).collect::<Vec<_>>(), ptrs);
        if common::under_wine() {
            if let Err(e) = &c.result {
                // wine hands every WSABUF of a WSASend to one sendmsg(2),
                // and Linux takes at most 1024 (EMSGSIZE, WSAEMSGSIZE here).
                assert_eq!(e.raw_os_error(), Some(common::EMSGSIZE), "{e}");
                println!("under wine: a gather of 1500 buffers fails: {e}");
                assert_empty(&port);
                return;
            }
        }
        assert_eq!(c.result.unwrap(), want.len(), "one completion for all 1500 buffers");
        let mut got = vec![0; want.len()];
        peer.read_exact(&mut got).unwrap();
        assert!(got == want, "the buffers arrive whole and in order");
        assert_empty(&port);
    }

    /// Six 256 KiB sends, single and gather, queued at once on a stream
    /// whose socket buffers take far less: each goes out in many short
    /// pieces, and a later send's bytes never slip in between an earlier
    /// one's pieces (WSASend keeps issue order).
    fn o4_sends_queued_on_one_stream_go_out_whole_and_in_issue_order(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, peer) = narrow_pair(&port, 1);
        let (n, size) = (6u32, 256 << 10);
        let reader = thread::spawn(move || {
            let mut peer = peer;
            let mut got = Vec::new();
            peer.read_to_end(&mut got).map(|_| got)
        });
        for k in 0..n {
            if k % 2 == 0 {
                port.send(h, vec![k as u8; size], k).unwrap();
            } else {
                let half = vec![k as u8; size / 2];
                port.send_vectored(h, vec![half.clone(), half], k).unwrap();
            }
        }
        let mut done = HashSet::new();
        for _ in 0..n {
            let c = next(&port);
            assert_eq!(c.kind, OpKind::Send);
            assert_eq!(c.result.unwrap(), size, "send {} completed whole", c.value);
            assert!(done.insert(c.value), "send {} completed twice", c.value);
        }
        assert_empty(&port);
        port.close(h).unwrap();
        let got = reader.join().unwrap().expect("the peer reads to the end");
        assert_eq!(got.len(), n as usize * size);
        for (k, chunk) in got.chunks(size).enumerate() {
            assert!(chunk.iter().all(|&b| b == k as u8), "send {k} arrived whole, in order");
        }
    }

    /// Scatter: bytes fill the spare capacity of each buffer in turn, after
    /// what a buffer already holds.
    fn o4_recv_vectored_fills_buffers_in_order(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let data = pattern(20);
        let (h, _peer) = pair_with_pending(&port, 1, &data);
        let mut first = Vec::with_capacity(4);
        first.push(b'#');
        // Rooms 3, 5 and 8: the 20 waiting bytes fill all three (16 bytes)
        // and leave 4 for the next receive.
        let bufs = vec![first, Vec::with_capacity(5), Vec::with_capacity(8)];
        port.recv_vectored(h, bufs, 3).unwrap();
        let c = next(&port);
        assert_eq!(c.result.unwrap(), 16);
        let bufs = expect_bufs(c.payload);
        assert_eq!(bufs[0], [b'#', data[0], data[1], data[2]]);
        assert_eq!(bufs[1], data[3..8]);
        assert_eq!(bufs[2], data[8..16]);
        port.recv(h, Vec::with_capacity(64), 4).unwrap();
        let c = next(&port);
        assert_eq!(c.result.unwrap(), 4);
        assert_eq!(expect_buf(c.payload), data[16..]);
        assert_empty(&port);
    }

    /// A receive completes with 1..=room bytes, appended after what the
    /// buffer holds, and the stream comes out whole and in order.
    fn o5_recv_completes_with_one_to_room_bytes(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, mut peer) = pair(&port, 1);
        let data = pattern(1000);
        peer.write_all(&data).unwrap();
        let mut got = Vec::new();
        let mut receives = 0;
        while got.len() < data.len() {
            let mut buf = Vec::with_capacity(10);
            buf.extend_from_slice(b"xyz");
            port.recv(h, buf, receives).unwrap();
            let c = next(&port);
            let n = c.result.unwrap();
            assert!((1..=7).contains(&n), "a receive with room 7 took {n} bytes");
            let b = expect_buf(c.payload);
            assert_eq!(&b[..3], b"xyz", "what the buffer held stays in front");
            assert_eq!(b.len(), 3 + n);
            got.extend_from_slice(&b[3..]);
            receives += 1;
        }
        assert!(got == data, "the stream arrives whole and in order");
        assert_empty(&port);
    }

    /// Bytes that arrived while no receive was pending, and while a thread
    /// polled the port (on epoll it takes the edge-triggered readiness and
    /// has nothing to give it to), are there for the receives issued after:
    /// a short one, then one for the rest, with nothing new arriving.
    fn o5_bytes_that_arrived_before_the_receive_are_not_lost(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut peer, _) = l.accept().unwrap();
        // Another descriptor of the associated socket, to see the bytes
        // arrive without taking them.
        let watch = a.try_clone().unwrap();
        watch.set_read_timeout(LONG).unwrap();
        let h = port.associate(a, 2).unwrap();
        peer.write_all(b"hello").unwrap();
        let mut peek = [0; 5];
        wait_until("the bytes reached the associated socket", || {
            match watch.peek(&mut peek) {
                Ok(n) => n == peek.len(),
                // Associated, the socket is non-blocking; io_uring's task
                // work interrupts this thread's blocking calls.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    false
                }
                Err(e) => panic!("peek: {e}"),
            }
        });
        // The port looks at the kernel with nothing to complete.
        assert_empty(&port);

        port.recv(h, Vec::with_capacity(2), 1).unwrap();
        let c = next(&port);
        assert_eq!((c.value, c.result.unwrap()), (1, 2));
        assert_eq!(expect_buf(c.payload), b"he");
        port.recv(h, Vec::with_capacity(64), 2).unwrap();
        let c = next(&port);
        assert_eq!((c.value, c.result.unwrap()), (2, 3));
        assert_eq!(expect_buf(c.payload), b"llo", "the rest, with no new arrival");
        assert_empty(&port);
    }

    /// Three receives and then a pooled receive queued on one stream, with
    /// ten bytes and the FIN arriving together: the receives take the bytes
    /// in issue order, and the pooled one, last, takes none of theirs and
    /// gets the FIN.
    fn o5_plain_and_pooled_receives_queued_on_a_stream_fill_in_issue_order(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, mut peer) = pair(&port, 3);
        for v in 0..3 {
            port.recv(h, Vec::with_capacity(4), v).unwrap();
        }
        port.recv_pooled(h, 3).unwrap();
        peer.write_all(b"abcdefghij").unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
        let mut seen: Vec<(u32, usize, Vec<u8>)> = (0..4)
            .map(|_| {
                let c = next(&port);
                (c.value, c.result.unwrap(), expect_buf(c.payload))
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                (0, 4, b"abcd".to_vec()),
                (1, 4, b"efgh".to_vec()),
                (2, 2, b"ij".to_vec()),
                (3, 0, Vec::new()),
            ]
        );
        assert_empty(&port);
    }

    /// The peer's FIN completes a pending receive with 0 bytes, and every
    /// receive after it too; the other direction still works.
    fn o5_peer_shutdown_write_gives_zero_bytes(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, mut peer) = pair(&port, 1);
        let buf = Vec::with_capacity(16);
        let ptr = buf.as_ptr();
        port.recv(h, buf, 1).unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
        let c = next(&port);
        assert_eq!(c.result.unwrap(), 0, "0 bytes means the peer closed");
        let b = expect_buf(c.payload);
        assert_eq!((b.as_ptr(), b.len()), (ptr, 0));
        port.recv(h, b, 2).unwrap();
        assert_eq!(next(&port).result.unwrap(), 0, "end of stream stays end of stream");
        port.send(h, b"still open".to_vec(), 3).unwrap();
        assert_eq!(next(&port).result.unwrap(), 10);
        let mut got = Vec::new();
        drop(port);
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"still open");
    }

    /// A reset sticks to its connection: two receives pending at it both
    /// fail with it, and so does every receive and send issued after it,
    /// never 0 bytes or EPIPE (Windows keeps failing with WSAECONNRESET;
    /// Linux reports the reset once, then end of file).
    fn o5_a_reset_sticks_to_its_connection(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, peer) = pair(&port, 1);
        port.recv(h, Vec::with_capacity(16), 1).unwrap();
        port.recv(h, Vec::with_capacity(16), 2).unwrap();
        socket2::SockRef::from(&peer).set_linger(Some(Duration::ZERO)).unwrap();
        drop(peer);
        let mut pending: Vec<(u32, ErrorKind)> = (0..2)
            .map(|_| {
                let c = next(&port);
                (c.value, c.result.unwrap_err().kind())
            })
            .collect();
        pending.sort_unstable_by_key(|(v, _)| *v);
        assert_eq!(
            pending,
            [(1, ErrorKind::ConnectionReset), (2, ErrorKind::ConnectionReset)]
        );
        port.recv(h, Vec::with_capacity(16), 3).unwrap();
        port.send(h, b"after".to_vec(), 4).unwrap();
        port.recv_vectored(h, vec![Vec::with_capacity(4)], 5).unwrap();
        port.send_vectored(h, vec![b"after".to_vec()], 6).unwrap();
        port.recv_pooled(h, 7).unwrap();
        let mut after: Vec<(u32, ErrorKind)> = (0..5)
            .map(|_| {
                let c = next(&port);
                let kind = match &c.result {
                    Ok(n) => panic!("operation {} after a reset completed with {n} bytes", c.value),
                    Err(e) => e.kind(),
                };
                (c.value, kind)
            })
            .collect();
        after.sort_unstable_by_key(|(v, _)| *v);
        assert_eq!(after, (3..=7).map(|v| (v, ErrorKind::ConnectionReset)).collect::<Vec<_>>());
        assert_empty(&port);
    }

    /// A reset nothing was pending for: the operations issued after it, a
    /// send first and then receives, all fail with it.
    fn o5_a_reset_found_later_sticks_too(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, peer) = pair(&port, 1);
        socket2::SockRef::from(&peer).set_linger(Some(Duration::ZERO)).unwrap();
        drop(peer);
        for v in 1..=4 {
            if v % 2 == 1 {
                port.send(h, b"x".to_vec(), v).unwrap();
            } else {
                port.recv(h, Vec::with_capacity(8), v).unwrap();
            }
            let c = next(&port);
            assert_eq!(c.value, v);
            let e = c.result.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConnectionReset, "operation {v}: {e}");
        }
    }

    /// A send after this side's own shutdown fails with the broken pipe it
    /// is, not as a reset, and the connection is not marked as reset.
    fn o5_send_after_own_shutdown_is_not_a_reset(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, mut peer) = pair(&port, 1);
        port.shutdown(h, Shutdown::Write).unwrap();
        port.send(h, b"late".to_vec(), 1).unwrap();
        let e = next(&port).result.unwrap_err();
        assert_ne!(e.kind(), ErrorKind::ConnectionReset, "{e}");
        // Receiving still works, and the peer's FIN is still 0 bytes.
        peer.write_all(b"hi").unwrap();
        port.recv(h, Vec::with_capacity(8), 2).unwrap();
        assert_eq!(next(&port).result.unwrap(), 2);
        peer.shutdown(Shutdown::Write).unwrap();
        port.recv(h, Vec::with_capacity(8), 3).unwrap();
        assert_eq!(next(&port).result.unwrap(), 0);
    }

    /// A reset is an error (ConnectionReset), never 0 bytes.
    fn o5_peer_reset_is_connection_reset(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, peer) = pair(&port, 1);
        port.recv(h, Vec::with_capacity(16), 1).unwrap();
        socket2::SockRef::from(&peer).set_linger(Some(Duration::ZERO)).unwrap();
        drop(peer);
        let c = next(&port);
        let e = c.result.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
        assert_empty(&port);
    }
}

/// Linux only: shutdown(SHUT_RD) wakes a pending receive with end of
/// stream, where shutdown(SD_RECEIVE) leaves a pending WSARecv pending
/// (wine 8 does: the port has nothing to complete), so on Windows this
/// would pin nothing the port does.
#[cfg(target_os = "linux")]
mod linux {
    use super::*;

    backends! {
        /// This side's own shutdown of reading ends a pending receive with
        /// 0 bytes, as the peer's FIN does.
        fn o5_own_shutdown_read_ends_a_pending_receive_with_zero_bytes(backend: Backend) {
            let port = common::port::<u32>(backend, 4);
            let (h, _peer) = pair(&port, 1);
            let op = port.recv(h, Vec::with_capacity(8), 1).unwrap();
            assert_empty(&port);
            port.shutdown(h, Shutdown::Read).unwrap();
            let c = next(&port);
            assert_eq!((c.op, c.kind, c.value), (Some(op), OpKind::Recv, 1));
            assert_eq!(c.result.unwrap(), 0);
            assert_eq!(expect_buf(c.payload), b"");
            assert_empty(&port);
        }
    }
}
