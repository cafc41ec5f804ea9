//! One operation, from its issue to its final packet: the OVERLAPPED the
//! kernel completes, first in a `#[repr(C)]` struct so that the pointer a
//! packet carries is the operation's own address; everything else the
//! kernel writes after the issuing call returned; the value and buffers
//! the operation owns; one function per Winsock call family that issues
//! it; and the completion its end makes.
//!
//! # Ownership
//!
//! An operation lives in a heap cell owned by one [`OpBox`], which the
//! driver keeps in its op slab (`mod.rs`). While the kernel may write into
//! the cell (from a start that went pending until that start's packet is
//! dequeued) no Rust reference to the operation exists: the driver holds
//! only the `OpBox`, whose [`overlapped`](OpBox::overlapped) address is
//! all that cancellation needs. Every other access, [`get_mut`],
//! [`start`] and [`into_inner`] (the one way to free the cell), is
//! `unsafe` with one contract: the kernel holds no I/O of the operation.
//! An `OpBox` has no `Drop`: one dropped, or left in the slab of a port
//! dropped while the kernel still holds it, is leaked, never freed under
//! the kernel (SEMANTICS X3).
//!
//! [`get_mut`]: OpBox::get_mut
//! [`start`]: OpBox::start
//! [`into_inner`]: OpBox::into_inner

use std::ffi::c_void;
use std::io;
use std::mem;
use std::net::{SocketAddr, TcpStream};
use std::ptr::{self, NonNull};
use std::slice;
use std::sync::Mutex;

use socket2::{Domain, Socket};
use windows_sys::Win32::Foundation::{ERROR_IO_PENDING, ERROR_MORE_DATA, TRUE};
use windows_sys::Win32::Networking::WinSock::{
    AcceptEx, WSARecv, WSARecvFrom, WSASend, WSASendTo, SOCKADDR, SOCKADDR_STORAGE, SOCKET,
    SOCKET_ERROR, WSABUF, WSAEMSGSIZE,
};
use windows_sys::Win32::System::IO::{OVERLAPPED, OVERLAPPED_0, OVERLAPPED_0_0};

use super::net;
use super::pool::Pool;
use crate::completion::{Completion, Handle, OpId, OpKind, Payload};
use crate::sync::lock_std as lock;
use crate::sys::error::aborted;
use crate::sys::{advance, Op, Ready};

/// Room AcceptEx wants per address: the largest address plus 16.
const ACCEPT_ADDR: usize = mem::size_of::<SOCKADDR_STORAGE>() + 16;

/// One operation of the port.
#[repr(C)]
pub(super) struct Operation<T> {
    /// First: `#[repr(C)]` keeps the fields in order from offset 0, so a
    /// packet's OVERLAPPED pointer is this operation's address.
    ov: OVERLAPPED,
    /// WSARecv's and WSARecvFrom's flags, in and out.
    flags: u32,
    /// WSARecvFrom's sender, written by the kernel; the destination of
    /// WSASendTo and ConnectEx.
    addr: SOCKADDR_STORAGE,
    addr_len: i32,
    /// AcceptEx's local and remote address block.
    accept: [u8; 2 * ACCEPT_ADDR],
    /// Its key in the op slab: where a packet leads.
    pub(super) id: OpId,
    pub(super) handle: Handle,
    key: u64,
    /// The socket it runs on (a file operation has none and never starts).
    sock: SOCKET,
    value: T,
    multishot: Option<fn(&T) -> T>,
    pub(super) op: Op,
    /// Bytes of a send the kernel already took (O4's continuation).
    sent: usize,
    /// The listener's family, for the sockets AcceptEx accepts into.
    domain: Domain,
    /// The socket AcceptEx accepts into.
    accepted: Option<Socket>,
    /// `recv_pooled`: the pool buffer, taken once the zero-byte receive
    /// said data (or the end) is there; `None` during that first phase.
    pool_buf: Option<Vec<u8>>,
    /// Completions delivered so far (`Completion::seq` of the next one).
    seq: u64,
}

/// What starting an operation did.
pub(super) enum Started {
    /// The kernel has it; a packet will come.
    Pending,
    /// Done at issue: bytes, and the raw error if it failed.
    Done(usize, Option<i32>),
}

