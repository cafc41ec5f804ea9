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
    // LESSONS 13: a blocking section gives the slot up once, whatever it
    // calls. Two threads hold the two slots of N = 2 throughout; a third
    // waits. Every count is read between steps.
    fn c3_nested_blocking_leave_and_get_inside_give_the_slot_up_once(backend: Backend) {
        let port = common::port::<u32>(backend, 2);
        let (a, h) = (Agent::spawn(&port), Agent::spawn(&port));
        for agent in [&a, &h] {
            port.post(0, 0, 0).unwrap();
            assert_eq!(agent.call(|p| p.get(common::LONG).map(|c| c.value)), Ok(0));
        }
        assert_eq!(counts(&port), (0, 0, 2));

        // Nested sections: the inner one has nothing to give.
        let seen = a.call(|p| {
            p.blocking(|| {
                let outer = p.stats().running;
                let inner = p.blocking(|| p.stats().running);
                (outer, inner, p.stats().running)
            })
        });
        assert_eq!(seen, (1, 1, 1), "the slot is given up once, not per level");
        assert_eq!(counts(&port), (0, 0, 2), "and taken back once");

        // `get` inside a section, with nothing queued: the thread waited as
        // a newcomer, holds no slot after it, and the section's end takes
        // none back.
        let seen = a.call(|p| {
            p.blocking(|| {
                let r = p.get(Some(Duration::ZERO)).map(|c| c.value);
                (r, p.stats().running)
            })
        });
        assert_eq!(seen, (Err(cport::GetError::Timeout), 1));
        assert_eq!(counts(&port), (0, 0, 1), "A timed out inside: not running");

        // A post is delivered at once to a waiter: the count is exact, so
        // the free slot is seen as free.
        let w = Agent::spawn(&port);
        let w_got = w.start(|p| p.get(common::LONG).map(|c| c.value));
        wait_waiting(&port, 1);
        port.post(5, 0, 5).unwrap();
        assert_eq!(recv(&w_got), Ok(5));
        assert_eq!(counts(&port), (0, 0, 2));
        w.call(|p| p.leave());

        // `get` inside a section that dequeues: the thread runs on what it
        // took, one slot, and the section's end takes no second one.
        port.post(6, 0, 6).unwrap();
        let seen = a.call(|p| {
            p.blocking(|| {
                let r = p.get(Some(Duration::ZERO)).map(|c| c.value);
                (r, p.stats().running)
            })
        });
        assert_eq!(seen, (Ok(6), 2));
        assert_eq!(counts(&port), (0, 0, 2));

        // `leave` inside a section: nothing more is given, nothing taken back.
        let seen = a.call(|p| {
            p.blocking(|| {
                p.leave();
                p.stats().running
            })
        });
        assert_eq!(seen, 1);
        assert_eq!(counts(&port), (0, 0, 1), "A left: only H runs");
        // Leaving again, or a section now, changes nothing.
        a.call(|p| {
            p.leave();
            p.blocking(|| ())
        });
        assert_eq!(counts(&port), (0, 0, 1));
        a.exit();
        w.exit();
        h.exit();
        assert_eq!(counts(&port), (0, 0, 0));
    }

    // A `get` on another port inside a section moves the thread there: the
    // first port's slot was given up once, by the section.
    fn c3_get_on_another_port_inside_blocking_moves_the_thread(backend: Backend) {
        let one = common::port::<u32>(backend, 2);
        let two = common::port::<u32>(backend, 2);
        let a = Agent::spawn(&one);
        one.post(0, 0, 0).unwrap();
        assert_eq!(a.call(|p| p.get(common::LONG).map(|c| c.value)), Ok(0));
        two.post(1, 0, 1).unwrap();
        let two2 = two.clone();
        let seen = a.call(move |p| {
            p.blocking(|| {
                let r = two2.get(Some(Duration::ZERO)).map(|c| c.value);
                (r, p.stats().running, two2.stats().running)
            })
        });
        assert_eq!(seen, (Ok(1), 0, 1));
        assert_eq!(counts(&one), (0, 0, 0), "the section's end takes nothing back");
        assert_eq!(counts(&two), (0, 0, 1));
        a.exit();
        assert_eq!(counts(&two), (0, 0, 0));
    }
}
