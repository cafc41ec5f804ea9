//! The submission queue: pushing SQEs under the state lock, the backlog
//! for an SQ the kernel would not empty, and the enters that hand them over.

use std::sync::atomic::Ordering;

use io_uring::{opcode, squeue};

use super::{user_data, Driver, State, CANCEL};
use crate::completion::OpId;

impl<T> Driver<T> {
    /// Pushes one SQE into the SQ. `_locked` proves the state lock is held.
    pub(super) fn try_push(&self, _locked: &mut State<T>, sqe: &squeue::Entry) -> bool {
        // SAFETY:
        // - the state lock is held (the caller has `&mut State` from its
        //   guard, or `&mut self` in `Drop`), and every SubmissionQueue is
        //   made under it: this one is the only one;
        // - every pointer in the entry is into memory owned by an operation
        //   in the slab (or the driver's wake buffer) until its last CQE.
        unsafe { self.ring.submission_shared().push(sqe) }.is_ok()
    }

    /// Queues `sqe` for the kernel, counted for `flush`.
    pub(super) fn push(&self, st: &mut State<T>, sqe: squeue::Entry) {
        self.push_uncounted(st, sqe);
        // Counted only once published: a leader whose swap takes this count
        // (acquire) then enters with the SQE visible in the tail. Counting
        // first would let it enter without the SQE while the pusher's own
        // swap finds 0 and skips the submit, stranding the SQE.
        self.count_up(&self.unsubmitted, 1, Ordering::SeqCst);
    }

    /// Queues `sqe`; the next `io_uring_enter` of any kind takes it.
    pub(super) fn push_uncounted(&self, st: &mut State<T>, sqe: squeue::Entry) {
        if st.backlog.is_empty() {
            if self.try_push(st, &sqe) {
                return;
            }
            // Full. The kernel copies SQEs when it takes them, so one submit
            // makes room (done under the lock: rare, and it must not race
            // with the retry).
            if let Err(e) = self.ring.submit() {
                log::debug!(target: "cport", "io_uring: submit to make room failed: {e}");
            }
            if self.try_push(st, &sqe) {
                return;
            }
        }
        // The kernel would not take SQEs (out of memory?): keep them in
        // order and get the leader to retry in its enter.
        st.backlog.push_back(sqe);
        self.backlogged.store(true, Ordering::Release);
        self.wake_inner();
    }

    pub(super) fn drain_backlog(&self, st: &mut State<T>) {
        while let Some(sqe) = st.backlog.pop_front() {
            if !self.try_push(st, &sqe) {
                st.backlog.push_front(sqe);
                return;
            }
        }
        self.backlogged.store(false, Ordering::Release);
    }

    /// Hands everything pushed so far to the kernel, if anything was.
    pub(super) fn submit_pending(&self) {
        if self.take_count(&self.unsubmitted, Ordering::SeqCst) == 0 {
            // Nothing, or another thread's enter took it (an enter submits
            // every published SQE, ours included).
            return;
        }
        if let Err(e) = self.ring.submit() {
            // EAGAIN/EBUSY: the SQEs stay in the SQ; the leader retries in
            // its enter, so make it come round.
            log::debug!(target: "cport", "io_uring: submit failed: {e}");
            self.count_up(&self.unsubmitted, 1, Ordering::Release);
            self.wake_inner();
        }
    }

    /// Asks the kernel to cancel `id` (its CQE is ignored).
    pub(super) fn push_cancel(&self, st: &mut State<T>, id: OpId) {
        if let Some(op) = st.ops.get_mut(id.index, id.generation) {
            op.cancelled = true;
        }
        let sqe = opcode::AsyncCancel::new(user_data(id))
            .build()
            .user_data(CANCEL)
            .flags(squeue::Flags::SKIP_SUCCESS);
        self.push(st, sqe);
    }

    /// Hands what was deferred to the kernel, or to a leader that will.
    ///
    /// A request's task work runs on the thread that submitted it, under
    /// the ring's `uring_lock`, as does every submission. With several
    /// threads submitting, they spin on that lock in the kernel (15 % of
    /// the samples of two workers on two cores, `bench/runs/2026-12-05/
    /// profile-two-core`). So while a leader is in `wait`, the SQEs are
    /// left to it: it is woken if it sleeps, and its last look at
    /// `unsubmitted` submits them. The kernel work then stays on one
    /// thread at a time. Otherwise this thread submits them itself, since
    /// nobody else may enter soon.
    pub(super) fn flush_inner(&self) {
        if self.unsubmitted.load(Ordering::Acquire) == 0 {
            return;
        }
        if self.backlogged.load(Ordering::Acquire) {
            let mut st = self.lock();
            self.drain_backlog(&mut st);
        }
        // SeqCst, against the leader's store-then-swap in `wait_inner`
        // (this thread's push counted with SeqCst came before): either the
        // leader's swap takes the count, or this load sees `false`.
        if self.leading.load(Ordering::SeqCst) {
            self.wake_inner();
        } else {
            self.submit_pending();
        }
    }
}