/// What an operation does after a start that succeeded (see
/// [`OpBox::next`]).
pub(super) enum Next {
    /// It was started again (a send's rest, a pooled receive's second
    /// phase, a multishot accept's next connection).
    Again(Started),
    /// A pooled receive whose data is there but the pool is dry: nothing of
    /// it is in the kernel until a buffer comes back (R3).
    Park,
    /// It is done: its completion is next.
    Final,
}

impl<T> Operation<T> {
    /// A new operation on `sock` (any value for a file operation), not yet
    /// started; its `id` is set once the slab has given it one.
    pub(super) fn new(
        handle: Handle,
        key: u64,
        sock: SOCKET,
        value: T,
        multishot: Option<fn(&T) -> T>,
        op: Op,
        domain: Domain,
    ) -> Operation<T> {
        Operation {
            ov: overlapped(0),
            flags: 0,
            addr: net::storage(),
            addr_len: 0,
            accept: [0; 2 * ACCEPT_ADDR],
            id: OpId {
                port: handle.port,
                index: u32::MAX,
                generation: 0,
            },
            handle,
            key,
            sock,
            value,
            multishot,
            op,
            sent: 0,
            domain,
            accepted: None,
            pool_buf: None,
            seq: 0,
        }
    }

    /// The outcome of the start whose packet was just dequeued.
    pub(super) fn outcome(&self) -> (usize, Option<i32>) {
        net::overlapped_result(self.sock, &self.ov)
    }

    /// Holds a pool buffer (its completion gives it back to the pool).
    pub(super) fn is_pooled(&self) -> bool {
        self.pool_buf.is_some()
    }

    /// The completion of the finished operation: `bytes` and `err` are its
    /// last start's outcome; `orphan`: its handle was closed (or the port),
    /// so any failure reads as aborted (X2).
    pub(super) fn complete(
        mut self,
        bytes: usize,
        err: Option<i32>,
        orphan: bool,
        pool: &Mutex<Pool>,
    ) -> Completion<T> {
        let kind = self.op.kind();
        let mut result = match err {
            None => Ok(bytes),
            Some(_) if orphan => Err(aborted()),
            Some(e) => Err(io::Error::from_raw_os_error(e)),
        };
        let payload = match &mut self.op {
            Op::Recv(b) if err.is_none() => {
                // SAFETY:
                // - the receive's packet said the kernel wrote `bytes` into
                //   the spare capacity of `b`, which nothing touched since.
                unsafe { advance(slice::from_mut(b), bytes) };
                Payload::Buf(mem::take(b))
            }
            Op::RecvVectored(bs) if err.is_none() => {
                // SAFETY:
                // - the kernel filled the spare capacities of `bs` in order
                //   with `bytes` bytes (WSARecv's scatter), untouched since.
                unsafe { advance(bs, bytes) };
                Payload::Bufs(mem::take(bs))
            }
            Op::Send(_) | Op::SendVectored(_) if err.is_none() => {
                result = Ok(self.sent + bytes);
                mem::replace(&mut self.op, Op::Accept).into_payload()
            }
            Op::RecvFrom(b) => {
                let truncated =
                    matches!(err, Some(e) if e == ERROR_MORE_DATA as i32 || e == WSAEMSGSIZE);
                if truncated && !orphan {
                    // O7: the part that fit, and the error the kernel names
                    // truncation with on this platform.
                    result = Err(io::Error::from_raw_os_error(WSAEMSGSIZE));
                }
                let from = if err.is_none() || (truncated && !orphan) {
                    // SAFETY:
                    // - the datagram's packet said the kernel wrote `bytes`
                    //   (the part that fit, when truncated) into the spare
                    //   capacity of `b`, untouched since.
                    unsafe { advance(slice::from_mut(b), bytes) };
                    net::from_storage(&self.addr, self.addr_len)
                } else {
                    None
                };
                Payload::Datagram {
                    buf: mem::take(b),
                    from,
                }
            }
            Op::RecvMulti => {
                // Arrivals went out with `more`; the last completion has
                // no data: an empty buffer at end of stream, as on Linux.
                if let Some(b) = self.pool_buf.take() {
                    let mut pool = lock(pool);
                    pool.done();
                    pool.give(b);
                }
                if err.is_none() {
                    Payload::Buf(Vec::new())
                } else {
                    Payload::None
                }
            }
            Op::RecvPooled => match self.pool_buf.take() {
                Some(mut b) if err.is_none() && bytes > 0 => {
                    lock(pool).filled();
                    // SAFETY:
                    // - the second phase's receive wrote `bytes` into the
                    //   spare capacity of this pool buffer, untouched since.
                    unsafe { advance(slice::from_mut(&mut b), bytes) };
                    Payload::Buf(b)
                }
                // End of stream (an empty, capacity-less buffer, as on
                // Linux: no pool buffer is spent on a FIN), or a failure.
                Some(b) => {
                    let mut pool = lock(pool);
                    pool.done();
                    pool.give(b);
                    if err.is_none() {
                        Payload::Buf(Vec::new())
                    } else {
                        Payload::None
                    }
                }
                None => Payload::None,
            },
            Op::Accept if err.is_none() => match self.take_accepted() {
                Ok((stream, peer)) => Payload::Accepted { stream, peer },
                Err(e) => {
                    result = Err(e);
                    Payload::None
                }
            },
            Op::Connect(_) if err.is_none() => {
                if let Err(e) = net::connected(self.sock) {
                    result = Err(e);
                }
                Payload::None
            }
            _ => mem::replace(&mut self.op, Op::Accept).into_payload(),
        };
        Completion {
            key: self.key,
            kind,
            op: Some(self.id),
            handle: Some(self.handle),
            result,
            value: self.value,
            payload,
            more: false,
            seq: self.seq,
        }
    }

