//! SEMANTICS O7: accept (single and multishot), connect, and UDP datagrams
//! with their sender, truncation included.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

use common::{assert_empty, closed_addr, next, original, Tagged, LONG};
use cport::{is_aborted, CompletionPort, Handle, OpKind, Payload};

fn listener<T: Send + 'static>(port: &CompletionPort<T>, key: u64) -> (Handle, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (port.associate(l, key).unwrap(), addr)
}

#[track_caller]
fn accepted(p: Payload) -> (TcpStream, SocketAddr) {
    match p {
        Payload::Accepted { stream, peer } => (stream, peer),
        p => panic!("expected Payload::Accepted, got {p:?}"),
    }
}

#[track_caller]
fn datagram(p: Payload) -> (Vec<u8>, Option<SocketAddr>) {
    match p {
        Payload::Datagram { buf, from } => (buf, from),
        p => panic!("expected Payload::Datagram, got {p:?}"),
    }
}

/// Whether `s` is in blocking mode. Windows has no call that says: there
/// a read with a timeout on an idle stream tells, failing with TimedOut
/// when the stream blocks and at once with WouldBlock when it does not.
fn is_blocking(s: &TcpStream) -> bool {
    #[cfg(unix)]
    {
        !socket2::SockRef::from(s).nonblocking().unwrap()
    }
    #[cfg(windows)]
    {
        s.set_read_timeout(Some(std::time::Duration::from_millis(20)))
            .unwrap();
        let mut reader = s;
        let r = reader.read(&mut [0u8; 1]);
        s.set_read_timeout(None).unwrap();
        match r {
            Err(e) if e.kind() == ErrorKind::TimedOut => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            other => panic!("a read on an idle stream: {other:?}"),
        }
    }
}

fn udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(LONG).unwrap();
    s
}

