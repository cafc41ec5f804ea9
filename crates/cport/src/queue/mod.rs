//! The port's completion queue: the part of a Windows completion port that
//! Linux does not have, built in user space (LESSONS 3: one io_uring must
//! not be reaped by several threads, so the shared queue cannot be the
//! kernel's).
//!
//! # What it does
//!
//! * **FIFO items, LIFO waiters** (SEMANTICS Q2, Q3). Items leave in the
//!   order they were pushed; a blocked `get` is a [`Waiter`] on a stack,
//!   and the most recent waiter is released first. An item is *bound* to
//!   the waiter released for it, as a packet is on Windows: a thread that
//!   reaches the lock first (still running, or calling `get` after the
//!   push) takes a later item, never the one a released waiter was woken
//!   for.
//! * **Concurrency accounting** (C1–C3). `running` counts threads that took
//!   an item and have not come back; items bound to released waiters count
//!   too, since those waiters are about to run them. No waiter is released,
//!   and no thread takes an item, while that sum is at the limit. A thread
//!   coming back (`Seat::Running`) gives its slot up and may take the next
//!   item at once, without blocking (C2). [`Queue::block`] and
//!   [`Queue::unblock`] bracket a blocking section (C3), and
//!   [`Queue::leave`] ends a thread's running without another `get`.
//!   Which of these a thread may do is kept in its [`Seat`], so that a
//!   nested section, a `leave` or a `get` inside a section never gives the
//!   same slot up twice (LESSONS 13).
//! * **Leader/follower** (the scheme of Boost.Asio's scheduler). The kernel
//!   side (an io_uring or an epoll set) is polled by one thread at a time,
//!   the *leader*, through [`Reactor::wait`]. What it reaps goes into the
//!   queue, and the leader takes the first item itself when the concurrency
//!   limit allows: a completion does not cross threads when the thread that
//!   reaped it can run it. Other blocked threads are *followers*. Whenever
//!   the leader role is free, nothing is queued, and a follower could run
//!   what a poll would find, one follower is released to take the role.
//!   The leader is the only waiter whose release needs the kernel's help
//!   ([`Reactor::wake`]); followers are released with their own condvar.
//!
//! The leader is therefore the *oldest* waiter and is released last: Q2's
//! LIFO order holds among the threads blocked in user space, which is what
//! keeps surplus threads asleep.
//!
//! * **Direct hand-off** ([`Mailbox`]). A running thread that comes back to
//!   an empty queue while posts are arriving spins for a moment before it
//!   sleeps. It keeps its running slot meanwhile (it is the most recent
//!   waiter, so Q2 would release it first anyway) and opens a one-item
//!   mailbox: the next post goes straight into it, without the state lock.
//!   A thread-to-thread hand-off then costs what a channel's costs: a
//!   couple of cache-line transfers and no system call. Any other thread
//!   about to sleep spins too, as the top waiter of the stack: a post is
//!   bound to it like to any released waiter, but it sees that without a
//!   wake-up. So does a follower while followers have been released for
//!   items lately: that is a pool whose leader reaps more than it can run
//!   (two workers and a busy kernel side), and a follower that spins there
//!   takes the next item bound to it without the futex wake, the idle
//!   CPU's wake-up and the context switch (0.5 µs of CPU per message on
//!   two cores, `bench/runs/2026-12-06/follower-spin`).
//! * **User code never unwinds through a reap** ([`Batch`]). A backend
//!   runs user code while it reaps (a multishot operation's `Clone` of its
//!   value); a panic there is caught and held in the batch until what was
//!   reaped is queued, then resumed (LESSONS 12).
//!
//! Nothing here knows about the kernel or about the item type, so the
//! whole protocol is model-checked with loom (`loom_tests.rs`).

use std::collections::VecDeque;
use std::mem;
use std::panic;
use std::time::{Duration, Instant};

use self::handoff::{spin_until, Handoff, Mailbox, Spin, EMPTY};
use crate::completion::GetError;
use crate::sync::{self, Arc, AtomicBool, AtomicUsize, Condvar, Mutex, Ordering};

/// The kernel side of the port, as the queue sees it.
pub(crate) trait Reactor<E> {
    /// Submits operations whose submission was deferred (see
    /// `sys::uring`). Called before a thread blocks as a follower or stops
    /// running; must be cheap when nothing is deferred.
    fn flush(&self);