    /// The stream AcceptEx accepted, made a full connection.
    fn take_accepted(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let sock = self.accepted.take().ok_or_else(|| {
            io::Error::new(io::ErrorKind::Other, "accept: no socket was accepted into")
        })?;
        net::accepted(sock, self.sock)
    }

    /// WSARecv into the receive's buffers (a pooled receive: zero bytes
    /// first, its pool buffer once data is there).
    ///
    /// # Safety
    ///
    /// The contract of [`OpBox::start`]: `self` lives in an `OpBox` cell
    /// and the kernel holds no I/O of it.
    unsafe fn recv(&mut self, skip: bool) -> Started {
        let bufs: Vec<WSABUF> = match &mut self.op {
            Op::Recv(b) => vec![spare(b)],
            Op::RecvVectored(bs) => bs.iter_mut().map(spare).collect(),
            // Zero bytes first: completes when data or the end is there,
            // pinning no buffer meanwhile (O6).
            Op::RecvPooled | Op::RecvMulti => match &mut self.pool_buf {
                Some(b) => vec![spare(b)],
                None => vec![WSABUF {
                    len: 0,
                    buf: ptr::null_mut(),
                }],
            },
            _ => unreachable!("only receives are started by recv"),
        };
        let mut bytes = 0u32;
        // SAFETY:
        // - `bufs` describe spare capacity of buffers the operation owns
        //   until its completion, heap memory that does not move with it;
        //   the WSABUF array itself may be transient for an overlapped call;
        // - the flags and the OVERLAPPED are fields of `self`, whose cell
        //   is neither moved nor freed until this start's packet is
        //   dequeued (this function's contract); `bytes` is a live local.
        let rc = unsafe {
            WSARecv(
                self.sock,
                bufs.as_ptr(),
                bufs.len() as u32,
                &mut bytes,
                &mut self.flags,
                &mut self.ov,
                None,
            )
        };
        started(rc, bytes, skip)
    }

