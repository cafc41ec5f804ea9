//! Reaping: the leader's enter, the CQEs it drains, and what each makes of
//! its operation (a completion, a continuation, a re-arm, the next request
//! of a lane).

use std::io;
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use io_uring::types::{SubmitArgs, Timespec};

use super::op::{self, Extra, Io, Next, OpState};
use super::{op_id, setup, user_data, Driver, State, CANCEL, RECV_LANE, WAKE};
use crate::completion::{Completion, Handle, OpId};
use crate::sys::error::aborted;
use crate::sys::Ready;

impl<T> Driver<T> {
    /// Whether a ring that defers its task work has completions waiting
    /// for an enter.
    fn taskrun_pending(&self) -> bool {
        if !self.deferred_taskrun {
            return false;
        }
        let _st = self.lock();
        // SAFETY:
        // - the state lock is held, and every SubmissionQueue is made under
        //   it: this one is the only one.
        unsafe { self.ring.submission_shared() }.taskrun()
    }

    /// Whether the kernel takes IORING_RECV_MULTISHOT, as far as known.
    pub(super) fn recv_multishot(&self) -> bool {
        self.multishot_recv.load(Ordering::Relaxed)
    }

    /// Drains the CQ into `out`; then refills the buffer ring as far as
    /// deliveries allow and re-arms the receives that met it empty.
    pub(super) fn reap(&self, st: &mut State<T>, out: &mut Ready<T>) {
        // Bounded: a CQ refilled as fast as it drains must not keep the
        // leader (and the lock) forever.
        for _ in 0..4 {
            // SAFETY:
            // - the state lock is held, and every CompletionQueue is made
            //   under it: this one is the only one.
            let mut cq = unsafe { self.ring.completion_shared() };
            if cq.is_empty() {
                break;
            }
            for cqe in &mut cq {
                self.on_cqe(st, cqe.user_data(), cqe.result(), cqe.flags(), out);
            }
        }
        let credit = self.take_count(&self.credit, Ordering::AcqRel);
        if credit > 0 {
            // Credit beyond the empty slots is dropped: every emptied slot
            // earns its own when its completion is dequeued.
            st.bufring.refill(credit, &mut self.pool.lock());
        }
        st.bufring.publish();
        if st.rearm.is_empty() {
            return;
        }
        let mut rearm = mem::take(&mut st.rearm);
        // A starved receive asked to stop ends now, buffers or not: a
        // cancel or a close must not wait for the pool to refill.
        rearm.retain(|&id| {
            let stopping = self.stopping(st, id);
            if stopping {
                self.finish(st, id, Err(aborted()), Extra::None, out);
            }
            !stopping
        });
        if !rearm.is_empty() && st.bufring.grow(&mut self.pool.lock()) > 0 {
            // The ring ran dry under these receives while it held fewer
            // buffers than the pool allows: now it holds twice as many.
            st.bufring.publish();
            log::debug!(target: "cport", "io_uring: the buffer ring now uses {} buffers", st.bufring.in_use());
        }
        // As many as the ring has buffers, oldest first. Each of these
        // receives met the ring empty with data waiting, so each takes a
        // buffer (or meets the ring empty again) as soon as it is
        // submitted, and its completion brings the next pass, which re-arms
        // the next ones. Re-arming every starved receive for a few buffers
        // would make all but a few fail again at once: with 500 connections
        // on a pool of 512 that was two failed requests per echoed message.
        let n = st.bufring.available().min(rearm.len());
        if n == 0 && !rearm.is_empty() {
            // Re-armed when a delivery lets the ring be refilled.
            self.starved.store(true, Ordering::Release);
        } else {
            self.starved.store(false, Ordering::Release);
        }
        for id in rearm.drain(..n) {
            self.again(st, id, out);
        }
        rearm.append(&mut st.rearm);
        st.rearm = rearm;
    }

    /// Whether operation `id` was asked to stop (cancelled, its handle
    /// closing, the port closed): its next step is its final completion.
    fn stopping(&self, st: &State<T>, id: OpId) -> bool {
        let op = match st.ops.get(id.index, id.generation) {
            Some(op) => op,
            None => return false,
        };
        let closing = st
            .handles
            .get(op.handle.index, op.handle.generation)
            .map_or(true, |h| h.closing);
        op.cancelled || closing || st.closed
    }

    pub(super) fn on_cqe(
        &self,
        st: &mut State<T>,
        user_data: u64,
        res: i32,
        flags: u32,
        out: &mut Ready<T>,
    ) {
        match user_data {
            WAKE => {
                self.wake_pending.store(false, Ordering::Release);
                st.wake_inflight = false;
                if res < 0 && res != -libc::ECANCELED {
                    log::warn!(target: "cport", "io_uring: wake read failed: {}", io::Error::from_raw_os_error(-res));
                }
                if !st.closed {
                    let sqe = setup::wake_read(&self.wake_fd, &st.wake_buf);
                    self.push_uncounted(st, sqe);
                    st.wake_inflight = true;
                }
            }
            CANCEL => {
                // ENOENT: finished first; EALREADY: running, will finish.
                if res < 0 && res != -libc::ENOENT && res != -libc::EALREADY {
                    log::debug!(target: "cport", "io_uring: cancel failed: {}", io::Error::from_raw_os_error(-res));
                }
            }
            _ => self.on_op_cqe(st, op_id(self.port_id, user_data), res, flags, out),
        }
    }

