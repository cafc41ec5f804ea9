//! One in-flight operation: what it owns while the kernel works (buffers,
//! the `msghdr`, iovec array and socket address a request points at), the
//! SQE it becomes, and what each CQE makes of it.

use std::io;
use std::mem;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::io::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use io_uring::types::Fd;
use io_uring::{cqueue, opcode, squeue};

use super::bufring::{BufRing, BGID};
use super::raw::Heap;
use crate::completion::{Handle, OpKind, Payload};
use crate::sys::error::aborted;
use crate::sys::unix;
use crate::sys::{advance, Op};

/// Linux's UIO_MAXIOV: more iovecs make sendmsg/readv fail with EINVAL, so
/// longer buffer lists are sent in several requests (and received into
/// their first 1024 buffers).
const IOV_MAX: usize = 1024;

/// Spare `Msg`s kept for reuse, so that vectored, datagram, accept and
/// connect operations do not allocate in steady state.
const SPARE_MSGS: usize = 256;

/// What a request may point at besides the data buffers. It lives in a
/// [`Heap`], so the pointers the `msghdr` holds into it stay valid while
/// the operation moves inside the slab.
pub(super) struct Msg {
    hdr: libc::msghdr,
    addr: libc::sockaddr_storage,
    addr_len: libc::socklen_t,
    /// Only ever refilled between requests, so its heap block does not
    /// move while the kernel reads it.
    iov: Vec<libc::iovec>,
}

// SAFETY: the raw pointers in `hdr` and `iov` point into this same value or
// into buffers owned by the same operation; none of them is tied to a
// thread, and all are used under the driver's lock or by the kernel.
unsafe impl Send for Msg {}

impl Msg {
    fn new() -> Msg {
        Msg {
            // SAFETY:
            // - all-zero bytes are a valid `msghdr` (null pointers, zero
            //   lengths), whatever private padding fields libc declares.
            hdr: unsafe { mem::zeroed() },
            addr: unix::storage(),
            addr_len: 0,
            iov: Vec::new(),
        }
    }

    /// Points `hdr` at our iovecs and, with `name`, at our address storage.
    fn point(&mut self, name: bool) {
        // SAFETY:
        // - all-zero bytes are a valid `msghdr`.
        self.hdr = unsafe { mem::zeroed() };
        if name {
            self.hdr.msg_name = ptr::addr_of_mut!(self.addr).cast();
            self.hdr.msg_namelen = self.addr_len;
        }
        self.hdr.msg_iov = self.iov.as_mut_ptr();
        self.hdr.msg_iovlen = self.iov.len() as _;
    }

    /// The iovecs of the spare capacity of `bufs`, in order.
    fn spare_iov(&mut self, bufs: &mut [Vec<u8>]) {
        self.iov.clear();
        for b in bufs.iter_mut().take(IOV_MAX) {
            let spare = b.spare_capacity_mut();
            self.iov.push(libc::iovec {
                iov_base: spare.as_mut_ptr().cast(),
                iov_len: spare.len(),
            });
        }
    }

    /// The iovecs of `bufs` minus their first `skip` bytes in all.
    fn data_iov(&mut self, bufs: &[Vec<u8>], mut skip: usize) {
        self.iov.clear();
        for b in bufs {
            if self.iov.len() == IOV_MAX {
                break;
            }
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            let rest = &b[skip..];
            skip = 0;
            self.iov.push(libc::iovec {
                iov_base: rest.as_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            });
        }
    }
}

/// The spare `Msg`s.
pub(super) struct Spares(Vec<Heap<Msg>>);

impl Spares {
    pub(super) fn new() -> Spares {
        Spares(Vec::new())
    }

    fn take(&mut self) -> Heap<Msg> {
        self.0.pop().unwrap_or_else(|| Heap::new(Msg::new()))
    }

    fn give(&mut self, m: Heap<Msg>) {
        if self.0.len() < SPARE_MSGS {
            self.0.push(m);
        }
    }
}