    /// WSARecvFrom: one datagram and its sender.
    ///
    /// # Safety
    ///
    /// As for [`recv`](Operation::recv).
    unsafe fn recv_from(&mut self, skip: bool) -> Started {
        let bufs = match &mut self.op {
            Op::RecvFrom(b) => [spare(b)],
            _ => unreachable!("only recv_from is started by recv_from"),
        };
        self.addr = net::storage();
        self.addr_len = mem::size_of::<SOCKADDR_STORAGE>() as i32;
        let mut bytes = 0u32;
        // SAFETY:
        // - `bufs` describes spare capacity of a buffer the operation owns
        //   until its completion, heap memory that does not move with it;
        //   the WSABUF array itself may be transient;
        // - flags, sender address, its length and the OVERLAPPED are fields
        //   of `self`, whose cell stays put and alive until this start's
        //   packet is dequeued (this function's contract); `bytes` is a
        //   live local.
        let rc = unsafe {
            WSARecvFrom(
                self.sock,
                bufs.as_ptr(),
                1,
                &mut bytes,
                &mut self.flags,
                ptr::addr_of_mut!(self.addr).cast::<SOCKADDR>(),
                &mut self.addr_len,
                &mut self.ov,
                None,
            )
        };
        started(rc, bytes, skip)
    }

    /// WSASend of what the kernel has not taken yet.
    ///
    /// # Safety
    ///
    /// As for [`recv`](Operation::recv).
    unsafe fn send(&mut self, skip: bool) -> Started {
        let bufs = unsent(&self.op, self.sent);
        let mut bytes = 0u32;
        // SAFETY:
        // - `bufs` describe bytes of buffers the operation owns until its
        //   completion, heap memory that does not move with it; the WSABUF
        //   array itself may be transient;
        // - the OVERLAPPED is a field of `self`, whose cell stays put and
        //   alive until this start's packet is dequeued (this function's
        //   contract); `bytes` is a live local.
        let rc = unsafe {
            WSASend(
                self.sock,
                bufs.as_ptr(),
                bufs.len() as u32,
                &mut bytes,
                0,
                &mut self.ov,
                None,
            )
        };
        started(rc, bytes, skip)
    }

    /// WSASendTo: one datagram to its destination.
    ///
    /// # Safety
    ///
    /// As for [`recv`](Operation::recv).
    unsafe fn send_to(&mut self, skip: bool) -> Started {
        let to = match &self.op {
            Op::SendTo(_, to) => *to,
            _ => unreachable!("only send_to is started by send_to"),
        };
        (self.addr, self.addr_len) = net::to_storage(to);
        let bufs = unsent(&self.op, 0);
        let mut bytes = 0u32;
        // SAFETY:
        // - `bufs` describes the bytes of a buffer the operation owns until
        //   its completion; the WSABUF array itself may be transient;
        // - the destination and the OVERLAPPED are fields of `self`, whose
        //   cell stays put and alive until this start's packet is dequeued
        //   (this function's contract); `bytes` is a live local.
        let rc = unsafe {
            WSASendTo(
                self.sock,
                bufs.as_ptr(),
                bufs.len() as u32,
                &mut bytes,
                0,
                ptr::addr_of!(self.addr).cast::<SOCKADDR>(),
                self.addr_len,
                &mut self.ov,
                None,
            )
        };
        started(rc, bytes, skip)
    }

    /// AcceptEx into a fresh socket of the listener's family.
    ///
    /// # Safety
    ///
    /// As for [`recv`](Operation::recv).
    unsafe fn accept(&mut self, skip: bool) -> Started {
        let sock = match net::accept_socket(self.domain) {
            Ok(sock) => sock,
            Err(e) => return Started::Done(0, Some(e.raw_os_error().unwrap_or(0))),
        };
        let target = net::raw(&sock);
        self.accepted = Some(sock);
        let mut bytes = 0u32;
        // SAFETY:
        // - `self.sock` is the listening socket and `target` a fresh socket
        //   the operation owns (`self.accepted`) until its completion;
        // - the address block and the OVERLAPPED are fields of `self`,
        //   whose cell stays put and alive until this start's packet is
        //   dequeued (this function's contract); no data is received
        //   (length 0), so the block holds only the two addresses, each
        //   given its ACCEPT_ADDR bytes; `bytes` is a live local.
        let ok = unsafe {
            AcceptEx(
                self.sock,
                target,
                self.accept.as_mut_ptr().cast::<c_void>(),
                0,
                ACCEPT_ADDR as u32,
                ACCEPT_ADDR as u32,
                &mut bytes,
                &mut self.ov,
            )
        };
        started(if ok == TRUE { 0 } else { SOCKET_ERROR }, bytes, skip)
    }

