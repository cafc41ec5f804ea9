//! The io_uring backend: a completion port on a kernel that completes
//! operations itself.
//!
//! # How the model maps onto io_uring
//!
//! A Windows completion port is a kernel queue that many threads issue to
//! and dequeue from. An io_uring is a pair of rings meant for one submitter
//! and one completer (LESSONS 3), so the port's queue lives in user space
//! (`crate::queue`) and this backend is its kernel side: **one ring per
//! port**, fed by every thread and reaped by one.
//!
//! * **Submission.** Pushing SQEs and the two slabs (handles, operations)
//!   are guarded by one mutex, the *state lock*. The SQ is touched through
//!   `submission_shared()` only while that lock is held, which is what makes
//!   the shared borrow exclusive. The `io_uring_enter` that hands SQEs to
//!   the kernel needs no lock: the kernel reads the published SQ tail and
//!   serialises concurrent enters itself, so a submitter never blocks
//!   another in the kernel. No SQPOLL, SINGLE_ISSUER or DEFER_TASKRUN: any
//!   thread submits. A local port (`one_thread`: a `LocalPort`, whose
//!   ring has SINGLE_ISSUER and DEFER_TASKRUN) has one thread only: its
//!   state lock and the pool's are cells of that thread
//!   (`crate::sys::lock`), and its counters (`unsubmitted`, `credit`)
//!   count with loads and stores, so its path runs no locked instruction.
//! * **Task work.** A request's task work (which posts its CQE: a receive
//!   that found no data runs there once data comes) runs on the thread
//!   that submitted it. If that thread sleeps (on the queue's condvar, or
//!   in the kernel), it is woken to run the work. If it is running a
//!   handler, the kernel interrupts it to run the work at once, unless the
//!   ring has `COOP_TASKRUN`: then the completion waits for that thread's
//!   next system call, or for the next timer tick if the handler computes
//!   without one (up to 4 ms at HZ=250; the kernel's `__set_notify_signal`
//!   wakes a sleeper either way). The interrupt (a rescheduling IPI)
//!   costs more than it seems in a virtual machine: the echo server at
//!   500 connections × 4 KiB × 16 in flight on one core took 0.03 of them
//!   per message and 2.58 µs of CPU per message, against none and 2.03 µs
//!   with `COOP_TASKRUN` (medians of 5,
//!   `bench/runs/2026-12-06/coop-taskrun`). The ring has `COOP_TASKRUN`
//!   when the port batches submissions (`Builder::batch_submissions`),
//!   whose contract already is that handlers return promptly, and when a
//!   `LocalPort` falls back to a shared ring (its one thread takes every
//!   completion anyway), and not otherwise, where a handler may compute
//!   while other workers sit idle and IOCP would hand its completion to one
//!   of them at once.
//! * **Deferred submission** (`Opts::defer`, only with
//!   `Builder::batch_submissions`, off by default). A thread that runs a
//!   completion and will come back to `get` only pushes; an atomic counts
//!   unsubmitted SQEs, and `Reactor::flush` (called by the queue before a
//!   thread sleeps or stops running) or the leader's next `wait` submits
//!   them in one enter. A flush while a leader is in `wait` leaves them to
//!   the leader (woken if it sleeps), so that the ring's kernel work, which
//!   runs under its `uring_lock` on the submitting thread, stays on one
//!   thread: two workers on two cores spent 15 % of their time spinning on
//!   that lock when each submitted its own, and 21 % less CPU per message
//!   once they did not (`bench/runs/2026-12-06/leader-submits`). Otherwise
//!   `submit` enters the kernel before returning, because the leader may be
//!   blocked in the kernel and nobody else would submit.
//! * **Reaping.** The queue lets one thread at a time, the leader, call
//!   `Reactor::wait`: it enters the kernel with the state lock released
//!   (submitting what is pending and waiting for one CQE, with a timeout),
//!   then takes the lock and drains the CQ (via `completion_shared()`,
//!   exclusive by the same lock), turning CQEs into completions. user_data is
//!   the operation's `OpId` (slab index and generation), so a CQE of a freed
//!   slot can never reach its next occupant (SEMANTICS X4). Two values are
//!   reserved: [`WAKE`] for the eventfd read and [`CANCEL`] for the cancel
//!   requests' own CQEs (ignored).
//! * **Wake-up.** One `IORING_OP_READ` of an eventfd is kept in flight;
//!   `wake()` writes the eventfd, which completes that read and so ends the
//!   leader's `io_uring_enter`. An atomic flag skips the write while a
//!   wake-up is already pending. The read is re-armed by the reaper; its
//!   SQE rides along with the next enter.
//!
//! Files: `setup.rs` starts a ring and names why one cannot start; `sq.rs`
//! pushes and submits SQEs; `reap.rs` is the leader's enter and what each
//! CQE makes of its operation; `op.rs` is one operation's memory, its SQE
//! and its CQEs; `bufring.rs` the provided-buffer ring; `raw.rs` the raw
//! resources a request points at.
//!
//! # SEMANTICS, item by item
//!
//! * **O1, O3** An accepted operation lives in the op slab, owning its
//!   value, buffers and everything a request points at (iovec array,
//!   `msghdr`, socket address, in a heap cell that does not move when the
//!   slab grows) until its final CQE; it then becomes exactly one
//!   completion. Refusals hand everything back in `Rejected`.
//! * **O4** A short send or write is continued under the same user_data
//!   until every byte went; an error after partial progress is reported as
//!   the error (the bytes that went are lost to the caller, as with a
//!   failed WSASend).
//! * **O5** `IORING_OP_RECV`: 0 bytes is the peer's FIN; ECONNRESET stays
//!   an error.
//! * **O4, O5 on a stream, several at once.** The kernel serves requests
//!   waiting on one socket in no promised order, and a continued short send
//!   would let a later send's bytes in between its pieces. IOCP fills
//!   receives, and sends, in issue order. So each TCP handle has a receive
//!   lane and a send lane holding at most one request in the kernel; later
//!   operations are parked in the lane (in the slab, not in the kernel) and
//!   issued as the one ahead finishes. A parked operation that is
//!   cancelled, or whose handle closes, completes aborted at once through
//!   `ready`. Datagrams, accepts and file operations (which carry their
//!   offset) are not laned.
//! * **O6, R3** `recv_pooled` is a single-shot `IORING_OP_RECV` with
//!   `IOSQE_BUFFER_SELECT` on a provided-buffer ring ([`bufring`]): no
//!   buffer is pinned while a connection is idle. Its CQE hands out the
//!   ring buffer the kernel filled, a pool `Vec`, with no copy; the ring's
//!   slot is refilled once the completion is dequeued ([`bufring`]). ENOBUFS
//!   does not end the receive: it is re-submitted at the end of the reap
//!   pass, after the pass has put its buffers back, so it never spins on an
//!   empty ring and never reports a healthy stream as failed (LESSONS 4).
//!   At end of stream the completion is `Ok(0)` with an empty,
//!   capacity-less `Payload::Buf` (no pool buffer is spent on a FIN).
//! * **O7** Accept: `IORING_OP_ACCEPT` with a sockaddr in the operation;
//!   multishot (`IORING_ACCEPT_MULTISHOT`) returns no address, so the peer
//!   comes from getpeername (a connection reset before that is dropped, as
//!   if never accepted). A multishot the kernel ends without an error is
//!   re-armed; an error ends it with the final completion, never a retry
//!   loop (R2, LESSONS 6). Datagrams: `IORING_OP_RECVMSG` with `MSG_TRUNC`,
//!   so the result is the datagram's true length and truncation is
//!   reported as EMSGSIZE with the part that fit.
//! * **O8** Files: `IORING_OP_READ`/`READV` at the given offset; writes are
//!   continued like sends.
//! * **X1** `cancel(op)` is `IORING_OP_ASYNC_CANCEL` by user_data; the
//!   operation is also marked so that no continuation or re-arm follows.
//!   The completion is whatever the kernel reports: ECANCELED (`aborted()`)
//!   or the real result if it won the race.
//! * **X2** `close(h)` invalidates the handle at once, cancels each pending
//!   operation by user_data (precise even when two handles share one open
//!   file, which cancel-by-fd is not), and closes the descriptor when the
//!   last of them has completed, so no request can reference a closed (or
//!   reused) descriptor (LESSONS 2: close(2) alone cancels nothing on
//!   io_uring). The close happens when the leader reaps those CQEs, which
//!   it does as soon as they arrive if a thread is waiting on the port; a
//!   TCP stream is shut down inside `close`, after its cancellations went
//!   in, so the peer sees FIN at once either way.
//! * **Q6** `close_port` cancels everything (`ASYNC_CANCEL_ANY`) and reaps
//!   the cancellations itself for up to 1 s, since no `get` reaps on a
//!   closed port: values, buffers and accepted connections of the
//!   operations in flight are dropped there, not when the last clone goes.
//! * **X3** Dropping the driver cancels everything (`ASYNC_CANCEL_ANY`)
//!   and reaps until no operation is in flight (at most 5 s); each reaped
//!   operation's state is freed as its final CQE arrives, as usual. Then the
//!   ring closes, and only after that is the buffer ring freed. Operations
//!   still in flight at the bound (or when a value's `Drop` panics during
//!   the reaping) are leaked, with a log line, rather than freed under the
//!   kernel's feet. Descriptors are always closed.
//! * **R1** `Driver::new` names the cause of a failure:
//!   `kernel.io_uring_disabled` and seccomp for EPERM, a kernel without
//!   io_uring for ENOSYS, RLIMIT_MEMLOCK for ENOMEM, and the missing opcode
//!   or 5.19 feature (provided-buffer rings, cancel-any) when probing fails.
//!
//! # Where it differs from Windows
//!
//! * Across handles (and between the two lanes of a stream) completion
//!   order is the kernel's, not submission order.
//! * A closed handle's descriptor is released when its cancelled
//!   operations are reaped, not at `close`.
//! * Requests belong to the thread that submitted them: the kernel cancels
//!   a thread's pending requests when it exits. Since any thread may issue
//!   on a port (P5), an ECANCELED that nobody asked for (no cancel, close
//!   or port close) is taken to be that, and the reaper issues the
//!   operation again from its own thread; a cancelled request moved no
//!   data, so this is invisible to the caller. A connect whose attempt was
//!   under way waits for writability (`IORING_OP_POLL_ADD`) and reads
//!   SO_ERROR instead, since a second connect(2) would fail with EALREADY.
//! * CQ overflow: the ring is made with a CQ four times the SQ, and
//!   kernels since 5.5 (`IORING_FEAT_NODROP`, required) keep overflowed
//!   CQEs and hand them over on the next enter, so none is lost.

