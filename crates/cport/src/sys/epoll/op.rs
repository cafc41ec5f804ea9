//! One attempt of each operation on readiness, and what its completion
//! carries. Nothing here locks a handle: the caller holds its lock.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::io::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use socket2::SockRef;

use super::sys;
use crate::completion::{Completion, Handle, OpId, Payload};
use crate::sys::lock::{self, Lock};
use crate::sys::{FreeList, Op};

/// An operation waiting in a handle's queue.
pub(super) struct Pending<T> {
    pub(super) id: OpId,
    pub(super) op: Op,
    pub(super) value: T,
    pub(super) multishot: Option<fn(&T) -> T>,
    /// Bytes the kernel has taken so far (sends): a short send keeps the op
    /// at the head of its queue with its progress (SEMANTICS O4).
    pub(super) done: usize,
    /// Completions delivered so far (`Completion::seq` of the next one).
    pub(super) seq: u64,
}

/// Which readiness an operation waits for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Side {
    Read,
    Write,
}

impl<T> Pending<T> {
    /// For a stream's data operations, whether it receives; `None` for
    /// the rest (accept, connect, datagrams, files).
    pub(super) fn stream_io(&self) -> Option<bool> {
        match self.op {
            Op::Recv(_) | Op::RecvVectored(_) | Op::RecvPooled | Op::RecvMulti => Some(true),
            Op::Send(_) | Op::SendVectored(_) => Some(false),
            _ => None,
        }
    }

    pub(super) fn side(&self) -> Side {
        match self.op {
            Op::Send(_) | Op::SendVectored(_) | Op::SendTo(..) | Op::Connect(_) => Side::Write,
            _ => Side::Read,
        }
    }
}

/// The outcome of one attempt.
pub(super) enum Step<T> {
    /// The socket has nothing for the operation now. Only returned after
    /// the kernel said EAGAIN (or, for connect, that the handshake is still
    /// on), so an edge-triggered event follows when that changes.
    Wait,
    /// The operation is over.
    Done(io::Result<usize>, Extra),
    /// A multishot operation produced one result and goes on; with
    /// `drained`, the socket had no more for it (a short read), so the
    /// next try would only meet EAGAIN.
    More(fn(&T) -> T, io::Result<usize>, Extra, bool),
    /// A multishot receive stopped before EAGAIN because as many filled
    /// buffers as the pool holds wait to be dequeued: the socket must be
    /// driven again once some are (no edge will say so).
    Paused,
}

/// What an attempt produced besides the operation's own buffers.
pub(super) enum Extra {
    None,
    From(Option<SocketAddr>),
    Pooled(Vec<u8>),
    Accepted(TcpStream, SocketAddr),
}

/// Where a completion comes from.
#[derive(Clone, Copy, Debug)]
pub(super) struct Origin {
    pub(super) handle: Handle,
    pub(super) key: u64,
}

impl Origin {
    pub(super) fn finish<T>(
        &self,
        p: Pending<T>,
        result: io::Result<usize>,
        extra: Extra,
    ) -> Completion<T> {
        Completion {
            key: self.key,
            kind: p.op.kind(),
            op: Some(p.id),
            handle: Some(self.handle),
            result,
            value: p.value,
            payload: payload(p.op, extra),
            more: false,
            seq: p.seq,
        }
    }

    /// A completion of a multishot operation that stays in flight.
    pub(super) fn more<T>(
        &self,
        p: &mut Pending<T>,
        value: T,
        result: io::Result<usize>,
        extra: Extra,
    ) -> Completion<T> {
        let seq = p.seq;
        p.seq += 1;
        Completion {
            key: self.key,
            kind: p.op.kind(),
            op: Some(p.id),
            handle: Some(self.handle),
            result,
            value,
            payload: match extra {
                Extra::Accepted(stream, peer) => Payload::Accepted { stream, peer },
                Extra::Pooled(buf) => Payload::Buf(buf),
                _ => Payload::None,
            },
            more: true,
            seq,
        }
    }
}

fn payload(op: Op, extra: Extra) -> Payload {
    match (op, extra) {
        (_, Extra::Accepted(stream, peer)) => Payload::Accepted { stream, peer },
        (_, Extra::Pooled(buf)) => Payload::Buf(buf),
        (Op::RecvFrom(buf), Extra::From(from)) => Payload::Datagram { buf, from },
        (Op::RecvFrom(buf), _) => Payload::Datagram { buf, from: None },
        (op, _) => op.into_payload(),
    }
}

