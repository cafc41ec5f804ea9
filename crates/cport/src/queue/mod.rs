//! The port's completion queue: the part of a Windows completion port that
//! Linux does not have, built in user space (LESSONS 3: one io_uring must
//! not be reaped by several threads, so the shared queue cannot be the
//! kernel's).
//!
//! # What it does
//!
//! * **FIFO items, LIFO waiters** (SEMANTICS Q2, Q3). Items leave in the
//!   order they were pushed; a blocked `get` is a [`Waiter`] on a stack,
//!   and the most recent waiter is released first.
//! * **Concurrency accounting** (C1–C3). `running` counts threads that took
//!   an item and have not come back. No waiter is released while
//!   `running >= concurrency`; a thread coming back (`returning`) gives its
//!   slot up and may take the next item at once, without blocking (C2).
//!   [`Queue::release`] and [`Queue::reenter`] bracket a blocking section
//!   (C3), and the port calls `release` when a running thread exits.
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
//!   couple of cache-line transfers and no system call.
//!
//! Nothing here knows about the kernel or about the item type, so the
//! whole protocol is model-checked with loom (`loom_tests.rs`).

use std::collections::VecDeque;
use std::mem;
use std::time::{Duration, Instant};

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
    /// with nothing, after [`wake`](Reactor::wake).
    fn wait(&self, timeout: Option<Duration>, out: &mut Vec<E>);

    /// Makes a `wait` in progress, or the next one, return soon.
    fn wake(&self);
}

/// While the queue never runs empty nobody polls the kernel; after this
/// many items are taken, the next taker looks first (tokio's event
/// interval has the same purpose and size).
const POLL_EVERY: usize = 61;

/// One thread blocked as a follower.
struct Waiter {
    cv: Condvar,
    /// Set, under the state lock, when the waiter was popped and signalled.
    notified: AtomicBool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Leader {
    /// No thread polls the kernel.
    Idle,
    /// A thread is inside [`Reactor::wait`].
    Polling,
    /// A thread is inside [`Reactor::wait`] and was asked to come out.
    Woken,
    /// A thread is inside [`Reactor::wait`] with a zero timeout: it comes
    /// back by itself, so waking it would only cost a system call on each
    /// side.
    Looking,
}

struct State<E> {
    items: VecDeque<E>,
    /// Blocked followers; the top of the stack is the most recent.
    waiters: Vec<Arc<Waiter>>,
    /// Threads that took items and have not come back (C1).
    running: usize,
    /// Followers signalled but not yet back under the lock. Counted so one
    /// item never releases two threads.
    woken: usize,
    leader: Leader,
    /// Items taken since the kernel was last polled (see `POLL_EVERY`).
    since_poll: usize,
    closed: bool,
    /// The leader's batch vector, kept to avoid an allocation per poll.
    spare: Vec<E>,
}

pub(crate) struct Queue<E> {
    concurrency: usize,
    state: Mutex<State<E>>,
    /// `state.items.len()`, stored under the lock, read without it by a
    /// thread spinning before it sleeps.
    queued: AtomicUsize,
    /// Whether spinning before sleeping has been finding work lately.
    spin: Spin,
    /// The one-item hand-off from a post to a spinning running thread.
    mailbox: Mailbox<E>,
}

/// A one-item hand-off from [`Queue::push_one`] to a running thread
/// spinning in [`Queue::get`], taken without the state lock.
///
/// `state` moves EMPTY → WANTED when a running thread finds the queue empty
/// and opens the mailbox (under the state lock, only from EMPTY, so one
/// thread at a time); WANTED → FULL when a post fills it; FULL → EMPTY when
/// the opener takes the item; WANTED → EMPTY when the opener gives up or
/// when an item is queued the locked way (the mailbox is *revoked*). Every
/// move out of WANTED or FULL happens under `slot`'s lock.
///
/// FIFO (Q3) holds because a mailed item is older than everything queued
/// after the mailbox opened: the queue was empty when it opened, and
/// whatever is queued while it is WANTED revokes it first, so no later post
/// can overtake a queued item through it.
///
/// The line also holds what every post reads or writes besides: the
/// queue's closed flag and its post count. On a line of their own they
/// would cost a post one more cache miss each.
#[repr(align(64))]
struct Mailbox<E> {
    state: AtomicUsize,
    /// `State::closed`, readable without the state lock (every post and
    /// every issue checks it).
    closed: AtomicBool,
    /// Posts queued on this port so far (see [`Spin`]). Plain atomics,
    /// outside loom's model: races only blur the guess.
    posts: std::sync::atomic::AtomicUsize,
    slot: Mutex<Option<E>>,
}

const EMPTY: usize = 0;
const WANTED: usize = 1;
const FULL: usize = 2;

impl<E> Mailbox<E> {
    /// Closes an open mailbox before an item is queued the locked way (or
    /// the queue closes), so the spinning thread looks at the queue instead.
    /// Called under the state lock.
    fn revoke(&self) {
        if self.state.load(Ordering::Relaxed) == WANTED {
            let _slot = sync::lock(&self.slot);
            if self.state.load(Ordering::Relaxed) == WANTED {
                self.state.store(EMPTY, Ordering::Relaxed);
            }
        }
    }

