//! Behaviour specific to the readiness emulation: edges, partial sends,
//! connect on writability, cancellation that always wins. Through the
//! public API, on 127.0.0.1, every wait bounded.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::Duration;

use crate::{is_aborted, Backend, Completion, CompletionPort, GetError, Handle, OpKind, Payload};

const LONG: Option<Duration> = Some(Duration::from_secs(10));

fn port() -> CompletionPort<u32> {
    CompletionPort::<u32>::builder()
        .backend(Backend::Epoll)
        .pool(4, 1024)
        .build()
        .expect("epoll port")
}

#[track_caller]
fn next(port: &CompletionPort<u32>) -> Completion<u32> {
    port.get(LONG).expect("a completion within 10 s")
}

/// A connected pair: one end associated with `port` under `key`, the other
/// a plain blocking stream.
fn pair(port: &CompletionPort<u32>, key: u64) -> (Handle, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    b.set_read_timeout(LONG).unwrap();
    b.set_write_timeout(LONG).unwrap();
    (port.associate(a, key).unwrap(), b)
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn o4_send_larger_than_socket_buffers_completes_only_when_all_taken() {
    let port = port();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    a.set_send_buffer_size(16 * 1024).unwrap();
    a.connect(&l.local_addr().unwrap().into()).unwrap();
    let (mut peer, _) = l.accept().unwrap();
    socket2::SockRef::from(&peer)
        .set_recv_buffer_size(16 * 1024)
        .unwrap();
    peer.set_read_timeout(LONG).unwrap();
    let h = port.associate(TcpStream::from(a), 1).unwrap();

    let total = 4 << 20;
    let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let id = port.send(h, data, 7).unwrap();
    // Nobody reads yet and the buffers hold far less than 4 MiB.
    assert_eq!(
        port.get(Some(Duration::ZERO)).unwrap_err(),
        GetError::Timeout
    );

    let reader = thread::spawn(move || {
        let mut got = Vec::with_capacity(total);
        let mut chunk = [0u8; 7000];
        while got.len() < total {
            let n = peer.read(&mut chunk).unwrap();
            assert!(n > 0, "EOF after {} bytes", got.len());
            got.extend_from_slice(&chunk[..n]);
        }
        got
    });
    let c = next(&port);
    assert_eq!(
        (c.kind, c.op, c.value, c.key),
        (OpKind::Send, Some(id), 7, 1)
    );
    assert_eq!(c.result.unwrap(), total);
    assert_eq!(c.payload.into_buf().unwrap().len(), total);
    let got = reader.join().unwrap();
    assert!(
        got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
        "stream corrupted"
    );
}

#[test]
fn edge_data_before_recv_is_received_and_rest_is_not_lost() {
    let port = port();
    let (h, mut peer) = pair(&port, 2);
    peer.write_all(b"hello").unwrap();
    // Let the leader see (and use up) the edge while nothing is queued.
    assert_eq!(
        port.get(Some(Duration::from_millis(100))).unwrap_err(),
        GetError::Timeout
    );

    port.recv(h, Vec::with_capacity(2), 1).unwrap();
    let c = next(&port);
    assert_eq!(c.result.unwrap(), 2);
    assert_eq!(c.payload.into_buf().unwrap(), b"he");
    // No new edge will come for the rest: the speculative try must find it.
    port.recv(h, Vec::with_capacity(64), 2).unwrap();
    let c = next(&port);
    assert_eq!(c.value, 2);
    assert_eq!(c.payload.into_buf().unwrap(), b"llo");
}

#[test]
fn queued_recvs_complete_in_order_then_eof() {
    let port = port();
    let (h, mut peer) = pair(&port, 3);
    for v in 0..3 {
        port.recv(h, Vec::with_capacity(4), v).unwrap();
    }
    peer.write_all(b"abcdefgh").unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let c = next(&port);
        seen.push((c.value, c.result.unwrap(), c.payload.into_buf().unwrap()));
    }
    seen.sort_by_key(|s| s.0);
    assert_eq!(seen[0], (0, 4, b"abcd".to_vec()));
    assert_eq!(seen[1], (1, 4, b"efgh".to_vec()));
    assert_eq!(seen[2], (2, 0, Vec::new()), "O5: 0 bytes is the peer's FIN");
}