    pub(super) fn on_op_cqe(
        &self,
        st: &mut State<T>,
        id: OpId,
        res: i32,
        flags: u32,
        out: &mut Ready<T>,
    ) {
        let closed = st.closed;
        let State {
            ops,
            handles,
            bufring,
            ..
        } = st;
        let op = match ops.get_mut(id.index, id.generation) {
            Some(op) => op,
            None => {
                log::error!(target: "cport", "io_uring: CQE for unknown operation {id:?} (res {res})");
                return;
            }
        };
        let closing = handles
            .get(op.handle.index, op.handle.generation)
            .map_or(true, |h| h.closing);
        let stop = op.cancelled || closing || closed;
        if res == -libc::ECANCELED && !stop && !io_uring::cqueue::more(flags) {
            // Nobody here asked for this: the kernel cancels a thread's
            // requests when that thread exits, and any thread may issue on
            // a port. Issue it again from this (reaping) thread.
            if let Some(bid) = io_uring::cqueue::buffer_select(flags) {
                bufring.give_back(bid);
            }
            op::lost_to_exit(&mut op.io);
            self.again(st, id, out);
            return;
        }
        if res == -libc::EINVAL
            && matches!(op.io, Io::RecvMulti)
            && self.multishot_recv.swap(false, Ordering::Relaxed)
        {
            // A kernel before 6.0 refuses IORING_RECV_MULTISHOT: from now
            // on the port's multishot receives are single-shot ones issued
            // again after each arrival.
            log::info!(target: "cport", "io_uring: no multishot receive here (Linux 6.0); re-issuing single receives");
            self.again(st, id, out);
            return;
        }
        let step = op.io.on_cqe(op.fd, res, flags, stop, bufring);
        if let Some((result, extra)) = step.event {
            let clone = match op.multishot {
                Some(clone) => clone,
                None => unreachable!("a multishot event from a single-shot operation"),
            };
            // User code, inside the reap: a panic is held in `out` until
            // what this pass reaped is queued. The event it was cloned for
            // is lost with it (an accepted connection is closed), nothing
            // else (LESSONS 12).
            let value = match out.catch(|| clone(&op.value)) {
                Some(v) => v,
                None => {
                    drop(extra);
                    self.after_cqe(st, id, step.next, out);
                    return;
                }
            };
            out.push(Completion {
                key: op.key,
                kind: op.kind,
                op: Some(id),
                handle: Some(op.handle),
                result,
                value,
                payload: op::extra_payload(extra),
                more: true,
                seq: op.seq,
            });
            op.seq += 1;
        }
        self.after_cqe(st, id, step.next, out);
    }

    /// Does what a CQE's step says comes next for operation `id`.
    pub(super) fn after_cqe(&self, st: &mut State<T>, id: OpId, next: Next, out: &mut Ready<T>) {
        match next {
            Next::Wait => {}
            Next::Again => self.again(st, id, out),
            Next::Rearm => st.rearm.push(id),
            Next::Done(result, extra) => self.finish(st, id, result, extra, out),
        }
    }

    /// Submits the next request of operation `id`, unless it was asked to
    /// stop meanwhile (then it ends aborted).
    pub(super) fn again(&self, st: &mut State<T>, id: OpId, out: &mut Ready<T>) {
        if self.stopping(st, id) {
            self.finish(st, id, Err(aborted()), Extra::None, out);
            return;
        }
        let op = match st.ops.get_mut(id.index, id.generation) {
            Some(op) => op,
            None => return,
        };
        // SAFETY:
        // - the operation's previous request ended (its CQE was reaped
        //   without F_MORE), or it never had one (parked in its lane): none
        //   is in flight;
        // - the entry points into the operation, which stays in the slab
        //   until its final CQE.
        let sqe = unsafe {
            op.io.sqe(
                op.fd,
                op.fixed,
                self.pool_buffer_size,
                self.recv_multishot(),
            )
        }
        .user_data(user_data(id));
        self.push(st, sqe);
    }