mod bufring;
mod op;
mod raw;
mod reap;
mod setup;
mod sq;

use std::collections::VecDeque;
use std::io;
use std::mem::{self, ManuallyDrop};
use std::net::{Shutdown, SocketAddr};
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::CancelBuilder;
use io_uring::{opcode, squeue, IoUring};

use self::bufring::BufRing;
use self::op::{Extra, Io, OpState, Spares};
use self::raw::Heap;
use crate::completion::{Completion, Handle, OpId, PortId, Rejected};
use crate::config::{Backend, Config};
use crate::queue::Reactor;
use crate::sys::error::Broken;
use crate::sys::error::{aborted, bad_handle, none_in_flight, not_in_flight, not_ip, port_closed};
use crate::sys::lock::{self, Guard, Lock};
use crate::sys::unix::EventFd;
use crate::sys::{FreeList, Op, Opts, Ready, Source, SourceKind};

// Neither reserved value is an `OpId`: index u32::MAX is the slab's "none"
// and never handed out, and index u32::MAX - 1 would need four billion
// live slots.
/// user_data of the eventfd read that wakes the leader.
const WAKE: u64 = u64::MAX;
/// user_data of cancel requests; their CQEs carry nothing we need.
const CANCEL: u64 = u64::MAX - 1;

/// An operation's user_data: its slab index and generation (the port is
/// implied by the ring the CQE comes from).
fn user_data(id: OpId) -> u64 {
    (u64::from(id.generation) << 32) | u64::from(id.index)
}

