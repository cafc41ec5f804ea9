//! `Builder::batch_submissions`: operations issued by a running thread go
//! to the kernel together when it comes back to the port (O1 still holds:
//! each completes exactly once).

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use cport::{Backend, Builder, Completion, CompletionPort, OpKind};

/// A port that batches its handlers' submissions, `concurrency` threads
/// running at most.
fn batching_port(backend: Backend, concurrency: usize) -> CompletionPort<u32> {
    Builder::new()
        .backend(backend)
        .concurrency(concurrency)
        .batch_submissions(true)
        .build()
        .unwrap()
}

backends! {
    fn o1_batched_operations_start_when_the_thread_comes_back(backend: Backend) {
        let port = batching_port(backend, 1);
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

    fn o1_a_batch_left_to_the_leader_starts(backend: Backend) {
        // A thread coming back with a batch while another leads (waiting in
        // the kernel, with no timeout near) may leave the batch to the
        // leader (io_uring does, so that one thread runs the ring's kernel
        // work). The leader must then be woken to submit it: otherwise the
        // send below never starts and both threads wait out their 10 s.
        // Rounds, for the interleavings; the leader is started first and
        // has usually entered the kernel by the time the batch comes back.
        const SEND: u32 = 5;
        const STOP: u32 = 6;
        for round in 0..20 {
            let port = batching_port(backend, 2);
            let (h, mut peer) = common::pair(&port, 1);
            port.post(0, 0, 0).unwrap();
            assert_eq!(common::next(&port).kind, OpKind::Post);
            // Whichever thread gets the send's completion releases the other.
            let get = move |port: &cport::CompletionPort<u32>| -> Option<(OpKind, u32)> {
                let c: Completion<u32> = port.get(Some(Duration::from_secs(10))).ok()?;
                if c.kind == OpKind::Send {
                    assert_eq!(c.result.as_ref().ok(), Some(&10), "round {round}");
                    port.post(0, 0, STOP).unwrap();
                }
                Some((c.kind, c.value))
            };
            let (started, up) = mpsc::channel();
            let leader = {
                let port = port.clone();
                thread::spawn(move || {
                    started.send(()).unwrap();
                    get(&port)
                })
            };
            up.recv().unwrap();
            // This thread runs a completion: the send is batched.
            port.send(h, vec![7; 10], SEND).unwrap();
            let mut got = vec![get(&port), leader.join().unwrap()];
            got.sort_by_key(|g| g.map(|(_, v)| v));
            assert_eq!(
                got,
                [Some((OpKind::Send, SEND)), Some((OpKind::Post, STOP))],
                "round {round}: the send completes, the other thread is released"
            );
            let mut bytes = [0u8; 10];
            peer.read_exact(&mut bytes).unwrap();
            assert_eq!(bytes, [7; 10]);
        }
    }

    fn o1_a_receive_owed_to_a_computing_thread_still_completes(backend: Backend) {
        // With batched submissions io_uring runs its ring with COOP_TASKRUN:
        // the task work of a receive (which posts its completion once data
        // comes, when the receive had to wait) runs on the thread that
        // submitted it, and a thread that is computing is not interrupted
        // for it. It must still run, at the thread's next timer tick, and
        // the completion reach the thread waiting in `get`, while the
        // submitter spins without a system call. Without that the spin
        // below would wait out its 10 s.
        let port = batching_port(backend, 2);
        let (h, mut peer) = common::pair(&port, 1);
        // Not in a handler: submitted at once, by this thread, before any
        // data is there.
        port.recv(h, Vec::with_capacity(16), 1).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let spinning = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (port, done) = (port.clone(), done.clone());
            thread::spawn(move || {
                let c = port.get(Some(Duration::from_secs(20)));
                done.store(true, Ordering::SeqCst);
                c.ok().map(|c| (c.kind, c.value, c.payload.into_buf()))
            })
        };
        // The data comes from another thread once this one spins: written
        // from here, it would complete the receive on the way out of the
        // write.
        let writer = {
            let spinning = spinning.clone();
            thread::spawn(move || {
                while !spinning.load(Ordering::SeqCst) {
                    std::hint::spin_loop();
                }
                peer.write_all(b"hi").unwrap();
                peer
            })
        };
        spinning.store(true, Ordering::SeqCst);
        // Instant::now reads the vDSO's clock: no system call.
        let start = Instant::now();
        while !done.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10) {
            std::hint::spin_loop();
        }
        assert!(
            done.load(Ordering::SeqCst),
            "the receive's completion waited 10 s for its submitter to enter the kernel"
        );
        let _peer = writer.join().unwrap();
        let (kind, value, buf) = waiter.join().unwrap().expect("a completion");
        assert_eq!((kind, value), (OpKind::Recv, 1));
        assert_eq!(buf.unwrap(), b"hi");
    }
}
