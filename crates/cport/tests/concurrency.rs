//! SEMANTICS C1–C3: concurrency accounting (NumberOfConcurrentThreads).
//!
//! Each test drives threads one step at a time ([`Agent`]) and reads the
//! port's counts between steps; a wrong release shows as a count that
//! differs, with no timing involved.

mod common;

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

use cport::OpKind;

use common::agent::{counts, held, recv, wait_waiting, Agent};

backends! {
    fn c1_no_waiter_released_while_n_running(backend: Backend) {
        let (port, runner, parked) = held::<u32>(backend, 0);
        assert_eq!(counts(&port), (0, 1, 1));
        // An I/O completion arrives while N = 1 thread runs: the parked
        // thread reaps it from the kernel but must not run it. (First, while
        // nothing is queued: the parked thread polls the kernel only then.)
        let (h, mut peer) = common::pair(&port, 9);
        port.recv(h, Vec::with_capacity(8), 1).unwrap();
        peer.write_all(b"io").unwrap();
        common::wait_until("the receive is reaped", || port.stats().queued == 1);
        assert_eq!(counts(&port), (1, 1, 1));
        // A post, likewise.
        port.post(2, 0, 2).unwrap();
        assert_eq!(
            counts(&port),
            (2, 1, 1),
            "a completion arrived while N = 1 thread runs: the waiter must stay parked"
        );
        assert!(parked.got.try_recv().is_err(), "the parked thread ran");

        // The running thread stops: exactly one waiter runs, and takes the
        // oldest completion.
        runner.call(|p| p.leave());
        let c = recv(&parked.got).unwrap();
        assert_eq!((c.kind, c.value), (OpKind::Recv, 1));
        assert_eq!(c.payload.into_buf().unwrap(), b"io");
        assert_eq!(counts(&port), (1, 0, 1));
        let c = parked.agent.call(|p| p.get(Some(Duration::ZERO))).unwrap();
        assert_eq!((c.kind, c.value), (OpKind::Post, 2));
        parked.agent.exit();
        runner.exit();
        assert_eq!(counts(&port), (0, 0, 0));
    }

    fn c1_thread_that_exits_or_leaves_stops_running(backend: Backend) {
        let (port, runner, parked) = held::<u32>(backend, 0);
        port.post(1, 0, 1).unwrap();
        assert_eq!(counts(&port), (1, 1, 1));
        // A worker thread that ends without coming back to `get`: its slot
        // is given back when it exits, so the waiter runs.
        runner.exit();
        assert_eq!(recv(&parked.got).unwrap().value, 1);
        assert_eq!(counts(&port), (0, 0, 1));

        // `leave` gives the slot back without exiting; twice is harmless.
        parked.agent.call(|p| p.leave());
        assert_eq!(counts(&port), (0, 0, 0));
        parked.agent.call(|p| p.leave());
        assert_eq!(counts(&port), (0, 0, 0));
        // Left, the thread is a newcomer to `get`: it counts once again.
        port.post(2, 0, 2).unwrap();
        assert_eq!(parked.agent.call(|p| p.get(common::LONG).unwrap().value), 2);
        assert_eq!(counts(&port), (0, 0, 1));
        parked.agent.exit();
        assert_eq!(counts(&port), (0, 0, 0));
    }

    fn c2_running_thread_takes_next_at_once(backend: Backend) {
        let (port, runner, parked) = held::<u32>(backend, 0);
        port.post(1, 0, 1).unwrap();
        assert_eq!(counts(&port), (1, 1, 1));
        // A zero timeout proves no waiting: the completion is there for the
        // thread that comes back, although another one has waited longer.
        let r = runner.call(|p| p.get(Some(Duration::ZERO)).map(|c| c.value));
        assert_eq!(r, Ok(1));
        assert_eq!(counts(&port), (0, 1, 1));
        // Same with a timeout, and with get_many.
        port.post(2, 0, 2).unwrap();
        assert_eq!(runner.call(|p| p.get(common::LONG).map(|c| c.value)), Ok(2));
        port.post(3, 0, 3).unwrap();
        port.post(4, 0, 4).unwrap();
        let r = runner.call(|p| {
            let mut out = Vec::new();
            p.get_many(&mut out, 16, Some(Duration::ZERO))
                .map(|_| out.iter().map(|c| c.value).collect::<Vec<_>>())
        });
        assert_eq!(r, Ok(vec![3, 4]));
        assert_eq!(counts(&port), (0, 1, 1));
        assert!(parked.got.try_recv().is_err(), "the parked thread ran");

        // Once the runner stops, the parked thread gets the next one.
        runner.call(|p| p.leave());
        port.post(5, 0, 5).unwrap();
        assert_eq!(recv(&parked.got).unwrap().value, 5);
        parked.agent.exit();
        runner.exit();
    }

    fn c3_blocking_section_frees_the_slot(backend: Backend) {
        let port = common::port::<u32>(backend, 1);
        let a = Agent::spawn(&port);
        port.post(0, 0, 0).unwrap();
        assert_eq!(a.call(|p| p.get(common::LONG).map(|c| c.value)), Ok(0));
        let b = Agent::spawn(&port);
        let (b_tx, b_rx) = mpsc::channel();
        b.start(move |p| b_tx.send(p.get(common::LONG).map(|c| c.value)).unwrap());
        wait_waiting(&port, 1);
        port.post(1, 0, 1).unwrap();
        assert_eq!(counts(&port), (1, 1, 1));

        // A blocks, and says so: B runs meanwhile. A's section ends only
        // once B has dequeued, so the wait is on an outcome, not a time.
        let (inside, after) = a.call(move |p| {
            let inside = p.blocking(|| b_rx.recv_timeout(common::LONG.unwrap()));
            let s = p.stats();
            (inside, (s.queued, s.waiting, s.running))
        });
        assert_eq!(
            inside,
            Ok(Ok(1)),
            "B must run while A is in its blocking section"
        );
        assert_eq!(
            after,
            (0, 0, 2),
            "back from blocking, A runs again: 2 > N for a while"
        );

        // Over the limit, no waiter is released until the count drops
        // below N, not merely to N.
        let c = Agent::spawn(&port);
        let c_got = c.start(|p| p.get(common::LONG).map(|c| c.value));
        wait_waiting(&port, 1);
        port.post(2, 0, 2).unwrap();
        assert_eq!(counts(&port), (1, 1, 2));
        b.exit();
        assert_eq!(
            counts(&port),
            (1, 1, 1),
            "running == N: the waiter stays parked"
        );
        a.call(|p| p.leave());
        assert_eq!(recv(&c_got), Ok(2));
        assert_eq!(counts(&port), (0, 0, 1));
        c.exit();

        // A thread that is not running has no slot to give: the section
        // just runs.
        assert_eq!(port.blocking(|| 7), 7);
        assert_eq!(counts(&port), (0, 0, 0));
        a.exit();
    }
}
