//! Tests of what is specific to the io_uring backend: short-send
//! continuation, ENOBUFS re-arm, close semantics on io_uring, drop with
//! operations in flight. Behaviour shared by every backend is tested in
//! `crates/cport/tests/`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use crate::{is_aborted, Backend, Completion, CompletionPort, OpKind, Payload};

const T: Option<Duration> = Some(Duration::from_secs(10));

/// A port on io_uring, or `None` (with the reason printed) where the kernel
/// refuses io_uring.
fn port_with(pool: Option<(u16, usize)>) -> Option<CompletionPort<u32>> {
    let mut b = CompletionPort::<u32>::builder()
        .backend(Backend::Uring)
        .concurrency(4);
    if let Some((n, size)) = pool {
        b = b.pool(n, size);
    }
    match b.build() {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("skipped: io_uring unavailable: {e}");
            None
        }
    }
}

fn port() -> Option<CompletionPort<u32>> {
    port_with(None)
}

fn get(port: &CompletionPort<u32>) -> Completion<u32> {
    port.get(T).expect("a completion within 10 s")
}

/// A connected pair: `(associated server side, plain client side)`.
fn pair(port: &CompletionPort<u32>, key: u64) -> (crate::Handle, TcpStream) {
    pair_with_send_buffer(port, key, None)
}

/// [`pair`], with the server side's send buffer set to `send_buffer`
/// bytes first (a tiny one makes the kernel take a large send in many
/// short pieces).
fn pair_with_send_buffer(
    port: &CompletionPort<u32>,
    key: u64,
    send_buffer: Option<usize>,
) -> (crate::Handle, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    if let Some(size) = send_buffer {
        socket2::SockRef::from(&server)
            .set_send_buffer_size(size)
            .unwrap();
    }
    (port.associate(server, key).unwrap(), client)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn o4_short_send_is_continued_until_all_bytes_went() {
    let port = match port() {
        Some(p) => p,
        None => return,
    };
    // A tiny send buffer makes the kernel take the 1 MiB in many pieces.
    let (h, peer) = pair_with_send_buffer(&port, 1, Some(4096));
    let data = pattern(1 << 20);
    let reader = thread::spawn(move || {
        let mut peer = peer;
        peer.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).map(|_| got)
    });
    port.send(h, data.clone(), 7).unwrap();
    let c = get(&port);
    assert_eq!(c.kind, OpKind::Send);
    assert_eq!(c.value, 7);
    assert_eq!(
        c.result.unwrap(),
        data.len(),
        "one completion for the whole buffer"
    );
    assert_eq!(c.payload.into_buf().unwrap().len(), data.len());
    port.close(h).unwrap();
    let got = reader.join().unwrap().unwrap();
    assert!(got == data, "the peer received every byte, in order");
}

#[test]
fn o4_send_vectored_beyond_iov_max() {
    let port = match port() {
        Some(p) => p,
        None => return,
    };
    let (h, mut peer) = pair(&port, 1);
    let bufs: Vec<Vec<u8>> = (0..1500).map(|i| vec![i as u8; 3]).collect();
    let want: Vec<u8> = bufs.concat();
    port.send_vectored(h, bufs, 0).unwrap();
    let c = get(&port);
    assert_eq!(c.result.unwrap(), want.len());
    let mut got = vec![0; want.len()];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(got, want);
}

#[test]
fn r3_pooled_receive_rearms_after_enobufs() {
    // One 64-byte buffer for eight connections that all have data: most
    // receives find the ring empty, and each must come back with data.
    let port = match port_with(Some((1, 64))) {
        Some(p) => p,
        None => return,
    };
    let n = 8;
    let mut peers = Vec::new();
    let mut handles = Vec::new();
    for k in 0..n {
        let (h, peer) = pair(&port, k);
        handles.push(h);
        peers.push(peer);
    }
    for round in 0..3u8 {
        for (k, &h) in handles.iter().enumerate() {
            port.recv_pooled(h, k as u32).unwrap();
        }
        for (k, p) in peers.iter_mut().enumerate() {
            p.write_all(&[round ^ k as u8; 40]).unwrap();
        }
        let mut seen = vec![0usize; n as usize];
        for _ in 0..n {
            let c = get(&port);
            assert_eq!(c.kind, OpKind::RecvPooled);
            let got = c.result.expect("ENOBUFS must not end a pooled receive");
            let buf = c.payload.into_buf().unwrap();
            assert_eq!(buf.len(), got);
            assert_eq!(buf.capacity(), 64);
            assert!(buf.iter().all(|&b| b == round ^ c.key as u8));
            seen[c.key as usize] += got;
            port.recycle(buf);
        }
        // A receive may have taken fewer than 40 bytes: collect the rest.
        for (k, &h) in handles.iter().enumerate() {
            while seen[k] < 40 {
                port.recv_pooled(h, k as u32).unwrap();
                let c = get(&port);
                seen[k] += c.result.unwrap();
            }
        }
    }
}