/// The buffers behind `recv_pooled` and `recv_multi`: taken only when a
/// socket is readable (SEMANTICS O6), kept for reuse when given back.
///
/// Filled buffers not yet dequeued are counted: a multishot receive stops
/// reading (leaving the data in the socket, under TCP's flow control) while
/// they number `keep`, as io_uring's ring would run dry, so a handler
/// slower than its peers never grows the queue without bound (O9).
///
/// The kept buffers are split over `STRIPES` lists, and a thread takes and
/// gives at its own first (`stripe`): with one list, two workers on two
/// CPUs fought over its lock on every receive and every send's return (the
/// contended lock was 1.2 % of port-epoll's samples at 50 × 64 B on two
/// cores, `bench/runs/2026-12-06/epoll-pool`). A thread whose list is empty
/// takes from the others before it allocates, and one whose list is full
/// gives to the others before it drops, so the stripes neither allocate
/// per message where one thread receives and another gives back, nor keep
/// more than the one list did.
#[derive(Debug)]
pub(super) struct Pool {
    free: [Stripe; STRIPES],
    size: usize,
    keep: usize,
    undelivered: AtomicUsize,
    /// Sockets whose multishot receive stopped for the count (`Paused`).
    paused: Lock<Vec<Handle>>,
    /// Whether `paused` may hold a socket: read without its lock on every
    /// delivery, set under it.
    any_paused: AtomicBool,
    /// A local port's pool: its locks are cells of the port's thread
    /// (`crate::sys::lock`), and `undelivered` is counted with loads and
    /// stores.
    local: bool,
}

/// Lists of kept buffers per pool (see [`Pool`]).
const STRIPES: usize = 4;

/// One list, on a cache line of its own.
#[derive(Debug)]
#[repr(align(64))]
struct Stripe(Lock<FreeList>);

/// The calling thread's list: threads are given the stripes in turn, so
/// the workers of a pool, started together, each have their own.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    MINE.with(|m| *m)
}

impl Pool {
    pub(super) fn new(keep: usize, size: usize, local: bool) -> Pool {
        // Each list keeps its share; together at most `keep` (rounded up).
        let share = (keep + STRIPES - 1) / STRIPES;
        let list = || Stripe(Lock::new(FreeList::new(share, size), local));
        Pool {
            free: std::array::from_fn(|_| list()),
            size,
            keep,
            undelivered: AtomicUsize::new(0),
            paused: Lock::new(Vec::new(), local),
            any_paused: AtomicBool::new(false),
            local,
        }
    }

    /// Remembers that `h`'s multishot receive stopped for the count.
    /// Returns whether buffers were dequeued meanwhile, so that the
    /// receive may read on at once: a delivery that came before `h` was
    /// remembered saw nothing to resume. (SeqCst, against `delivered`'s
    /// decrement-then-load: one of the two sees the other.)
    pub(super) fn pause(&self, h: Handle) -> bool {
        self.paused.lock().push(h);
        self.any_paused.store(true, Ordering::SeqCst);
        self.undelivered.load(Ordering::SeqCst) < self.keep
    }

    /// Moves the paused sockets into `into` once a multishot receive may
    /// fill again; else leaves it empty. The two lists trade places, so
    /// each keeps its capacity and pausing does not allocate once both
    /// have grown to the sockets that pause at once.
    pub(super) fn resume(&self, into: &mut Vec<Handle>) {
        into.clear();
        if !self.any_paused.load(Ordering::Acquire) || !self.may_fill() {
            return;
        }
        let mut paused = self.paused.lock();
        self.any_paused.store(false, Ordering::Relaxed);
        std::mem::swap(&mut *paused, into);
    }

    /// Whether a socket may wait for `delivered`.
    pub(super) fn any_paused(&self) -> bool {
        self.any_paused.load(Ordering::SeqCst)
    }

    /// Whether a multishot receive may fill another buffer now.
    pub(super) fn may_fill(&self) -> bool {
        self.undelivered.load(Ordering::Acquire) < self.keep
    }