/// The operation a CQE's user_data names.
fn op_id(port: PortId, user_data: u64) -> OpId {
    OpId {
        port,
        index: user_data as u32,
        generation: (user_data >> 32) as u32,
    }
}

/// The operation of a handle at whose issue its descriptor goes into the
/// table of registered files. Registering and emptying the slot cost two
/// system calls (0.3–0.7 µs in all, measured on this machine), and a
/// request by slot saves the kernel's fget and fput of the descriptor
/// (about 45 ns): a handle must make 7–15 requests to pay for its slot.
/// One that has made 32 is likely a long-lived connection; a short-lived
/// one (a request or two, then close) never pays
/// (bench/runs/2026-12-05/registered-files).
const REGISTER_AT: u32 = 32;

/// How long `Drop` waits for cancelled operations before leaking them.
const DROP_BOUND: Duration = Duration::from_secs(5);
/// How long `close_port` reaps the operations it cancelled.
const CLOSE_BOUND: Duration = Duration::from_secs(1);

/// A handle: the descriptor it owns and its pending operations.
struct HandleEntry {
    fd: OwnedFd,
    /// The descriptor is in the ring's table of registered files, at the
    /// handle's slab index: requests name it by that slot.
    fixed: bool,
    /// Operations issued on the handle, counted up to [`REGISTER_AT`].
    issued: u32,
    key: u64,
    kind: SourceKind,
    /// Operations of this handle, in the kernel or parked (usually one to
    /// three).
    ops: Vec<OpId>,
    /// Receive and send order on a stream ([`RECV_LANE`], [`SEND_LANE`]).
    lanes: [Lane; 2],
    /// `close` was called: the handle is invalid, the descriptor goes when
    /// `ops` is empty.
    closing: bool,
    /// A stream's failure, kept for the operations after it (O5).
    broken: Broken,
}