#[test]
fn x1_cancel_pending_recv_completes_aborted_once() {
    let port = port();
    let (h, _peer) = pair(&port, 4);
    let id = port.recv(h, Vec::with_capacity(16), 9).unwrap();
    port.cancel(id).unwrap();
    let c = next(&port);
    assert_eq!((c.op, c.value, c.kind), (Some(id), 9, OpKind::Recv));
    assert!(is_aborted(c.result.as_ref().unwrap_err()));
    assert_eq!(
        c.payload.into_buf().unwrap().capacity(),
        16,
        "O3: the buffer comes back"
    );
    assert_eq!(port.cancel(id).unwrap_err().kind(), io::ErrorKind::NotFound);
    assert_eq!(
        port.cancel_handle(h).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert_eq!(
        port.get(Some(Duration::ZERO)).unwrap_err(),
        GetError::Timeout
    );
}

#[test]
fn x2_close_with_pending_recv_aborts_it_and_peer_reads_eof() {
    let port = port();
    let (h, mut peer) = pair(&port, 5);
    let id = port.recv(h, Vec::with_capacity(16), 1).unwrap();
    port.close(h).unwrap();
    let c = next(&port);
    assert_eq!(c.op, Some(id));
    assert!(is_aborted(c.result.as_ref().unwrap_err()));
    let mut b = [0u8; 4];
    assert_eq!(peer.read(&mut b).unwrap(), 0, "the peer sees FIN at once");
    // The handle is gone: later use is refused (no completion follows).
    let r = port.recv(h, Vec::with_capacity(4), 2).unwrap_err();
    assert_eq!(r.error.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(
        port.close(h).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        port.get(Some(Duration::ZERO)).unwrap_err(),
        GetError::Timeout
    );
}

#[test]
fn x4_reused_descriptor_gets_nothing_of_the_old_handle() {
    let port = port();
    let (old, mut old_peer) = pair(&port, 10);
    port.close(old).unwrap();
    let (new, _new_peer) = pair(&port, 11);
    assert_eq!(new.index, old.index, "the slot is reused");
    let _ = old_peer.write_all(b"stale");
    port.recv(new, Vec::with_capacity(8), 1).unwrap();
    assert_eq!(
        port.get(Some(Duration::from_millis(100))).unwrap_err(),
        GetError::Timeout
    );
    assert_eq!(port.cancel_handle(new).unwrap(), 1);
    let c = next(&port);
    assert_eq!(c.key, 11);
    assert!(is_aborted(c.result.as_ref().unwrap_err()));
}

#[test]
fn o7_udp_truncation_is_emsgsize_with_the_part_that_fit() {
    let port = port();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = rx.local_addr().unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let from = tx.local_addr().unwrap();
    let h = port.associate(rx, 6).unwrap();
    port.recv_from(h, Vec::with_capacity(10), 1).unwrap();
    tx.send_to(&[42u8; 100], to).unwrap();
    let c = next(&port);
    assert_eq!(c.result.unwrap_err().raw_os_error(), Some(libc::EMSGSIZE));
    match c.payload {
        Payload::Datagram { buf, from: f } => {
            assert_eq!(buf, [42u8; 10]);
            assert_eq!(f, Some(from));
        }
        p => panic!("unexpected payload {p:?}"),
    }
    // A datagram that fits, sent through the port.
    let txh = port.associate(tx, 7).unwrap();
    port.send_to(txh, b"ok".to_vec(), to, 2).unwrap();
    port.recv_from(h, Vec::with_capacity(10), 3).unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(next(&port));
    }
    got.sort_by_key(|c| c.value);
    assert_eq!(got[0].result.as_ref().unwrap(), &2);
    match std::mem::replace(&mut got[1].payload, Payload::None) {
        Payload::Datagram { buf, from: f } => assert_eq!((buf, f), (b"ok".to_vec(), Some(from))),
        p => panic!("unexpected payload {p:?}"),
    }
}

#[test]
fn multishot_accept_then_cancel_ends_it() {
    let port = port();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = port.associate(l, 8).unwrap();
    let id = port.accept_multi(h, 5).unwrap();
    let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for _ in 0..3 {
        let c = next(&port);
        assert_eq!((c.op, c.value, c.more), (Some(id), 5, true));
        match c.payload {
            Payload::Accepted { stream, peer } => {
                assert!(
                    !socket2::SockRef::from(&stream).nonblocking().unwrap(),
                    "handed out blocking"
                );
                assert!(clients.iter().any(|s| s.local_addr().unwrap() == peer));
            }
            p => panic!("unexpected payload {p:?}"),
        }
    }
    port.cancel(id).unwrap();
    let c = next(&port);
    assert!(!c.more);
    assert!(is_aborted(c.result.as_ref().unwrap_err()));
}

#[test]
fn connect_refused_and_connected() {
    let port = port();
    let (_, id) = port.connect(free_port(), 1, 1).unwrap();
    let c = next(&port);
    assert_eq!((c.op, c.kind), (Some(id), OpKind::Connect));
    assert_eq!(
        c.result.unwrap_err().kind(),
        io::ErrorKind::ConnectionRefused
    );

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (h, _) = port.connect(l.local_addr().unwrap(), 2, 2).unwrap();
    // Issued before the handshake ends: waits for it, then for data.
    port.recv(h, Vec::with_capacity(8), 3).unwrap();
    let c = next(&port);
    assert_eq!((c.value, c.result.unwrap()), (2, 0));
    let (mut peer, _) = l.accept().unwrap();
    peer.write_all(b"hi").unwrap();
    let c = next(&port);
    assert_eq!(c.value, 3);
    assert_eq!(c.payload.into_buf().unwrap(), b"hi");
    assert_eq!(port.peer_addr(h).unwrap(), l.local_addr().unwrap());
}

#[test]
fn o6_pooled_recv_takes_a_buffer_only_with_data() {
    let port = port();
    let (h, mut peer) = pair(&port, 9);
    port.recv_pooled(h, 1).unwrap();
    peer.write_all(b"pooled").unwrap();
    let c = next(&port);
    assert_eq!(c.result.unwrap(), 6);
    let buf = c.payload.into_buf().unwrap();
    assert_eq!((&buf[..], buf.capacity()), (&b"pooled"[..], 1024));
    port.recycle(buf);
    drop(peer);
    port.recv_pooled(h, 2).unwrap();
    let c = next(&port);
    assert_eq!(c.result.unwrap(), 0);
    assert_eq!(c.payload.into_buf(), Some(Vec::new()));
}

#[test]
fn o8_files_complete_at_issue_without_moving_the_position() {
    let port = port();
    let path = std::env::temp_dir().join(format!("cport-epoll-{}", std::process::id()));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let mut dup = f.try_clone().unwrap();
    let h = port.associate(f, 12).unwrap();
    port.write_vectored_at(h, vec![b"abc".to_vec(), b"def".to_vec()], 2, 1)
        .unwrap();
    assert_eq!(next(&port).result.unwrap(), 6);
    port.read_at(h, Vec::with_capacity(4), 3, 2).unwrap();
    let c = next(&port);
    assert_eq!(c.payload.into_buf().unwrap(), b"bcde");
    port.read_at(h, Vec::with_capacity(4), 100, 3).unwrap();
    assert_eq!(next(&port).result.unwrap(), 0, "O8: EOF is 0 bytes");
    assert_eq!(
        dup.stream_position().unwrap(),
        0,
        "the shared file position never moved"
    );
    let r = port.recv(h, Vec::with_capacity(4), 4).unwrap_err();
    assert_eq!(r.error.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn q6_close_port_aborts_and_wakes() {
    let port = port();
    let (h, _peer) = pair(&port, 13);
    port.recv(h, Vec::with_capacity(8), 1).unwrap();
    let waiter = {
        let port = port.clone();
        thread::spawn(move || port.get(LONG).map(|c| c.value))
    };
    // The waiter may or may not be blocked yet; either way it must end.
    port.close_port();
    assert_eq!(waiter.join().unwrap().unwrap_err(), GetError::Closed);
    assert!(port.recv(h, Vec::with_capacity(8), 2).is_err());
}

#[test]
fn echo_under_concurrent_workers_and_clients() {
    let port = port();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let lh = port.associate(l, 0).unwrap();
    let workers = crate::Workers::spawn(
        &port,
        4,
        |port: &CompletionPort<u32>, c: Completion<u32>| {
            let h = c.handle.unwrap();
            match c.kind {
                OpKind::Accept => {
                    if let Payload::Accepted { stream, .. } = c.payload {
                        stream.set_nodelay(true).unwrap();
                        let s = port.associate(stream, 1).unwrap();
                        port.recv(s, Vec::with_capacity(8192), 0).unwrap();
                    }
                }
                OpKind::Recv => match (c.result, c.payload.into_buf()) {
                    (Ok(n), Some(buf)) if n > 0 => drop(port.send(h, buf, 0).unwrap()),
                    _ => port.close(h).unwrap(),
                },
                OpKind::Send => {
                    let mut buf = c.payload.into_buf().unwrap();
                    buf.clear();
                    port.recv(h, buf, 0).unwrap();
                }
                k => panic!("unexpected {k:?}"),
            }
        },
    )
    .unwrap();
    port.accept_multi(lh, 0).unwrap();
    let clients: Vec<_> = (0..8u32)
        .map(|t| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(LONG).unwrap();
                for round in 0..200u32 {
                    let len = 1 + ((t * 7919 + round * 104_729) % 40_000) as usize;
                    let msg: Vec<u8> = (0..len).map(|i| (i as u32 ^ round ^ t) as u8).collect();
                    s.write_all(&msg).unwrap();
                    let mut back = vec![0u8; len];
                    s.read_exact(&mut back).unwrap();
                    assert!(back == msg, "client {t} round {round}: echo differs");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    workers.stop(0).unwrap();
}

#[test]
fn x1_cancel_racing_data_yields_exactly_one_completion() {
    let port = port();
    let (h, peer) = pair(&port, 14);
    let mut received = Vec::new();
    for round in 0..300u32 {
        let id = port.recv(h, Vec::with_capacity(64), round).unwrap();
        let writer = thread::spawn({
            let mut peer = peer.try_clone().unwrap();
            move || peer.write_all(&round.to_le_bytes()).unwrap()
        });
        let cancelled = port.cancel(id);
        writer.join().unwrap();
        let c = next(&port);
        assert_eq!((c.op, c.value), (Some(id), round));
        match c.result {
            // The data won: the cancel found the recv finished
            // (`NotFound`) or arrived too late to stop it (`Ok`); either
            // way there is exactly one completion, checked below.
            Ok(_) => {
                if let Err(e) = cancelled {
                    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
                }
            }
            Err(e) => {
                assert!(is_aborted(&e) && cancelled.is_ok(), "{e}");
            }
        }
        received.extend(c.payload.into_buf().unwrap());
        assert_eq!(
            port.get(Some(Duration::ZERO)).unwrap_err(),
            GetError::Timeout
        );
    }
    // Whatever the cancels took, no byte is lost or duplicated.
    port.shutdown(h, Shutdown::Write).unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    loop {
        port.recv(h, Vec::with_capacity(4096), 0).unwrap();
        let c = next(&port);
        let buf = c.payload.into_buf().unwrap();
        if buf.is_empty() {
            break;
        }
        received.extend(buf);
    }
    let expect: Vec<u8> = (0..300u32).flat_map(|r| r.to_le_bytes()).collect();
    assert_eq!(received, expect);
}

#[test]
fn x3_drop_port_with_ops_in_flight_closes_its_sockets() {
    let port = port();
    let (h, mut peer) = pair(&port, 15);
    port.recv(h, Vec::with_capacity(64), 1).unwrap();
    // Larger than the loopback buffers: stays in flight, half sent.
    port.send(h, vec![7u8; 32 << 20], 2).unwrap();
    drop(port);
    let mut sink = vec![0u8; 1 << 16];
    loop {
        match peer.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the dropped port's socket was not closed: {e}"),
        }
    }
}

#[test]
fn shutdown_read_ends_a_pending_recv() {
    let port = port();
    let (h, _peer) = pair(&port, 16);
    port.recv(h, Vec::with_capacity(8), 1).unwrap();
    port.shutdown(h, Shutdown::Read).unwrap();
    let c = next(&port);
    assert_eq!((c.value, c.result.unwrap()), (1, 0));
}
