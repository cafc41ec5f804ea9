//! The queue's protocol with real threads and a scripted kernel
//! ([`MockReactor`]). Threads are started one at a time and each is seen
//! blocked (through `stats`) before the next step, so the order under test
//! is the queue's, not the scheduler's.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{Batch, Queue, Reactor, Seat};
use crate::completion::GetError;

/// A kernel stand-in: `complete` makes items that the leader's `wait`
/// reaps; `wake` interrupts a wait.
#[derive(Default)]
struct MockReactor {
    state: Mutex<Kernel>,
    cv: Condvar,
}

#[derive(Default)]
struct Kernel {
    done: Vec<u32>,
    woken: bool,
    /// Threads inside `wait` right now.
    polling: usize,
}

impl MockReactor {
    fn complete(&self, item: u32) {
        self.state.lock().unwrap().done.push(item);
        self.cv.notify_all();
    }

    /// Items the next poll reaps together, in one batch.
    fn complete_all(&self, items: &[u32]) {
        self.state.lock().unwrap().done.extend_from_slice(items);
        self.cv.notify_all();
    }

    fn polling(&self) -> usize {
        self.state.lock().unwrap().polling
    }
}

impl Reactor<u32> for MockReactor {
    fn flush(&self) {}

    fn wait(&self, timeout: Option<Duration>, out: &mut Batch<u32>) {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut k = self.state.lock().unwrap();
        k.polling += 1;
        assert_eq!(k.polling, 1, "two threads polled the kernel at once");
        loop {
            if k.woken || !k.done.is_empty() {
                k.woken = false;
                for d in k.done.drain(..) {
                    out.push(d);
                }
                break;
            }
            match deadline {
                Some(d) if Instant::now() >= d => break,
                Some(d) => k = self.cv.wait_timeout(k, d - Instant::now()).unwrap().0,
                None => k = self.cv.wait(k).unwrap(),
            }
        }
        k.polling -= 1;
    }

    fn wake(&self) {
        self.state.lock().unwrap().woken = true;
        self.cv.notify_all();
    }
}

/// The seat of a thread coming back (`true`) or of one with none.
fn seat(returning: bool) -> Option<Seat> {
    returning.then_some(Seat::Running)
}

const LIMIT: Duration = Duration::from_secs(10);

/// Waits (bounded) until `cond` holds; panics naming `what` otherwise.
#[track_caller]
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        thread::yield_now();
    }
}

type Shared = Arc<(Queue<u32>, MockReactor)>;

fn queue(concurrency: usize) -> Shared {
    Arc::new((Queue::new(concurrency), MockReactor::default()))
}

/// Starts a thread that calls `get` once (no timeout) and reports
/// `(id, item)` on `tx`; returns once the thread is seen waiting.
fn waiter(
    q: &Shared,
    id: usize,
    tx: &mpsc::Sender<(usize, Result<u32, GetError>)>,
) -> thread::JoinHandle<()> {
    let before = q.0.stats().waiting;
    let (q2, tx) = (q.clone(), tx.clone());
    let t = thread::spawn(move || {
        let mut out = Vec::new();
        let r =
            q2.0.get(&q2.1, &mut seat(false), 1, Some(LIMIT), &mut out)
                .map(|()| out[0]);
        tx.send((id, r)).unwrap();
    });
    wait_until("the new thread waits", || q.0.stats().waiting == before + 1);
    t
}

fn push(q: &Shared, item: u32) {
    q.0.push(&q.1, &mut Batch::from(vec![item]), true);
}

#[test]
fn q2_most_recent_waiter_is_released_first() {
    let q = queue(8);
    let (tx, rx) = mpsc::channel();
    // Thread 0 becomes the leader (it polls the kernel); 1, 2, 3 follow.
    let threads: Vec<_> = (0..4).map(|i| waiter(&q, i, &tx)).collect();
    wait_until("thread 0 polls", || q.1.polling() == 1);
    for (n, expect) in [3, 2, 1].iter().enumerate() {
        push(&q, n as u32);
        let (id, r) = rx.recv_timeout(LIMIT).unwrap();
        assert_eq!(
            (id, r),
            (*expect, Ok(n as u32)),
            "LIFO among waiting threads"
        );
    }
    // Only the leader is left; a post must get it out of the kernel.
    push(&q, 9);
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (0, Ok(9)));
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn q3_single_consumer_sees_push_order() {
    let q = queue(1);
    for i in 0..100 {
        push(&q, i);
    }
    let mut got = Vec::new();
    let mut returning = false;
    for _ in 0..100 {
        let mut out = Vec::new();
        q.0.get(
            &q.1,
            &mut seat(returning),
            1,
            Some(Duration::ZERO),
            &mut out,
        )
        .unwrap();
        returning = true;
        got.extend(out);
    }
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}