    /// Hands `item` to the spinning thread if the mailbox is open.
    fn offer(&self, item: E) -> Result<(), E> {
        if self.state.load(Ordering::Relaxed) != WANTED {
            return Err(item);
        }
        let mut slot = sync::lock(&self.slot);
        if self.state.load(Ordering::Relaxed) != WANTED {
            return Err(item);
        }
        *slot = Some(item);
        self.state.store(FULL, Ordering::Release);
        Ok(())
    }

    /// The opener's side, after its spin: the mailed item, or `None` when
    /// nothing came (the mailbox is closed again) or it was revoked.
    fn close(&self) -> Option<E> {
        let mut slot = sync::lock(&self.slot);
        match self.state.load(Ordering::Relaxed) {
            WANTED => {
                self.state.store(EMPTY, Ordering::Relaxed);
                None
            }
            FULL => {
                self.state.store(EMPTY, Ordering::Relaxed);
                slot.take()
            }
            _ => None,
        }
    }
}

impl<E> Queue<E> {
    /// A queue that lets at most `concurrency` threads run (at least 1).
    pub(crate) fn new(concurrency: usize) -> Self {
        Queue {
            concurrency: concurrency.max(1),
            state: Mutex::new(State {
                items: VecDeque::new(),
                waiters: Vec::new(),
                running: 0,
                woken: 0,
                leader: Leader::Idle,
                since_poll: 0,
                closed: false,
                spare: Vec::new(),
            }),
            queued: AtomicUsize::new(0),
            spin: Spin::default(),
            mailbox: Mailbox {
                state: AtomicUsize::new(EMPTY),
                closed: AtomicBool::new(false),
                posts: std::sync::atomic::AtomicUsize::new(0),
                slot: Mutex::new(None),
            },
        }
    }