    /// Ends operation `id` with its one final completion.
    pub(super) fn finish(
        &self,
        st: &mut State<T>,
        id: OpId,
        result: io::Result<usize>,
        extra: Extra,
        out: &mut Ready<T>,
    ) {
        let op = match st.ops.remove(id.index, id.generation) {
            Some(op) => op,
            None => return,
        };
        let OpState {
            handle,
            key,
            kind,
            value,
            io,
            lane,
            parked,
            seq,
            ..
        } = op;
        let payload = io.into_payload(extra, &mut st.spares);
        let mut result = result;
        let mut next_in = None;
        if let Some(h) = st.handles.get_mut(handle.index, handle.generation) {
            if lane.is_some() {
                // A stream operation: after a reset the kernel reads end of
                // file and fails sends with EPIPE; the port keeps the reset
                // (O5). An operation issued after it reaches the kernel and
                // is settled here too.
                result = h.broken.settle(lane == Some(RECV_LANE), result);
            }
            if let Some(i) = h.ops.iter().position(|&o| o == id) {
                h.ops.swap_remove(i);
            }
            if let Some(l) = lane {
                if parked {
                    h.lanes[l].waiting.retain(|&o| o != id);
                } else {
                    h.lanes[l].busy = false;
                    next_in = Some(l);
                }
            }
            if h.closing && h.ops.is_empty() {
                if let Some(h) = st.handles.remove(handle.index, handle.generation) {
                    self.bury(st, handle.index, h);
                }
            }
        }
        out.push(Completion {
            key,
            kind,
            op: Some(id),
            handle: Some(handle),
            result,
            value,
            payload,
            more: false,
            seq,
        });
        if let Some(l) = next_in {
            self.start_next(st, handle, l, out);
        }
    }

    /// Issues the first operation waiting in lane `l` of `handle`.
    pub(super) fn start_next(
        &self,
        st: &mut State<T>,
        handle: Handle,
        l: usize,
        out: &mut Ready<T>,
    ) {
        let id = match st.handles.get_mut(handle.index, handle.generation) {
            Some(h) => match h.lanes[l].waiting.pop_front() {
                Some(id) => {
                    h.lanes[l].busy = true;
                    id
                }
                None => return,
            },
            None => return,
        };
        if let Some(op) = st.ops.get_mut(id.index, id.generation) {
            op.parked = false;
        }
        // Ends it aborted instead if it was asked to stop meanwhile.
        self.again(st, id, out);
    }

    pub(super) fn wait_inner(&self, timeout: Option<Duration>, out: &mut Ready<T>) {
        // From here to the last `submit_pending` below, a flushing thread
        // leaves its SQEs to this one (see `flush_inner`). Cleared on the
        // way out however it ends: left set by an unwinding leader, it
        // would have flushes leave their SQEs to nobody.
        let leading = Leading::start(&self.leading, self.one_thread);
        if self.backlogged.load(Ordering::Acquire) {
            let mut st = self.lock();
            self.drain_backlog(&mut st);
        }
        // This enter submits every SQE published before the swap (acquire
        // pairs with `push`), so their counts are taken; a push counted after
        // the swap is submitted by its own thread, or by the swap at the end.
        let deferred = self.take_count(&self.unsubmitted, Ordering::AcqRel);
        let submitter = self.ring.submitter();
        let r = match timeout {
            // A look with nothing to submit needs no system call: CQEs are
            // posted to the shared ring by the kernel on its own (unless it
            // defers its task work, and some waits: `submit` then enters
            // for it).
            Some(d) if d.is_zero() && deferred == 0 && !self.taskrun_pending() => Ok(0),
            Some(d) if d.is_zero() => submitter.submit(),
            // Beyond a year is "forever"; it also keeps tv_sec in range.
            Some(d) if d < Duration::from_secs(365 * 24 * 3600) => {
                let ts = Timespec::from(d);
                submitter.submit_with_args(1, &SubmitArgs::new().timespec(&ts))
            }
            _ => submitter.submit_and_wait(1),
        };
        if let Err(e) = r {
            match e.raw_os_error() {
                // Timed out, interrupted, or the CQ is full (EBUSY): reap.
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => log::warn!(target: "cport", "io_uring_enter failed: {e}"),
            }
        }
        let mut st = self.lock();
        self.reap(&mut st, out);
        self.unlock(st);
        // Continuations and re-arms pushed while reaping go now, with what
        // other threads left to this one: the leader may run a completion
        // for a long time before it enters again. The store comes first
        // (SeqCst, against `flush_inner`'s push-then-load): a flush that
        // saw `leading` has its count taken by the swap that follows.
        drop(leading);
        if self.one_thread {
            // Nobody else submits or flushes here, and this thread's next
            // `get` enters before it waits, taking these with it: at 50
            // connections × 64 KiB, where each echo is four sends queued on
            // its stream, an enter of their own was 1.4–2.7 of the 2.9–5.6
            // enters per message, against uring-echo's 3.4–4.0
            // (bench/runs/2026-12-07/local-enters).
            return;
        }
        self.submit_pending();
    }
}

/// `Driver::leading` for the span of a leader's `wait`. Not set on a
/// local port, where no other thread flushes: each SeqCst store is a
/// locked instruction.
struct Leading<'a>(Option<&'a AtomicBool>);

impl<'a> Leading<'a> {
    fn start(flag: &'a AtomicBool, one_thread: bool) -> Leading<'a> {
        if one_thread {
            return Leading(None);
        }
        flag.store(true, Ordering::SeqCst);
        Leading(Some(flag))
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if let Some(flag) = self.0 {
            flag.store(false, Ordering::SeqCst);
        }
    }
}