    /// Waits for kernel events for at most `timeout` (`None`: no limit,
    /// zero: just look) and appends the completions they made to `out`.
    /// Called by one thread at a time, the leader. Returns early, possibly
    /// with nothing, after [`wake`](Reactor::wake). Never unwinds for user
    /// code: a panic of user code run meanwhile is caught into `out`.
    fn wait(&self, timeout: Option<Duration>, out: &mut Batch<E>);

    /// Makes a `wait` in progress, or the next one, return soon.
    fn wake(&self);
}

/// While the queue never runs empty nobody polls the kernel; after this
/// many items are taken, the next taker looks first (tokio's event
/// interval has the same purpose and size).
pub(crate) const POLL_EVERY: usize = 61;

/// One thread blocked (or about to block) as a follower.
struct Waiter {
    cv: Condvar,
    /// Set, under the state lock, when the waiter was popped and signalled:
    /// with an item bound to it (in `State::bound`), or to take the leader
    /// role, or because the queue closed.
    notified: AtomicBool,
    /// Set, under the state lock, while the waiter sleeps on `cv`: a
    /// waiter still spinning sees `notified` without a system call.
    asleep: AtomicBool,
}

impl Waiter {
    /// Releases the waiter; called under the state lock.
    fn release(&self) {
        self.notified.store(true, Ordering::Release);
        if self.asleep.load(Ordering::Relaxed) {
            self.cv.notify_one();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Leader {
    /// No thread polls the kernel.
    Idle,
    /// A thread holds the role but spins in user space for a moment
    /// before it polls, watching `Queue::leader_bound`: an item bound to it
    /// meanwhile needs no kernel wake-up.
    Spinning,
    /// A thread is inside [`Reactor::wait`].
    Polling,
    /// A thread is inside [`Reactor::wait`] and was asked to come out for
    /// the item bound to it (`State::leader_item`), or because the queue
    /// closed.
    Woken,
    /// A thread is inside [`Reactor::wait`] with a zero timeout: it comes
    /// back by itself, so waking it would only cost a system call on each
    /// side.
    Looking,
}

struct State<E> {
    /// Queued items bound to no waiter, oldest first.
    items: VecDeque<E>,
    /// Blocked followers; the top of the stack is the most recent.
    waiters: Vec<Arc<Waiter>>,
    /// Items bound to released followers, each taken by its own waiter
    /// (Q2). Always older than everything in `items`.
    bound: Vec<(Arc<Waiter>, E)>,
    /// Waiters of followers that came back, for the next to follow: once
    /// the queue has had its most followers at once, following allocates
    /// nothing. Only unshared waiters are kept.
    idle: Vec<Arc<Waiter>>,
    /// The item bound to the leader when it was woken for it.
    leader_item: Option<E>,
    /// Threads that took items and have not come back (C1).
    running: usize,
    /// Followers signalled without an item (for the leader role, or at
    /// close) and not yet back under the lock. Counted so that one free
    /// role never releases two threads.
    woken: usize,
    leader: Leader,
    /// Items taken since the kernel was last polled (see `POLL_EVERY`).
    since_poll: usize,
    /// Items bound to followers so far (see `Queue::follow_spin`).
    handed: usize,
    closed: bool,
    /// The leader's batch, kept to avoid an allocation per poll.
    spare: Batch<E>,
}

impl<E> State<E> {
    /// Running threads plus the released waiters about to run their bound
    /// items: what C1 limits.
    fn busy(&self) -> usize {
        self.running + self.bound.len() + usize::from(self.leader_item.is_some())
    }

    /// Whether a thread that is not running may take an unbound item now.
    fn can_take(&self, concurrency: usize) -> bool {
        !self.items.is_empty() && self.busy() < concurrency
    }

    /// The item bound to `w`, if it was released for one.
    fn bound_to(&mut self, w: &Arc<Waiter>) -> Option<E> {
        let i = self.bound.iter().position(|(x, _)| Arc::ptr_eq(x, w))?;
        Some(self.bound.remove(i).1)
    }

    fn forget_waiter(&mut self, w: &Arc<Waiter>) {
        if let Some(i) = self.waiters.iter().rposition(|x| Arc::ptr_eq(x, w)) {
            self.waiters.remove(i);
        }
    }

    /// A waiter for a thread about to follow: a kept one, or a new one.
    fn waiter(&mut self) -> Arc<Waiter> {
        match self.idle.pop() {
            Some(w) => {
                // Kept unshared, and ordered by the state lock against the
                // release that set it: nobody else reads it until it is on
                // the stack again.
                w.notified.store(false, Ordering::Relaxed);
                w
            }
            None => Arc::new(Waiter {
                cv: Condvar::new(),
                notified: AtomicBool::new(false),
                asleep: AtomicBool::new(false),
            }),
        }
    }

    /// Keeps the waiter of a follower that came back, off the stack and out
    /// of `bound`, unless a clone is still held: `close` and `interrupt`
    /// drop the stack's clones after unlocking, and such a waiter must
    /// never be released again as someone else's.
    fn keep_waiter(&mut self, w: Arc<Waiter>) {
        if Arc::strong_count(&w) == 1 {
            self.idle.push(w);
        }
    }
}

pub(crate) struct Queue<E> {
    concurrency: usize,
    state: Mutex<State<E>>,
    /// Set when an item is bound to a `Leader::Spinning` leader.
    leader_bound: AtomicBool,
    /// Whether spinning before sleeping has been finding work lately.
    spin: Spin,
    /// The one-item hand-off from a post to a spinning running thread.
    mailbox: Mailbox<E>,
    /// Set, under the state lock, when items are queued; cleared when a
    /// `LocalPort`'s thread takes them ([`poll_local`](Queue::poll_local),
    /// [`take_posted`](Queue::take_posted)). Only that thread reads it: one
    /// load tells it whether another thread posted.
    posted: AtomicBool,
    /// [`Queue::interrupt`]s so far. Moved under the state lock; read
    /// without it by [`interrupts`](Queue::interrupts), once per `get` of
    /// a worker pool.
    interrupts: AtomicUsize,
    /// Whether spinning before sleeping as a follower has been finding
    /// items lately: follows `State::handed` as `spin` follows the posts.
    follow_spin: Spin,
}

/// How a follower's wait ended.
enum Woke<E> {
    /// Released with this item bound to it.
    Item(E),
    /// Released without an item (leader role, close), or timed out: the
    /// loop decides.
    Again,
}

/// Where a `get` stands, besides the state it locks.
struct Attempt {
    /// Ends the `get` when the interrupt count moves from it.
    epoch: Option<usize>,
    deadline: Option<Instant>,
    /// Whether to spin before the next sleep: decided once per `get`, the
    /// first time it would wait (`None` until then), and spent by that
    /// wait. A zero timeout never spins.
    spin: Option<bool>,
    /// Submitted what this thread deferred: done before it sleeps.
    flushed: bool,
}

impl<E> Queue<E> {
    /// A queue that lets at most `concurrency` threads run (at least 1).
    pub(crate) fn new(concurrency: usize) -> Self {
        Queue {
            concurrency: concurrency.max(1),
            state: Mutex::new(State {
                items: VecDeque::new(),
                waiters: Vec::new(),
                bound: Vec::new(),
                idle: Vec::new(),
                leader_item: None,
                running: 0,
                woken: 0,
                leader: Leader::Idle,
                since_poll: 0,
                handed: 0,
                closed: false,
                spare: Batch::new(),
            }),
            leader_bound: AtomicBool::new(false),
            spin: Spin::default(),
            mailbox: Mailbox {
                state: AtomicUsize::new(EMPTY),
                closed: AtomicBool::new(false),
                posts: std::sync::atomic::AtomicUsize::new(0),
                slot: Mutex::new(None),
            },
            posted: AtomicBool::new(false),
            interrupts: AtomicUsize::new(0),
            follow_spin: Spin::default(),
        }
    }

    pub(crate) fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Dequeues up to `max` items (at least one) into `out`, for a thread
    /// whose record on this queue is `seat`.
    ///
    /// A thread coming back (`Seat::Running`) gives its slot up first, so
    /// it can take the next item at once (C2). A thread in a blocking
    /// section (`Seat::Blocked`) has no slot to give. On `Ok` the thread is
    /// running, one slot whatever `max` was (as with
    /// GetQueuedCompletionStatusEx), and its seat says so; on `Err` it has
    /// no slot. A panic of user code met while this thread polled the
    /// kernel is resumed here, after what was reaped is queued; the thread
    /// then has no slot either.
    #[cfg(test)]
    pub(crate) fn get<R: Reactor<E> + ?Sized>(
        &self,
        reactor: &R,
        seat: &mut Option<Seat>,
        max: usize,
        timeout: Option<Duration>,
        out: &mut impl Extend<E>,
    ) -> Result<(), GetError> {
        self.get_until(reactor, seat, max, timeout, None, out)
    }

    /// `get` (the tests' form, above, without an epoch) that also ends,
    /// with `Timeout`, once the queue's interrupt count is no longer `epoch`
    /// ([`Queue::interrupt`]): how a worker pool wakes its idle threads
    /// without queuing an item.
    pub(crate) fn get_until<R: Reactor<E> + ?Sized>(
        &self,
        reactor: &R,
        seat: &mut Option<Seat>,
        max: usize,
        timeout: Option<Duration>,
        epoch: Option<usize>,
        out: &mut impl Extend<E>,
    ) -> Result<(), GetError> {
        let max = max.max(1);
        let returning = *seat == Some(Seat::Running);
        let mut at = Attempt {
            epoch,
            deadline: timeout.map(|t| Instant::now() + t),
            spin: if timeout == Some(Duration::ZERO) {
                Some(false)
            } else {
                None
            },
            flushed: false,
        };
        if returning && at.spin.is_none() && self.spin.should_spin(self.posts()) {
            at.spin = Some(false);
            match self.handoff(reactor, max, out) {
                Handoff::Took => return Ok(()),
                Handoff::Closed => {
                    sync::lock(&self.state).running -= 1;
                    *seat = None;
                    return Err(GetError::Closed);
                }
                Handoff::Missed => {}
            }
        }
        let mut st = sync::lock(&self.state);
        if returning {
            st.running -= 1;
        }
        *seat = None;
        let r = self.dequeue(st, reactor, max, &mut at, out);
        if r.is_ok() {
            *seat = Some(Seat::Running);
        }
        r
    }

    /// The locked path of `get`, for a thread that holds no slot: each
    /// turn of the loop takes what it may, or waits in one of three ways
    /// (spinning, polling the kernel as the leader, sleeping as a
    /// follower), and looks again.
    fn dequeue<'a, R: Reactor<E> + ?Sized>(
        &'a self,
        mut st: sync::MutexGuard<'a, State<E>>,
        reactor: &R,
        max: usize,
        at: &mut Attempt,
        out: &mut impl Extend<E>,
    ) -> Result<(), GetError> {
        loop {
            if st.closed {
                return Err(GetError::Closed);
            }
            if at
                .epoch
                .map_or(false, |e| e != self.interrupts.load(Ordering::Relaxed))
            {
                return self.leave_empty(st, reactor, GetError::Timeout);
            }
            if st.can_take(self.concurrency) {
                if st.leader == Leader::Idle && st.since_poll >= POLL_EVERY {
                    // The queue has not been empty for a while, so nobody
                    // has polled the kernel: look once, without waiting, so
                    // that a stream of posts or of completions made at issue
                    // cannot starve I/O completions waiting in the kernel.
                    st = match self.lead(st, reactor, Some(Duration::ZERO), None, out)? {
                        Led::Back(g) => g,
                        Led::Took => return Ok(()),
                    };
                    continue;
                }
                self.take(st, reactor, None, max, out);
                return Ok(());
            }
            let spin = *at
                .spin
                .get_or_insert_with(|| self.spin.should_spin(self.posts()));
            if st.items.is_empty() && st.leader == Leader::Idle && spin {
                // Take the leader role, but watch for a post for a moment
                // before polling: the post is then bound to this thread
                // without a system call on either side.
                at.spin = Some(false);
                match self.spin_as_leader(st, reactor, max, out) {
                    Led::Took => return Ok(()),
                    Led::Back(g) => st = g,
                }
                continue;
            }
            if st.items.is_empty() && st.leader == Leader::Idle {
                // Lead: poll the kernel ourselves. A thread that polls has
                // submitted what it deferred.
                at.flushed = true;
                match self.lead(st, reactor, remaining(at.deadline), Some(max), out) {
                    Ok(Led::Took) => return Ok(()),
                    Ok(Led::Back(g)) => st = g,
                    Err(e) => return Err(e),
                }
                if st.items.is_empty() && expired(at.deadline) {
                    return self.leave_empty(st, reactor, GetError::Timeout);
                }
                continue;
            }
            if expired(at.deadline) {
                return self.leave_empty(st, reactor, GetError::Timeout);
            }
            if !at.flushed {
                // About to sleep: submit what this thread deferred, or it
                // would wait on operations the kernel has not seen.
                drop(st);
                reactor.flush();
                at.flushed = true;
                st = sync::lock(&self.state);
                continue;
            }
            let spin = spin || self.follow_spin.should_spin(st.handed);
            let (g, woke) = self.follow(st, spin, at.deadline);
            at.spin = Some(false);
            st = g;
            if let Woke::Item(item) = woke {
                st.running += 1;
                self.take(st, reactor, Some(item), max, out);
                return Ok(());
            }
        }
    }

    /// Waits as a follower: on the stack of waiters, spinning first when
    /// `spin` (posts, or items reaped by the leader, have been bound to
    /// waiters lately: one bound to this thread is then seen without a
    /// wake-up, and released without a system call), then asleep on its
    /// own condvar until released or `deadline`.
    fn follow<'a>(
        &'a self,
        mut st: sync::MutexGuard<'a, State<E>>,
        spin: bool,
        deadline: Option<Instant>,
    ) -> (sync::MutexGuard<'a, State<E>>, Woke<E>) {
        let w = st.waiter();
        st.waiters.push(w.clone());
        if spin {
            // Bounded to a few microseconds, and yields to the thread that
            // may post. Should the leader role fall free meanwhile, the
            // thread that frees it releases a waiter to take it over
            // (`rebalance`), so this one may go to sleep regardless.
            drop(st);
            spin_until(|| w.notified.load(Ordering::Acquire));
            st = sync::lock(&self.state);
        }
        if !w.notified.load(Ordering::Relaxed) {
            w.asleep.store(true, Ordering::Relaxed);
            st = sync::wait(&w.cv, st, remaining(deadline));
            w.asleep.store(false, Ordering::Relaxed);
        }
        let woke = if !w.notified.load(Ordering::Relaxed) {
            // Timed out (or woke spuriously): leave the stack; the loop
            // decides between trying again and reporting the timeout.
            st.forget_waiter(&w);
            Woke::Again
        } else {
            match st.bound_to(&w) {
                Some(item) => Woke::Item(item),
                None => {
                    st.woken -= 1;
                    Woke::Again
                }
            }
        };
        st.keep_waiter(w);
        (st, woke)
    }

    /// Holds the leader role in user space for a moment (`Leader::Spinning`)
    /// and takes an item bound to it meanwhile. Comes back with the role
    /// idle and the state locked if nothing came, for the caller to poll.
    fn spin_as_leader<'a, R: Reactor<E> + ?Sized>(
        &'a self,
        mut st: sync::MutexGuard<'a, State<E>>,
        reactor: &R,
        max: usize,
        out: &mut impl Extend<E>,
    ) -> Led<'a, E> {
        st.leader = Leader::Spinning;
        self.leader_bound.store(false, Ordering::Relaxed);
        drop(st);
        spin_until(|| self.leader_bound.load(Ordering::Acquire));
        let mut st = sync::lock(&self.state);
        st.leader = Leader::Idle;
        match st.leader_item.take() {
            Some(item) => {
                st.running += 1;
                self.take(st, reactor, Some(item), max, out);
                Led::Took
            }
            None => Led::Back(st),
        }
    }

    /// Moves `first` (an item bound to this thread) and then items nobody
    /// was released for into `out`, `max` in all; the caller counts itself
    /// running. Then restores the invariants and unlocks.
    fn take<R: Reactor<E> + ?Sized>(
        &self,
        mut st: sync::MutexGuard<'_, State<E>>,
        reactor: &R,
        first: Option<E>,
        max: usize,
        out: &mut impl Extend<E>,
    ) {
        let mut n = 0;
        if let Some(item) = first {
            out.extend(Some(item));
            n += 1;
        } else {
            st.running += 1;
        }
        let more = (max - n).min(st.items.len());
        // One by one rather than `extend(drain(..more))`: for the common
        // `max` of one, the drain's iterator and drop guard cost more than
        // the item's move (this and `Batch::move_into` together took
        // port-epoll from 4557 to 4167 user-space instructions per echoed
        // message, `bench/runs/2026-12-06/instructions`).
        for _ in 0..more {
            out.extend(st.items.pop_front());
        }
        st.since_poll += n + more;
        let wake = self.rebalance(&mut st);
        drop(st);
        if wake {
            reactor.wake();
        }
    }

    /// Polls the kernel as the leader, for at most `timeout`, and queues
    /// what it reaped. Called with the leader role idle; comes back with
    /// the role idle.
    ///
    /// With `take: Some(max)` (a blocking poll by a thread with no slot),
    /// an item bound to the leader while it polled is this thread's: it is
    /// taken (with more, up to `max`) and the state unlocked (`Led::Took`).
    /// Otherwise the state comes back locked. On a queue closed meanwhile,
    /// the reaped completions are dropped (outside the lock: they may own
    /// descriptors), never queued where nobody will take them. A panic of
    /// user code caught in the reap is resumed once the rest is queued.
    fn lead<'a, R: Reactor<E> + ?Sized>(
        &'a self,
        mut st: sync::MutexGuard<'a, State<E>>,
        reactor: &R,
        timeout: Option<Duration>,
        take: Option<usize>,
        out: &mut impl Extend<E>,
    ) -> Result<Led<'a, E>, GetError> {
        st.leader = if timeout == Some(Duration::ZERO) {
            Leader::Looking
        } else {
            Leader::Polling
        };
        let mut batch = mem::take(&mut st.spare);
        drop(st);
        let lead = Lead(self);
        reactor.wait(timeout, &mut batch);
        mem::forget(lead);
        let mut st = sync::lock(&self.state);
        st.leader = Leader::Idle;
        st.since_poll = 0;
        let panic = batch.take_panic();
        if st.closed {
            drop(st);
            drop(batch);
            if let Some(p) = panic {
                panic::resume_unwind(p);
            }
            return Err(GetError::Closed);
        }
        if !batch.is_empty() {
            self.mailbox.revoke();
        }
        batch.move_into(&mut st.items);
        st.spare = batch;
        let mine = st.leader_item.take();
        if let Some(p) = panic {
            // Everything reaped is queued; whoever can run it is released
            // before this thread unwinds. An item bound to it goes back to
            // the front, being the oldest.
            if let Some(item) = mine {
                st.items.push_front(item);
            }
            let wake = self.rebalance(&mut st);
            drop(st);
            if wake {
                reactor.wake();
            }
            panic::resume_unwind(p);
        }
        match (mine, take) {
            (Some(item), Some(max)) => {
                st.running += 1;
                self.take(st, reactor, Some(item), max, out);
                Ok(Led::Took)
            }
            (Some(item), None) => {
                // Bound to a leader that was only looking: cannot happen
                // (only a polling leader is bound), but never lose it.
                st.items.push_front(item);
                Ok(Led::Back(st))
            }
            (None, _) => Ok(Led::Back(st)),
        }
    }

    /// The one thread of a `LocalPort` looks for completions: what other
    /// threads posted is moved into `out`, then the kernel is polled, with
    /// `out` as the reap's batch, for at most `timeout` — not at all if
    /// posts were found. A post meanwhile ends the poll (it is bound to the
    /// polling thread, as to any leader) and is moved into `out` too.
    ///
    /// Nothing else of the protocol is used: the thread is the only one
    /// that dequeues, so it keeps no running count and no waiter ever
    /// blocks here; `State::running` stays 0, which lets every post be
    /// bound to the poll. A panic of user code caught in the reap stays
    /// in `out` for the caller to resume once it has kept the items.
    pub(crate) fn poll_local<R: Reactor<E> + ?Sized>(
        &self,
        reactor: &R,
        timeout: Option<Duration>,
        out: &mut Batch<E>,
    ) -> Result<(), GetError> {
        let mut st = sync::lock(&self.state);
        if st.closed {
            return Err(GetError::Closed);
        }
        self.posted.store(false, Ordering::Relaxed);
        let timeout = if st.items.is_empty() {
            timeout
        } else {
            out.extend(st.items.drain(..));
            Some(Duration::ZERO)
        };
        st.leader = if timeout == Some(Duration::ZERO) {
            Leader::Looking
        } else {
            Leader::Polling
        };
        drop(st);
        let lead = Lead(self);
        reactor.wait(timeout, out);
        mem::forget(lead);
        let mut st = sync::lock(&self.state);
        st.leader = Leader::Idle;
        self.posted.store(false, Ordering::Relaxed);
        out.extend(st.leader_item.take());
        out.extend(st.items.drain(..));
        Ok(())
    }

    /// For the one thread of a `LocalPort`, about to queue something of its
    /// own: moves what other threads posted into `out` first, so that its
    /// queue keeps the order things were queued in (Q3). One load when
    /// nothing was posted.
    pub(crate) fn take_posted(&self, out: &mut Batch<E>) {
        if !self.posted.load(Ordering::Acquire) {
            return;
        }
        let mut st = sync::lock(&self.state);
        self.posted.store(false, Ordering::Relaxed);
        out.extend(st.items.drain(..));
    }

    /// Returns from `get` with nothing dequeued; keeps the leader role
    /// covered first, since this thread may have been the one to take it.
    fn leave_empty<R: Reactor<E> + ?Sized>(
        &self,
        mut st: sync::MutexGuard<'_, State<E>>,
        reactor: &R,
        err: GetError,
    ) -> Result<(), GetError> {
        let wake = self.rebalance(&mut st);
        drop(st);
        if wake {
            reactor.wake();
        }
        // The thread stops running: what it deferred must reach the kernel.
        reactor.flush();
        Err(err)
    }

    /// Queues the items of `batch` (drained) behind what is queued.
    ///
    /// With `release` a waiter is released for them when the concurrency
    /// limit allows (C1). Without it nobody is woken: the caller is a
    /// running thread that will come back and take them itself (C2); see
    /// `CompletionPort` for when the port chooses that. A panic caught in
    /// the batch stays there for the caller to resume.
    pub(crate) fn push<R: Reactor<E> + ?Sized>(
        &self,
        reactor: &R,
        batch: &mut Batch<E>,
        release: bool,
    ) {
        if batch.is_empty() {
            return;
        }
        let mut st = sync::lock(&self.state);
        if st.closed {
            // Dropped outside the lock: items may own descriptors.
            drop(st);
            batch.clear();
            return;
        }
        self.mailbox.revoke();
        batch.move_into(&mut st.items);
        self.posted.store(true, Ordering::Release);
        let wake = release && self.rebalance(&mut st);
        drop(st);
        if wake {
            reactor.wake();
        }
    }

    /// Queues one item and releases a waiter for it (a post). Gives the
    /// item back if the queue is closed.
    pub(crate) fn push_one<R: Reactor<E> + ?Sized>(&self, reactor: &R, item: E) -> Result<(), E> {
        if self.mailbox.closed.load(Ordering::Acquire) {
            return Err(item);
        }
        self.mailbox
            .posts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let item = match self.mailbox.offer(item) {
            Ok(()) => return Ok(()),
            Err(item) => item,
        };
        let mut st = sync::lock(&self.state);
        if st.closed {
            return Err(item);
        }
        self.mailbox.revoke();
        st.items.push_back(item);
        self.posted.store(true, Ordering::Release);
        let wake = self.rebalance(&mut st);
        drop(st);
        if wake {
            reactor.wake();
        }
        Ok(())
    }

    /// Closes the queue: every waiter, and every later `get`, returns
    /// [`GetError::Closed`]. Returns what was queued, bound to released
    /// waiters included, for the caller to drop outside the lock.
    pub(crate) fn close<R: Reactor<E> + ?Sized>(&self, reactor: &R) -> Vec<E> {
        let mut st = sync::lock(&self.state);
        st.closed = true;
        self.mailbox.closed.store(true, Ordering::Release);
        // A post that reads `closed` before this store may still fill the
        // mailbox; its opener sees `closed` after taking it and drops it.
        self.mailbox.revoke();
        let waiters = mem::take(&mut st.waiters);
        for w in &waiters {
            w.release();
        }
        st.woken += waiters.len();
        let polling = st.leader != Leader::Idle;
        self.leader_bound.store(true, Ordering::Release);
        let mut items: Vec<E> = Vec::new();
        for (w, item) in mem::take(&mut st.bound) {
            // Its waiter comes back without an item: count it as woken.
            st.woken += 1;
            drop(w);
            items.push(item);
        }
        items.extend(st.leader_item.take());
        items.extend(st.items.drain(..));
        drop(st);
        if polling {
            reactor.wake();
        }
        items
    }

    /// The interrupt count, for [`get_until`](Queue::get_until).
    pub(crate) fn interrupts(&self) -> usize {
        // Acquire, against the increment's release: a caller that reads the
        // new count also sees what was written before the interrupt (a
        // worker pool's stop flag).
        self.interrupts.load(Ordering::Acquire)
    }

    /// Wakes every waiting thread: those in `get_until` whose epoch this
    /// moves return; the others look again and wait on. Nothing is queued
    /// or taken, so no completion's order or binding changes.
    pub(crate) fn interrupt<R: Reactor<E> + ?Sized>(&self, reactor: &R) {
        let mut st = sync::lock(&self.state);
        self.interrupts.fetch_add(1, Ordering::Release);
        let waiters = mem::take(&mut st.waiters);
        for w in &waiters {
            w.release();
        }
        st.woken += waiters.len();
        let wake = st.leader == Leader::Polling;
        if wake {
            st.leader = Leader::Woken;
        }
        self.leader_bound.store(true, Ordering::Release);
        drop(st);
        if wake {
            reactor.wake();
        }
    }

    /// Posts queued so far, for [`Spin`].
    fn posts(&self) -> usize {
        self.mailbox
            .posts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.mailbox.closed.load(Ordering::Acquire)
    }

    /// Restores the invariants after any change: queued items that a thread
    /// may run are bound to released waiters, newest first; the kernel has
    /// a poller whenever what it reaps could run. Returns true when the
    /// leader must be woken through the reactor (done by the caller, after
    /// unlocking).
    fn rebalance(&self, st: &mut State<E>) -> bool {
        let mut wake = false;
        // C1 and Q2: bind the oldest items to the most recent waiters while
        // the running count allows; the leader, the oldest waiter, last.
        while st.can_take(self.concurrency) {
            if let Some(w) = st.waiters.pop() {
                if let Some(item) = st.items.pop_front() {
                    st.bound.push((w.clone(), item));
                    // Wraps on 32-bit targets; the rule only compares.
                    st.handed = st.handed.wrapping_add(1);
                }
                w.release();
            } else if st.leader == Leader::Spinning && st.leader_item.is_none() {
                // The leader watches for it in user space.
                st.leader_item = st.items.pop_front();
                self.leader_bound.store(true, Ordering::Release);
            } else if st.leader == Leader::Polling && st.leader_item.is_none() {
                // Nobody in user space to take it: the leader must come out.
                st.leader_item = st.items.pop_front();
                st.leader = Leader::Woken;
                wake = true;
            } else {
                break;
            }
        }
        if st.leader == Leader::Idle
            && st.items.is_empty()
            && st.woken == 0
            && st.busy() < self.concurrency
        {
            // Hand the leader role on, or completions would sit in the
            // kernel while a thread that could run them sleeps.
            if let Some(w) = st.waiters.pop() {
                w.release();
                st.woken += 1;
            }
        }
        wake
    }

    /// A snapshot of the counts, for monitoring and tests.
    pub(crate) fn stats(&self) -> QueueStats {
        let st = sync::lock(&self.state);
        QueueStats {
            queued: st.items.len() + st.bound.len() + usize::from(st.leader_item.is_some()),
            waiting: st.waiters.len() + usize::from(st.leader != Leader::Idle),
            running: st.running,
        }
    }
}

