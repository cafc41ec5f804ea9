//! The queue's protocol under every interleaving loom explores:
//! `RUSTFLAGS="--cfg loom" cargo test -p cport --release --lib loom`.

use std::time::Duration;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use super::{Batch, Queue, Reactor, Seat};
use crate::completion::GetError;

/// A kernel that never completes anything by itself: only `wake` ends a
/// blocking wait.
#[derive(Default)]
struct Kernel {
    woken: Mutex<bool>,
    cv: Condvar,
}

impl Reactor<u32> for Kernel {
    fn flush(&self) {}

    fn wait(&self, timeout: Option<Duration>, _out: &mut Batch<u32>) {
        let mut w = self.woken.lock().unwrap();
        if timeout == Some(Duration::ZERO) {
            *w = false;
            return;
        }
        while !*w {
            w = self.cv.wait(w).unwrap();
        }
        *w = false;
    }

    fn wake(&self) {
        *self.woken.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

type Shared = Arc<(Queue<u32>, Kernel)>;

/// The seat of a thread coming back (`true`) or of one with none.
fn seat(returning: bool) -> Option<Seat> {
    returning.then_some(Seat::Running)
}

fn get(q: &Shared, returning: bool) -> Result<u32, GetError> {
    let mut out = Vec::new();
    q.0.get(&q.1, &mut seat(returning), 1, None, &mut out)
        .map(|()| out[0])
}

#[test]
fn loom_post_reaches_a_blocked_thread() {
    loom::model(|| {
        let q: Shared = Arc::new((Queue::new(1), Kernel::default()));
        let q2 = q.clone();
        let t = thread::spawn(move || get(&q2, false));
        q.0.push(&q.1, &mut Batch::from(vec![5]), true);
        assert_eq!(t.join().unwrap(), Ok(5));
    });
}

/// Explores every interleaving with at most `bound` preemptions: enough
/// for the races between two or three threads here, and keeps the models
/// with spin-waits finite in practice.
fn model(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound);
    b.check(f);
}

#[test]
fn loom_posts_from_two_threads_reach_the_getter() {
    model(3, || {
        let q: Shared = Arc::new((Queue::new(2), Kernel::default()));
        let q2 = q.clone();
        let getter = thread::spawn(move || {
            let first = get(&q2, false).unwrap();
            // Back for more, as a worker does (C2: it gives its slot up).
            let second = get(&q2, true).unwrap();
            vec![first, second]
        });
        let q3 = q.clone();
        let poster = thread::spawn(move || q3.0.push(&q3.1, &mut Batch::from(vec![1]), true));
        q.0.push(&q.1, &mut Batch::from(vec![2]), true);
        poster.join().unwrap();
        let mut got = getter.join().unwrap();
        got.sort_unstable();
        assert_eq!(got, vec![1, 2]);
    });
}

/// Spins (yielding to loom) until `waiting` threads are blocked in `get`.
fn until_waiting(q: &Shared, waiting: usize) {
    while q.0.stats().waiting != waiting {
        thread::yield_now();
    }
}

#[test]
fn loom_waiters_are_released_lifo() {
    model(2, || {
        let q: Shared = Arc::new((Queue::new(3), Kernel::default()));
        let spawn = |q: &Shared| {
            let q = q.clone();
            thread::spawn(move || get(&q, false).unwrap())
        };
        // A blocks first and polls the kernel (the leader); B, then C,
        // block in user space.
        let a = spawn(&q);
        until_waiting(&q, 1);
        let b = spawn(&q);
        until_waiting(&q, 2);
        let c = spawn(&q);
        until_waiting(&q, 3);
        // Q2: the most recent waiter first; the leader, oldest, last.
        q.0.push(&q.1, &mut Batch::from(vec![1]), true);
        assert_eq!(c.join().unwrap(), 1);
        q.0.push(&q.1, &mut Batch::from(vec![2]), true);
        assert_eq!(b.join().unwrap(), 2);
        q.0.push(&q.1, &mut Batch::from(vec![3]), true);
        assert_eq!(a.join().unwrap(), 3);
    });
}

#[test]
fn loom_concurrency_limit_holds() {
    loom::model(|| {
        let q: Shared = Arc::new((Queue::new(1), Kernel::default()));
        let running = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (q, running) = (q.clone(), running.clone());
                thread::spawn(move || {
                    let v = get(&q, false).unwrap();
                    assert_eq!(
                        running.fetch_add(1, Ordering::SeqCst),
                        0,
                        "two threads ran with N = 1"
                    );
                    running.fetch_sub(1, Ordering::SeqCst);
                    // Exit: give the slot back as the port does for a thread that ends.
                    q.0.leave(&q.1, &mut Some(Seat::Running));
                    v
                })
            })
            .collect();
        q.0.push(&q.1, &mut Batch::from(vec![1, 2]), true);
        let mut got: Vec<u32> = workers.into_iter().map(|t| t.join().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, vec![1, 2]);
    });
}

