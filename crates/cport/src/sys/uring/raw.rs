//! Owners of the raw resources the io_uring backend hands to the kernel:
//! heap cells whose address a request holds, anonymous mappings.

use std::io;
use std::ptr::{self, NonNull};

use crate::sys::unix::cvt;

/// A heap value whose address a kernel request may hold.
///
/// A `Box<T>` is asserted unique whenever it moves (it is `noalias`), so the
/// kernel writing through its address while the owning operation moves
/// inside a growing slab would be undefined behaviour. A `Heap` is only a
/// raw pointer: it moves freely, and references to the value are made only
/// through the `unsafe` accessors, whose contract is "no request is in
/// flight".
pub(super) struct Heap<T>(NonNull<T>);

impl<T> Heap<T> {
    pub(super) fn new(v: T) -> Heap<T> {
        Heap(NonNull::from(Box::leak(Box::new(v))))
    }

    /// The address to give the kernel.
    pub(super) fn as_ptr(&self) -> *mut T {
        self.0.as_ptr()
    }

    /// # Safety
    ///
    /// No kernel request that holds this address may be in flight.
    pub(super) unsafe fn get(&self) -> &T {
        // SAFETY:
        // - the pointer came from a live `Box` and is freed only by `drop`;
        // - no request writes through it now (the caller's contract).
        unsafe { &*self.0.as_ptr() }
    }

    /// # Safety
    ///
    /// No kernel request that holds this address may be in flight.
    pub(super) unsafe fn get_mut(&mut self) -> &mut T {
        // SAFETY:
        // - the pointer came from a live `Box` and is freed only by `drop`;
        // - `&mut self` excludes every other Rust access;
        // - no request reads or writes through it now (the caller's contract).
        unsafe { &mut *self.0.as_ptr() }
    }
}

impl<T> Drop for Heap<T> {
    fn drop(&mut self) {
        // SAFETY:
        // - the pointer came from `Box::leak` in `new` and is dropped once;
        // - an owner that may still have a request in flight forgets the
        //   `Heap` instead of dropping it (the driver's `Drop`).
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

// SAFETY: a `Heap<T>` owns its `T` exactly as a `Box<T>` does; nothing about
// it is tied to a thread.
unsafe impl<T: Send> Send for Heap<T> {}

/// An anonymous private mapping: page-aligned, as a provided-buffer ring
/// must be, and committed only where touched, so an unused receive pool
/// costs address space, not memory.
pub(super) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    pub(super) fn anon(len: usize) -> io::Result<Mmap> {
        // SAFETY:
        // - no address hint and no descriptor: the kernel picks fresh pages
        //   that alias nothing in the program.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        match NonNull::new(p.cast::<u8>()) {
            Some(ptr) => Ok(Mmap {
                ptr,
                len: len.max(1),
            }),
            None => Err(io::Error::new(
                io::ErrorKind::Other,
                "mmap returned a null mapping",
            )),
        }
    }

    pub(super) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY:
        // - `ptr`/`len` are exactly the mapping made in `anon`, unmapped once;
        // - an owner whose pages the kernel may still write forgets the
        //   `Mmap` instead (the driver's `Drop`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: the mapping is plain memory owned by this value; access to its
// contents is synchronised by the owner (the driver's state lock).
unsafe impl Send for Mmap {}

/// getrlimit's resource argument: glibc names its own type, other C
/// libraries take an int.
#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

/// The soft limit of `resource` (`RLIM_INFINITY` when there is none).
pub(super) fn soft_limit(resource: Resource) -> io::Result<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY:
    // - `lim` is a live, writable `rlimit`.
    cvt(unsafe { libc::getrlimit(resource, &mut lim) })?;
    Ok(lim.rlim_cur)
}

/// RLIMIT_MEMLOCK, for error messages.
pub(super) fn memlock_limit() -> String {
    match soft_limit(libc::RLIMIT_MEMLOCK) {
        Ok(libc::RLIM_INFINITY) => "unlimited".to_string(),
        Ok(n) => format!("{} KiB", n / 1024),
        Err(e) => format!("unknown ({e})"),
    }
}