/// What [`Queue::lead`] came back with.
enum Led<'a, E> {
    /// The state, locked again.
    Back(sync::MutexGuard<'a, State<E>>),
    /// The item bound to the leader, and maybe more, are in `out`.
    Took,
}

/// Armed while a thread polls the kernel. Backends catch user code's
/// panics ([`Batch::catch`]), so a poll unwinds only on a failure of the
/// port's own (an allocation, a bug); the leader role is then handed on
/// all the same: left set, no thread would ever poll again and every later
/// I/O completion would be lost.
struct Lead<'a, E>(&'a Queue<E>);

impl<E> Drop for Lead<'_, E> {
    fn drop(&mut self) {
        let mut st = sync::lock(&self.0.state);
        st.leader = Leader::Idle;
        // With the leader idle, rebalance never asks for a kernel wake-up;
        // it releases a follower to take the role if one is needed.
        let _ = self.0.rebalance(&mut st);
    }
}

/// Counts of a port's queue at one moment; see
/// [`CompletionPort::stats`](crate::CompletionPort::stats).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub struct QueueStats {
    /// Completions queued and not yet dequeued.
    pub queued: usize,
    /// Threads blocked in `get` (the one polling the kernel included).
    pub waiting: usize,
    /// Threads that dequeued a completion and have not come back (C1).
    pub running: usize,
}

fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

fn expired(deadline: Option<Instant>) -> bool {
    match deadline {
        Some(d) => Instant::now() >= d,
        None => false,
    }
}

mod batch;
mod handoff;
mod seat;

pub(crate) use self::batch::Batch;
pub(crate) use self::seat::Seat;

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_tests;