    /// ConnectEx to the connect's address (the socket is already bound).
    ///
    /// # Safety
    ///
    /// As for [`recv`](Operation::recv).
    unsafe fn connect(&mut self, skip: bool) -> Started {
        let to = match &self.op {
            Op::Connect(to) => *to,
            _ => unreachable!("only connect is started by connect"),
        };
        let connect_ex = match net::connect_ex(self.sock) {
            Ok(f) => f,
            Err(e) => return Started::Done(0, Some(e.raw_os_error().unwrap_or(0))),
        };
        (self.addr, self.addr_len) = net::to_storage(to);
        let mut bytes = 0u32;
        // SAFETY:
        // - `connect_ex` is the provider's ConnectEx for `self.sock`, a
        //   bound, unconnected socket the port owns;
        // - the address and the OVERLAPPED are fields of `self`, whose cell
        //   stays put and alive until this start's packet is dequeued (this
        //   function's contract); no data is sent; `bytes` is a live local.
        let ok = unsafe {
            connect_ex(
                self.sock,
                ptr::addr_of!(self.addr).cast::<SOCKADDR>(),
                self.addr_len,
                ptr::null(),
                0,
                &mut bytes,
                &mut self.ov,
            )
        };
        started(if ok == TRUE { 0 } else { SOCKET_ERROR }, bytes, skip)
    }
}

/// The one owner of an operation's heap cell (see the module
/// documentation).
///
/// Not a `Box`: a `Box` is asserted unique whenever it moves, and this
/// owner moves with the slab while the kernel writes into the cell (as
/// io_uring's `Heap`, sys/uring/raw.rs).
pub(super) struct OpBox<T>(NonNull<Operation<T>>);

// SAFETY:
// - an `OpBox` owns its operation as a `Box` would, and the operation holds
//   nothing tied to a thread: its value is `Send` (the bound), and the raw
//   pointers it holds (the OVERLAPPED's) are only ever handed to the
//   kernel, never dereferenced by this crate.
unsafe impl<T: Send> Send for OpBox<T> {}

impl<T> OpBox<T> {
    pub(super) fn new(op: Operation<T>) -> OpBox<T> {
        OpBox(NonNull::from(Box::leak(Box::new(op))))
    }

    /// The address the kernel knows the operation by: its OVERLAPPED's,
    /// which is the cell's own.
    pub(super) fn overlapped(&self) -> *mut OVERLAPPED {
        self.0.as_ptr().cast()
    }

    /// The operation.
    ///
    /// # Safety
    ///
    /// The kernel holds no I/O of the operation: it was never started, its
    /// last start completed at issue, or that start's packet was dequeued.
    pub(super) unsafe fn get_mut(&mut self) -> &mut Operation<T> {
        // SAFETY:
        // - the pointer came from a live `Box` and is freed only by
        //   `into_inner`, which consumes this owner;
        // - `&mut self` excludes every other Rust access, and the kernel
        //   reads and writes none of it now (the caller's contract).
        unsafe { &mut *self.0.as_ptr() }
    }

    /// Frees the cell, giving the operation back by value.
    ///
    /// # Safety
    ///
    /// As for [`get_mut`](OpBox::get_mut).
    pub(super) unsafe fn into_inner(self) -> Operation<T> {
        // SAFETY:
        // - the pointer came from `Box::leak` in `new`, and this owner is
        //   consumed, so the cell is freed once;
        // - the kernel will not write into it again (the caller's contract).
        *unsafe { Box::from_raw(self.0.as_ptr()) }
    }