/// The kernel-facing state of one operation.
pub(super) enum Io {
    Accept(Heap<Msg>),
    AcceptMulti,
    /// `poll`: the connect request was lost to its submitter's exit after
    /// the connection attempt started; wait for writability instead.
    Connect {
        msg: Heap<Msg>,
        poll: bool,
    },
    Recv(Vec<u8>),
    RecvVectored(Vec<Vec<u8>>, Heap<Msg>),
    RecvPooled,
    /// `recv_multi`: one request yields a CQE per arrival (IORING_RECV_MULTISHOT).
    RecvMulti,
    Send {
        buf: Vec<u8>,
        done: usize,
    },
    SendVectored {
        bufs: Vec<Vec<u8>>,
        msg: Heap<Msg>,
        done: usize,
    },
    RecvFrom(Vec<u8>, Heap<Msg>),
    SendTo(Vec<u8>, Heap<Msg>),
    ReadAt(Vec<u8>, u64),
    ReadVectoredAt(Vec<Vec<u8>>, Heap<Msg>, u64),
    WriteAt {
        buf: Vec<u8>,
        off: u64,
        done: usize,
    },
    WriteVectoredAt {
        bufs: Vec<Vec<u8>>,
        msg: Heap<Msg>,
        off: u64,
        done: usize,
    },
}

/// An operation in the slab; its slab key is its `OpId` and user_data.
pub(super) struct OpState<T> {
    pub(super) handle: Handle,
    /// The handle's descriptor, kept open by the handle entry for as long
    /// as an operation of the handle exists.
    pub(super) fd: RawFd,
    /// The handle's slot in the ring's table of registered files, if it
    /// has one: requests name the file by it.
    pub(super) fixed: Option<u32>,
    pub(super) key: u64,
    pub(super) kind: OpKind,
    pub(super) value: T,
    pub(super) multishot: Option<fn(&T) -> T>,
    /// cancel, cancel_handle or close asked for this operation to stop: no
    /// continuation or re-arm is issued for it any more.
    pub(super) cancelled: bool,
    /// The stream lane the operation is ordered in, if any.
    pub(super) lane: Option<usize>,
    /// Waiting in its lane behind another operation: not in the kernel.
    pub(super) parked: bool,
    /// Completions delivered so far (`Completion::seq` of the next one).
    pub(super) seq: u64,
    pub(super) io: Io,
}

/// What a CQE produced besides the operation's own buffers.
pub(super) enum Extra {
    None,
    Accepted(TcpStream, SocketAddr),
    Pooled(Vec<u8>),
}

/// What to do with an operation after one of its CQEs.
pub(super) enum Next {
    /// More CQEs will come for the request in flight.
    Wait,
    /// Submit the operation's next request now (the rest of a short write,
    /// or a multishot accept the kernel ended without an error).
    Again,
    /// Submit it again once the ring has buffers (ENOBUFS).
    Rearm,
    /// The operation is over: its last completion.
    Done(io::Result<usize>, Extra),
}

/// The outcome of one CQE: maybe a `more: true` completion, and what next.
pub(super) struct Step {
    pub(super) event: Option<(io::Result<usize>, Extra)>,
    pub(super) next: Next,
}

impl Step {
    fn done(r: io::Result<usize>) -> Step {
        Step::done_with(r, Extra::None)
    }

    fn done_with(r: io::Result<usize>, extra: Extra) -> Step {
        Step {
            event: None,
            next: Next::Done(r, extra),
        }
    }

    fn next(next: Next) -> Step {
        Step { event: None, next }
    }
}