/// One direction of a stream. io_uring serves several requests waiting on
/// one socket in no promised order, and a short send continued later would
/// let a second send's bytes in between its pieces; IOCP fills receives and
/// sends in issue order, whole. So a lane has at most one request in the
/// kernel and the others wait here, issued one by one as each finishes.
#[derive(Default)]
struct Lane {
    busy: bool,
    waiting: VecDeque<OpId>,
}

const RECV_LANE: usize = 0;
const SEND_LANE: usize = 1;

/// The lane `op` is ordered in on a handle of `kind`. Datagrams, accepts,
/// connects and offset-addressed file operations need none.
fn lane_of(kind: SourceKind, op: &Op) -> Option<usize> {
    if !matches!(kind, SourceKind::TcpStream | SourceKind::TcpSocket) {
        return None;
    }
    match op {
        Op::Recv(_) | Op::RecvVectored(_) | Op::RecvPooled | Op::RecvMulti => Some(RECV_LANE),
        Op::Send(_) | Op::SendVectored(_) => Some(SEND_LANE),
        _ => None,
    }
}

/// Everything the state lock guards. Holding it is also what makes the
/// shared SQ and CQ borrows exclusive.
struct State<T> {
    handles: crate::sys::slab::Slab<HandleEntry>,
    ops: crate::sys::slab::Slab<OpState<T>>,
    /// SQEs that found the SQ full even after a submit; pushed, in order,
    /// before anything else.
    backlog: VecDeque<squeue::Entry>,
    /// Pooled receives that met ENOBUFS in this reap pass.
    rearm: Vec<OpId>,
    spares: Spares,
    /// Freed by the driver's `Drop` after the ring is closed, or leaked.
    bufring: ManuallyDrop<BufRing>,
    /// The wake read's 8-byte target; freed or leaked like `bufring`.
    wake_buf: ManuallyDrop<Heap<u64>>,
    wake_inflight: bool,
    closed: bool,
    /// Descriptors of closed handles whose last operation ended; closed by
    /// the caller after unlocking.
    dead: Vec<OwnedFd>,
}

pub(crate) struct Driver<T> {
    /// Dropped explicitly first in `Drop`: closing the ring ends every
    /// request before the memory requests point at is freed.
    ring: ManuallyDrop<IoUring>,
    /// A mutex; on a local port (`one_thread`), a cell of its thread.
    state: Lock<State<T>>,
    /// Buffers handed out by pooled receives and recycled, for reuse.
    pool: Lock<FreeList>,
    wake_fd: EventFd,
    /// A wake-up was written and its read not yet reaped.
    wake_pending: AtomicBool,
    /// SQEs pushed (or backlogged) and not yet handed to the kernel.
    unsubmitted: AtomicUsize,
    backlogged: AtomicBool,
    /// A leader is in `wait`, between its enter and its last look at
    /// `unsubmitted`: a flush may leave its SQEs to it (see `flush_inner`).
    leading: AtomicBool,
    port_id: PortId,
    pool_buffer_size: usize,
    /// Completions with a pool buffer dequeued since the last refill: how
    /// many emptied ring slots may be refilled (see `bufring`).
    credit: AtomicUsize,
    /// A receive waits for the ring to have buffers: a delivery must get
    /// the leader to refill it, or nothing would ever re-arm the receive.
    starved: AtomicBool,
    /// The kernel takes IORING_RECV_MULTISHOT (Linux 6.0); cleared when it
    /// refuses one, and `recv_multi` then re-issues a single-shot receive.
    multishot_recv: AtomicBool,
    /// `close_port` ran (`State::closed` is its record under the lock).
    closed: AtomicBool,
    /// The ring runs DEFER_TASKRUN: completions are posted only in an enter
    /// that asks for events, so even a look may need one.
    deferred_taskrun: bool,
    /// A local port: its one thread issues everything and reaps, and
    /// enters the kernel again before it waits or looks (`LocalPort::get`).
    /// What a reap pushes (a stream's next send, a re-armed receive) then
    /// rides with that enter instead of one of its own.
    one_thread: bool,
    /// Slots in the ring's table of registered files (`setup::files`); a
    /// handle whose index is below this is registered there.
    files: u32,
}