#[test]
fn loom_close_wakes_every_waiter() {
    loom::model(|| {
        let q: Shared = Arc::new((Queue::new(2), Kernel::default()));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                thread::spawn(move || get(&q, false))
            })
            .collect();
        q.0.close(&q.1);
        for t in waiters {
            assert_eq!(t.join().unwrap(), Err(GetError::Closed));
        }
    });
}

/// A queue whose running threads always spin, so they open the mailbox.
fn spinning(concurrency: usize) -> Shared {
    let q: Shared = Arc::new((Queue::new(concurrency), Kernel::default()));
    q.0.spin
        .forced
        .store(true, std::sync::atomic::Ordering::Relaxed);
    q
}

/// Followers that spin before they sleep, as they do while the leader
/// hands them items: one released while it spins is told by its flag
/// alone (no `notify_one`), one released once asleep must still be woken,
/// and loom explores the release on both sides of the fall asleep.
#[test]
fn loom_spinning_followers_are_released_asleep_or_not() {
    model(3, || {
        let q: Shared = Arc::new((Queue::new(2), Kernel::default()));
        q.0.follow_spin
            .forced
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                thread::spawn(move || get(&q, false))
            })
            .collect();
        // A spinning thread's yields let the others run (loom's reading of
        // a spin); yielding here too lets the follower's spin run out first
        // in some schedules, so that it sleeps before the release.
        for _ in 0..3 {
            thread::yield_now();
        }
        q.0.push(&q.1, &mut Batch::from(vec![1, 2]), true);
        let mut got: Vec<u32> = workers
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, vec![1, 2]);
    });
}

#[test]
fn loom_handoff_keeps_fifo_with_queued_items() {
    model(3, || {
        let q = spinning(1);
        q.0.push_one(&q.1, 1).unwrap();
        let q2 = q.clone();
        let getter = thread::spawn(move || {
            let first = get(&q2, false).unwrap();
            // Running now: these gets open the mailbox.
            let mut got = vec![first];
            for _ in 0..3 {
                got.push(get(&q2, true).unwrap());
            }
            got
        });
        // Posts (which may go through the mailbox) around a completion
        // queued the locked way: Q3 says they leave in this order.
        q.0.push_one(&q.1, 2).unwrap();
        q.0.push(&q.1, &mut Batch::from(vec![3]), true);
        q.0.push_one(&q.1, 4).unwrap();
        assert_eq!(getter.join().unwrap(), vec![1, 2, 3, 4]);
    });
}

#[test]
fn loom_handoff_takes_posts_from_two_threads_once_each() {
    model(3, || {
        let q = spinning(1);
        q.0.push_one(&q.1, 1).unwrap();
        let q2 = q.clone();
        let getter = thread::spawn(move || {
            let mut got = vec![get(&q2, false).unwrap()];
            got.push(get(&q2, true).unwrap());
            got.push(get(&q2, true).unwrap());
            got
        });
        let q3 = q.clone();
        let poster = thread::spawn(move || q3.0.push_one(&q3.1, 2).unwrap());
        q.0.push_one(&q.1, 3).unwrap();
        poster.join().unwrap();
        let mut got = getter.join().unwrap();
        assert_eq!(got[0], 1);
        got.sort_unstable();
        assert_eq!(got, vec![1, 2, 3]);
    });
}

#[test]
fn loom_handoff_ends_when_the_queue_closes() {
    model(3, || {
        let q = spinning(1);
        q.0.push_one(&q.1, 1).unwrap();
        let q2 = q.clone();
        let getter = thread::spawn(move || match get(&q2, false) {
            // Closed before the getter came: nothing more to see.
            Err(e) => Err(e),
            Ok(first) => {
                assert_eq!(first, 1);
                get(&q2, true)
            }
        });
        let q3 = q.clone();
        let poster = thread::spawn(move || q3.0.push_one(&q3.1, 2));
        q.0.close(&q.1);
        let posted = poster.join().unwrap();
        let got = getter.join().unwrap();
        // Either the post made it before the close and was taken, or the
        // getter saw the close; a refused post is given back.
        match got {
            Ok(v) => {
                assert_eq!(v, 2);
                assert_eq!(posted, Ok(()));
            }
            Err(e) => assert_eq!(e, GetError::Closed),
        }
    });
}

