//! [`Lock`] and [`RwLock`]: the backends' locks, which on a port of one
//! thread ([`LocalPort`](crate::LocalPort)) are no atomic operation at all.
//!
//! A backend's state sits behind locks because any thread may issue on a
//! [`CompletionPort`](crate::CompletionPort). A local port's state is
//! reached by its own thread only: the `LocalPort` is neither `Send` nor
//! `Sync`, and what other threads hold (a [`Poster`](crate::Poster)) posts
//! to the port's queue and wakes the backend, which touch nothing behind
//! these locks. An uncontended lock is still two locked instructions (a
//! compare-and-swap to take it, an atomic swap or add to release it), each
//! a full barrier; the sharded echo server ran 6.4 locked instructions per
//! echoed message on io_uring and 17.3 on epoll, where the peers run none
//! (`bench/runs/2026-12-07/locked-ops`). A local lock is a check of the
//! thread and a flag instead, plain loads and stores.
//!
//! The thread is checked on every access, not assumed: a local lock
//! reached from another thread panics instead of racing. The one
//! legitimate other thread is the one that drops the port's last
//! reference (a `Poster` may outlive its `LocalPort`); it holds the
//! backend by `&mut` then, and `claim` makes it the owner.

use std::cell::{Cell, UnsafeCell};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, RwLockReadGuard, RwLockWriteGuard};

use crate::sync::lock_std;

/// A mutex, or a cell one thread opens (see the module's docs).
pub(crate) struct Lock<X> {
    data: UnsafeCell<X>,
    kind: Kind<Mutex<()>>,
}

/// A read-write lock, or a cell one thread opens (see the module's docs).
/// Local, a reader has the cell to itself, as a writer does.
pub(crate) struct RwLock<X> {
    data: UnsafeCell<X>,
    kind: Kind<std::sync::RwLock<()>>,
}

enum Kind<L> {
    /// Any thread takes `L`, which guards the data.
    Shared(L),
    /// Only the owner thread opens the data.
    Local(Owner),
}

/// A local lock's thread, and whether that thread has it open.
struct Owner {
    /// The owner's mark (`this_thread`).
    thread: usize,
    /// Set while a guard lives: a second one (which a mutex would deadlock
    /// on) panics. Touched by the owner thread alone.
    open: Cell<bool>,
}

impl Owner {
    fn here() -> Owner {
        Owner {
            thread: this_thread(),
            open: Cell::new(false),
        }
    }

    /// # Panics
    ///
    /// On any thread but the owner, or if the owner has it open already.
    #[inline(always)]
    fn open<G>(&self) -> Held<'_, G> {
        assert!(
            self.thread == this_thread(),
            "cport: a local port's state reached from another thread"
        );
        assert!(
            !self.open.replace(true),
            "cport: a local port's lock taken twice"
        );
        Held::Local(Opened(&self.open))
    }
}

impl<L> Kind<L> {
    fn new(local: bool, shared: impl FnOnce() -> L) -> Kind<L> {
        if local {
            Kind::Local(Owner::here())
        } else {
            Kind::Shared(shared())
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Kind::Shared(_) => "shared",
            Kind::Local(_) => "local",
        }
    }

    /// Makes the calling thread a local lock's owner; `&mut` proves no
    /// other thread holds it.
    fn claim(&mut self) {
        if let Kind::Local(o) = self {
            o.thread = this_thread();
        }
    }
}

// SAFETY:
// - `Shared`: the data is reached only through a guard that holds the
//   mutex, so by one thread at a time, as in `Mutex<X>` (`Sync` for
//   `X: Send`);
// - `Local`: the data and the `open` flag are reached only by the thread
//   whose mark is the owner's (`Owner::open` checks it before touching
//   either, and panics otherwise); the owner changes only through
//   `&mut self` (`claim`). Marks are addresses of a thread-local, distinct
//   among live threads. `X: Send`, since the owner may not be the thread
//   that made the data.
unsafe impl<X: Send> Sync for Lock<X> {}

// SAFETY:
// - `Shared`: mutable access only through a guard that holds the write
//   lock, shared access through guards that hold it for reading, possibly
//   on several threads at once, as in `std::sync::RwLock<X>` (`Sync` for
//   `X: Send + Sync`);
// - `Local`: as for `Lock`.
unsafe impl<X: Send + Sync> Sync for RwLock<X> {}