impl<T: Send + 'static> Driver<T> {
    pub(crate) fn new(config: &Config) -> io::Result<Self> {
        // Declared before the ring, so that on an early return the ring is
        // closed before the memory registered with it is unmapped.
        let bufring = BufRing::new(config.pool_buffers, config.pool_buffer_size)?;
        let wake_buf = Heap::new(0u64);
        // dontfork: a forked child must not share the rings' pages.
        // submit_all: an SQE that fails to prepare must not strand the ones
        // behind it in the SQ until some later enter.
        let (mut ring, ring_defers) = setup::ring(config)?;
        setup::probe(&ring)?;
        bufring.register(&ring).map_err(|e| {
            let why = match e.raw_os_error() {
                Some(libc::EINVAL) => {
                    "kernel lacks provided-buffer rings (IORING_REGISTER_PBUF_RING, Linux 5.19)"
                        .to_string()
                }
                Some(libc::ENOMEM) => format!(
                    "out of memory pinning the provided-buffer ring: RLIMIT_MEMLOCK is {}",
                    raw::memlock_limit()
                ),
                _ => "registering the provided-buffer ring failed".to_string(),
            };
            io::Error::new(e.kind(), format!("{why} ({e})"))
        })?;
        setup::probe_cancel_any(&mut ring)?;
        let files = setup::files(&ring, config.registered_files);

        let wake_fd = EventFd::new(false)?;
        let wake_sqe = setup::wake_read(&wake_fd, &wake_buf);
        // SAFETY:
        // - `&mut ring`: no other SubmissionQueue exists;
        // - the entry points at `wake_buf`, which lives in the driver's
        //   state until the ring is closed (or is leaked).
        unsafe { ring.submission().push(&wake_sqe) }.map_err(|_| {
            io::Error::new(io::ErrorKind::Other, "io_uring: empty SQ refused an entry")
        })?;
        ring.submit()?;

        Ok(Driver {
            ring: ManuallyDrop::new(ring),
            state: Lock::new(
                State {
                    handles: crate::sys::slab::Slab::new(),
                    ops: crate::sys::slab::Slab::new(),
                    backlog: VecDeque::new(),
                    rearm: Vec::new(),
                    spares: Spares::new(),
                    bufring: ManuallyDrop::new(bufring),
                    wake_buf: ManuallyDrop::new(wake_buf),
                    wake_inflight: true,
                    closed: false,
                    dead: Vec::new(),
                },
                config.single_issuer,
            ),
            pool: Lock::new(
                FreeList::new(usize::from(config.pool_buffers), config.pool_buffer_size),
                config.single_issuer,
            ),
            wake_fd,
            wake_pending: AtomicBool::new(false),
            unsubmitted: AtomicUsize::new(0),
            backlogged: AtomicBool::new(false),
            leading: AtomicBool::new(false),
            port_id: config.port_id,
            pool_buffer_size: config.pool_buffer_size,
            credit: AtomicUsize::new(0),
            starved: AtomicBool::new(false),
            multishot_recv: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            deferred_taskrun: ring_defers,
            one_thread: config.single_issuer,
            files,
        })
    }
}

