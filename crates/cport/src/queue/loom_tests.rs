//! The queue's protocol under every interleaving loom explores:
//! `RUSTFLAGS="--cfg loom" cargo test -p cport --release --lib loom`.

use std::time::Duration;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use super::{Queue, Reactor};
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

    fn wait(&self, timeout: Option<Duration>, _out: &mut Vec<u32>) {
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

fn get(q: &Shared, returning: bool) -> Result<u32, GetError> {
    let mut out = Vec::new();
    q.0.get(&q.1, returning, 1, None, &mut out).map(|()| out[0])
}

#[test]
fn loom_post_reaches_a_blocked_thread() {
    loom::model(|| {
        let q: Shared = Arc::new((Queue::new(1), Kernel::default()));
        let q2 = q.clone();
        let t = thread::spawn(move || get(&q2, false));
        q.0.push(&q.1, &mut vec![5], true);
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
        let poster = thread::spawn(move || q3.0.push(&q3.1, &mut vec![1], true));
        q.0.push(&q.1, &mut vec![2], true);
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
        q.0.push(&q.1, &mut vec![1], true);
        assert_eq!(c.join().unwrap(), 1);
        q.0.push(&q.1, &mut vec![2], true);
        assert_eq!(b.join().unwrap(), 2);
        q.0.push(&q.1, &mut vec![3], true);
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
                    q.0.release(&q.1);
                    v
                })
            })
            .collect();
        q.0.push(&q.1, &mut vec![1, 2], true);
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
        q.0.push(&q.1, &mut vec![3], true);
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