/// The mailbox hand-off under real threads: two posters and the kernel
/// feed one running getter, which spins (posts keep arriving) and so takes
/// many items through the mailbox. Every item must arrive exactly once, and
/// each poster's posts in the order it made them (Q3); the kernel's
/// completions interleave wherever they land.
#[test]
fn q3_posts_handed_to_a_spinning_thread_keep_order_and_arrive_once() {
    const PER_POSTER: u32 = 20_000;
    const KERNEL: u32 = 500;
    let q = queue(1);
    let posters: Vec<_> = (0..2u32)
        .map(|p| {
            let q = q.clone();
            thread::spawn(move || {
                for i in 0..PER_POSTER {
                    q.0.push_one(&q.1, (p << 24) | i).unwrap();
                    // Let the getter drain the queue, so that it finds it
                    // empty and opens the mailbox.
                    thread::yield_now();
                }
            })
        })
        .collect();
    let kernel = {
        let q = q.clone();
        thread::spawn(move || {
            for i in 0..KERNEL {
                q.1.complete((2 << 24) | i);
                thread::yield_now();
            }
        })
    };
    let total = 2 * PER_POSTER + KERNEL;
    let mut next = [0u32; 3];
    let mut returning = false;
    for _ in 0..total {
        let mut out = Vec::new();
        q.0.get(&q.1, &mut seat(returning), 1, Some(LIMIT), &mut out)
            .expect("an item within the limit");
        returning = true;
        let v = out[0];
        let (src, seq) = ((v >> 24) as usize, v & 0xff_ffff);
        assert_eq!(seq, next[src], "source {src} out of order or repeated");
        next[src] += 1;
    }
    for t in posters {
        t.join().unwrap();
    }
    kernel.join().unwrap();
    assert_eq!(next, [PER_POSTER, PER_POSTER, KERNEL]);
    let mut out = Vec::new();
    assert_eq!(
        q.0.get(&q.1, &mut seat(true), 1, Some(Duration::ZERO), &mut out),
        Err(GetError::Timeout),
        "an item arrived twice"
    );
}

#[test]
fn q4_get_many_takes_up_to_max_as_one_running_thread() {
    let q = queue(1);
    for i in 0..5 {
        push(&q, i);
    }
    let mut out = Vec::new();
    q.0.get(&q.1, &mut seat(false), 3, Some(Duration::ZERO), &mut out)
        .unwrap();
    assert_eq!(out, vec![0, 1, 2]);
    assert_eq!(
        q.0.stats().running,
        1,
        "a batch counts as one running thread"
    );
    out.clear();
    q.0.get(&q.1, &mut seat(true), 10, Some(Duration::ZERO), &mut out)
        .unwrap();
    assert_eq!(
        out,
        vec![3, 4],
        "returns what there is, not waiting for max"
    );
}

