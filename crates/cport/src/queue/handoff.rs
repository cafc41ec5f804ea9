//! The hand-offs that spare a system call: the one-item [`Mailbox`] from a
//! post to a running thread coming back to `get`, the decision whether to
//! spin at all ([`Spin`]), and the bounded spin itself.

use std::time::Duration;

use super::{Leader, Led, Queue, Reactor, POLL_EVERY};
use crate::sync::{self, AtomicBool, AtomicUsize, Mutex, Ordering};

/// A one-item hand-off from [`Queue::push_one`] to a running thread
/// spinning in [`Queue::get_until`](crate::queue::Queue::get_until), taken
/// without the state lock.
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
pub(super) struct Mailbox<E> {
    pub(super) state: AtomicUsize,
    /// `State::closed`, readable without the state lock (every post and
    /// every issue checks it).
    pub(super) closed: AtomicBool,
    /// Posts queued on this port so far (see [`Spin`]). Plain atomics,
    /// outside loom's model: races only blur the guess.
    pub(super) posts: std::sync::atomic::AtomicUsize,
    pub(super) slot: Mutex<Option<E>>,
}

pub(super) const EMPTY: usize = 0;
pub(super) const WANTED: usize = 1;
pub(super) const FULL: usize = 2;

impl<E> Mailbox<E> {
    /// Closes an open mailbox before an item is queued the locked way (or
    /// the queue closes), so the spinning thread looks at the queue instead.
    /// Called under the state lock.
    pub(super) fn revoke(&self) {
        if self.state.load(Ordering::Relaxed) == WANTED {
            let _slot = sync::lock(&self.slot);
            if self.state.load(Ordering::Relaxed) == WANTED {
                self.state.store(EMPTY, Ordering::Relaxed);
            }
        }
    }

    /// Hands `item` to the spinning thread if the mailbox is open.
    pub(super) fn offer(&self, item: E) -> Result<(), E> {
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
    pub(super) fn close(&self) -> Option<E> {
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
    /// A running thread coming back takes what is queued at once, or, on an
    /// empty queue, opens the mailbox and spins until a post fills it. It
    /// keeps its running slot throughout (C2: giving it up and taking it
    /// back would leave the count where it is), so the concurrency count
    /// needs no update either way.
    pub(super) fn handoff<R: Reactor<E> + ?Sized>(
        &self,
        reactor: &R,
        max: usize,
        out: &mut impl Extend<E>,
    ) -> Handoff {
        {
            let mut st = sync::lock(&self.state);
            if st.closed || st.busy() > self.concurrency {
                // Over the limit after a blocking section (C3): this thread
                // must give its slot up and wait, which the locked path does.
                return Handoff::Missed;
            }
            if st.leader == Leader::Idle && st.since_poll >= POLL_EVERY {
                // Posts alone have been feeding this thread: look at the
                // kernel once, without waiting, as the locked path does, so
                // that I/O completions are not starved by them.
                st = match self.lead(st, reactor, Some(Duration::ZERO), None, out) {
                    Ok(Led::Back(g)) => g,
                    _ => return Handoff::Missed,
                };
            }
            if !st.items.is_empty() {
                // The post came first: take it under this same lock rather
                // than unlocking and locking again on the locked path (in a
                // ping-pong this is every other hand-off). The thread keeps
                // its slot: `take` counts it once more, so give it first.
                st.running -= 1;
                self.take(st, reactor, None, max, out);
                return Handoff::Took;
            }
            if self.mailbox.state.load(Ordering::Relaxed) != EMPTY {
                // Another thread has the mailbox: the locked path decides.
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
}

/// What [`Queue::handoff`] came back with.
pub(super) enum Handoff {
    /// Items were put in the caller's `out`.
    Took,
    Closed,
    /// Nothing came: go the locked way.
    Missed,
}

/// Decides whether a thread about to sleep spins first. Spinning pays
/// where threads hand work to each other with posts (a hand-off caught by a
/// spin costs no system call on either side); on a port fed by the kernel
/// alone a running thread or the leader never finds anything that way and
/// only burns CPU and `sched_yield`s. So a thread spins while posts have
/// been arriving: within the last `IDLE` decisions the post count
/// ([`Mailbox::posts`]) moved. A second `Spin` follows the items bound to
/// followers the same way: those are what a spinning follower catches,
/// posted or reaped. (A rule based on whether spins hit was tried first:
/// once both sides of a ping-pong slept, each spin missed a partner that
/// was itself asleep, and spinning never came back.) Plain atomics, outside
/// loom's model: races only blur the guess. On a cache line of its own: the
/// deciding thread writes it, and a post should not have to fetch it.
#[derive(Default)]
#[repr(align(64))]
pub(super) struct Spin {
    /// The count as the last decision saw it.
    seen: std::sync::atomic::AtomicUsize,
    /// Decisions in a row that saw the count unmoved.
    idle: std::sync::atomic::AtomicUsize,
    /// Under loom, whether to spin (a model sets it to explore the hand-off
    /// through the mailbox; the default rule depends on timing loom cannot
    /// model).
    #[cfg(loom)]
    pub(super) forced: std::sync::atomic::AtomicBool,
}

impl Spin {
    pub(super) const IDLE: usize = 16;

    /// Decides for a thread about to wait, given the count this rule
    /// follows as it stands now.
    pub(super) fn should_spin(&self, count: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if cfg!(loom) {
            return self.forced();
        }
        // Loads first, and no write once the rule has settled on not
        // spinning: a server fed by the kernel asks on every `get`, and two
        // read-modify-writes there were 0.6 % of its samples.
        if self.seen.load(Relaxed) != count {
            self.seen.store(count, Relaxed);
            self.idle.store(0, Relaxed);
            return true;
        }
        let idle = self.idle.load(Relaxed);
        if idle >= Self::IDLE {
            return false;
        }
        self.idle.store(idle + 1, Relaxed);
        true
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
pub(super) fn spin_until(ready: impl Fn() -> bool) {
    for _ in 0..2 {
        if ready() {
            return;
        }
        loom::thread::yield_now();
    }
}

#[cfg(not(loom))]
pub(super) fn spin_until(ready: impl Fn() -> bool) {
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
