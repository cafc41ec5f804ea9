//! What the two Linux backends share: the errno convention, the eventfd
//! each one wakes its leader with, and socket addresses in their C layout.
//! Written once here so the backends cannot drift apart.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Return values whose `-1` means "see errno".
pub(crate) trait IsMinusOne: Copy {
    fn is_minus_one(self) -> bool;
}

impl IsMinusOne for i32 {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}

impl IsMinusOne for isize {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}

/// The errno convention, once: `-1` becomes the thread's last OS error.
pub(crate) fn cvt<R: IsMinusOne>(r: R) -> io::Result<R> {
    if r.is_minus_one() {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An eventfd, the object both Linux backends wake their leader with.
#[derive(Debug)]
pub(crate) struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A close-on-exec eventfd. epoll's is non-blocking, since its leader
    /// drains it with read(2). io_uring's is blocking: the ring's read of it
    /// then waits by poll, not in a kernel worker, and a write never blocks
    /// since every read drains the counter.
    pub(crate) fn new(nonblocking: bool) -> io::Result<EventFd> {
        let flags = libc::EFD_CLOEXEC | if nonblocking { libc::EFD_NONBLOCK } else { 0 };
        // SAFETY:
        // - eventfd takes no pointers; the flags are valid constants.
        let fd = cvt(unsafe { libc::eventfd(0, flags) })?;
        // SAFETY:
        // - `fd` was just returned by the kernel and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd { fd })
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Adds one to the counter, which makes the eventfd readable.
    pub(crate) fn notify(&self) {
        let one: u64 = 1;
        // SAFETY:
        // - the pointer is to 8 readable bytes, the size eventfd requires.
        let r = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        // EAGAIN means the counter is saturated: a wake is pending already,
        // which is all this call promises.
        if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
            log::warn!(target: "cport", "writing the wake eventfd failed: {}", io::Error::last_os_error());
        }
    }

    /// Resets the counter (non-blocking eventfds only), or a
    /// level-triggered registration would make every later wait return at
    /// once.
    pub(crate) fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY:
        // - the pointer is to 8 writable bytes, the size eventfd requires.
        // EAGAIN (already drained) is the only failure of a valid eventfd.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

/// A zeroed `sockaddr_storage`.
pub(crate) fn storage() -> libc::sockaddr_storage {
    // SAFETY:
    // - all-zero bytes are a valid `sockaddr_storage` (family AF_UNSPEC).
    unsafe { mem::zeroed() }
}

/// The socket address in `s`, by its family. The length the kernel writes
/// back is not relied upon, so an address it did not fill (family 0) is
/// `None` rather than garbage.
pub(crate) fn to_socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let len = match i32::from(s.ss_family) {
        libc::AF_INET => mem::size_of::<libc::sockaddr_in>(),
        libc::AF_INET6 => mem::size_of::<libc::sockaddr_in6>(),
        _ => return None,
    };
    // SAFETY:
    // - `s` is an initialised `sockaddr_storage` of the family just read,
    //   and `len` is that family's size, within the storage.
    let addr = unsafe { socket2::SockAddr::new(*s, len as libc::socklen_t) };
    addr.as_socket()
}

/// `addr` in its C layout, with its length.
pub(crate) fn from_socket_addr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let a = socket2::SockAddr::from(addr);
    let len = a.len();
    (a.as_storage(), len)
}