backends! {
    /// The accepted stream and the peer address are the client's; the
    /// stream works once associated.
    fn o7_accept_gives_the_stream_and_the_client_address(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (lh, addr) = listener(&port, 10);
        let op = port.accept(lh, 1).unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        client.set_read_timeout(LONG).unwrap();
        let c = next(&port);
        assert_eq!((c.kind, c.key, c.op), (OpKind::Accept, 10, Some(op)));
        assert_eq!((c.value, c.more), (1, false));
        assert_eq!(c.result.unwrap(), 0);
        let (stream, peer) = accepted(c.payload);
        assert_eq!(peer, client.local_addr().unwrap(), "the peer address is the client's");
        assert_eq!(stream.peer_addr().unwrap(), peer);
        assert_eq!(stream.local_addr().unwrap(), addr);

        let sh = port.associate(stream, 11).unwrap();
        port.send(sh, b"welcome".to_vec(), 2).unwrap();
        let c = next(&port);
        assert_eq!((c.key, c.result.unwrap()), (11, 7));
        let mut b = [0; 7];
        client.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"welcome");
        assert_empty(&port);
    }

    /// One completion per connection with `more == true` and a clone of
    /// the value; cancel ends it with one last completion, `more == false`,
    /// carrying the original value.
    fn o7_accept_multi_until_cancelled_ends_with_the_original_value(backend: Backend) {
        let port = common::port::<Tagged>(backend, 4);
        let (lh, addr) = listener(&port, 20);
        let op = port.accept_multi(lh, original(5)).unwrap();
        let clients: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut peers: Vec<SocketAddr> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
        let mut streams = Vec::new();
        for _ in 0..clients.len() {
            let c = next(&port);
            assert_eq!((c.kind, c.key, c.op), (OpKind::Accept, 20, Some(op)));
            assert!(c.more, "more connections may follow");
            assert_eq!(c.value, Tagged { id: 5, clone: true });
            assert_eq!(c.result.unwrap(), 0);
            let (stream, peer) = accepted(c.payload);
            let i = peers.iter().position(|p| *p == peer).expect("a peer among the clients");
            peers.swap_remove(i);
            streams.push(stream);
        }
        assert_empty(&port);
        port.cancel(op).unwrap();
        let c = next(&port);
        assert_eq!(c.op, Some(op));
        assert!(!c.more, "the last completion of a multishot operation");
        assert_eq!(c.value, original(5), "it carries the original value");
        let e = c.result.unwrap_err();
        assert!(is_aborted(&e), "{e}");
        assert!(matches!(c.payload, Payload::None));
        assert_eq!(port.cancel(op).unwrap_err().kind(), ErrorKind::NotFound);
        assert_empty(&port);
    }

    /// An accepted stream is handed out in blocking mode, as a plain
    /// `accept` would give it (it is not the port's until associated), from
    /// a single and from a multishot accept.
    fn o7_accepted_stream_is_in_blocking_mode_until_associated(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (lh, addr) = listener(&port, 10);
        port.accept(lh, 1).unwrap();
        let _first = TcpStream::connect(addr).unwrap();
        let c = next(&port);
        assert_eq!((c.kind, c.value), (OpKind::Accept, 1));
        let (stream, _) = accepted(c.payload);
        assert!(is_blocking(&stream), "a single accept handed out a non-blocking stream");

        let op = port.accept_multi(lh, 2).unwrap();
        let _second = TcpStream::connect(addr).unwrap();
        let c = next(&port);
        assert_eq!((c.kind, c.value, c.more), (OpKind::Accept, 2, true));
        let (stream, _) = accepted(c.payload);
        assert!(is_blocking(&stream), "a multishot accept handed out a non-blocking stream");
        port.cancel(op).unwrap();
        let c = next(&port);
        assert!(!c.more);
        assert!(is_aborted(&c.result.unwrap_err()));
        assert_empty(&port);
    }

    /// connect completes with 0 bytes once connected; the handle then
    /// carries data both ways.
    fn o7_connect_completes_then_the_handle_echoes(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (h, op) = port.connect(l.local_addr().unwrap(), 30, 1).unwrap();
        let c = next(&port);
        assert_eq!((c.kind, c.key, c.op), (OpKind::Connect, 30, Some(op)));
        assert_eq!((c.handle, c.value), (Some(h), 1));
        assert_eq!(c.result.unwrap(), 0);
        let (mut server, from) = l.accept().unwrap();
        server.set_read_timeout(LONG).unwrap();
        assert_eq!(from, port.local_addr(h).unwrap());
        assert_eq!(port.peer_addr(h).unwrap(), l.local_addr().unwrap());

        port.send(h, b"ping".to_vec(), 2).unwrap();
        assert_eq!(next(&port).result.unwrap(), 4);
        let mut b = [0; 4];
        server.read_exact(&mut b).unwrap();
        server.write_all(b"pong").unwrap();
        port.recv(h, Vec::with_capacity(4), 3).unwrap();
        let c = next(&port);
        assert_eq!(c.result.unwrap(), 4);
        assert_eq!(c.payload.into_buf().unwrap(), b"pong");
        assert_empty(&port);
    }

    /// A receive issued on a connect's handle before the connect has
    /// completed waits for the connection and then for data: the connect
    /// completes first, the receive when the server writes.
    fn o7_receive_issued_before_the_connect_completes_waits_for_data(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (h, op) = port.connect(l.local_addr().unwrap(), 30, 1).unwrap();
        let recv = port.recv(h, Vec::with_capacity(8), 2).unwrap();
        let c = next(&port);
        assert_eq!((c.kind, c.op, c.value), (OpKind::Connect, Some(op), 1));
        assert_eq!(c.result.unwrap(), 0);
        let (mut server, _) = l.accept().unwrap();
        assert_empty(&port);
        server.write_all(b"hi").unwrap();
        let c = next(&port);
        assert_eq!((c.kind, c.op, c.value), (OpKind::Recv, Some(recv), 2));
        assert_eq!(c.result.unwrap(), 2);
        assert_eq!(c.payload.into_buf().unwrap(), b"hi");
        assert_eq!(port.peer_addr(h).unwrap(), l.local_addr().unwrap());
        assert_empty(&port);
    }

    /// A connect to an address nobody listens on completes with
    /// ConnectionRefused.
    fn o7_connect_to_a_closed_port_is_refused(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let (h, op) = port.connect(closed_addr(), 40, 1).unwrap();
        let c = next(&port);
        assert_eq!((c.kind, c.op, c.key), (OpKind::Connect, Some(op), 40));
        let e = c.result.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
        assert_empty(&port);
        port.close(h).unwrap();
    }

    /// Each datagram is one completion with its own sender; send_to sends
    /// exactly one datagram.
    fn o7_udp_completes_per_datagram_with_the_sender(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let s = udp();
        let addr = s.local_addr().unwrap();
        let h = port.associate(s, 50).unwrap();
        let (a, b) = (udp(), udp());
        a.send_to(b"from a", addr).unwrap();
        b.send_to(b"from b, longer", addr).unwrap();
        let mut seen = Vec::new();
        for i in 0..2 {
            port.recv_from(h, Vec::with_capacity(64), i).unwrap();
            let c = next(&port);
            assert_eq!((c.kind, c.key), (OpKind::RecvFrom, 50));
            let n = c.result.unwrap();
            let (buf, from) = datagram(c.payload);
            assert_eq!(buf.len(), n);
            seen.push((buf, from));
        }
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (b"from a".to_vec(), Some(a.local_addr().unwrap())),
                (b"from b, longer".to_vec(), Some(b.local_addr().unwrap())),
            ],
            "one completion per datagram, each with its sender"
        );

        port.send_to(h, b"to a".to_vec(), a.local_addr().unwrap(), 3).unwrap();
        port.send_to(h, b"to b!".to_vec(), b.local_addr().unwrap(), 4).unwrap();
        for _ in 0..2 {
            let c = next(&port);
            assert_eq!(c.kind, OpKind::SendTo);
            assert_eq!(c.result.unwrap(), if c.value == 3 { 4 } else { 5 });
        }
        let mut buf = [0; 64];
        assert_eq!(a.recv_from(&mut buf).unwrap(), (4, addr));
        assert_eq!(&buf[..4], b"to a");
        assert_eq!(b.recv_from(&mut buf).unwrap(), (5, addr));
        assert_eq!(&buf[..5], b"to b!");
        assert_empty(&port);
    }

    /// A datagram larger than the room is EMSGSIZE with the part that fit
    /// and the sender, and it is consumed: the next receive gets the next
    /// datagram whole.
    fn o7_oversized_datagram_is_emsgsize_with_the_part_that_fit(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let s = udp();
        let addr = s.local_addr().unwrap();
        let h = port.associate(s, 60).unwrap();
        let sender = udp();
        let big: Vec<u8> = (0..100u8).collect();
        port.recv_from(h, Vec::with_capacity(10), 1).unwrap();
        sender.send_to(&big, addr).unwrap();
        sender.send_to(b"next", addr).unwrap();
        let c = next(&port);
        let e = c.result.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(common::EMSGSIZE), "{e}");
        let (buf, from) = datagram(c.payload);
        assert_eq!(buf, big[..10], "the part that fit");
        assert_eq!(from, Some(sender.local_addr().unwrap()));

        port.recv_from(h, Vec::with_capacity(10), 2).unwrap();
        let c = next(&port);
        assert_eq!(c.result.unwrap(), 4);
        let (buf, _) = datagram(c.payload);
        assert_eq!(buf, b"next", "the truncated datagram is not delivered twice");
        assert_empty(&port);
    }
}