    /// `n` filled buffers were dequeued.
    pub(super) fn delivered(&self, n: usize) {
        if self.local {
            // No other thread counts (nor pauses, which this orders
            // against on a shared port).
            let u = self.undelivered.load(Ordering::Relaxed);
            self.undelivered
                .store(u.saturating_sub(n), Ordering::Relaxed);
            return;
        }
        let _ = self
            .undelivered
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Receives into a pool buffer: the buffer with data, counted as
    /// filled; at end of stream an empty, capacity-less Vec (as on
    /// io_uring, no pool buffer is spent on a FIN); or the error.
    fn recv(&self, fd: &OwnedFd) -> io::Result<Vec<u8>> {
        let mut buf = self.take();
        match sys::retry(|| sys::recv(fd, &mut buf)) {
            Ok(n) if n > 0 => {
                lock::add(&self.undelivered, 1, self.local, Ordering::AcqRel);
                Ok(buf)
            }
            r => {
                self.give(buf);
                r.map(|_| Vec::new())
            }
        }
    }

    /// A buffer of `size` bytes' capacity: a recycled one, else a new one,
    /// so a pooled receive never waits for a buffer (no R3 stall on epoll).
    fn take(&self) -> Vec<u8> {
        let first = stripe();
        for k in 0..STRIPES {
            if let Some(buf) = self.free[(first + k) % STRIPES].0.lock().pop() {
                return buf;
            }
        }
        Vec::with_capacity(self.size)
    }

    pub(super) fn give(&self, buf: Vec<u8>) {
        let first = stripe();
        let mut buf = buf;
        for k in 0..STRIPES {
            match self.free[(first + k) % STRIPES].0.lock().offer(buf) {
                Some(back) => buf = back,
                None => return,
            }
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Runs one step of `p` on `fd`.
pub(super) fn attempt<T>(p: &mut Pending<T>, fd: &OwnedFd, pool: &Pool) -> Step<T> {
    match &mut p.op {
        Op::Recv(buf) => done_unless_blocked(sys::retry(|| sys::recv(fd, buf)), Extra::None),
        Op::RecvVectored(bufs) => {
            done_unless_blocked(sys::retry(|| sys::recv_vectored(fd, bufs)), Extra::None)
        }
        Op::RecvPooled => match pool.recv(fd) {
            Ok(buf) => Step::Done(Ok(buf.len()), Extra::Pooled(buf)),
            Err(e) => done_unless_blocked(Err(e), Extra::None),
        },
        Op::RecvMulti => {
            if !pool.may_fill() {
                return Step::Paused;
            }
            match pool.recv(fd) {
                Ok(buf) if !buf.is_empty() => match p.multishot {
                    // A read shorter than the buffer took all the stream
                    // had: whatever arrives later raises a new edge, so no
                    // try for EAGAIN is owed (one system call less per
                    // arrival, as libuv and the plain epoll servers do).
                    Some(clone) => {
                        let drained = buf.len() < buf.capacity();
                        Step::More(clone, Ok(buf.len()), Extra::Pooled(buf), drained)
                    }
                    None => Step::Done(Ok(buf.len()), Extra::Pooled(buf)),
                },
                Ok(eof) => Step::Done(Ok(0), Extra::Pooled(eof)),
                Err(e) => done_unless_blocked(Err(e), Extra::None),
            }
        }
        Op::RecvFrom(buf) => match sys::retry(|| sys::recv_from(fd, buf)) {
            Err(e) if would_block(&e) => Step::Wait,
            Err(e) => Step::Done(Err(e), Extra::From(None)),
            Ok((_, true, from)) => Step::Done(
                Err(io::Error::from_raw_os_error(libc::EMSGSIZE)),
                Extra::From(from),
            ),
            Ok((n, false, from)) => Step::Done(Ok(n), Extra::From(from)),
        },
        Op::Send(buf) => {
            let buf = &buf[..];
            send_all(&mut p.done, buf.len(), |done| sys::send(fd, &buf[done..]))
        }
        Op::SendVectored(bufs) => {
            let bufs = &bufs[..];
            let total = bufs.iter().map(Vec::len).sum();
            send_all(&mut p.done, total, |done| {
                sys::send_vectored(fd, bufs, done)
            })
        }
        Op::SendTo(buf, addr) => {
            done_unless_blocked(sys::retry(|| sys::send_to(fd, buf, *addr)), Extra::None)
        }
        Op::Accept => accept(fd, p.multishot),
        Op::Connect(_) => connected(fd),
        Op::ReadAt(..) | Op::ReadVectoredAt(..) | Op::WriteAt(..) | Op::WriteVectoredAt(..) => {
            // `Op::fits` keeps file operations off socket handles, and
            // file handles have no queue.
            Step::Done(
                Err(io::Error::from_raw_os_error(libc::ENOTSOCK)),
                Extra::None,
            )
        }
    }
}

fn done_unless_blocked<T>(r: io::Result<usize>, extra: Extra) -> Step<T> {
    match r {
        Err(e) if would_block(&e) => Step::Wait,
        r => Step::Done(r, extra),
    }
}

/// Sends until every byte is taken or the socket is full. A short send is
/// followed by another try rather than a wait: the edge-triggered event is
/// only promised once the kernel has said EAGAIN.
fn send_all<T>(
    done: &mut usize,
    total: usize,
    mut send: impl FnMut(usize) -> io::Result<usize>,
) -> Step<T> {
    while *done < total {
        match sys::retry(|| send(*done)) {
            Ok(0) => return Step::Done(Err(io::ErrorKind::WriteZero.into()), Extra::None),
            Ok(n) => *done += n,
            Err(e) if would_block(&e) => return Step::Wait,
            Err(e) => return Step::Done(Err(e), Extra::None),
        }
    }
    Step::Done(Ok(total), Extra::None)
}

fn accept<T>(fd: &OwnedFd, multishot: Option<fn(&T) -> T>) -> Step<T> {
    loop {
        match SockRef::from(fd).accept() {
            Ok((socket, addr)) => {
                // accept4 with SOCK_CLOEXEC and without SOCK_NONBLOCK: the
                // stream is handed out in blocking mode, as std makes them;
                // associating it makes it non-blocking.
                let peer = addr
                    .as_socket()
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                let extra = Extra::Accepted(TcpStream::from(socket), peer);
                return match multishot {
                    Some(clone) => Step::More(clone, Ok(0), extra, false),
                    None => Step::Done(Ok(0), extra),
                };
            }
            Err(e) if would_block(&e) => return Step::Wait,
            // A connection reset before we took it is not the listener's
            // failure; the next one may be fine (what libuv does too).
            Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EINTR)) => {}
            // EMFILE, ENFILE, ENOBUFS, ENOMEM included: the operation ends
            // with the error. Retrying here would spin while the listener
            // stays readable (LESSONS 6, SEMANTICS R2).
            Err(e) => return Step::Done(Err(e), Extra::None),
        }
    }
}

/// Whether a non-blocking connect has finished. Writability alone is not
/// proof: a socket registered before connect(2) reports EPOLLOUT|EPOLLHUP
/// for its unconnected state, and that event may be handled after the
/// connect was queued.
fn connected<T>(fd: &OwnedFd) -> Step<T> {
    let s = SockRef::from(fd);
    match s.take_error() {
        Ok(Some(e)) | Err(e) => Step::Done(Err(e), Extra::None),
        Ok(None) => match s.peer_addr() {
            Ok(_) => Step::Done(Ok(0), Extra::None),
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Step::Wait,
            Err(e) => Step::Done(Err(e), Extra::None),
        },
    }
}

/// A file operation, done at once on the calling thread (regular files are
/// always "ready": epoll refuses them). Writes go on until every byte is
/// written or an error occurs.
pub(super) fn file_op(fd: &OwnedFd, op: Op) -> (io::Result<usize>, Payload) {
    match op {
        Op::ReadAt(mut buf, off) => {
            let r = sys::retry(|| sys::pread(fd, &mut buf, off));
            (r, Payload::Buf(buf))
        }
        Op::ReadVectoredAt(mut bufs, off) => {
            let r = sys::retry(|| sys::preadv(fd, &mut bufs, off));
            (r, Payload::Bufs(bufs))
        }
        Op::WriteAt(buf, off) => {
            let r = write_all(buf.len(), off, |done, at| sys::pwrite(fd, &buf[done..], at));
            (r, Payload::Buf(buf))
        }
        Op::WriteVectoredAt(bufs, off) => {
            let total = bufs.iter().map(Vec::len).sum();
            let r = write_all(total, off, |done, at| sys::pwritev(fd, &bufs, done, at));
            (r, Payload::Bufs(bufs))
        }
        op => (
            Err(io::Error::from_raw_os_error(libc::ESPIPE)),
            op.into_payload(),
        ),
    }
}

fn write_all(
    total: usize,
    off: u64,
    mut write: impl FnMut(usize, u64) -> io::Result<usize>,
) -> io::Result<usize> {
    let mut done = 0;
    while done < total {
        let at = off.checked_add(done as u64).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "file offset out of range")
        })?;
        match sys::retry(|| write(done, at))? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => done += n,
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::{Pool, STRIPES};