impl<X> Lock<X> {
    /// A mutex if `local` is false; else a cell for the calling thread.
    pub(crate) fn new(data: X, local: bool) -> Lock<X> {
        Lock {
            data: UnsafeCell::new(data),
            kind: Kind::new(local, || Mutex::new(())),
        }
    }

    /// Takes the lock. A mutex that a panic poisoned is taken all the same:
    /// each critical section leaves its state consistent before running
    /// anything that may panic ([`lock_std`]).
    ///
    /// # Panics
    ///
    /// On a local lock, from any thread but its owner, or if this thread
    /// holds it already.
    #[inline(always)]
    pub(crate) fn lock(&self) -> Guard<'_, X> {
        let held = match &self.kind {
            Kind::Shared(m) => Held::Shared(lock_std(m)),
            Kind::Local(o) => o.open(),
        };
        Guard {
            data: &self.data,
            _held: held,
        }
    }

    /// The data, through exclusive access: no lock is needed.
    pub(crate) fn get_mut(&mut self) -> &mut X {
        self.data.get_mut()
    }

    /// Makes the calling thread a local lock's owner: the thread that
    /// drops the port's last reference, its own thread gone or elsewhere.
    pub(crate) fn claim(&mut self) {
        self.kind.claim();
    }
}

impl<X> RwLock<X> {
    /// A read-write lock if `local` is false; else a cell for the calling
    /// thread.
    pub(crate) fn new(data: X, local: bool) -> RwLock<X> {
        RwLock {
            data: UnsafeCell::new(data),
            kind: Kind::new(local, || std::sync::RwLock::new(())),
        }
    }

    /// Takes the lock for writing; as [`Lock::lock`], poison and panics.
    #[inline(always)]
    pub(crate) fn write(&self) -> Guard<'_, X, RwLockWriteGuard<'_, ()>> {
        let held = match &self.kind {
            Kind::Shared(l) => Held::Shared(l.write().unwrap_or_else(|p| p.into_inner())),
            Kind::Local(o) => o.open(),
        };
        Guard {
            data: &self.data,
            _held: held,
        }
    }

    /// Takes the lock for reading, beside other readers unless local; as
    /// [`Lock::lock`], poison and panics.
    #[inline(always)]
    pub(crate) fn read(&self) -> ReadGuard<'_, X> {
        let held = match &self.kind {
            Kind::Shared(l) => Held::Shared(l.read().unwrap_or_else(|p| p.into_inner())),
            Kind::Local(o) => o.open(),
        };
        ReadGuard {
            data: &self.data,
            _held: held,
        }
    }
}

/// Names the kind only: showing the data would take the lock, which a
/// local lock refuses other threads.
impl<X> fmt::Debug for Lock<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Lock").field(&self.kind.name()).finish()
    }
}

/// As `Lock`'s.
impl<X> fmt::Debug for RwLock<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RwLock").field(&self.kind.name()).finish()
    }
}

/// `counter += n`: an atomic add with `order` on a shared port; on a local
/// one (`local`), whose one thread alone counts, a load and a store, which
/// are no locked instruction.
#[inline]
pub(crate) fn add(counter: &AtomicUsize, n: usize, local: bool, order: Ordering) {
    if local {
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    } else {
        counter.fetch_add(n, order);
    }
}

/// The mark of the calling thread: the address of a thread-local, which no
/// other live thread shares. A plain load, where `thread::current()` would
/// count a reference up and down.
#[inline(always)]
fn this_thread() -> usize {
    std::thread_local! {
        static MARK: u8 = const { 0 };
    }
    MARK.with(|m| m as *const u8 as usize)
}

/// What a guard holds: `G`, the std lock's guard, or the local lock's open
/// flag. Each releases its lock in its `Drop`.
enum Held<'a, G> {
    // Read only by its `Drop`.
    #[allow(dead_code)]
    Shared(G),
    // Read only by its `Drop`.
    #[allow(dead_code)]
    Local(Opened<'a>),
}

/// A local lock, open until dropped.
struct Opened<'a>(&'a Cell<bool>);

impl Drop for Opened<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Exclusive access to a lock's data until dropped: a [`Lock`]'s (holding
/// its mutex's guard, the default `G`) or a [`RwLock`]'s writer.
pub(crate) struct Guard<'a, X, G = MutexGuard<'a, ()>> {
    data: &'a UnsafeCell<X>,
    /// Held for its `Drop`.
    _held: Held<'a, G>,
}

/// Shared access to a [`RwLock`]'s data until dropped.
pub(crate) struct ReadGuard<'a, X> {
    data: &'a UnsafeCell<X>,
    /// Held for its `Drop`.
    _held: Held<'a, RwLockReadGuard<'a, ()>>,
}

