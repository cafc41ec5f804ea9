//! The system calls of the epoll backend, each wrapped once: descriptors
//! become `OwnedFd` at once, `-1`/errno becomes `io::Error` in [`cvt`], and
//! every receive fills a `Vec`'s spare capacity and advances its length by
//! exactly what the kernel wrote. All `unsafe` of the backend is here.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::raw::c_long;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::time::Duration;

use socket2::{MaybeUninitSlice, SockRef};

use crate::sys::advance;
use crate::sys::unix::cvt;

/// Repeats `f` while a signal interrupts it: an `EINTR` is not the
/// operation's outcome and must not reach a completion.
pub(super) fn retry<R>(mut f: impl FnMut() -> io::Result<R>) -> io::Result<R> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// A byte count from a system call that succeeded (never negative).
fn count(n: isize) -> usize {
    n as usize
}

/// epoll_wait's timeout: milliseconds, rounded up so that a short timeout
/// does not turn into a busy poll (`Some(0)` still just looks).
pub(super) fn timeout_ms(timeout: Option<Duration>) -> i32 {
    match timeout {
        None => -1,
        Some(d) => {
            let ms = d.as_nanos().saturating_add(999_999) / 1_000_000;
            i32::try_from(ms).unwrap_or(i32::MAX)
        }
    }
}

/// One epoll instance.
#[derive(Debug)]
pub(super) struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub(super) fn new() -> io::Result<Epoll> {
        // SAFETY:
        // - epoll_create1 takes no pointers; the flag is a valid constant.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY:
        // - `fd` was just returned by the kernel and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    pub(super) fn add(&self, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY:
        // - `ev` is a valid epoll_event that outlives the call.
        // - Both descriptors are open: `self.fd` is owned here and the
        //   caller holds `fd`.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    pub(super) fn delete(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY:
        // - EPOLL_CTL_DEL ignores the event pointer (null is accepted since
        //   Linux 2.6.9); both descriptors are open.
        cvt(unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                ptr::null_mut(),
            )
        })?;
        Ok(())
    }

    /// Replaces the contents of `events` with what the kernel reports,
    /// at most `events.capacity()` entries.
    pub(super) fn wait(
        &self,
        events: &mut Vec<libc::epoll_event>,
        timeout_ms: i32,
    ) -> io::Result<()> {
        events.clear();
        events.reserve(1);
        let room = i32::try_from(events.capacity()).unwrap_or(i32::MAX);
        // SAFETY:
        // - The pointer is to `events`' allocation, with room for `room`
        //   entries (capacity >= room >= 1).
        // - The kernel writes only whole entries, and at most `room`.
        let n = cvt(unsafe {
            libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), room, timeout_ms)
        })?;
        // SAFETY:
        // - epoll_wait initialised the first `n` entries, `n <= room <=
        //   capacity`.
        unsafe { events.set_len(n as usize) };
        Ok(())
    }
}

// ----- the echo path's two calls ---------------------------------------------
//
// A receive and a send are what every echoed message costs, so these two go
// to the kernel through syscall(2) rather than glibc's recv and send. Those
// are cancellation points: in a threaded process each call switches the
// thread's cancellation type on and off around the system call, two atomic
// read-modify-writes that were 1.6 % of the epoll shard server's CPU at
// 500 connections × 4 KiB (`__pthread_enable_asynccancel` and `disable`).
// syscall(2) is not a cancellation point, and nothing in Rust may be
// cancelled by pthread_cancel anyway. Both calls still set errno on failure.

/// recv(2) into the spare capacity of `buf`.
pub(super) fn recv(fd: &OwnedFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY:
    // - recvfrom(fd, buf, len, flags, NULL, NULL) is recv(2); every integer
    //   is passed as a `c_long`, the width syscall(2) reads.
    // - The pointer and length are `buf`'s spare capacity, writable for the
    //   call; the kernel writes at most `len` bytes there.
    // - The address pointers are null: the sender is not asked for.
    let n = cvt(unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            c_long::from(fd.as_raw_fd()),
            spare.as_mut_ptr(),
            spare.len(),
            0 as c_long,
            ptr::null_mut::<libc::sockaddr>(),
            ptr::null_mut::<libc::socklen_t>(),
        ) as isize
    })?;
    // SAFETY:
    // - recv wrote `n` bytes at the start of the spare capacity.
    unsafe { advance(std::slice::from_mut(buf), count(n)) };
    Ok(count(n))
}