#[test]
fn o5_pooled_receive_sees_eof() {
    let port = match port() {
        Some(p) => p,
        None => return,
    };
    let (h, peer) = pair(&port, 3);
    port.recv_pooled(h, 0).unwrap();
    drop(peer);
    let c = get(&port);
    assert_eq!(c.result.unwrap(), 0);
}

#[test]
fn x2_close_with_pending_recv_aborts_it_and_peer_sees_eof() {
    let port = match port() {
        Some(p) => p,
        None => return,
    };
    let (h, mut peer) = pair(&port, 5);
    port.recv(h, Vec::with_capacity(100), 1).unwrap();
    port.recv_pooled(h, 2).unwrap();
    port.close(h).unwrap();
    assert!(
        port.recv(h, Vec::with_capacity(1), 3).is_err(),
        "the handle is invalid at once"
    );
    assert!(port.close(h).is_err(), "a second close is refused");
    for _ in 0..2 {
        let c = get(&port);
        let e = c.result.unwrap_err();
        assert!(is_aborted(&e), "{e}");
    }
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(peer.read(&mut b).unwrap(), 0, "FIN arrived");
}

#[test]
fn x1_cancel_aborts_then_not_found() {
    let port = match port() {
        Some(p) => p,
        None => return,
    };
    let (h, _peer) = pair(&port, 5);
    let op = port.recv(h, Vec::with_capacity(10), 9).unwrap();
    port.cancel(op).unwrap();
    let c = get(&port);
    assert_eq!(c.op, Some(op));
    assert!(is_aborted(&c.result.unwrap_err()));
    assert_eq!(c.payload.into_buf().unwrap().capacity(), 10);
    assert_eq!(
        port.cancel(op).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    assert_eq!(
        port.cancel_handle(h).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
}

#[test]
fn o7_accept_multishot_until_cancelled() {
    let port = match port() {
        Some(p) => p,
        None => return,
    };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let lh = port.associate(l, 11).unwrap();
    let op = port.accept_multi(lh, 4).unwrap();
    let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for _ in 0..3 {
        let c = get(&port);
        assert!(c.more);
        assert_eq!(c.value, 4);
        match c.payload {
            Payload::Accepted { stream, peer } => {
                assert!(clients.iter().any(|s| s.local_addr().unwrap() == peer));
                assert_eq!(stream.peer_addr().unwrap(), peer);
            }
            p => panic!("{p:?}"),
        }
    }
    port.cancel(op).unwrap();
    let c = get(&port);
    assert!(!c.more);
    assert!(is_aborted(&c.result.unwrap_err()));
}

#[test]
fn o7_accept_single_and_connect() {
    let port = match port() {
        Some(p) => p,
        None => return,
    };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let lh = port.associate(l, 1).unwrap();
    port.accept(lh, 1).unwrap();
    let (ch, _) = port.connect(addr, 2, 2).unwrap();
    let mut accepted = None;
    for _ in 0..2 {
        let c = get(&port);
        match c.kind {
            OpKind::Accept => match c.payload {
                Payload::Accepted { stream, peer } => {
                    assert_eq!(peer, port.local_addr(ch).unwrap());
                    accepted = Some(stream);
                }
                p => panic!("{p:?}"),
            },
            OpKind::Connect => assert_eq!(c.result.unwrap(), 0),
            k => panic!("{k:?}"),
        }
    }
    let mut s = accepted.unwrap();
    port.send(ch, b"hi".to_vec(), 0).unwrap();
    assert_eq!(get(&port).result.unwrap(), 2);
    let mut b = [0; 2];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hi");
}

#[test]
fn o7_connect_refused() {
    let port = match port() {
        Some(p) => p,
        None => return,
    };
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    port.connect(addr, 1, 1).unwrap();
    let e = get(&port).result.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED));
}