impl<T> Driver<T> {
    fn lock(&self) -> Guard<'_, State<T>> {
        self.state.lock()
    }

    /// `counter += n` ([`lock::add`]). A local port's counters
    /// (`unsubmitted`, `credit`) are touched by its one thread alone.
    pub(super) fn count_up(&self, counter: &AtomicUsize, n: usize, order: Ordering) {
        lock::add(counter, n, self.one_thread, order);
    }

    /// Takes `counter`'s value, leaving 0; as [`count_up`](Self::count_up):
    /// a load and a store on a local port.
    pub(super) fn take_count(&self, counter: &AtomicUsize, order: Ordering) -> usize {
        if self.one_thread {
            let n = counter.load(Ordering::Relaxed);
            if n > 0 {
                counter.store(0, Ordering::Relaxed);
            }
            n
        } else {
            counter.swap(0, order)
        }
    }

    /// The entry of a live (not closing) handle of this port.
    fn live<'s>(&self, st: &'s mut State<T>, h: Handle) -> Option<&'s mut HandleEntry> {
        if h.port != self.port_id {
            return None;
        }
        st.handles
            .get_mut(h.index, h.generation)
            .filter(|e| !e.closing)
    }

    /// Cancels every operation of the handle `h` (see `cancel_one`);
    /// returns how many there were and whether a cancel SQE was pushed.
    fn cancel_all_of(&self, st: &mut State<T>, h: Handle, ready: &mut Ready<T>) -> (usize, bool) {
        let ids = match st.handles.get(h.index, h.generation) {
            Some(e) => e.ops.clone(),
            None => return (0, false),
        };
        let mut pushed = false;
        for &id in &ids {
            pushed |= self.cancel_one(st, id, ready);
        }
        (ids.len(), pushed)
    }

    /// Ends a parked operation (never issued) aborted, or asks the kernel
    /// to cancel an issued one. Returns whether a cancel SQE was pushed.
    fn cancel_one(&self, st: &mut State<T>, id: OpId, ready: &mut Ready<T>) -> bool {
        match st.ops.get(id.index, id.generation) {
            Some(op) if op.parked => {
                self.finish(st, id, Err(aborted()), Extra::None, ready);
                false
            }
            Some(_) => {
                self.push_cancel(st, id);
                true
            }
            None => false,
        }
    }

    /// Puts a handle's descriptor in its slot of the table of registered
    /// files, if the handle has one (at its [`REGISTER_AT`]th operation).
    /// Under the state lock, as is `bury`: a slot changes hands only with
    /// its slab index. Operations issued before name the descriptor, and
    /// keep naming it when re-armed (`OpState::fixed`).
    fn register(&self, index: u32, fd: RawFd) -> bool {
        if index >= self.files {
            return false;
        }
        match self.ring.submitter().register_files_update(index, &[fd]) {
            Ok(_) => true,
            Err(e) => {
                log::debug!(target: "cport", "io_uring: handle {index} not registered ({e}): its requests name its descriptor");
                false
            }
        }
    }

    /// Ends a handle removed from the slab (closed, its last operation
    /// over): empties its slot of the table of registered files, which holds
    /// the file open (a socket's peer would see no end), and leaves its
    /// descriptor to [`unlock`](Self::unlock) to close. Requests still in
    /// the kernel keep the file they took from the slot.
    fn bury(&self, st: &mut State<T>, index: u32, entry: HandleEntry) {
        if entry.fixed {
            if let Err(e) = self.ring.submitter().register_files_update(index, &[-1]) {
                // Only possible off the ring's thread (SINGLE_ISSUER): the
                // file then stays open until the slot is reused or the ring
                // closes.
                log::warn!(target: "cport", "io_uring: could not empty the file slot of a closed handle ({e})");
            }
        }
        st.dead.push(entry.fd);
    }

    /// Unlocks, then closes the descriptors of handles that finished
    /// closing meanwhile (close(2) may send a FIN: not under the lock).
    fn unlock(&self, mut st: Guard<'_, State<T>>) {
        let dead = mem::take(&mut st.dead);
        drop(st);
        drop(dead);
    }

    /// Operations (and the wake read) the kernel may still be working on.
    fn in_flight(st: &State<T>) -> usize {
        st.ops.len() + usize::from(st.wake_inflight)
    }

    fn wake_inner(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            self.wake_fd.notify();
        }
    }

    fn close_port_inner(&self) {
        // The first close alone goes on. A later one touches no lock: on a
        // local port that would be the owner's cell, and the port's drop
        // closes again on whichever thread lets go of it last (a `Poster`
        // outliving its `LocalPort`, whose drop closed the port already);
        // the driver's own drop claims the cells only after that.
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut st = self.lock();
        st.closed = true;
        let mut parked = Vec::new();
        for ((index, generation), op) in st.ops.iter_mut() {
            op.cancelled = true;
            if op.parked {
                parked.push(OpId {
                    port: self.port_id,
                    index,
                    generation,
                });
            }
        }
        // Never issued: they end here (the queue is closed, so their
        // completions are dropped, outside the lock).
        let mut dropped = Ready::new();
        for id in parked {
            self.finish(&mut st, id, Err(aborted()), Extra::None, &mut dropped);
        }
        // One request cancels everything else, the wake read included; the
        // completions that follow end any wait in progress.
        let sqe = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(CANCEL)
            .flags(squeue::Flags::SKIP_SUCCESS);
        self.push(&mut st, sqe);
        self.unlock(st);
        drop(dropped);
        self.submit_pending();
        self.wake_inner();
        // Nobody reaps once the queue is closed (`get` returns at once), so
        // the cancelled operations are reaped here, or their values, buffers
        // and accepted connections would live as long as any clone of the
        // port (SEMANTICS Q6). Reaping is under the state lock, so a leader
        // still inside `wait` at the same time is harmless. Bounded: a
        // request the kernel cannot cancel (a regular-file read under way)
        // is left to the port's drop.
        let deadline = Instant::now() + CLOSE_BOUND;
        let mut out = Ready::new();
        while Self::in_flight(&self.lock()) > 0 && Instant::now() < deadline {
            self.wait_inner(Some(Duration::from_millis(10)), &mut out);
            out.clear();
        }
    }
}

impl<T: Send + 'static> Reactor<Completion<T>> for Driver<T> {
    fn flush(&self) {
        self.flush_inner();
    }

    fn wait(&self, timeout: Option<Duration>, out: &mut Ready<T>) {
        self.wait_inner(timeout, out);
    }

    fn wake(&self) {
        self.wake_inner();
    }
}