    pub(crate) fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Dequeues up to `max` items (at least one) into `out`.
    ///
    /// `returning` says the calling thread is running on this queue (took an
    /// item earlier and has not released it): its slot is given up first,
    /// so it can take the next item at once (C2). On `Ok` the caller is
    /// running, one slot whatever `max` was (as with
    /// GetQueuedCompletionStatusEx).
    pub(crate) fn get<R: Reactor<E> + ?Sized>(
        &self,
        reactor: &R,
        returning: bool,
        max: usize,
        timeout: Option<Duration>,
        out: &mut impl Extend<E>,
    ) -> Result<(), GetError> {
        let max = max.max(1);
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut flushed = false;
        let mut spun = timeout == Some(Duration::ZERO);
        if returning && !spun && self.spin.should_spin(&self.mailbox.posts) {
            spun = true;
            match self.handoff(reactor, max, out) {
                Handoff::Took => return Ok(()),
                Handoff::Closed => return Err(GetError::Closed),
                Handoff::Missed => {}
            }
        }
        let mut st = sync::lock(&self.state);
        if returning {
            st.running -= 1;
        }
        loop {
            if st.closed {
                return Err(GetError::Closed);
            }
            // Items promised to released followers (`woken`) are theirs
            // (Q2: the most recent waiter gets the next item, not whichever
            // thread reaches the lock first); take only what is left.
            if st.items.len() > st.woken && st.running < self.concurrency {
                if st.leader == Leader::Idle && st.since_poll >= POLL_EVERY {
                    // The queue has not been empty for a while, so nobody
                    // has polled the kernel: look once, without waiting, so
                    // that a stream of posts or of completions made at issue
                    // cannot starve I/O completions waiting in the kernel.
                    st = self.poll(st, reactor, Some(Duration::ZERO));
                    if st.closed {
                        return Err(GetError::Closed);
                    }
                    continue;
                }
                st.running += 1;
                self.take(st, reactor, max, out);
                return Ok(());
            }
            if st.items.is_empty() && !spun {
                // Before sleeping (in the kernel or on a condvar), watch the
                // queue for a moment: a post or completion from a thread
                // that is running is then taken without a wake-up system
                // call on either side, which is what makes a cross-thread
                // hand-off as cheap as a channel's. Bounded to a few
                // microseconds, and yields to the thread that may post.
                // Only while spinning pays off here (see `Spin`): on a port
                // fed by the kernel alone it would be pure cost.
                spun = true;
                if self.spin.should_spin(&self.mailbox.posts) {
                    drop(st);
                    spin_until(|| self.queued.load(Ordering::Relaxed) > 0);
                    st = sync::lock(&self.state);
                    continue;
                }
            }
            if st.items.is_empty() && st.leader == Leader::Idle {
                // Lead: poll the kernel ourselves.
                st = self.poll(st, reactor, remaining(deadline));
                // A thread that polls has submitted what it deferred.
                flushed = true;
                if st.closed {
                    return Err(GetError::Closed);
                }
                if st.items.is_empty() && expired(deadline) {
                    return self.leave_empty(st, reactor, GetError::Timeout);
                }
                continue;
            }
            if expired(deadline) {
                return self.leave_empty(st, reactor, GetError::Timeout);
            }
            if !flushed {
                // About to sleep: submit what this thread deferred, or it
                // would wait on operations the kernel has not seen.
                drop(st);
                reactor.flush();
                flushed = true;
                st = sync::lock(&self.state);
                continue;
            }
            let w = Arc::new(Waiter {
                cv: Condvar::new(),
                notified: AtomicBool::new(false),
            });
            st.waiters.push(w.clone());
            st = sync::wait(&w.cv, st, remaining(deadline));
            if w.notified.load(Ordering::Relaxed) {
                st.woken -= 1;
            } else if let Some(i) = st.waiters.iter().rposition(|x| Arc::ptr_eq(x, &w)) {
                // Timed out (or woke spuriously): leave the stack; the loop
                // decides between trying again and reporting the timeout.
                st.waiters.remove(i);
            }
        }
    }

    /// Moves up to `max` of the items nobody was released for into `out`
    /// (the caller counts itself running), then restores the invariants and
    /// unlocks.
    fn take<R: Reactor<E> + ?Sized>(
        &self,
        mut st: sync::MutexGuard<'_, State<E>>,
        reactor: &R,
        max: usize,
        out: &mut impl Extend<E>,
    ) {
        let n = max.min(st.items.len() - st.woken);
        out.extend(st.items.drain(..n));
        self.queued.store(st.items.len(), Ordering::Relaxed);
        st.since_poll += n;
        let wake = self.rebalance(&mut st);
        drop(st);
        if wake {
            reactor.wake();
        }
    }

    /// A running thread coming back takes what is queued at once, or, on an
    /// empty queue, opens the mailbox and spins until a post fills it. It
    /// keeps its running slot throughout (C2: giving it up and taking it
    /// back would leave the count where it is), so the concurrency count
    /// needs no update either way.
    fn handoff<R: Reactor<E> + ?Sized>(
        &self,
        reactor: &R,
        max: usize,
        out: &mut impl Extend<E>,
    ) -> Handoff {
        {
            let mut st = sync::lock(&self.state);
            if st.closed || st.running > self.concurrency {
                // Over the limit after a blocking section (C3): this thread
                // must give its slot up and wait, which the locked path does.
                return Handoff::Missed;
            }
            if st.leader == Leader::Idle && st.since_poll >= POLL_EVERY {
                // Posts alone have been feeding this thread: look at the
                // kernel once, without waiting, as the locked path does, so
                // that I/O completions are not starved by them.
                st = self.poll(st, reactor, Some(Duration::ZERO));
                if st.closed {
                    return Handoff::Missed;
                }
            }
            if st.items.len() > st.woken {
                // The post came first: take it under this same lock rather
                // than unlocking and locking again on the locked path (in a
                // ping-pong this is every other hand-off).
                self.take(st, reactor, max, out);
                return Handoff::Took;
            }
            if !st.items.is_empty() || self.mailbox.state.load(Ordering::Relaxed) != EMPTY {
                // Items promised to released followers, or another thread
                // has the mailbox: the locked path decides.
                return Handoff::Missed;
            }
            self.mailbox.state.store(WANTED, Ordering::Relaxed);
            // The item taken through the mailbox counts towards the next
            // look at the kernel, as one taken from the queue does.
            st.since_poll += 1;
        }
        spin_until(|| self.mailbox.state.load(Ordering::Relaxed) != WANTED);
        match self.mailbox.close() {
            Some(item) => {
                if self.mailbox.closed.load(Ordering::Acquire) {
                    // Posted as the port closed: dropped like what close
                    // found queued.
                    drop(item);
                    Handoff::Closed
                } else {
                    out.extend(Some(item));
                    Handoff::Took
                }
            }
            None => Handoff::Missed,
        }
    }

