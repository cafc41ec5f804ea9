//! The synchronisation primitives the queue is built on, swapped for
//! loom's under `--cfg loom` so the queue's interleavings can be
//! model-checked (`src/queue/loom_tests.rs`).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning: the queue's state stays consistent at
/// every unlock, so a panic elsewhere (in a user's handler) must not stop
/// the port.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Waits on `cv`, for at most `timeout` when one is given. Returns the
/// guard; the caller re-checks its condition (spurious wake-ups happen).
pub(crate) fn wait<'a, T>(
    cv: &Condvar,
    g: MutexGuard<'a, T>,
    timeout: Option<std::time::Duration>,
) -> MutexGuard<'a, T> {
    match timeout {
        None => match cv.wait(g) {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        },
        Some(t) => match cv.wait_timeout(g, t) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        },
    }
}

/// The same poison-ignoring lock for the `std` mutexes of the backends and
/// the worker pool, which loom does not model. Every critical section
/// leaves its state consistent before anything that may panic (a user's
/// `Clone` or `Drop`), so one panic must not stop the port.
pub(crate) fn lock_std<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

std::thread_local! {
    /// How deep this thread is in a multishot value's `Clone`: the port
    /// runs it while holding a lock of its own (io_uring: the driver's
    /// state; epoll: the socket's), which a call into the port from there
    /// would wait for forever.
    static IN_CLONE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// `T::clone`, as the port calls it for each completion of a multishot
/// operation but the last; calls into the port meanwhile are refused
/// ([`in_clone`]).
pub(crate) fn clone_value<T: Clone>(value: &T) -> T {
    struct Depth;
    impl Drop for Depth {
        fn drop(&mut self) {
            IN_CLONE.with(|d| d.set(d.get() - 1));
        }
    }
    IN_CLONE.with(|d| d.set(d.get() + 1));
    // Left on a panic too: the port catches it and goes on.
    let _depth = Depth;
    value.clone()
}

/// Refuses `what`, a call that takes a backend lock, inside a multishot
/// value's `Clone` ([`in_clone`]): `WouldBlock` at once instead of a wait
/// for a lock the clone may run under (SEMANTICS O10).
#[inline]
pub(crate) fn outside_clone(what: &str) -> std::io::Result<()> {
    if in_clone() {
        Err(crate::sys::error::in_clone(what))
    } else {
        Ok(())
    }
}

/// Whether this thread is in a multishot value's `Clone` run by a port
/// (any port: a call into another one could wait on a port whose reap,
/// on another thread, waits for this one).
#[inline]
pub(crate) fn in_clone() -> bool {
    IN_CLONE.with(|d| d.get() > 0)
}