/// LESSONS 13: a thread's seat goes through a blocking section, a nested
/// one and a `get` inside it while a waiter and a poster race it; the
/// running count ends exact and every item is taken once.
#[test]
fn loom_a_blocking_section_gives_its_slot_up_once_whatever_it_calls() {
    model(2, || {
        let q: Shared = Arc::new((Queue::new(1), Kernel::default()));
        q.0.push(&q.1, &mut Batch::from(vec![1]), true);
        let mut seat = None;
        let mut out = Vec::new();
        q.0.get(&q.1, &mut seat, 1, None, &mut out).unwrap();
        assert_eq!((out.pop(), seat), (Some(1), Some(Seat::Running)));

        let waiter = {
            let q = q.clone();
            thread::spawn(move || {
                let mut seat = None;
                let mut out = Vec::new();
                q.0.get(&q.1, &mut seat, 1, None, &mut out).unwrap();
                q.0.leave(&q.1, &mut seat);
                out[0]
            })
        };
        let poster = {
            let q = q.clone();
            thread::spawn(move || q.0.push(&q.1, &mut Batch::from(vec![2, 3]), true))
        };

        assert!(
            q.0.block(&q.1, &mut seat),
            "the outer section gives the slot up"
        );
        assert!(
            !q.0.block(&q.1, &mut seat),
            "a nested one has nothing to give"
        );
        assert!(q.0.stats().running <= 1, "C1");
        let mine = q.0.get(&q.1, &mut seat, 1, Some(Duration::ZERO), &mut out);
        assert_eq!(mine.is_ok(), seat == Some(Seat::Running));
        assert!(q.0.stats().running <= 1, "C1");
        q.0.unblock(&mut seat);
        assert!(q.0.stats().running <= 1, "C1, after the section");
        q.0.leave(&q.1, &mut seat);

        let theirs = waiter.join().unwrap();
        poster.join().unwrap();
        assert_eq!(q.0.stats().running, 0, "every slot given back once");
        // Whatever is left is still queued, once.
        while let Ok(()) = q.0.get(&q.1, &mut seat, 1, Some(Duration::ZERO), &mut out) {
            q.0.leave(&q.1, &mut seat);
        }
        out.push(theirs);
        out.sort_unstable();
        assert_eq!(out, vec![2, 3]);
    });
}

/// Q2: a packet is bound to the waiter released for it. Two threads wait
/// (the leader, then a follower); a third posts three items, then calls
/// `get` itself: the newest waiter gets the first, the older the second,
/// the poster the third.
#[test]
fn loom_a_posted_item_goes_to_the_waiter_released_for_it() {
    model(2, || {
        let q: Shared = Arc::new((Queue::new(3), Kernel::default()));
        let spawn = |q: &Shared| {
            let q = q.clone();
            thread::spawn(move || get(&q, false).unwrap())
        };
        let older = spawn(&q);
        until_waiting(&q, 1);
        let newer = spawn(&q);
        until_waiting(&q, 2);
        for i in 1..=3 {
            q.0.push(&q.1, &mut Batch::from(vec![i]), true);
        }
        assert_eq!(get(&q, false), Ok(3), "the poster gets what is left");
        assert_eq!(newer.join().unwrap(), 1);
        assert_eq!(older.join().unwrap(), 2);
    });
}

/// An interrupt ends a `get_until` waiting on its epoch, with nothing
/// queued or taken, whether the waiter leads (polls the kernel) or follows.
#[test]
fn loom_an_interrupt_ends_a_get_waiting_on_its_epoch() {
    model(2, || {
        let q: Shared = Arc::new((Queue::new(2), Kernel::default()));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                thread::spawn(move || {
                    let epoch = q.0.interrupts();
                    let mut seat = None;
                    let mut out = Vec::new();
                    let r =
                        q.0.get_until(&q.1, &mut seat, 1, None, Some(epoch), &mut out);
                    (r, seat, out.len())
                })
            })
            .collect();
        until_waiting(&q, 2);
        q.0.interrupt(&q.1);
        for w in waiters {
            assert_eq!(w.join().unwrap(), (Err(GetError::Timeout), None, 0));
        }
        assert_eq!(q.0.stats().running, 0);
    });
}

/// A `LocalPort`'s thread polling the kernel with no timeout, and a post
/// from another thread: however they interleave, the post ends the poll
/// (or is found before it) and is handed over. A lost wake-up deadlocks
/// the model.
#[test]
fn loom_post_ends_a_local_poll() {
    model(3, || {
        let q: Shared = Arc::new((Queue::new(1), Kernel::default()));
        let q2 = q.clone();
        let poster = thread::spawn(move || q2.0.push_one(&q2.1, 7).unwrap());
        let mut out = Batch::new();
        while out.is_empty() {
            q.0.poll_local(&q.1, None, &mut out).unwrap();
        }
        poster.join().unwrap();
        assert_eq!(out.pop_front(), Some(7));
        assert!(out.is_empty());
    });
}