    /// Polls the kernel as the leader, for at most `timeout`, and queues
    /// what it reaped. Called with the leader role idle; returns with the
    /// state locked again and the role idle. On a queue closed meanwhile,
    /// the reaped completions are dropped (outside the lock: they may own
    /// descriptors), never queued where nobody will take them.
    fn poll<'a, R: Reactor<E> + ?Sized>(
        &'a self,
        mut st: sync::MutexGuard<'a, State<E>>,
        reactor: &R,
        timeout: Option<Duration>,
    ) -> sync::MutexGuard<'a, State<E>> {
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
        if st.closed {
            drop(st);
            drop(batch);
            return sync::lock(&self.state);
        }
        if !batch.is_empty() {
            self.mailbox.revoke();
        }
        st.items.extend(batch.drain(..));
        self.queued.store(st.items.len(), Ordering::Relaxed);
        st.spare = batch;
        st
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

    /// Queues `items` (drained) behind what is queued.
    ///
    /// With `release` a waiter is released for them when the concurrency
    /// limit allows (C1). Without it nobody is woken: the caller is a
    /// running thread that will come back and take them itself (C2); see
    /// `CompletionPort` for when the port chooses that.
    pub(crate) fn push<R: Reactor<E> + ?Sized>(
        &self,
        reactor: &R,
        items: &mut Vec<E>,
        release: bool,
    ) {
        if items.is_empty() {
            return;
        }
        let mut st = sync::lock(&self.state);
        if st.closed {
            // Dropped outside the lock: items may own descriptors.
            drop(st);
            items.clear();
            return;
        }
        self.mailbox.revoke();
        st.items.extend(items.drain(..));
        self.queued.store(st.items.len(), Ordering::Relaxed);
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
        self.queued.store(st.items.len(), Ordering::Relaxed);
        let wake = self.rebalance(&mut st);
        drop(st);
        if wake {
            reactor.wake();
        }
        Ok(())
    }

    /// A running thread stops running without coming back through `get`:
    /// it entered a blocking section (C3) or exited.
    pub(crate) fn release<R: Reactor<E> + ?Sized>(&self, reactor: &R) {
        let mut st = sync::lock(&self.state);
        st.running -= 1;
        let wake = self.rebalance(&mut st);
        drop(st);
        if wake {
            reactor.wake();
        }
    }

    /// A thread that called [`release`](Queue::release) for a blocking
    /// section runs again. The count may exceed the limit for a while (C3);
    /// no waiter is released until it drops below.
    pub(crate) fn reenter(&self) {
        sync::lock(&self.state).running += 1;
    }

    /// Closes the queue: every waiter, and every later `get`, returns
    /// [`GetError::Closed`]. Returns what was queued, for the caller to
    /// drop outside the lock.
    pub(crate) fn close<R: Reactor<E> + ?Sized>(&self, reactor: &R) -> Vec<E> {
        let mut st = sync::lock(&self.state);
        st.closed = true;
        self.mailbox.closed.store(true, Ordering::Release);
        // A post that reads `closed` before this store may still fill the
        // mailbox; its opener sees `closed` after taking it and drops it.
        self.mailbox.revoke();
        let waiters = mem::take(&mut st.waiters);
        for w in &waiters {
            w.notified.store(true, Ordering::Relaxed);
            w.cv.notify_one();
        }
        st.woken += waiters.len();
        let polling = st.leader != Leader::Idle;
        let items = st.items.drain(..).collect();
        self.queued.store(0, Ordering::Relaxed);
        drop(st);
        if polling {
            reactor.wake();
        }
        items
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.mailbox.closed.load(Ordering::Acquire)
    }

