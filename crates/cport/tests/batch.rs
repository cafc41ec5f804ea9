//! `Builder::batch_submissions`: operations issued by a running thread go
//! to the kernel together when it comes back to the port (O1 still holds:
//! each completes exactly once).

mod common;

use std::io::Read;
use std::time::Duration;

use cport::{Builder, OpKind};

backends! {
    fn o1_batched_operations_start_when_the_thread_comes_back(backend: Backend) {
        let port = Builder::new()
            .backend(backend)
            .concurrency(1)
            .batch_submissions(true)
            .build::<u32>()
            .unwrap();
        let (h, mut peer) = common::pair(&port, 1);
        port.post(9, 0, 0).unwrap();
        // This thread now runs a completion: what it issues is batched.
        assert_eq!(common::next(&port).kind, OpKind::Post);
        for i in 0..8u32 {
            port.send(h, vec![i as u8; 100], i).unwrap();
        }
        port.recv(h, Vec::with_capacity(16), 100).unwrap();
        // Coming back to the port submits the batch; the sends complete in
        // order, then the peer's reply completes the recv.
        for i in 0..8u32 {
            let c = common::next(&port);
            assert_eq!((c.kind, c.value, c.result.unwrap()), (OpKind::Send, i, 100));
        }
        let mut got = vec![0u8; 800];
        peer.read_exact(&mut got).unwrap();
        let expect: Vec<u8> = (0..8u8).flat_map(|i| vec![i; 100]).collect();
        assert_eq!(got, expect);
        std::io::Write::write_all(&mut peer, b"ok").unwrap();
        let c = common::next(&port);
        assert_eq!((c.kind, c.value), (OpKind::Recv, 100));
        assert_eq!(c.payload.into_buf().unwrap(), b"ok");
        assert!(port.get(Some(Duration::ZERO)).is_err(), "nothing more");
    }
}