#[test]
fn o7_datagram_truncation_is_emsgsize() {
    let port = match port() {
        Some(p) => p,
        None => return,
    };
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    let h = port.associate(s, 1).unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    port.recv_from(h, Vec::with_capacity(4), 0).unwrap();
    sender.send_to(b"abcdefgh", addr).unwrap();
    let c = get(&port);
    assert_eq!(c.result.unwrap_err().raw_os_error(), Some(libc::EMSGSIZE));
    match c.payload {
        Payload::Datagram { buf, from } => {
            assert_eq!(buf, b"abcd");
            assert_eq!(from, Some(sender.local_addr().unwrap()));
        }
        p => panic!("{p:?}"),
    }
    let to: SocketAddr = sender.local_addr().unwrap();
    port.send_to(h, b"xyz".to_vec(), to, 0).unwrap();
    assert_eq!(get(&port).result.unwrap(), 3);
    let mut b = [0; 8];
    assert_eq!(sender.recv_from(&mut b).unwrap(), (3, addr));
}

#[test]
fn o8_file_vectored_write_then_read_at_offsets() {
    let port = match port() {
        Some(p) => p,
        None => return,
    };
    let path = std::env::temp_dir().join(format!("cport-uring-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let h = port.associate(f, 1).unwrap();
    port.write_vectored_at(h, vec![b"hello ".to_vec(), b"world".to_vec()], 10, 0)
        .unwrap();
    assert_eq!(get(&port).result.unwrap(), 11);
    port.read_vectored_at(
        h,
        vec![Vec::with_capacity(3), Vec::with_capacity(20)],
        12,
        0,
    )
    .unwrap();
    let c = get(&port);
    assert_eq!(c.result.unwrap(), 9);
    let bufs = c.payload.into_bufs().unwrap();
    assert_eq!(bufs[0], b"llo");
    assert_eq!(bufs[1], b" world");
    port.read_at(h, Vec::with_capacity(8), 21, 0).unwrap();
    assert_eq!(get(&port).result.unwrap(), 0, "at end of file");
}

#[test]
fn x3_drop_with_operations_in_flight() {
    let port = match port() {
        Some(p) => p,
        None => return,
    };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let lh = port.associate(l, 0).unwrap();
    port.accept_multi(lh, 0).unwrap();
    let mut peers = Vec::new();
    for k in 0..4 {
        let (h, peer) = pair(&port, k);
        port.recv(h, Vec::with_capacity(1 << 16), 1).unwrap();
        port.recv_pooled(h, 2).unwrap();
        // Nobody reads: the send stays in flight, part-way through.
        port.send(h, vec![0; 16 << 20], 3).unwrap();
        peers.push(peer);
    }
    // Let the kernel start on them.
    assert!(port.get(Some(Duration::from_millis(50))).is_err());
    let start = Instant::now();
    drop(port);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "cancellations were reaped, not waited out"
    );
    for mut p in peers {
        p.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut sink = vec![0; 1 << 16];
        // Whatever part of the send went, then EOF (or a reset).
        loop {
            match p.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

#[test]
fn close_port_wakes_a_waiting_leader() {
    let port = match port() {
        Some(p) => p,
        None => return,
    };
    let p2 = port.clone();
    let t = thread::spawn(move || p2.get(None).map(|_| ()));
    thread::sleep(Duration::from_millis(50));
    port.close_port();
    assert_eq!(t.join().unwrap().unwrap_err(), crate::GetError::Closed);
}

#[test]
fn many_threads_issue_while_one_leads() {
    let port = match port() {
        Some(p) => p,
        None => return,
    };
    let (h, mut peer) = pair(&port, 1);
    let n = 64;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let p = port.clone();
            thread::spawn(move || {
                for _ in 0..n / 4 {
                    p.send(h, vec![1; 1000], 0).unwrap();
                }
            })
        })
        .collect();
    let reader = thread::spawn(move || {
        let mut b = vec![0; n * 1000];
        peer.read_exact(&mut b).map(|_| b)
    });
    for _ in 0..n {
        assert_eq!(get(&port).result.unwrap(), 1000);
    }
    for t in threads {
        t.join().unwrap();
    }
    assert!(reader.join().unwrap().unwrap().iter().all(|&b| b == 1));
}

#[test]
fn receive_issued_by_a_thread_that_exited_still_completes() {
    // io_uring runs a request's completion work on the submitting task;
    // once that thread is gone the kernel must fall back to a worker.
    let port = match port() {
        Some(p) => p,
        None => return,
    };
    let (h, mut peer) = pair(&port, 1);
    let p = port.clone();
    thread::spawn(move || {
        p.recv(h, Vec::with_capacity(16), 5).unwrap();
        p.recv_pooled(h, 6).unwrap();
    })
    .join()
    .unwrap();
    peer.write_all(b"abc").unwrap();
    let c = get(&port);
    assert_eq!(c.result.unwrap(), 3);
    peer.write_all(b"de").unwrap();
    let c = get(&port);
    assert_eq!(c.result.unwrap(), 2);
}

#[test]
fn connect_and_accept_issued_by_a_thread_that_exited_still_complete() {
    let port = match port() {
        Some(p) => p,
        None => return,
    };
    // A listener whose accept queue is full (listen(0) holds one), so the
    // SYN of our connect is dropped and it stays in SYN_SENT until we make
    // room: the issuing thread is gone by then.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let backlog = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    backlog
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    backlog.listen(0).unwrap();
    let full = backlog.local_addr().unwrap().as_socket().unwrap();
    let filler = TcpStream::connect(full).unwrap();
    let lh = port.associate(l, 1).unwrap();
    let p = port.clone();
    thread::spawn(move || {
        p.accept_multi(lh, 1).unwrap();
        p.connect(full, 2, 2).unwrap();
    })
    .join()
    .unwrap();
    let c1 = TcpStream::connect(addr).unwrap();
    let c = get(&port);
    assert_eq!(c.kind, OpKind::Accept, "{:?}", c.result);
    assert!(c.more);
    match c.payload {
        Payload::Accepted { peer, .. } => assert_eq!(peer, c1.local_addr().unwrap()),
        p => panic!("{p:?}"),
    }
    // Make room: the connect completes with the SYN's retransmission.
    let _a = backlog.accept().unwrap();
    let c = get(&port);
    assert_eq!(c.kind, OpKind::Connect);
    assert_eq!(c.result.unwrap(), 0);
    drop(filler);
}

#[test]
fn o4_sends_queued_on_one_stream_go_out_whole_and_in_order() {
    // Short sends are continued; a later send must not slip its bytes in
    // between an earlier one's pieces (WSASend keeps issue order).
    let port = match port() {
        Some(p) => p,
        None => return,
    };
    let (h, peer) = pair_with_send_buffer(&port, 1, Some(4096));
    let n = 6;
    let size = 256 << 10;
    let reader = thread::spawn(move || {
        let mut peer = peer;
        peer.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).map(|_| got)
    });
    for k in 0..n {
        if k % 2 == 0 {
            port.send(h, vec![k as u8; size], k as u32).unwrap();
        } else {
            let half = vec![k as u8; size / 2];
            port.send_vectored(h, vec![half.clone(), half], k as u32)
                .unwrap();
        }
    }
    for _ in 0..n {
        assert_eq!(get(&port).result.unwrap(), size);
    }
    port.close(h).unwrap();
    let got = reader.join().unwrap().unwrap();
    assert_eq!(got.len(), n * size);
    for (k, chunk) in got.chunks(size).enumerate() {
        assert!(
            chunk.iter().all(|&b| b == k as u8),
            "send {k} arrived whole, in order"
        );
    }
}

#[test]
fn o5_receives_queued_on_one_stream_fill_in_issue_order() {
    let port = match port() {
        Some(p) => p,
        None => return,
    };
    let (h, mut peer) = pair(&port, 3);
    for v in 0..3 {
        port.recv(h, Vec::with_capacity(4), v).unwrap();
    }
    port.recv_pooled(h, 3).unwrap();
    peer.write_all(b"abcdefghij").unwrap();
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let c = get(&port);
        seen.push((c.value, c.payload.into_buf().unwrap()));
    }
    seen.sort();
    assert_eq!(seen[0], (0, b"abcd".to_vec()));
    assert_eq!(seen[1], (1, b"efgh".to_vec()));
    assert_eq!(seen[2], (2, b"ij".to_vec()));
    assert_eq!(seen[3], (3, Vec::new()), "then the FIN");
}