    /// The slab key of the operation a dequeued packet's OVERLAPPED
    /// belongs to.
    ///
    /// # Safety
    ///
    /// `ov` came with a dequeued packet of one of this port's socket
    /// operations, whose cell the port's slab still owns: cells are freed
    /// only after their final packet, and this is that packet or an
    /// earlier one.
    pub(super) unsafe fn id_of(ov: *mut OVERLAPPED) -> OpId {
        // SAFETY:
        // - `ov` is the first field of a live `Operation<T>` (offset 0), so
        //   the cast pointer is that operation's and valid for reads (the
        //   caller's contract); the kernel is done with it (the packet was
        //   dequeued);
        // - `id` is copied out without a reference to the operation.
        unsafe { (*ov.cast::<Operation<T>>()).id }
    }

    /// Starts, or starts again, the operation's socket call with a fresh
    /// OVERLAPPED.
    ///
    /// # Safety
    ///
    /// As for [`get_mut`](OpBox::get_mut). If it returns
    /// [`Started::Pending`], the kernel holds the operation until its
    /// packet is dequeued.
    pub(super) unsafe fn start(&mut self, skip: bool) -> Started {
        // SAFETY:
        // - the kernel holds none of the operation (this function's
        //   contract).
        let op = unsafe { self.get_mut() };
        op.ov = overlapped(0);
        op.flags = 0;
        // SAFETY:
        // - `op` lives in this cell, which stays put and is freed only by
        //   `into_inner`, allowed only once this start's packet is
        //   dequeued; the kernel holds none of it now (as above).
        unsafe {
            match op.op.kind() {
                OpKind::Recv | OpKind::RecvPooled | OpKind::RecvMulti => op.recv(skip),
                OpKind::RecvFrom => op.recv_from(skip),
                OpKind::Send => op.send(skip),
                OpKind::SendTo => op.send_to(skip),
                OpKind::Accept => op.accept(skip),
                OpKind::Connect => op.connect(skip),
                _ => unreachable!("file operations run at issue, never through the port"),
            }
        }
    }

    /// What the operation does after a start that succeeded on a live
    /// handle with `bytes`: a short send goes on with its rest (O4); a
    /// pooled receive whose data is there takes a pool buffer and receives
    /// into it (O6), or parks when the pool is dry (R3); a multishot accept
    /// hands its connection out (with `more`, into `out`) and accepts
    /// again. Anything else is final.
    ///
    /// # Safety
    ///
    /// As for [`get_mut`](OpBox::get_mut).
    pub(super) unsafe fn next(
        &mut self,
        bytes: usize,
        skip: bool,
        pool: &Mutex<Pool>,
        out: &mut Ready<T>,
    ) -> Next {
        // SAFETY:
        // - the kernel holds none of the operation (this function's
        //   contract).
        let op = unsafe { self.get_mut() };
        let total = match &op.op {
            Op::Send(b) => Some(b.len()),
            Op::SendVectored(bs) => Some(bs.iter().map(Vec::len).sum()),
            _ => None,
        };
        if let Some(total) = total {
            if bytes > 0 && op.sent + bytes < total {
                op.sent += bytes;
                // SAFETY:
                // - as above: the start that ended was its last.
                return Next::Again(unsafe { self.start(skip) });
            }
        }
        if matches!(op.op, Op::RecvPooled | Op::RecvMulti) && op.pool_buf.is_none() {
            // The zero-byte receive says data or the end is there: now, and
            // only now, a buffer is pinned (O6).
            return match lock(pool).take() {
                Some(b) => {
                    op.pool_buf = Some(b);
                    // SAFETY:
                    // - as above: the start that ended was its last.
                    Next::Again(unsafe { self.start(skip) })
                }
                None => Next::Park,
            };
        }
        if let (Op::RecvMulti, Some(clone), true) = (&op.op, op.multishot, bytes > 0) {
            // One arrival: its buffer goes out with `more`, and the receive
            // waits again with zero bytes, pinning nothing (O6, O9).
            if let Some(mut b) = op.pool_buf.take() {
                lock(pool).filled();
                // SAFETY:
                // - the receive into this pool buffer wrote `bytes` into
                //   its spare capacity, untouched since.
                unsafe { advance(slice::from_mut(&mut b), bytes) };
                // User code, inside the reap: see the accept below.
                if let Some(value) = out.catch(|| clone(&op.value)) {
                    out.push(Completion {
                        key: op.key,
                        kind: OpKind::RecvMulti,
                        op: Some(op.id),
                        handle: Some(op.handle),
                        result: Ok(bytes),
                        value,
                        payload: Payload::Buf(b),
                        more: true,
                        seq: op.seq,
                    });
                    op.seq += 1;
                }
            }
            // SAFETY:
            // - as above: the start that ended was its last.
            return Next::Again(unsafe { self.start(skip) });
        }
        let multishot = match op.op {
            Op::Accept => op.multishot,
            _ => None,
        };
        if let Some(clone) = multishot {
            let (result, payload) = match op.take_accepted() {
                Ok((stream, peer)) => (Ok(0), Payload::Accepted { stream, peer }),
                Err(e) => (Err(e), Payload::None),
            };
            // User code, inside the reap: a panic is held in `out` until the
            // rest is queued; the connection it was cloned for is closed,
            // nothing else is lost (LESSONS 12).
            if let Some(value) = out.catch(|| clone(&op.value)) {
                out.push(Completion {
                    key: op.key,
                    kind: OpKind::Accept,
                    op: Some(op.id),
                    handle: Some(op.handle),
                    result,
                    value,
                    payload,
                    more: true,
                    seq: op.seq,
                });
                op.seq += 1;
            }
            // SAFETY:
            // - as above: the start that ended was its last.
            return Next::Again(unsafe { self.start(skip) });
        }
        Next::Final
    }