impl<T: Send + 'static> crate::sys::Driver<T> for Driver<T> {
    fn backend(&self) -> Backend {
        Backend::Uring
    }

    fn associate(&self, source: Source, key: u64) -> io::Result<Handle> {
        let kind = source.kind();
        let socket = source.is_socket();
        let fd = source.into_fd();
        if socket {
            socket2::SockRef::from(&fd).set_nonblocking(true)?;
        }
        let mut st = self.lock();
        if st.closed {
            return Err(port_closed());
        }
        let (index, generation) = st.handles.insert(HandleEntry {
            fd,
            fixed: false,
            issued: 0,
            key,
            kind,
            ops: Vec::new(),
            lanes: Default::default(),
            closing: false,
            broken: Broken::default(),
        });
        Ok(Handle {
            port: self.port_id,
            index,
            generation,
        })
    }

    fn submit(
        &self,
        handle: Handle,
        op: Op,
        value: T,
        opts: Opts<T>,
        _ready: &mut Ready<T>,
    ) -> Result<OpId, Rejected<T>> {
        let name = op.name();
        let mut st = self.lock();
        if st.closed {
            return Err(Rejected::new(port_closed(), value, op.into_payload()));
        }
        let (fd, fixed, kind, key) = match self.live(&mut st, handle) {
            Some(e) => {
                e.issued = e.issued.saturating_add(1);
                if e.issued == REGISTER_AT {
                    e.fixed = self.register(handle.index, e.fd.as_raw_fd());
                }
                (
                    e.fd.as_raw_fd(),
                    e.fixed.then_some(handle.index),
                    e.kind,
                    e.key,
                )
            }
            None => return Err(Rejected::new(bad_handle(name), value, op.into_payload())),
        };
        if let Some(e) = op.misfit(kind) {
            return Err(Rejected::new(e, value, op.into_payload()));
        }
        let op_kind = op.kind();
        let lane = lane_of(kind, &op);
        let multishot = match op {
            Op::Accept | Op::RecvMulti => opts.multishot,
            _ => None,
        };
        let io = Io::new(op, multishot.is_some(), &mut st.spares);
        let (index, generation) = st.ops.insert(OpState {
            handle,
            fd,
            fixed,
            key,
            kind: op_kind,
            value,
            multishot,
            cancelled: false,
            lane,
            parked: false,
            seq: 0,
            io,
        });
        let id = OpId {
            port: self.port_id,
            index,
            generation,
        };
        let mut parked = false;
        if let Some(e) = st.handles.get_mut(handle.index, handle.generation) {
            e.ops.push(id);
            if let Some(l) = lane {
                parked = e.lanes[l].busy;
                if parked {
                    e.lanes[l].waiting.push_back(id);
                } else {
                    e.lanes[l].busy = true;
                }
            }
        }
        if parked {
            if let Some(o) = st.ops.get_mut(index, generation) {
                o.parked = true;
            }
            // Issued when the operation ahead of it finishes.
            return Ok(id);
        }
        let sqe = match st.ops.get_mut(index, generation) {
            // SAFETY:
            // - the operation was just made: no request of it is in flight;
            // - the entry points into the operation, which stays in the
            //   slab until its final CQE.
            Some(o) => unsafe {
                o.io.sqe(fd, fixed, self.pool_buffer_size, self.recv_multishot())
            }
            .user_data(user_data(id)),
            None => unreachable!("an operation just inserted"),
        };
        self.push(&mut st, sqe);
        drop(st);
        if !opts.defer {
            self.submit_pending();
        }
        Ok(id)
    }

    fn cancel(&self, op: OpId, ready: &mut Ready<T>) -> io::Result<()> {
        let mut st = self.lock();
        if op.port != self.port_id || st.ops.get(op.index, op.generation).is_none() {
            return Err(not_in_flight());
        }
        let pushed = self.cancel_one(&mut st, op, ready);
        self.unlock(st);
        if pushed {
            self.submit_pending();
        }
        Ok(())
    }

    fn cancel_handle(&self, handle: Handle, ready: &mut Ready<T>) -> io::Result<usize> {
        let mut st = self.lock();
        if self.live(&mut st, handle).is_none() {
            return Err(bad_handle("cancel_handle"));
        }
        let (n, pushed) = self.cancel_all_of(&mut st, handle, ready);
        self.unlock(st);
        if pushed {
            self.submit_pending();
        }
        if n == 0 {
            return Err(none_in_flight());
        }
        Ok(n)
    }

    fn close(&self, handle: Handle, ready: &mut Ready<T>) -> io::Result<()> {
        let mut st = self.lock();
        let pending = match self.live(&mut st, handle) {
            Some(e) => {
                e.closing = true;
                !e.ops.is_empty()
            }
            None => return Err(bad_handle("close")),
        };
        if !pending {
            if let Some(entry) = st.handles.remove(handle.index, handle.generation) {
                self.bury(&mut st, handle.index, entry);
            }
            self.unlock(st);
            return Ok(());
        }
        // The descriptor stays open until the last cancelled operation is
        // reaped (`finish`): no request can then refer to it, or to a
        // descriptor that reused its number.
        let (_, pushed) = self.cancel_all_of(&mut st, handle, ready);
        self.unlock(st);
        if pushed {
            self.submit_pending();
        }
        // The descriptor is closed only when the cancellations are reaped,
        // which takes a thread in `get`. Shut a stream down now, after the
        // cancellations went in (so a pending recv ends aborted, not with
        // 0 bytes), so that the peer sees the end at once, as after
        // closesocket (SEMANTICS X2, LESSONS 2). The port owns the socket,
        // so no other owner of it is affected.
        let st = self.lock();
        if let Some(e) = st.handles.get(handle.index, handle.generation) {
            if matches!(e.kind, SourceKind::TcpStream | SourceKind::TcpSocket) {
                let _ = socket2::SockRef::from(&e.fd).shutdown(Shutdown::Both);
            }
        }
        self.unlock(st);
        Ok(())
    }

    fn shutdown(&self, handle: Handle, how: Shutdown) -> io::Result<()> {
        let mut st = self.lock();
        // Under the lock: the descriptor cannot be closed (and its number
        // reused) meanwhile.
        match self.live(&mut st, handle) {
            Some(e) => {
                socket2::SockRef::from(&e.fd).shutdown(how)?;
                e.broken.shut(how);
                Ok(())
            }
            None => Err(bad_handle("shutdown")),
        }
    }

    fn addr(&self, handle: Handle, peer: bool) -> io::Result<SocketAddr> {
        let mut st = self.lock();
        let e = match self.live(&mut st, handle) {
            Some(e) => e,
            None => return Err(bad_handle(if peer { "peer_addr" } else { "local_addr" })),
        };
        let sock = socket2::SockRef::from(&e.fd);
        let a = if peer {
            sock.peer_addr()?
        } else {
            sock.local_addr()?
        };
        a.as_socket().ok_or_else(|| not_ip("addr"))
    }

    fn close_port(&self) {
        self.close_port_inner();
    }

    fn recycle(&self, buf: Vec<u8>) {
        self.pool.lock().give(buf);
    }

    fn delivered(&self, n: usize) {
        self.count_up(&self.credit, n, Ordering::AcqRel);
        if self.starved.load(Ordering::Acquire) {
            self.wake_inner();
        }
    }
}