#[test]
fn q1_timeout_zero_returns_at_once_and_timeout_is_not_an_item() {
    let q = queue(1);
    let mut out = Vec::new();
    let t = Instant::now();
    assert_eq!(
        q.0.get(&q.1, &mut seat(false), 1, Some(Duration::ZERO), &mut out),
        Err(GetError::Timeout)
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    let t = Instant::now();
    assert_eq!(
        q.0.get(
            &q.1,
            &mut seat(false),
            1,
            Some(Duration::from_millis(50)),
            &mut out
        ),
        Err(GetError::Timeout)
    );
    assert!(
        t.elapsed() >= Duration::from_millis(50),
        "waited the whole timeout"
    );
    assert!(out.is_empty());
    assert_eq!(q.0.stats().running, 0, "a timed-out thread is not running");
}

#[test]
fn c1_no_waiter_released_while_n_threads_run() {
    let q = queue(1);
    let (tx, rx) = mpsc::channel();
    let t0 = waiter(&q, 0, &tx); // leader
    let t1 = waiter(&q, 1, &tx); // follower
    push(&q, 1);
    let (first, r) = rx.recv_timeout(LIMIT).unwrap();
    assert_eq!(r, Ok(1));
    assert_eq!(q.0.stats().running, 1);
    // The first is running and does not come back: the limit is reached.
    push(&q, 2);
    let s = q.0.stats();
    assert_eq!(
        (s.queued, s.running, s.waiting),
        (1, 1, 1),
        "queued, not released"
    );
    assert!(rx.try_recv().is_err());
    // The running thread leaves (as a worker does on exit): the other runs.
    q.0.leave(&q.1, &mut Some(Seat::Running));
    let (second, r) = rx.recv_timeout(LIMIT).unwrap();
    assert_eq!(r, Ok(2));
    assert_ne!(first, second);
    t0.join().unwrap();
    t1.join().unwrap();
}

#[test]
fn c2_running_thread_takes_next_without_blocking() {
    let q = queue(1);
    push(&q, 1);
    push(&q, 2);
    let mut out = Vec::new();
    q.0.get(&q.1, &mut seat(false), 1, Some(Duration::ZERO), &mut out)
        .unwrap();
    // Coming back with a zero timeout: the slot it gives up is its own.
    q.0.get(&q.1, &mut seat(true), 1, Some(Duration::ZERO), &mut out)
        .unwrap();
    assert_eq!(out, vec![1, 2]);
    assert_eq!(q.1.polling(), 0);
}

#[test]
fn c3_blocking_section_frees_the_slot_and_may_exceed_the_limit() {
    let q = queue(1);
    push(&q, 1);
    let mut out = Vec::new();
    q.0.get(&q.1, &mut seat(false), 1, Some(Duration::ZERO), &mut out)
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let t = waiter(&q, 1, &tx);
    push(&q, 2);
    assert!(rx.try_recv().is_err(), "limit reached: not released");
    // The running thread blocks: its slot goes to the waiter.
    q.0.leave(&q.1, &mut Some(Seat::Running));
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (1, Ok(2)));
    // It comes back: two run with a limit of one, and nobody else is released.
    q.0.unblock(&mut Some(Seat::Blocked));
    assert_eq!(q.0.stats().running, 2);
    let t2 = waiter(&q, 2, &tx);
    push(&q, 3);
    assert!(rx.try_recv().is_err());
    assert_eq!(q.0.stats().queued, 1);
    // Both leave; below the limit again, the waiter runs.
    q.0.leave(&q.1, &mut Some(Seat::Running));
    q.0.leave(&q.1, &mut Some(Seat::Running));
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (2, Ok(3)));
    t.join().unwrap();
    t2.join().unwrap();
}

/// A thread coming back while the count is over the limit (another thread
/// re-entered after a blocking section, C3) must give its slot up and wait,
/// even on the hand-off path that spinning threads take, which keeps the
/// slot.
#[test]
fn c3_returning_thread_over_the_limit_does_not_take_through_the_hand_off() {
    let q = queue(1);
    q.0.push_one(&q.1, 1).unwrap();
    let mut out = Vec::new();
    q.0.get(&q.1, &mut seat(false), 1, Some(Duration::ZERO), &mut out)
        .unwrap();
    // A second thread comes back from a blocking section: two run.
    q.0.unblock(&mut Some(Seat::Blocked));
    assert_eq!(q.0.stats().running, 2);
    // A post arrives, so the returning thread would spin and hand off.
    q.0.push_one(&q.1, 2).unwrap();
    let mut out = Vec::new();
    assert_eq!(
        q.0.get(
            &q.1,
            &mut seat(true),
            1,
            Some(Duration::from_millis(20)),
            &mut out
        ),
        Err(GetError::Timeout),
        "took an item with two threads running and a limit of one"
    );
    assert_eq!(q.0.stats().queued, 1);
    assert_eq!(q.0.stats().running, 1);
    // Once the other thread leaves, the item can run.
    q.0.leave(&q.1, &mut Some(Seat::Running));
    q.0.get(&q.1, &mut seat(false), 1, Some(LIMIT), &mut out)
        .unwrap();
    assert_eq!(out, vec![2]);
}