fn os(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

impl Io {
    pub(super) fn new(op: Op, multishot: bool, spares: &mut Spares) -> Io {
        match op {
            Op::Accept if multishot => Io::AcceptMulti,
            Op::Accept => Io::Accept(spares.take()),
            Op::Connect(addr) => {
                let mut m = spares.take();
                // SAFETY:
                // - a fresh or spare `Msg` is in no request.
                let msg = unsafe { m.get_mut() };
                let (s, len) = unix::from_socket_addr(addr);
                msg.addr = s;
                msg.addr_len = len;
                Io::Connect {
                    msg: m,
                    poll: false,
                }
            }
            Op::Recv(b) => Io::Recv(b),
            Op::RecvVectored(b) => Io::RecvVectored(b, spares.take()),
            Op::RecvPooled => Io::RecvPooled,
            Op::RecvMulti => Io::RecvMulti,
            Op::Send(buf) => Io::Send { buf, done: 0 },
            Op::SendVectored(bufs) => Io::SendVectored {
                bufs,
                msg: spares.take(),
                done: 0,
            },
            Op::RecvFrom(b) => Io::RecvFrom(b, spares.take()),
            Op::SendTo(b, addr) => {
                let mut m = spares.take();
                // SAFETY:
                // - a fresh or spare `Msg` is in no request.
                let msg = unsafe { m.get_mut() };
                let (s, len) = unix::from_socket_addr(addr);
                msg.addr = s;
                msg.addr_len = len;
                Io::SendTo(b, m)
            }
            Op::ReadAt(b, off) => Io::ReadAt(b, off),
            Op::ReadVectoredAt(b, off) => Io::ReadVectoredAt(b, spares.take(), off),
            Op::WriteAt(buf, off) => Io::WriteAt { buf, off, done: 0 },
            Op::WriteVectoredAt(bufs, off) => Io::WriteVectoredAt {
                bufs,
                msg: spares.take(),
                off,
                done: 0,
            },
        }
    }

    /// The SQE for the operation's next request (user_data not yet set).
    ///
    /// # Safety
    ///
    /// No request of this operation is in flight: this is its first
    /// submission, or its previous CQE was reaped without `F_MORE`. The
    /// returned entry points into `self`, which must then stay alive (in
    /// the slab, or leaked) until the request's last CQE.
    /// `fixed` is the file's slot in the ring's table of registered files,
    /// if it has one (`fd` is then only a fallback nobody uses).
    /// `pool_buffer_size` is the length of a buffer-select receive;
    /// `recv_multishot` says the kernel has IORING_RECV_MULTISHOT (Linux
    /// 6.0): without it a multishot receive is a single-shot one, issued
    /// again after each CQE.
    pub(super) unsafe fn sqe(
        &mut self,
        fd: RawFd,
        fixed: Option<u32>,
        pool_buffer_size: usize,
        recv_multishot: bool,
    ) -> squeue::Entry {
        // A registered file is named by its slot and IOSQE_FIXED_FILE (what
        // io-uring's `types::Fixed` does; its trait is sealed, so the slot
        // goes where the descriptor would and the flag is added after).
        match fixed {
            Some(slot) => {
                // SAFETY: the caller's contract, passed on.
                unsafe { self.entry(Fd(slot as RawFd), pool_buffer_size, recv_multishot) }
                    .flags(squeue::Flags::FIXED_FILE)
            }
            // SAFETY: the caller's contract, passed on.
            None => unsafe { self.entry(Fd(fd), pool_buffer_size, recv_multishot) },
        }
    }

    /// [`sqe`](Io::sqe) for the file `fd` names, by descriptor or by slot.
    ///
    /// # Safety
    ///
    /// As for `sqe`.
    unsafe fn entry(
        &mut self,
        fd: Fd,
        pool_buffer_size: usize,
        recv_multishot: bool,
    ) -> squeue::Entry {
        match self {
            Io::Accept(m) => {
                // SAFETY:
                // - no request is in flight (this function's contract).
                let msg = unsafe { m.get_mut() };
                msg.addr = unix::storage();
                msg.addr_len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                opcode::Accept::new(
                    fd,
                    ptr::addr_of_mut!(msg.addr).cast(),
                    ptr::addr_of_mut!(msg.addr_len),
                )
                .flags(libc::SOCK_CLOEXEC)
                .build()
            }
            Io::AcceptMulti => opcode::AcceptMulti::new(fd)
                .flags(libc::SOCK_CLOEXEC)
                .build(),
            Io::Connect { poll: true, .. } => {
                opcode::PollAdd::new(fd, libc::POLLOUT as u32).build()
            }
            Io::Connect { msg: m, .. } => {
                // SAFETY:
                // - no request is in flight (this function's contract).
                let msg = unsafe { m.get_mut() };
                opcode::Connect::new(fd, ptr::addr_of!(msg.addr).cast(), msg.addr_len).build()
            }
            Io::Recv(buf) => {
                let spare = buf.spare_capacity_mut();
                opcode::Recv::new(fd, spare.as_mut_ptr().cast(), clamp32(spare.len())).build()
            }
            Io::RecvVectored(bufs, m) => {
                // SAFETY:
                // - no request is in flight (this function's contract).
                let msg = unsafe { m.get_mut() };
                msg.spare_iov(bufs);
                msg.point(false);
                opcode::RecvMsg::new(fd, &mut msg.hdr).build()
            }
            Io::RecvMulti if recv_multishot => opcode::RecvMulti::new(fd, BGID).build(),
            Io::RecvPooled | Io::RecvMulti => {
                opcode::Recv::new(fd, ptr::null_mut(), clamp32(pool_buffer_size))
                    .buf_group(BGID)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
            }
            Io::Send { buf, done } => {
                let rest = &buf[*done..];
                opcode::Send::new(fd, rest.as_ptr(), clamp32(rest.len()))
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            }
            Io::SendVectored { bufs, msg: m, done } => {
                // SAFETY:
                // - no request is in flight (this function's contract).
                let msg = unsafe { m.get_mut() };
                msg.data_iov(bufs, *done);
                msg.point(false);
                opcode::SendMsg::new(fd, &msg.hdr)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
            }
            Io::RecvFrom(buf, m) => {
                // SAFETY:
                // - no request is in flight (this function's contract).
                let msg = unsafe { m.get_mut() };
                msg.spare_iov(std::slice::from_mut(buf));
                msg.addr = unix::storage();
                msg.addr_len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                msg.point(true);
                // MSG_TRUNC: the result is the datagram's real length, which
                // is how a datagram larger than the room is told apart
                // (SEMANTICS O7) without relying on msg_flags write-back.
                opcode::RecvMsg::new(fd, &mut msg.hdr)
                    .flags(libc::MSG_TRUNC as u32)
                    .build()
            }
            Io::SendTo(buf, m) => {
                // SAFETY:
                // - no request is in flight (this function's contract).
                let msg = unsafe { m.get_mut() };
                msg.data_iov(std::slice::from_ref(buf), 0);
                msg.point(true);
                opcode::SendMsg::new(fd, &msg.hdr)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
            }
            Io::ReadAt(buf, off) => {
                let spare = buf.spare_capacity_mut();
                opcode::Read::new(fd, spare.as_mut_ptr().cast(), clamp32(spare.len()))
                    .offset(*off)
                    .build()
            }
            Io::ReadVectoredAt(bufs, m, off) => {
                // SAFETY:
                // - no request is in flight (this function's contract).
                let msg = unsafe { m.get_mut() };
                msg.spare_iov(bufs);
                opcode::Readv::new(fd, msg.iov.as_ptr(), msg.iov.len() as u32)
                    .offset(*off)
                    .build()
            }
            Io::WriteAt { buf, off, done } => {
                let rest = &buf[*done..];
                opcode::Write::new(fd, rest.as_ptr(), clamp32(rest.len()))
                    .offset(*off + *done as u64)
                    .build()
            }
            Io::WriteVectoredAt {
                bufs,
                msg: m,
                off,
                done,
            } => {
                // SAFETY:
                // - no request is in flight (this function's contract).
                let msg = unsafe { m.get_mut() };
                msg.data_iov(bufs, *done);
                opcode::Writev::new(fd, msg.iov.as_ptr(), msg.iov.len() as u32)
                    .offset(*off + *done as u64)
                    .build()
            }
        }
    }

    /// What the CQE `(res, flags)` of this operation's request means.
    /// `stop`: the operation was asked to stop (cancel, close, port
    /// closing), so it is not continued or re-armed.
    pub(super) fn on_cqe(
        &mut self,
        fd: RawFd,
        res: i32,
        flags: u32,
        stop: bool,
        ring: &mut BufRing,
    ) -> Step {
        match self {
            Io::Send { buf, done } | Io::WriteAt { buf, done, .. } => {
                let total = buf.len();
                write_step(done, total, res, stop)
            }
            Io::SendVectored { bufs, done, .. } | Io::WriteVectoredAt { bufs, done, .. } => {
                let total = bufs.iter().map(Vec::len).sum();
                write_step(done, total, res, stop)
            }
            Io::Recv(buf) | Io::ReadAt(buf, _) => {
                if res < 0 {
                    return Step::done(Err(os(res)));
                }
                // SAFETY:
                // - the request was a recv or read into exactly this spare
                //   capacity, and its CQE reports `res` bytes written.
                unsafe { advance(std::slice::from_mut(buf), res as usize) };
                Step::done(Ok(res as usize))
            }
            Io::RecvVectored(bufs, _) | Io::ReadVectoredAt(bufs, _, _) => {
                if res < 0 {
                    return Step::done(Err(os(res)));
                }
                // SAFETY:
                // - the request's iovecs were exactly these spare
                //   capacities, in order, and its CQE reports `res` bytes.
                unsafe { advance(bufs, res as usize) };
                Step::done(Ok(res as usize))
            }
            Io::RecvFrom(buf, _) => {
                if res < 0 {
                    return Step::done(Err(os(res)));
                }
                let room = buf.capacity() - buf.len();
                let got = (res as usize).min(room);
                // SAFETY:
                // - the request's one iovec was this spare capacity; the
                //   kernel wrote `got` bytes of the datagram into it.
                unsafe { advance(std::slice::from_mut(buf), got) };
                if res as usize > room {
                    Step::done(Err(io::Error::from_raw_os_error(libc::EMSGSIZE)))
                } else {
                    Step::done(Ok(got))
                }
            }
            Io::SendTo(..) => Step::done(if res < 0 {
                Err(os(res))
            } else {
                Ok(res as usize)
            }),
            Io::Connect { poll: false, .. } => {
                Step::done(if res < 0 { Err(os(res)) } else { Ok(0) })
            }
            Io::Connect { poll: true, .. } => {
                if res < 0 {
                    return Step::done(Err(os(res)));
                }
                Step::done(connect_outcome(fd))
            }
            Io::Accept(m) => {
                if res < 0 {
                    return Step::done(Err(os(res)));
                }
                let stream = accepted(res);
                // SAFETY:
                // - the accept's CQE was reaped: the request is over.
                let peer = unix::to_socket_addr(unsafe { &m.get().addr });
                match peer.map_or_else(|| stream.peer_addr(), Ok) {
                    Ok(peer) => Step::done_with(Ok(0), Extra::Accepted(stream, peer)),
                    Err(e) => Step::done(Err(e)),
                }
            }
            Io::AcceptMulti => {
                let more = cqueue::more(flags);
                let outcome = if res < 0 {
                    Some((Err(os(res)), Extra::None))
                } else {
                    // Multishot accept returns no address (io_uring_prep_multishot_accept.3).
                    let stream = accepted(res);
                    match stream.peer_addr() {
                        Ok(peer) => Some((Ok(0), Extra::Accepted(stream, peer))),
                        // Reset before we looked: as if it had never been
                        // accepted (the descriptor is closed here).
                        Err(_) => None,
                    }
                };
                match (outcome, more) {
                    (Some((Err(e), _)), false) => Step::done(Err(e)),
                    (outcome, true) => Step {
                        event: outcome,
                        next: Next::Wait,
                    },
                    // The kernel ended the multishot without an error (CQ
                    // overflow, for one): re-arm, unless it was cancelled.
                    (outcome, false) => Step {
                        event: outcome,
                        next: if stop {
                            Next::Done(Err(aborted()), Extra::None)
                        } else {
                            Next::Again
                        },
                    },
                }
            }
            Io::RecvPooled => {
                let data = selected(ring, res, flags);
                if res == -libc::ENOBUFS {
                    return pool_dry(stop);
                }
                if res < 0 {
                    return Step::done(Err(os(res)));
                }
                // At end of stream an empty, capacity-less Vec: no pool
                // buffer is spent on a FIN.
                Step::done_with(Ok(res as usize), Extra::Pooled(data.unwrap_or_default()))
            }
            Io::RecvMulti => {
                let data = selected(ring, res, flags);
                if res > 0 {
                    // One arrival. Without F_MORE the kernel ended the
                    // request (its CQ overflowed, or this is the single-shot
                    // form): issued again, unless it was asked to stop.
                    let next = if cqueue::more(flags) {
                        Next::Wait
                    } else if stop {
                        Next::Done(Err(aborted()), Extra::None)
                    } else {
                        Next::Again
                    };
                    return Step {
                        event: Some((Ok(res as usize), Extra::Pooled(data.unwrap_or_default()))),
                        next,
                    };
                }
                if res == -libc::ENOBUFS {
                    return pool_dry(stop);
                }
                if res < 0 {
                    return Step::done(Err(os(res)));
                }
                Step::done_with(Ok(0), Extra::Pooled(Vec::new()))
            }
        }
    }

    /// The buffers and products handed back in the final completion; the
    /// `Msg` goes back to the spares.
    pub(super) fn into_payload(self, extra: Extra, spares: &mut Spares) -> Payload {
        let (payload, msg) = match self {
            Io::Accept(m) | Io::Connect { msg: m, .. } => (extra_payload(extra), Some(m)),
            Io::AcceptMulti => (extra_payload(extra), None),
            Io::RecvPooled | Io::RecvMulti => match extra {
                Extra::Pooled(v) => (Payload::Buf(v), None),
                _ => (Payload::None, None),
            },
            Io::Recv(b)
            | Io::Send { buf: b, .. }
            | Io::ReadAt(b, _)
            | Io::WriteAt { buf: b, .. } => (Payload::Buf(b), None),
            Io::SendTo(b, m) => (Payload::Buf(b), Some(m)),
            Io::RecvFrom(buf, m) => {
                // SAFETY:
                // - the final CQE was reaped: no request is in flight.
                let from = unix::to_socket_addr(unsafe { &m.get().addr });
                (Payload::Datagram { buf, from }, Some(m))
            }
            Io::RecvVectored(b, m)
            | Io::SendVectored {
                bufs: b, msg: m, ..
            }
            | Io::ReadVectoredAt(b, m, _)
            | Io::WriteVectoredAt {
                bufs: b, msg: m, ..
            } => (Payload::Bufs(b), Some(m)),
        };
        if let Some(m) = msg {
            spares.give(m);
        }
        payload
    }
}

/// The buffer a buffer-select CQE carries: taken out of the ring when the
/// kernel wrote data into it, else put back. `None` without one.
fn selected(ring: &mut BufRing, res: i32, flags: u32) -> Option<Vec<u8>> {
    let bid = cqueue::buffer_select(flags)?;
    if res <= 0 {
        ring.give_back(bid);
        return None;
    }
    // SAFETY:
    // - `bid` and `res` come from this reaped CQE: the kernel wrote `res`
    //   bytes into that buffer and is done with it.
    let data = unsafe { ring.take(bid, res as usize) };
    if data.is_none() {
        log::error!(target: "cport", "io_uring: CQE names a pool buffer not in the ring: {bid}");
    }
    data
}

/// A buffer-select receive found the ring empty: it waits, with nothing in
/// the kernel, until buffers come back (never reported as the stream's
/// end: LESSONS 4, SEMANTICS R3), unless it was asked to stop.
fn pool_dry(stop: bool) -> Step {
    if stop {
        Step::done(Err(aborted()))
    } else {
        Step::next(Next::Rearm)
    }
}

/// Prepares the operation to be issued again after the kernel cancelled
/// it because the thread that submitted it exited. Every request is safe
/// to repeat (a cancelled request moved no data), except a connect whose
/// attempt is under way: a second connect(2) on a non-blocking socket
/// fails with EALREADY, so the connect waits for writability instead.
pub(super) fn lost_to_exit(io: &mut Io) {
    if let Io::Connect { poll, .. } = io {
        *poll = true;
    }
}

/// The result of a connection attempt, once its socket is writable (or in
/// error).
fn connect_outcome(fd: RawFd) -> io::Result<usize> {
    // SAFETY:
    // - `fd` is the handle's descriptor, which the handle entry keeps open
    //   while this operation exists.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&fd);
    match sock.take_error()? {
        Some(e) => Err(e),
        // Writable without an error is connected; a socket that never got
        // as far as connecting is writable too, and has no peer.
        None => sock.peer_addr().map(|_| 0),
    }
}

/// The payload of an accept's completion.
pub(super) fn extra_payload(extra: Extra) -> Payload {
    match extra {
        Extra::Accepted(stream, peer) => Payload::Accepted { stream, peer },
        Extra::Pooled(v) => Payload::Buf(v),
        Extra::None => Payload::None,
    }
}

/// A short write is continued until all `total` bytes went (WSASend
/// semantics, LESSONS 8); an error after partial progress is reported as
/// the error.
fn write_step(done: &mut usize, total: usize, res: i32, stop: bool) -> Step {
    if res < 0 {
        return Step::done(Err(os(res)));
    }
    *done += res as usize;
    if *done >= total {
        Step::done(Ok(*done))
    } else if stop {
        Step::done(Err(aborted()))
    } else if res == 0 {
        // No progress and no error: continuing would spin.
        Step::done(Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the kernel took no bytes",
        )))
    } else {
        Step::next(Next::Again)
    }
}

/// The stream of an accept CQE's descriptor, in blocking mode (accept4
/// without SOCK_NONBLOCK) and close-on-exec.
fn accepted(fd: i32) -> TcpStream {
    // SAFETY:
    // - a non-negative accept result is a new descriptor installed for us
    //   and owned by nothing else.
    TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn clamp32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