/// send(2) of `buf` (MSG_NOSIGNAL: a closed peer is EPIPE, never SIGPIPE).
pub(super) fn send(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY:
    // - sendto(fd, buf, len, flags, NULL, 0) is send(2); every integer is
    //   passed as a `c_long` (or `usize`), the width syscall(2) reads.
    // - The pointer and length are `buf`'s, readable for the call; the
    //   kernel only reads them.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_sendto,
            c_long::from(fd.as_raw_fd()),
            buf.as_ptr(),
            buf.len(),
            c_long::from(libc::MSG_NOSIGNAL),
            ptr::null::<libc::sockaddr>(),
            0 as c_long,
        ) as isize
    })
    .map(count)
}

// ----- receiving into spare capacity ----------------------------------------

/// recvmsg(2) of one datagram into the spare capacity of `buf`: the count,
/// whether the datagram was cut to fit (MSG_TRUNC), and the sender.
pub(super) fn recv_from(
    fd: &OwnedFd,
    buf: &mut Vec<u8>,
) -> io::Result<(usize, bool, Option<SocketAddr>)> {
    let mut slices = [MaybeUninitSlice::new(buf.spare_capacity_mut())];
    let (n, flags, from) = SockRef::from(fd).recv_from_vectored_with_flags(&mut slices, 0)?;
    // SAFETY:
    // - Without MSG_TRUNC in the request flags, recvmsg returns the bytes
    //   it copied into the single slice: the start of the spare capacity.
    unsafe { advance(std::slice::from_mut(buf), n) };
    Ok((n, flags.is_truncated(), from.as_socket()))
}

/// Up to this many iovecs live on the stack; more go to the heap (rare:
/// scatter/gather lists are short).
const STACK_IOVECS: usize = 16;

/// The kernel's limit on iovecs per call (UIO_MAXIOV); a longer list is
/// handled in several calls (sends, writes) or a shorter transfer (receives,
/// reads, which may be short anyway).
const MAX_IOVECS: usize = 1024;

const EMPTY_IOVEC: libc::iovec = libc::iovec {
    iov_base: ptr::null_mut(),
    iov_len: 0,
};

/// Calls `f` with the iovecs of `parts`, empty ones left out, without
/// allocating for short lists.
fn with_iovecs<R>(
    parts: impl Iterator<Item = libc::iovec>,
    f: impl FnOnce(&mut [libc::iovec]) -> R,
) -> R {
    let mut stack = [EMPTY_IOVEC; STACK_IOVECS];
    let mut heap = Vec::new();
    let mut n = 0;
    for v in parts.filter(|v| v.iov_len > 0).take(MAX_IOVECS) {
        if n < STACK_IOVECS {
            stack[n] = v;
        } else {
            if heap.is_empty() {
                heap.extend_from_slice(&stack);
            }
            heap.push(v);
        }
        n += 1;
    }
    if heap.is_empty() {
        f(&mut stack[..n])
    } else {
        f(&mut heap)
    }
}

/// iovecs over the spare capacity of each buffer, in order.
fn spare_iovecs(bufs: &mut [Vec<u8>]) -> impl Iterator<Item = libc::iovec> + '_ {
    bufs.iter_mut().map(|b| {
        let spare = b.spare_capacity_mut();
        libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        }
    })
}

/// iovecs over the bytes of `bufs` after the first `skip`.
fn data_iovecs(bufs: &[Vec<u8>], mut skip: usize) -> impl Iterator<Item = libc::iovec> + '_ {
    bufs.iter().map(move |b| {
        let k = skip.min(b.len());
        skip -= k;
        libc::iovec {
            // The kernel only reads through this pointer.
            iov_base: b[k..].as_ptr() as *mut libc::c_void,
            iov_len: b.len() - k,
        }
    })
}

fn msghdr(iov: &mut [libc::iovec]) -> libc::msghdr {
    // SAFETY:
    // - msghdr is plain data (integers and pointers): all zeroes is a
    //   valid value (no name, no control data).
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    msg
}

/// recvmsg(2) scattering into the spare capacity of each buffer in order.
pub(super) fn recv_vectored(fd: &OwnedFd, bufs: &mut [Vec<u8>]) -> io::Result<usize> {
    let r = with_iovecs(spare_iovecs(bufs), |iov| {
        let mut msg = msghdr(iov);
        // SAFETY:
        // - `msg` points to `iov`, whose entries point into the spare
        //   capacity of `bufs`, writable and alive for the call.
        cvt(unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) })
    })?;
    let n = count(r);
    // SAFETY:
    // - recvmsg filled the iovecs in order; the empty ones left out took
    //   nothing, so the bytes fill each buffer's spare room in turn.
    unsafe { advance(bufs, n) };
    Ok(n)
}