    fn kept(pool: &Pool) -> usize {
        pool.free.iter().map(|s| s.0.lock().len()).sum()
    }

    #[test]
    fn a_buffer_given_back_on_one_thread_is_taken_on_another() {
        let pool = Pool::new(8, 64, false);
        let given = Vec::with_capacity(64);
        let at = given.as_ptr();
        // Given on a thread of its own, so on another stripe than the
        // taker's (threads are given the stripes in turn).
        std::thread::scope(|s| {
            s.spawn(|| pool.give(given));
        });
        let taken = pool.take();
        assert_eq!(taken.as_ptr(), at, "allocated instead of reusing");
        assert_eq!(kept(&pool), 0);
    }

    #[test]
    fn the_stripes_keep_no_more_than_the_pool_and_only_its_size() {
        let keep = 2 * STRIPES;
        let pool = Pool::new(keep, 64, false);
        // One thread gives everything back: its stripe fills, then the
        // others, then buffers are dropped.
        for _ in 0..keep + 5 {
            pool.give(Vec::with_capacity(64));
        }
        assert_eq!(kept(&pool), keep);
        pool.give(Vec::with_capacity(32));
        assert_eq!(kept(&pool), keep);
        // And every one of them is taken again before anything is
        // allocated.
        let taken: Vec<Vec<u8>> = (0..keep).map(|_| pool.take()).collect();
        assert_eq!(kept(&pool), 0);
        assert!(taken.iter().all(|b| b.capacity() == 64 && b.is_empty()));
    }
}
