//! [`Batch`]: what a reap or an issuing call hands the queue, with the
//! panic of user code it caught on the way.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

/// A caught panic's payload.
pub(crate) type Panic = Box<dyn Any + Send + 'static>;

/// Items a reap or an issuing call produced, and the panic of user code
/// that ran meanwhile (a multishot operation's `Clone` of its value).
///
/// The panic is held until the items are queued and then resumed, on the
/// thread that ran the user code: a panicking value must not take other
/// operations' completions with it (LESSONS 12). Only the one panic is
/// kept; a second one in the same batch is dropped (its payload only).
#[derive(Debug)]
pub(crate) struct Batch<E> {
    items: Vec<E>,
    panic: Option<Panic>,
}

impl<E> Default for Batch<E> {
    fn default() -> Self {
        Batch::new()
    }
}

impl<E> Batch<E> {
    pub(crate) fn new() -> Self {
        Batch {
            items: Vec::new(),
            panic: None,
        }
    }

    pub(crate) fn push(&mut self, e: E) {
        self.items.push(e);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes the items out, leaving a caught panic where it is.
    pub(crate) fn drain(&mut self) -> std::vec::Drain<'_, E> {
        self.items.drain(..)
    }

    /// Drops the items (user code runs: their values' `Drop`).
    pub(crate) fn clear(&mut self) {
        self.items.clear();
    }

    /// Runs user code `f`. A panic is kept (the first one) and `None`
    /// returned; whatever `f` was making is lost, nothing else.
    pub(crate) fn catch<R>(&mut self, f: impl FnOnce() -> R) -> Option<R> {
        match panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => Some(r),
            Err(p) => {
                if self.panic.is_none() {
                    self.panic = Some(p);
                }
                None
            }
        }
    }

    /// The caught panic, if any, to be resumed once the items are queued.
    pub(crate) fn take_panic(&mut self) -> Option<Panic> {
        self.panic.take()
    }

    /// Resumes a caught panic. Call after the items are queued.
    pub(crate) fn resume_panic(&mut self) {
        if let Some(p) = self.panic.take() {
            panic::resume_unwind(p);
        }
    }
}

/// The items, for a caller that drops them one by one; a caught panic is
/// not carried over, so take it first.
impl<E> IntoIterator for Batch<E> {
    type Item = E;
    type IntoIter = std::vec::IntoIter<E>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

#[cfg(test)]
impl<E> From<Vec<E>> for Batch<E> {
    fn from(items: Vec<E>) -> Self {
        Batch { items, panic: None }
    }
}
