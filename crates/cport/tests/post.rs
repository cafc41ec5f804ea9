//! SEMANTICS PQ1–PQ3: posting (PostQueuedCompletionStatus) and the
//! [`Workers`] pool that the shutdown idiom stops.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cport::{CompletionPort, GetError, OpKind, Payload, Workers, QUIT_KEY};

use common::agent::{counts, held, recv, wait_waiting, Agent};

/// Key of packets whose handler holds its worker until the gate opens.
const HOLD: u64 = 1 << 20;

/// A shared flag that handlers wait on, bounded, so that a failing test
/// still ends its workers.
#[derive(Clone)]
struct Gate(Arc<AtomicBool>);

impl Gate {
    fn new() -> Gate {
        Gate(Arc::new(AtomicBool::new(false)))
    }

    fn open(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn wait(&self) {
        let deadline = Instant::now() + common::LONG.unwrap();
        while !self.0.load(Ordering::Acquire) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A handler that reports (worker name, key, value) of every completion,
/// and holds its worker on [`HOLD`] packets until `gate` opens.
#[allow(clippy::type_complexity)]
fn reporter(
    gate: &Gate,
) -> (
    impl Fn(&CompletionPort<u32>, cport::Completion<u32>) + Send + Sync + 'static,
    mpsc::Receiver<(String, u64, u32)>,
) {
    let (tx, rx) = mpsc::channel();
    // mpsc::Sender is Sync only since Rust 1.72; the library's MSRV is 1.63.
    let tx = Mutex::new(tx);
    let gate = gate.clone();
    let handler = move |_: &CompletionPort<u32>, c: cport::Completion<u32>| {
        let name = thread::current().name().unwrap_or("?").to_string();
        let _ = tx.lock().unwrap().send((name, c.key, c.value));
        if c.key == HOLD {
            gate.wait();
        }
    };
    (handler, rx)
}

backends! {
    fn pq1_post_comes_back_unchanged(backend: Backend) {
        let port = common::port::<(String, Vec<u8>)>(backend, 2);
        let cases = [
            (0, 0),
            (1, 1),
            (0xfeed_f00d_dead_beef, 4096),
            // The pool's quit key is an ordinary key to a port without a pool.
            (QUIT_KEY, usize::MAX),
        ];
        for (i, &(key, bytes)) in cases.iter().enumerate() {
            let value = (format!("packet {i}"), vec![i as u8; i * 100]);
            port.post(key, bytes, value.clone()).unwrap();
            let c = common::next(&port);
            assert_eq!(
                (c.kind, c.key, c.op, c.handle, c.more),
                (OpKind::Post, key, None, None, false)
            );
            assert_eq!(c.result.unwrap(), bytes);
            assert_eq!(c.value, value);
            assert!(matches!(c.payload, Payload::None), "{:?}", c.payload);
        }
        common::assert_empty(&port);
    }

    fn pq2_post_obeys_concurrency_and_order(backend: Backend) {
        let (port, runner, parked) = held::<u32>(backend, 0);
        // An I/O completion, reaped while nothing else is queued, then
        // posts: one consumer gets them in that order, and none of them
        // releases the parked thread while N = 1 thread runs (C1).
        let (h, mut peer) = common::pair(&port, 9);
        port.recv(h, Vec::with_capacity(8), 1).unwrap();
        peer.write_all(b"io").unwrap();
        common::wait_until("the receive is reaped", || port.stats().queued == 1);
        port.post(2, 0, 2).unwrap();
        port.post(3, 0, 3).unwrap();
        assert_eq!(
            counts(&port),
            (3, 1, 1),
            "a post released a waiter while N threads run"
        );
        let order = runner.call(|p| {
            (0..3)
                .map(|_| p.get(Some(Duration::ZERO)).map(|c| (c.kind, c.value)))
                .collect::<Vec<_>>()
        });
        assert_eq!(
            order,
            [
                Ok((OpKind::Recv, 1)),
                Ok((OpKind::Post, 2)),
                Ok((OpKind::Post, 3))
            ]
        );

        // A running thread's own post waits for it (C2) rather than waking
        // the parked thread, with no slot free for it.
        let r = runner.call(|p| {
            p.post(4, 0, 4).unwrap();
            let s = p.stats();
            let got = p.get(Some(Duration::ZERO)).map(|c| c.value);
            ((s.queued, s.waiting, s.running), got)
        });
        assert_eq!(r, ((1, 1, 1), Ok(4)));
        assert!(parked.got.try_recv().is_err(), "the parked thread ran");
        runner.call(|p| p.leave());
        port.post(5, 0, 5).unwrap();
        assert_eq!(recv(&parked.got).unwrap().value, 5);
        parked.agent.exit();
        runner.exit();

        // With a slot free, a post from a running thread releases a waiter
        // at once: posting is how threads hand each other work.
        let port = common::port::<u32>(backend, 2);
        let (a, b) = (Agent::spawn(&port), Agent::spawn(&port));
        port.post(0, 0, 0).unwrap();
        a.call(|p| p.get(common::LONG).map(drop)).unwrap();
        let b_got = b.start(|p| p.get(common::LONG).map(|c| c.value));
        wait_waiting(&port, 1);
        a.call(|p| p.post(6, 0, 6)).unwrap();
        assert_eq!(recv(&b_got), Ok(6));
        assert_eq!(counts(&port), (0, 0, 2));
        a.exit();
        b.exit();
    }

    fn pq2_posts_do_not_starve_io_completions(backend: Backend) {
        // One consumer that always has a post queued (a task that re-posts
        // itself, a common IOCP scheduling idiom) must still see an I/O
        // completion that the kernel finished: on Windows it was queued
        // behind at most the posts already there. A port that polls the
        // kernel only when its queue runs empty never delivers it.
        let port = common::port::<u32>(backend, 1);
        let (h, mut peer) = common::pair(&port, 1);
        port.recv(h, Vec::with_capacity(8), 1).unwrap();
        peer.write_all(b"x").unwrap();
        // From here on one post is always queued. The bound is generous: the
        // kernel finishes a loopback receive in microseconds.
        port.post(0, 0, 0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut posts = 0u64;
        loop {
            let c = common::next(&port);
            if c.kind == OpKind::Recv {
                assert_eq!(c.payload.into_buf().unwrap(), b"x");
                break;
            }
            posts += 1;
            assert!(
                Instant::now() < deadline,
                "a finished receive did not come out while {posts} posts did"
            );
            port.post(0, 0, 0).unwrap();
        }
    }

    fn pq3_quit_packets_stop_exactly_n_workers(backend: Backend) {
        let port = common::port::<u32>(backend, 4);
        let gate = Gate::new();
        let (handler, seen) = reporter(&gate);
        let workers = Workers::spawn(&port, 4, handler).unwrap();
        assert_eq!(workers.len(), 4);
        wait_waiting(&port, 4);

        port.post(QUIT_KEY, 0, 0).unwrap();
        port.post(QUIT_KEY, 0, 0).unwrap();
        // Settled only when both quit packets were taken (queued 0) and
        // their workers stopped counting (running 0); the others wait.
        common::wait_until("two workers quit", || counts(&port) == (0, 2, 0));
        assert!(
            seen.try_recv().is_err(),
            "a quit packet reached the handler"
        );

        // The two left still work, both at once: two held packets run on two
        // different workers.
        port.post(HOLD, 0, 1).unwrap();
        port.post(HOLD, 0, 2).unwrap();
        let (n1, _, v1) = recv(&seen);
        let (n2, _, v2) = recv(&seen);
        assert_ne!(n1, n2, "two packets held by one worker");
        assert_eq!([v1.min(v2), v1.max(v2)], [1, 2]);
        assert_eq!(counts(&port), (0, 0, 2));
        gate.open();
        workers.shutdown().expect("no handler panicked");
        assert_eq!(port.stats().running, 0);
    }

    fn pq3_stop_handles_queued_completions_first(backend: Backend) {
        let port = common::port::<u32>(backend, 2);
        let gate = Gate::new();
        let (handler, seen) = reporter(&gate);
        let workers = Workers::spawn(&port, 2, handler).unwrap();
        wait_waiting(&port, 2);
        // Both workers busy, then ten packets queue up behind them.
        port.post(HOLD, 0, 100).unwrap();
        port.post(HOLD, 0, 101).unwrap();
        common::wait_until("both workers hold", || counts(&port) == (0, 0, 2));
        for i in 0..10 {
            port.post(1, 0, i).unwrap();
        }
        // Asked while both workers hold: what is queued now comes first.
        workers.request_stop();
        gate.open();
        workers.shutdown().expect("no handler panicked");
        let handled: HashSet<u32> = seen.try_iter().map(|(_, _, v)| v).collect();
        let want: HashSet<u32> = (0..10).chain([100, 101]).collect();
        assert_eq!(
            handled, want,
            "stop ended workers before the queued packets were handled"
        );
        assert_eq!(counts(&port), (0, 0, 0));
    }

    fn pq3_stop_with_quit_packets_handles_queued_completions_first(backend: Backend) {
        let port = common::port::<u32>(backend, 2);
        let gate = Gate::new();
        let (handler, seen) = reporter(&gate);
        let workers = Workers::spawn(&port, 2, handler).unwrap();
        wait_waiting(&port, 2);
        port.post(HOLD, 0, 100).unwrap();
        port.post(HOLD, 0, 101).unwrap();
        common::wait_until("both workers hold", || counts(&port) == (0, 0, 2));
        for i in 0..10 {
            port.post(1, 0, i).unwrap();
        }
        let stopper = thread::spawn(move || workers.stop(u32::MAX));
        // stop's quit packets are queued behind the ten.
        common::wait_until("the quit packets are queued", || port.stats().queued == 12);
        gate.open();
        stopper.join().unwrap().expect("no handler panicked");
        let handled: HashSet<u32> = seen.try_iter().map(|(_, _, v)| v).collect();
        let want: HashSet<u32> = (0..10).chain([100, 101]).collect();
        assert_eq!(
            handled, want,
            "stop ended workers before the queued packets were handled"
        );
        assert_eq!(counts(&port), (0, 0, 0));
    }

    fn pq3_handler_panic_is_reported_by_stop(backend: Backend) {
        const BOOM: u64 = 13;
        let port = common::port::<u32>(backend, 2);
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let workers = Workers::spawn(&port, 2, move |_, c| {
            if c.key == BOOM {
                panic!("handler failed on packet {}", c.value);
            }
            tx.lock().unwrap().send(c.value).unwrap();
        })
        .unwrap();
        wait_waiting(&port, 2);
        port.post(BOOM, 0, 7).unwrap();
        // The panicking worker ends and stops counting; the other waits on.
        common::wait_until("the panicked worker is gone", || counts(&port) == (0, 1, 0));
        assert_eq!(workers.live(), 1);
        port.post(1, 0, 8).unwrap();
        assert_eq!(recv(&rx), 8, "the other worker still handles packets");

        let err = workers.shutdown().expect_err("shutdown must report the panic");
        assert_eq!(err.messages, ["handler failed on packet 7"]);
        assert!(
            err.to_string().contains("handler failed on packet 7"),
            "{err}"
        );
        assert_eq!(counts(&port), (0, 0, 0));
    }

    fn pq3_stop_leaves_no_stray_quit_packet(backend: Backend) {
        // After stop, the port may go on being used (a new pool, a manual
        // get): a quit packet for a worker that was already gone would
        // stop the next worker that takes it, or surface as a stray post.
        let port = common::port::<u32>(backend, 2);
        let workers = Workers::spawn(&port, 3, |_, c| {
            if c.key == 13 {
                panic!("handler failed on packet {}", c.value);
            }
        })
        .unwrap();
        wait_waiting(&port, 3);
        port.post(13, 0, 1).unwrap();
        port.post(QUIT_KEY, 0, 0).unwrap();
        common::wait_until("two workers are gone", || counts(&port) == (0, 1, 0));
        assert_eq!(workers.stop(0).unwrap_err().messages.len(), 1);
        assert_eq!(
            port.stats().queued,
            0,
            "stop posted quit packets for workers that had already ended"
        );
        assert_eq!(
            port.get(Some(Duration::ZERO)).map(|c| c.key),
            Err(GetError::Timeout)
        );
    }
}