impl<X, G> Deref for Guard<'_, X, G> {
    type Target = X;

    #[inline(always)]
    fn deref(&self) -> &X {
        // SAFETY:
        // - `_held` is the mutex's guard, the write guard, or the owner
        //   thread's open flag: no other guard of this lock exists
        //   meanwhile.
        unsafe { &*self.data.get() }
    }
}

impl<X, G> DerefMut for Guard<'_, X, G> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut X {
        // SAFETY:
        // - as in `deref`; `&mut self` keeps this the only reference made
        //   through this guard.
        unsafe { &mut *self.data.get() }
    }
}

impl<X> Deref for ReadGuard<'_, X> {
    type Target = X;

    #[inline(always)]
    fn deref(&self) -> &X {
        // SAFETY:
        // - `_held` is a read guard (other guards alive meanwhile are read
        //   guards too, which give no `&mut`) or the owner thread's open
        //   flag (no other guard exists).
        unsafe { &*self.data.get() }
    }
}

#[cfg(test)]
mod tests {
    use super::{Lock, RwLock};
    use std::panic::{self, AssertUnwindSafe};
    use std::thread;

    /// Whether `f` panicked on a thread of its own.
    fn panics_elsewhere(f: impl FnOnce() + Send) -> bool {
        thread::scope(|s| {
            s.spawn(|| panic::catch_unwind(AssertUnwindSafe(f)).is_err())
                .join()
                .expect("the thread's panic is caught")
        })
    }

    #[test]
    fn a_local_lock_refuses_other_threads() {
        let l = Lock::new(1u32, true);
        *l.lock() += 1;
        assert!(
            panics_elsewhere(|| drop(l.lock())),
            "another thread opened a local lock"
        );
        assert_eq!(*l.lock(), 2, "the owner still opens it");
        let rw = RwLock::new(1u32, true);
        assert!(
            panics_elsewhere(|| drop(rw.read())),
            "another thread read a local lock"
        );
        assert!(
            !panics_elsewhere(|| drop(Lock::new(0u8, false).lock())),
            "a shared lock on another thread"
        );
    }

    #[test]
    fn a_local_lock_refuses_a_second_guard_and_reopens_after_a_panic() {
        let l = Lock::new(Vec::<u32>::new(), true);
        let g = l.lock();
        let again = panic::catch_unwind(AssertUnwindSafe(|| l.lock().len()));
        assert!(again.is_err(), "a second guard while the first lives");
        drop(g);
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            let mut g = l.lock();
            g.push(1);
            panic!("in the critical section");
        }));
        assert!(r.is_err());
        assert_eq!(*l.lock(), vec![1], "unlocked by the unwinding guard");
    }

    #[test]
    fn claim_moves_a_local_lock_to_the_thread_holding_it() {
        let l = Lock::new(5u32, true);
        let mut l = thread::spawn(move || {
            let mut l = l;
            l.claim();
            *l.lock() += 1;
            l
        })
        .join()
        .expect("the claiming thread");
        assert_eq!(*l.get_mut(), 6);
        // Owned by the spawned thread now, which is gone: claimed back.
        l.claim();
        assert_eq!(*l.lock(), 6);
    }

    #[test]
    fn a_shared_lock_serves_every_thread() {
        let l = Lock::new(0u64, false);
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        *l.lock() += 1;
                    }
                });
            }
        });
        assert_eq!(*l.lock(), 4000);
    }

    #[test]
    fn readers_share_a_read_write_lock_and_a_writer_excludes_them() {
        let l = RwLock::new(0u64, false);
        let (a, b) = (l.read(), l.read());
        assert_eq!(*a + *b, 0, "two readers at once");
        drop((a, b));
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        *l.write() += 1;
                        assert!(*l.read() > 0);
                    }
                });
            }
        });
        assert_eq!(*l.read(), 4000);
        let local = RwLock::new(1u8, true);
        let r = local.read();
        let again = panic::catch_unwind(AssertUnwindSafe(|| *local.read()));
        assert!(again.is_err(), "a local reader has the lock to itself");
        drop(r);
        assert_eq!(*local.read(), 1);
    }
}