    /// A parked pooled receive got its buffer: receive into it.
    ///
    /// # Safety
    ///
    /// As for [`get_mut`](OpBox::get_mut) (a parked receive has nothing in
    /// the kernel).
    pub(super) unsafe fn resume(&mut self, buf: Vec<u8>, skip: bool) -> Started {
        // SAFETY:
        // - the kernel holds none of the operation (this function's
        //   contract).
        unsafe { self.get_mut() }.pool_buf = Some(buf);
        // SAFETY:
        // - as above.
        unsafe { self.start(skip) }
    }
}

/// What a Winsock call that takes an OVERLAPPED returned.
fn started(rc: i32, bytes: u32, skip: bool) -> Started {
    if rc == 0 {
        if skip {
            Started::Done(bytes as usize, None)
        } else {
            Started::Pending
        }
    } else {
        let e = net::last_error();
        if e == ERROR_IO_PENDING as i32 {
            Started::Pending
        } else {
            Started::Done(0, Some(e))
        }
    }
}

/// An OVERLAPPED at `offset` (0 for sockets), with no event.
pub(super) fn overlapped(offset: u64) -> OVERLAPPED {
    OVERLAPPED {
        Internal: 0,
        InternalHigh: 0,
        Anonymous: OVERLAPPED_0 {
            Anonymous: OVERLAPPED_0_0 {
                Offset: offset as u32,
                OffsetHigh: (offset >> 32) as u32,
            },
        },
        hEvent: 0,
    }
}

/// A WSABUF over the spare capacity of `b`.
fn spare(b: &mut Vec<u8>) -> WSABUF {
    let spare = b.spare_capacity_mut();
    WSABUF {
        len: spare.len().min(u32::MAX as usize) as u32,
        buf: spare.as_mut_ptr().cast::<u8>(),
    }
}

/// WSABUFs over the bytes of a send's buffers after the first `skip`
/// (the ones the kernel already took).
pub(super) fn unsent(op: &Op, mut skip: usize) -> Vec<WSABUF> {
    match op {
        Op::Send(b) | Op::SendTo(b, _) => vec![rest(b, skip)],
        Op::SendVectored(bs) => bs
            .iter()
            .filter_map(|b| {
                if skip >= b.len() {
                    skip -= b.len();
                    None
                } else {
                    let w = rest(b, skip);
                    skip = 0;
                    Some(w)
                }
            })
            .collect(),
        _ => unreachable!("only sends have bytes to send"),
    }
}

/// A WSABUF over `b[from..]`. WSASend only reads through it.
fn rest(b: &[u8], from: usize) -> WSABUF {
    let rest = &b[from.min(b.len())..];
    WSABUF {
        len: rest.len().min(u32::MAX as usize) as u32,
        buf: rest.as_ptr() as *mut u8,
    }
}