/// sendto(2) of one datagram.
pub(super) fn send_to(fd: &OwnedFd, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
    SockRef::from(fd).send_to_with_flags(buf, &addr.into(), libc::MSG_NOSIGNAL)
}

/// sendmsg(2) of the bytes of `bufs` after the first `skip` (writev has no
/// MSG_NOSIGNAL).
pub(super) fn send_vectored(fd: &OwnedFd, bufs: &[Vec<u8>], skip: usize) -> io::Result<usize> {
    with_iovecs(data_iovecs(bufs, skip), |iov| {
        let msg = msghdr(iov);
        // SAFETY:
        // - `msg` points to `iov`, whose entries point to initialised
        //   bytes of `bufs`, alive for the call; the kernel only reads them.
        cvt(unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })
    })
    .map(count)
}

// ----- positional file I/O ---------------------------------------------------

fn offset(off: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(off)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset out of range"))
}

/// pread(2) into the spare capacity of `buf`.
pub(super) fn pread(fd: &OwnedFd, buf: &mut Vec<u8>, off: u64) -> io::Result<usize> {
    let off = offset(off)?;
    let spare = buf.spare_capacity_mut();
    // SAFETY:
    // - The pointer and length describe `buf`'s spare capacity, writable
    //   and alive for the call.
    let n = count(cvt(unsafe {
        libc::pread(fd.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), off)
    })?);
    // SAFETY:
    // - pread wrote `n` bytes at the start of the spare capacity.
    unsafe { advance(std::slice::from_mut(buf), n) };
    Ok(n)
}

/// preadv(2) into the spare capacity of each buffer in order.
pub(super) fn preadv(fd: &OwnedFd, bufs: &mut [Vec<u8>], off: u64) -> io::Result<usize> {
    let off = offset(off)?;
    let r = with_iovecs(spare_iovecs(bufs), |iov| {
        // SAFETY:
        // - The iovecs point into the spare capacity of `bufs`, writable
        //   and alive for the call; their count fits the kernel's limit.
        cvt(unsafe { libc::preadv(fd.as_raw_fd(), iov.as_ptr(), iov.len() as _, off) })
    })?;
    let n = count(r);
    // SAFETY:
    // - preadv fills the iovecs in order (empty ones were left out).
    unsafe { advance(bufs, n) };
    Ok(n)
}

/// pwrite(2) of `buf` at `off`.
pub(super) fn pwrite(fd: &OwnedFd, buf: &[u8], off: u64) -> io::Result<usize> {
    let off = offset(off)?;
    // SAFETY:
    // - The pointer and length describe initialised bytes of `buf`, alive
    //   for the call; the kernel only reads them.
    cvt(unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), off) }).map(count)
}

/// pwritev(2) of the bytes of `bufs` after the first `skip`, at `off`.
pub(super) fn pwritev(fd: &OwnedFd, bufs: &[Vec<u8>], skip: usize, off: u64) -> io::Result<usize> {
    let off = offset(off)?;
    with_iovecs(data_iovecs(bufs, skip), |iov| {
        // SAFETY:
        // - The iovecs point to initialised bytes of `bufs`, alive for the
        //   call; the kernel only reads them; their count fits its limit.
        cvt(unsafe { libc::pwritev(fd.as_raw_fd(), iov.as_ptr(), iov.len() as _, off) })
    })
    .map(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_rounds_up() {
        assert_eq!(timeout_ms(None), -1);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), 0);
        assert_eq!(timeout_ms(Some(Duration::from_nanos(1))), 1);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1500))), 2);
        assert_eq!(timeout_ms(Some(Duration::from_millis(7))), 7);
        assert_eq!(timeout_ms(Some(Duration::from_secs(u64::MAX))), i32::MAX);
    }

    #[test]
    fn iovecs_skip_sent_bytes_and_empty_buffers() {
        let bufs = vec![b"abc".to_vec(), Vec::new(), b"defg".to_vec()];
        let lens: Vec<usize> = with_iovecs(data_iovecs(&bufs, 4), |iov| {
            iov.iter().map(|v| v.iov_len).collect()
        });
        assert_eq!(lens, [3]);
        let many = vec![vec![1u8]; STACK_IOVECS + 3];
        assert_eq!(
            with_iovecs(data_iovecs(&many, 1), |iov| iov.len()),
            STACK_IOVECS + 2
        );
    }
}