#[test]
fn q6_close_wakes_every_waiter_with_closed() {
    let q = queue(4);
    let (tx, rx) = mpsc::channel();
    let threads: Vec<_> = (0..3).map(|i| waiter(&q, i, &tx)).collect();
    let queued = q.0.close(&q.1);
    assert!(queued.is_empty());
    let mut ids: Vec<_> = (0..3)
        .map(|_| {
            let (id, r) = rx.recv_timeout(LIMIT).unwrap();
            assert_eq!(r, Err(GetError::Closed));
            id
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![0, 1, 2]);
    let mut out = Vec::new();
    assert_eq!(
        q.0.get(&q.1, &mut seat(false), 1, None, &mut out),
        Err(GetError::Closed)
    );
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn leader_reaps_and_runs_and_hands_polling_on() {
    let q = queue(2);
    let (tx, rx) = mpsc::channel();
    let t0 = waiter(&q, 0, &tx);
    wait_until("thread 0 polls", || q.1.polling() == 1);
    let t1 = waiter(&q, 1, &tx);
    q.1.complete(7);
    // The thread that reaped the item runs it: no hand-over to a follower.
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (0, Ok(7)));
    // The follower took over polling, so the next kernel item is not stuck.
    wait_until("thread 1 polls", || q.1.polling() == 1);
    q.1.complete(8);
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (1, Ok(8)));
    t0.join().unwrap();
    t1.join().unwrap();
}

#[test]
fn followers_count_what_the_leader_hands_them_and_sleep_when_it_stops() {
    // Room for every item: the threads here never come back to give their
    // running slots up.
    let q = queue(8);
    let (tx, rx) = mpsc::channel();
    let handed = || q.0.state.lock().unwrap().handed;
    let t0 = waiter(&q, 0, &tx);
    wait_until("thread 0 polls", || q.1.polling() == 1);
    let t1 = waiter(&q, 1, &tx);
    // One reap, two items: the leader runs the first and binds the second
    // to the follower, which counts as handed (what makes followers spin).
    q.1.complete_all(&[7, 8]);
    let mut got = [
        rx.recv_timeout(LIMIT).unwrap(),
        rx.recv_timeout(LIMIT).unwrap(),
    ];
    got.sort_by_key(|&(id, _)| id);
    assert_eq!(got, [(0, Ok(7)), (1, Ok(8))]);
    assert_eq!(handed(), 1);
    t0.join().unwrap();
    t1.join().unwrap();
    // A leader that runs what it reaps hands nothing; releasing a follower
    // to take the leader role over hands nothing either.
    let t2 = waiter(&q, 2, &tx);
    wait_until("thread 2 polls", || q.1.polling() == 1);
    let t3 = waiter(&q, 3, &tx);
    q.1.complete(9);
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (2, Ok(9)));
    wait_until("thread 3 polls", || q.1.polling() == 1);
    assert_eq!(handed(), 1);
    // A follower that spun and found nothing goes to sleep, and a post
    // must still wake it: its release skips the futex only while it spins.
    let t4 = waiter(&q, 4, &tx);
    wait_until("thread 4 sleeps", || {
        let st = q.0.state.lock().unwrap();
        st.waiters.len() == 1 && st.waiters[0].asleep.load(Ordering::Relaxed)
    });
    push(&q, 10);
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (4, Ok(10)));
    assert_eq!(handed(), 2);
    q.1.complete(11);
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (3, Ok(11)));
    for t in [t2, t3, t4] {
        t.join().unwrap();
    }
}