    /// Restores the invariants after any change: queued items that a thread
    /// may run have a released waiter each; the kernel has a poller whenever
    /// what it reaps could run. Returns true when the leader must be woken
    /// through the reactor (done by the caller, after unlocking).
    fn rebalance(&self, st: &mut State<E>) -> bool {
        // C1 and Q2: release the most recent waiters, one per queued item,
        // while the running count allows.
        while st.items.len() > st.woken && st.running + st.woken < self.concurrency {
            match st.waiters.pop() {
                Some(w) => {
                    w.notified.store(true, Ordering::Relaxed);
                    w.cv.notify_one();
                    st.woken += 1;
                }
                None => break,
            }
        }
        let runnable = st.items.len() > st.woken && st.running + st.woken < self.concurrency;
        if runnable && st.leader == Leader::Polling {
            // Nobody in user space to take it: the leader must come out.
            st.leader = Leader::Woken;
            return true;
        }
        if st.leader == Leader::Idle
            && st.items.is_empty()
            && st.woken == 0
            && st.running < self.concurrency
        {
            // Hand the leader role on, or completions would sit in the
            // kernel while a thread that could run them sleeps.
            if let Some(w) = st.waiters.pop() {
                w.notified.store(true, Ordering::Relaxed);
                w.cv.notify_one();
                st.woken += 1;
            }
        }
        false
    }

    /// A snapshot of the counts, for monitoring and tests.
    pub(crate) fn stats(&self) -> QueueStats {
        let st = sync::lock(&self.state);
        QueueStats {
            queued: st.items.len(),
            waiting: st.waiters.len() + usize::from(st.leader != Leader::Idle),
            running: st.running,
        }
    }
}

/// What [`Queue::handoff`] came back with.
enum Handoff {
    /// Items were put in the caller's `out`.
    Took,
    Closed,
    /// Nothing came: go the locked way.
    Missed,
}

/// Armed while a thread polls the kernel. If the poll unwinds (a user's
/// `Clone` or `Drop` of a per-operation value panicked inside the
/// backend), the leader role is handed on: left set, no thread would ever
/// poll again and every later I/O completion would be lost.
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

/// Decides whether a thread about to sleep spins first. Spinning pays
/// where threads hand work to each other with posts (a hand-off caught by a
/// spin costs no system call on either side); on a port fed by the kernel
/// alone it never finds anything and only burns CPU and `sched_yield`s. So
/// a thread spins while posts have been arriving: within the last `IDLE`
/// decisions the post count ([`Mailbox::posts`]) moved. (A rule based on
/// whether spins hit was tried first: once both sides of a ping-pong slept,
/// each spin missed a partner that was itself asleep, and spinning never
/// came back.) Plain atomics, outside loom's model: races only blur the
/// guess. On a cache line of its own: the deciding thread writes it, and a
/// post should not have to fetch it.
#[derive(Default)]
#[repr(align(64))]
struct Spin {
    /// The post count as the last decision saw it.
    seen: std::sync::atomic::AtomicUsize,
    /// Decisions in a row that saw no new post.
    idle: std::sync::atomic::AtomicUsize,
    /// Under loom, whether to spin (a model sets it to explore the hand-off
    /// through the mailbox; the default rule depends on timing loom cannot
    /// model).
    #[cfg(loom)]
    forced: std::sync::atomic::AtomicBool,
}

impl Spin {
    const IDLE: usize = 16;

    fn should_spin(&self, posts: &std::sync::atomic::AtomicUsize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if cfg!(loom) {
            return self.forced();
        }
        let posts = posts.load(Relaxed);
        if self.seen.swap(posts, Relaxed) != posts {
            self.idle.store(0, Relaxed);
            return true;
        }
        self.idle.fetch_add(1, Relaxed) < Self::IDLE
    }

    #[cfg(loom)]
    fn forced(&self) -> bool {
        self.forced.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[cfg(not(loom))]
    fn forced(&self) -> bool {
        false
    }
}

/// Spins, then yields, until `ready` holds or about as long as a
/// sleep-and-wake would have cost (the shape of crossbeam's backoff: 127
/// pauses, then a few yields).
#[cfg(loom)]
fn spin_until(ready: impl Fn() -> bool) {
    for _ in 0..2 {
        if ready() {
            return;
        }
        loom::thread::yield_now();
    }
}

#[cfg(not(loom))]
fn spin_until(ready: impl Fn() -> bool) {
    // Looks after every pause, not after each doubling: the look is a
    // shared read of a line nobody writes until work arrives, and a
    // doubling step of 64 pauses would add up to a microsecond of latency
    // to the hand-off it exists for.
    for _ in 0..127 {
        std::hint::spin_loop();
        if ready() {
            return;
        }
    }
    for _ in 0..4 {
        std::thread::yield_now();
        if ready() {
            return;
        }
    }
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

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_tests;
