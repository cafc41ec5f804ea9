//! SEMANTICS Q1–Q6: dequeuing (GetQueuedCompletionStatus and its Ex form).

mod common;

use std::io::{self, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use cport::{GetError, OpKind, Payload};

use common::agent::{counts, held, recv, wait_waiting, Agent};

/// A per-operation value that counts its drops.
#[derive(Debug)]
struct Tracked(Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

const MS50: Duration = Duration::from_millis(50);

backends! {
    fn q1_get_waits_at_most_its_timeout(backend: Backend) {
        let port = common::port::<u32>(backend, 2);
        // An idle handle: the kernel side has something registered.
        let (_h, _peer) = common::pair(&port, 1);

        let t = Instant::now();
        assert_eq!(
            port.get(Some(Duration::ZERO)).unwrap_err(),
            GetError::Timeout
        );
        // A hang detector, not a speed measurement: a zero timeout that
        // blocked would take the full bound of the wait it fell into.
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "get(0) took {:?}",
            t.elapsed()
        );

        let t = Instant::now();
        assert_eq!(port.get(Some(MS50)).unwrap_err(), GetError::Timeout);
        assert!(
            t.elapsed() >= MS50,
            "get(50 ms) gave up after {:?}",
            t.elapsed()
        );

        // Two waiters at once: the first polls the kernel, the second waits
        // in user space; each keeps its own deadline.
        let leader = Agent::spawn(&port);
        let t = Instant::now();
        let long = leader.start(|p| p.get(Some(4 * MS50)).map(drop));
        wait_waiting(&port, 1);
        let t2 = Instant::now();
        assert_eq!(port.get(Some(MS50)).unwrap_err(), GetError::Timeout);
        assert!(
            t2.elapsed() >= MS50,
            "second waiter gave up after {:?}",
            t2.elapsed()
        );
        assert_eq!(recv(&long), Err(GetError::Timeout));
        assert!(
            t.elapsed() >= 4 * MS50,
            "first waiter gave up after {:?}",
            t.elapsed()
        );

        // get_many times out the same way and appends nothing.
        let mut out = Vec::new();
        let t = Instant::now();
        assert_eq!(
            port.get_many(&mut out, 8, Some(MS50)).unwrap_err(),
            GetError::Timeout
        );
        assert!(t.elapsed() >= MS50);
        assert!(out.is_empty());

        // No timeout: waits as long as it takes, returns when a thread posts.
        let got = leader.start(|p| p.get(None));
        wait_waiting(&port, 1);
        port.post(3, 30, 300).unwrap();
        let c = recv(&got).unwrap();
        assert_eq!((c.key, c.result.unwrap(), c.value), (3, 30, 300));
        assert_eq!(port.stats().queued, 0);
    }

    fn q2_waiters_are_released_lifo(backend: Backend) {
        // Concurrency above the number of waiters: every release is
        // allowed, so only the order is under test.
        let port = common::port::<u32>(backend, 8);
        let (tx, rx) = mpsc::channel();
        let mut agents = Vec::new();
        // Parks waiter `id`, and waits until it is counted, so the order in
        // which waiters parked is known.
        let park = |agents: &mut Vec<Agent<u32>>, id: usize| {
            let before = port.stats().waiting;
            let a = Agent::spawn(&port);
            let tx = tx.clone();
            a.start(move |p| tx.send((id, p.get(common::LONG).unwrap().value)).unwrap());
            agents.push(a);
            wait_waiting(&port, before + 1);
        };
        // Posts one packet; says which waiter took it.
        let release = |value: u32| {
            let before = port.stats().waiting;
            port.post(0, 0, value).unwrap();
            let got = recv(&rx);
            assert_eq!(
                port.stats().waiting,
                before - 1,
                "one packet released one waiter"
            );
            got
        };
        park(&mut agents, 1);
        park(&mut agents, 2);
        park(&mut agents, 3);
        assert_eq!(release(10), (3, 10), "the last to park is released first");
        // A newcomer is now the most recent waiter: it goes before 2 and 1.
        park(&mut agents, 4);
        assert_eq!(release(11), (4, 11));
        assert_eq!(release(12), (2, 12));
        assert_eq!(release(13), (1, 13), "the first to park is released last");
        assert_eq!(counts(&port), (0, 0, 4));
        for a in agents {
            a.exit();
        }
        assert_eq!(counts(&port), (0, 0, 0));
    }

    fn q2_a_packet_goes_to_the_waiter_released_for_it(backend: Backend) {
        // Two threads wait; a third (not running on the port) posts three
        // packets, then calls `get` itself. Windows binds a packet to the
        // waiter it releases: the newest waiter gets the first, the older
        // the second, the poster the third. Repeated: it must not depend
        // on which thread the scheduler runs first.
        let port = common::port::<u32>(backend, 4);
        for round in 0..50 {
            let (tx, rx) = mpsc::channel();
            let mut agents = Vec::new();
            for id in ["older", "newer"] {
                let before = port.stats().waiting;
                let a = Agent::spawn(&port);
                let tx = tx.clone();
                a.start(move |p| tx.send((id, p.get(common::LONG).unwrap().value)).unwrap());
                agents.push(a);
                wait_waiting(&port, before + 1);
            }
            let poster = Agent::spawn(&port);
            let mine = poster.call(|p| {
                for v in 1..=3 {
                    p.post(0, 0, v).unwrap();
                }
                p.get(common::LONG).map(|c| c.value)
            });
            let mut theirs = vec![recv(&rx), recv(&rx)];
            theirs.sort_unstable();
            assert_eq!(
                (theirs, mine),
                (vec![("newer", 1), ("older", 2)], Ok(3)),
                "round {round}"
            );
            for a in agents {
                a.exit();
            }
            poster.exit();
            assert_eq!(counts(&port), (0, 0, 0));
        }
    }

    fn q3_one_consumer_sees_queue_order(backend: Backend) {
        let port = common::port::<u32>(backend, 1);
        for i in 0..100u32 {
            port.post(u64::from(i % 3), i as usize, i).unwrap();
        }
        assert_eq!(port.stats().queued, 100);
        for i in 0..100u32 {
            let c = port.get(Some(Duration::ZERO)).unwrap();
            assert_eq!(
                (c.key, c.result.unwrap(), c.value),
                (u64::from(i % 3), i as usize, i)
            );
        }

        // Taken in batches of an odd size, the order is the same.
        for i in 0..100u32 {
            port.post(0, 0, i).unwrap();
        }
        let mut out = Vec::new();
        while out.len() < 100 {
            port.get_many(&mut out, 7, Some(Duration::ZERO)).unwrap();
        }
        assert!(out.iter().map(|c| c.value).eq(0..100));

        // Completions of one handle: receives complete in the order they
        // were issued and take the stream's bytes in that order.
        let (h, mut peer) = common::pair(&port, 5);
        let data = common::pattern(4096);
        peer.write_all(&data).unwrap();
        let mut issued = 0u32;
        for _ in 0..16 {
            port.recv(h, Vec::with_capacity(256), issued).unwrap();
            issued += 1;
        }
        let (mut got, mut done) = (Vec::new(), 0u32);
        while got.len() < data.len() {
            let c = common::next(&port);
            assert_eq!(c.value, done, "receive {} completed out of order", c.value);
            done += 1;
            let n = c.result.unwrap();
            assert!(n > 0, "the peer is still open");
            got.extend(c.payload.into_buf().unwrap());
            if done == issued && got.len() < data.len() {
                port.recv(h, Vec::with_capacity(256), issued).unwrap();
                issued += 1;
            }
        }
        assert_eq!(done, issued);
        assert!(
            got == data,
            "the stream's bytes were reordered between receives"
        );
    }

    fn q4_get_many_takes_up_to_max_with_own_results(backend: Backend) {
        let (port, runner, parked) = held::<u32>(backend, 0);
        // A failed operation first, then 39 posts: 40 queued.
        let (h, op) = port.connect(common::closed_addr(), 77, 1000).unwrap();
        common::wait_until("the refused connect is queued", || port.stats().queued == 1);
        for i in 1..40u32 {
            port.post(u64::from(i), i as usize, i).unwrap();
        }
        assert_eq!(counts(&port), (40, 1, 1));

        let (sizes, all, during) = runner.call(|p| {
            let mut all = Vec::new();
            let mut sizes = Vec::new();
            sizes.push(p.get_many(&mut all, 16, Some(Duration::ZERO)).unwrap());
            let during = p.stats();
            sizes.push(p.get_many(&mut all, 16, Some(Duration::ZERO)).unwrap());
            sizes.push(p.get_many(&mut all, 16, Some(Duration::ZERO)).unwrap());
            (sizes, all, (during.queued, during.waiting, during.running))
        });
        assert_eq!(sizes, [16, 16, 8]);
        assert_eq!(
            during,
            (24, 1, 1),
            "a thread that took 16 is one running thread; the waiter stays parked"
        );
        let mut all = all.into_iter();
        let first = all.next().unwrap();
        assert_eq!(
            (first.kind, first.key, first.op, first.handle, first.value),
            (OpKind::Connect, 77, Some(op), Some(h), 1000)
        );
        let e = first.result.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        for (i, c) in (1..40u32).zip(all) {
            assert_eq!(c.kind, OpKind::Post);
            assert_eq!(
                (c.key, c.result.unwrap(), c.value),
                (u64::from(i), i as usize, i)
            );
        }

        // Nothing left: an empty get_many is a timeout and appends nothing.
        let (r, n) = runner.call(|p| {
            let mut out = Vec::new();
            let r = p.get_many(&mut out, 16, Some(Duration::ZERO)).map(drop);
            (r, out.len())
        });
        assert_eq!((r, n), (Err(GetError::Timeout), 0));
        port.post(1, 0, 7).unwrap();
        assert_eq!(recv(&parked.got).unwrap().value, 7);
        parked.agent.exit();

        // It returns as soon as one completion is there, not when `max` are.
        let got = runner.start(|p| {
            let mut out = Vec::new();
            p.get_many(&mut out, 16, None)
                .map(|n| (n, out.pop().map(|c| c.value)))
        });
        wait_waiting(&port, 1);
        port.post(2, 0, 8).unwrap();
        assert_eq!(recv(&got), Ok((1, Some(8))));
    }

    fn q4_get_many_of_zero_is_refused_and_removes_nothing(backend: Backend) {
        let port = common::port::<u32>(backend, 1);
        port.post(1, 0, 1).unwrap();
        let mut out = Vec::new();
        for timeout in [Some(Duration::ZERO), common::LONG, None] {
            assert_eq!(port.get_many(&mut out, 0, timeout), Err(GetError::InvalidInput));
        }
        assert!(out.is_empty());
        assert_eq!(counts(&port), (1, 0, 0), "nothing removed, the thread not running");
        // A running thread is refused too, and stays running.
        assert_eq!(port.get(Some(Duration::ZERO)).unwrap().value, 1);
        assert_eq!(port.get_many(&mut out, 0, None), Err(GetError::InvalidInput));
        assert_eq!(counts(&port), (0, 0, 1));
        assert_eq!(
            io::Error::from(GetError::InvalidInput).kind(),
            io::ErrorKind::InvalidInput
        );
        port.leave();
    }

    fn q5_failed_operation_is_a_completion_timeout_is_not(backend: Backend) {
        let port = common::port::<&'static str>(backend, 2);
        let mut out = Vec::new();
        assert_eq!(
            port.get(Some(Duration::ZERO)).unwrap_err(),
            GetError::Timeout
        );
        assert_eq!(
            port.get_many(&mut out, 4, Some(Duration::ZERO)),
            Err(GetError::Timeout)
        );
        assert!(out.is_empty());

        let (h, op) = port.connect(common::closed_addr(), 42, "connect").unwrap();
        let c = port
            .get(common::LONG)
            .expect("a failed operation is still a completion");
        assert_eq!(
            (c.kind, c.key, c.op, c.handle, c.value),
            (OpKind::Connect, 42, Some(op), Some(h), "connect")
        );
        let e = c.result.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        assert!(!cport::is_aborted(&e));
        assert!(matches!(c.payload, Payload::None));

        // A receive that fails hands back its buffer, untouched.
        let (h, peer) = common::pair(&port, 43);
        port.send(h, b"unread".to_vec(), "send").unwrap();
        assert_eq!(common::next(&port).result.unwrap(), 6);
        // Closing with unread data makes the peer's close a reset.
        peer.peek(&mut [0; 6]).unwrap();
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(b"kept");
        let at = buf.as_ptr();
        let op = if common::under_wine() {
            // wine 8 closes such a socket gracefully, and a receive issued
            // after a reset arrived sees end of stream there; a receive
            // already pending when a zero-linger close resets it fails.
            println!("under wine: the receive is pending when SO_LINGER 0 resets it");
            let op = port.recv(h, buf, "recv").unwrap();
            socket2::SockRef::from(&peer)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(peer);
            op
        } else {
            drop(peer);
            port.recv(h, buf, "recv").unwrap()
        };
        let c = port
            .get(common::LONG)
            .expect("a failed receive is still a completion");
        assert_eq!(
            (c.kind, c.key, c.op, c.value),
            (OpKind::Recv, 43, Some(op), "recv")
        );
        let e = c.result.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
        let buf = c.payload.into_buf().expect("the buffer comes back");
        assert_eq!(
            (buf.as_ptr(), buf.capacity(), &buf[..]),
            (at, 64, &b"kept"[..])
        );

        // And once more nothing is queued: a timeout, not a completion.
        assert_eq!(port.get(Some(MS50)).unwrap_err(), GetError::Timeout);
    }

    fn q6_close_port_wakes_every_waiter(backend: Backend) {
        let port = common::port::<u32>(backend, 2);
        let (h, _peer) = common::pair(&port, 1);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let lh = port.associate(l, 2).unwrap();
        // Operations in flight at the close reach no waiter.
        port.recv(h, Vec::with_capacity(8), 9).unwrap();
        port.accept(lh, 10).unwrap();
        // More waiters than the concurrency value: all are woken.
        let agents: Vec<Agent<u32>> = (0..3).map(|_| Agent::spawn(&port)).collect();
        let mut results = Vec::new();
        for (i, a) in agents.iter().enumerate() {
            results.push(a.start(|p| p.get(None).map(|c| c.value)));
            wait_waiting(&port, i + 1);
        }
        port.close_port();
        for r in &results {
            assert_eq!(recv(r), Err(GetError::Closed));
        }
        assert!(port.is_closed());
        assert_eq!(port.stats().waiting, 0);

        // Every later call is refused.
        assert_eq!(
            port.get(Some(Duration::ZERO)).unwrap_err(),
            GetError::Closed
        );
        assert_eq!(port.get(common::LONG).unwrap_err(), GetError::Closed);
        let blocked = agents[0].call(|p| p.get(None).map(drop));
        assert_eq!(
            blocked,
            Err(GetError::Closed),
            "get(None) on a closed port must not block"
        );
        let mut out = Vec::new();
        assert_eq!(port.get_many(&mut out, 8, None), Err(GetError::Closed));
        // A refused post gives its value back, as a refused operation does.
        let r = port.post(1, 0, 10).unwrap_err();
        assert_eq!(r.error.kind(), io::ErrorKind::NotConnected);
        assert_eq!(r.value, 10);
        let r = port.recv(h, Vec::with_capacity(8), 11).unwrap_err();
        assert_eq!(r.error.kind(), io::ErrorKind::NotConnected);
        assert_eq!(r.value, 11);
        assert_eq!(r.payload.into_buf().unwrap().capacity(), 8);
        let r = port.connect(common::closed_addr(), 3, 12).unwrap_err();
        assert_eq!(r.value, 12);
        assert!(port
            .associate(TcpListener::bind("127.0.0.1:0").unwrap(), 4)
            .is_err());
        for a in agents {
            a.exit();
        }
    }

    fn q6_close_port_drops_operations_in_flight(backend: Backend) {
        // close_port cancels what is in flight and drops it, values and
        // buffers included. A port kept open by a clone (a pool, a server
        // struct) must not go on holding them, nor a connection accepted at
        // the last moment: not in its closed queue, not in the backend.
        let drops = Arc::new(AtomicUsize::new(0));
        let port = common::port::<Tracked>(backend, 2);
        let (h, _peer) = common::pair(&port, 1);
        let lh = port
            .associate(TcpListener::bind("127.0.0.1:0").unwrap(), 2)
            .unwrap();
        port.recv(h, Vec::with_capacity(8), Tracked(drops.clone()))
            .unwrap();
        port.accept(lh, Tracked(drops.clone())).unwrap();
        // A thread waits on the port as it closes: the one that would reap
        // the cancellations.
        let a = Agent::spawn(&port);
        let got = a.start(|p| p.get(None).map(drop));
        wait_waiting(&port, 1);
        port.close_port();
        assert_eq!(recv(&got), Err(GetError::Closed));
        common::wait_until("the values of the operations in flight are dropped", || {
            drops.load(Ordering::SeqCst) == 2
        });
        assert_eq!(port.stats().queued, 0);
        a.exit();
    }

    fn q6_close_port_survives_a_value_whose_drop_panics(backend: Backend) {
        // close_port runs users' Drop for what was in flight; a panic there
        // must not escape (it runs inside the port's own drop, where a
        // second panic aborts), and the port must still end up closed.
        struct Bomb(Arc<AtomicUsize>);
        impl Drop for Bomb {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
                if !thread::panicking() {
                    panic!("a per-operation value's Drop panicked");
                }
            }
        }
        let drops = Arc::new(AtomicUsize::new(0));
        let port = common::port::<Bomb>(backend, 1);
        let (h, _peer) = common::pair(&port, 1);
        let (h2, _peer2) = common::pair(&port, 2);
        port.recv(h, Vec::with_capacity(8), Bomb(drops.clone()))
            .unwrap_or_else(|_| panic!("recv refused"));
        port.recv(h2, Vec::with_capacity(8), Bomb(drops.clone()))
            .unwrap_or_else(|_| panic!("recv refused"));
        port.close_port();
        assert!(port.is_closed());
        assert!(matches!(port.get(Some(Duration::ZERO)), Err(GetError::Closed)));
        drop(port);
        assert!(drops.load(Ordering::SeqCst) >= 1, "close or drop ran the values' Drop");
    }
}