#[test]
fn a_follower_that_came_back_lends_its_waiter_to_the_next() {
    let q = queue(8);
    let (tx, rx) = mpsc::channel();
    let top = || Arc::as_ptr(&q.0.state.lock().unwrap().waiters[0]);
    let t0 = waiter(&q, 0, &tx);
    wait_until("thread 0 polls", || q.1.polling() == 1);
    let t1 = waiter(&q, 1, &tx);
    let first = top();
    push(&q, 1);
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (1, Ok(1)));
    t1.join().unwrap();
    {
        let st = q.0.state.lock().unwrap();
        assert_eq!(st.idle.len(), 1, "the waiter that came back was not kept");
        assert!(std::ptr::eq(Arc::as_ptr(&st.idle[0]), first));
    }
    // The next follower waits on it, released afresh: were it still
    // marked released, it would take nothing and not wait for the post.
    let t2 = waiter(&q, 2, &tx);
    assert!(std::ptr::eq(top(), first), "a new waiter was allocated");
    assert!(q.0.state.lock().unwrap().idle.is_empty());
    push(&q, 2);
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (2, Ok(2)));
    q.1.complete(3);
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (0, Ok(3)));
    for t in [t0, t2] {
        t.join().unwrap();
    }
    // A waiter someone still holds (the stack's clones that `close` drops
    // after unlocking) is not kept: it could be released again.
    let mut st = q.0.state.lock().unwrap();
    let w = st.waiter();
    assert!(std::ptr::eq(Arc::as_ptr(&w), first), "t2 did not keep it");
    assert!(st.idle.is_empty());
    let held = w.clone();
    st.keep_waiter(w);
    assert!(st.idle.is_empty(), "a shared waiter was kept");
    st.keep_waiter(held);
    assert_eq!(st.idle.len(), 1);
}

#[test]
fn push_from_running_thread_releases_nobody() {
    let q = queue(2);
    push(&q, 1);
    let mut out = Vec::new();
    q.0.get(&q.1, &mut seat(false), 1, Some(Duration::ZERO), &mut out)
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let t0 = waiter(&q, 0, &tx); // leader
    let t1 = waiter(&q, 1, &tx); // follower
    q.0.push(&q.1, &mut Batch::from(vec![2]), false);
    assert_eq!(q.0.stats().waiting, 2, "nobody released for a lazy push");
    q.0.get(&q.1, &mut seat(true), 1, Some(Duration::ZERO), &mut out)
        .unwrap();
    assert_eq!(out, vec![1, 2]);
    q.0.close(&q.1);
    for _ in 0..2 {
        assert_eq!(rx.recv_timeout(LIMIT).unwrap().1, Err(GetError::Closed));
    }
    t0.join().unwrap();
    t1.join().unwrap();
}

/// A kernel whose first poll panics, as a backend does when a user's
/// per-operation `Clone` or `Drop` panics while the leader reaps.
struct PanicsOnce {
    kernel: MockReactor,
    panicked: std::sync::atomic::AtomicBool,
}

impl Reactor<u32> for PanicsOnce {
    fn flush(&self) {}

    fn wait(&self, timeout: Option<Duration>, out: &mut Batch<u32>) {
        if !self
            .panicked
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("a value's Clone panicked while reaping");
        }
        self.kernel.wait(timeout, out);
    }

    fn wake(&self) {
        self.kernel.wake();
    }
}

#[test]
fn a_poll_that_panics_hands_the_leader_role_on() {
    let reactor = PanicsOnce {
        kernel: MockReactor::default(),
        panicked: Default::default(),
    };
    let q = Queue::<u32>::new(2);
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut out = Vec::new();
        q.get(&reactor, &mut seat(false), 1, Some(LIMIT), &mut out)
    }));
    assert!(unwound.is_err(), "the poll panicked through get");
    assert_eq!(q.stats().waiting, 0, "nobody polls after the unwind");
    // The next thread must become the leader and reap what completes.
    reactor.kernel.complete(7);
    let mut out = Vec::new();
    assert_eq!(
        q.get(&reactor, &mut seat(false), 1, Some(LIMIT), &mut out),
        Ok(())
    );
    assert_eq!(out, vec![7]);
}

#[test]
fn spinning_follows_posts() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let spin = super::Spin::default();
    let posts = AtomicUsize::new(0);
    // A port nobody posts to stops spinning after IDLE decisions.
    let spins = (0..100)
        .filter(|_| spin.should_spin(posts.load(Ordering::Relaxed)))
        .count();
    assert_eq!(spins, super::Spin::IDLE);
    // A post brings it back, for as long as posts keep coming.
    for _ in 0..50 {
        posts.fetch_add(1, Ordering::Relaxed);
        assert!(spin.should_spin(posts.load(Ordering::Relaxed)));
    }
}