impl<T> Drop for Driver<T> {
    fn drop(&mut self) {
        // The last reference may go on another thread than a local port's
        // own (a `Poster` outlived its `LocalPort`, which closed the port
        // on its thread): `&mut self` says no other thread is here now.
        self.state.claim();
        self.pool.claim();
        self.close_port_inner();
        let deadline = Instant::now() + DROP_BOUND;
        let mut out = Ready::new();
        // A panic in a value's `Drop` (or a multishot `Clone`) must not
        // unwind past this point: the slab would be freed with the ring open
        // and requests still writing into its buffers. Caught, the rest of
        // this function runs, leaking whatever is still in flight.
        let reaped = panic::catch_unwind(AssertUnwindSafe(|| {
            while Self::in_flight(&self.lock()) > 0 && Instant::now() < deadline {
                self.wait_inner(Some(Duration::from_millis(100)), &mut out);
                // The queue is closed: the completions (values, buffers,
                // accepted streams) are dropped here.
                out.clear();
            }
        }));
        if reaped.is_err() {
            log::error!(
                target: "cport",
                "io_uring: a per-operation value panicked while the port was dropped; \
                 operations still in flight are leaked"
            );
        }
        // SAFETY:
        // - dropped exactly once, here, and never used again: closing the
        //   ring fd and unmapping its rings ends the kernel's use of every
        //   request that had completed, before any memory below is freed.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
        let st = self.state.get_mut();
        if st.ops.len() == 0 {
            // SAFETY:
            // - no operation is left, so no receive can be writing a pool
            //   buffer, and the ring that had the buffer ring registered is
            //   closed; dropped once, never used again.
            unsafe { ManuallyDrop::drop(&mut st.bufring) };
        } else {
            log::warn!(
                target: "cport",
                "io_uring: {} operation(s) still in flight {DROP_BOUND:?} after the port closed; \
                 leaking their buffers rather than freeing memory the kernel may still write",
                st.ops.len()
            );
            // Their buffers, and the pool (bufring stays un-dropped), leak.
            mem::forget(mem::replace(&mut st.ops, crate::sys::slab::Slab::new()));
        }
        if !st.wake_inflight {
            // SAFETY:
            // - the wake read's CQE was reaped: nothing writes the buffer;
            //   dropped once, never used again.
            unsafe { ManuallyDrop::drop(&mut st.wake_buf) };
        }
        // Handle descriptors close when the state drops: a request still in
        // flight holds its own reference to the file.
    }
}
