//! [`Batch`]: what a reap or an issuing call hands the queue, with the
//! panic of user code it caught on the way.

use std::any::Any;
use std::collections::VecDeque;
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
///
/// The first item is held inline: an issuing call makes one completion at
/// most in the common case (a send done at once on epoll), and a batch of
/// one must not cost an allocation per message. A batch is also a queue
/// ([`pop_front`](Batch::pop_front)): a `LocalPort` reaps into one and
/// hands its completions out of it, each moved once on the way.
#[derive(Debug)]
pub(crate) struct Batch<E> {
    /// The oldest item, when it is held inline; when `None`, every item is
    /// in `rest`.
    first: Option<E>,
    rest: VecDeque<E>,
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
            first: None,
            rest: VecDeque::new(),
            panic: None,
        }
    }

    pub(crate) fn push(&mut self, e: E) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(e);
        } else {
            self.rest.push_back(e);
        }
    }

    /// Takes the oldest item out.
    pub(crate) fn pop_front(&mut self) -> Option<E> {
        match self.first.take() {
            Some(e) => Some(e),
            None => self.rest.pop_front(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// Moves the items of `other` behind these, and its caught panic here
    /// if this batch holds none.
    pub(crate) fn append(&mut self, other: &mut Batch<E>) {
        if self.is_empty() {
            self.first = other.first.take();
        }
        other.move_into(&mut self.rest);
        if self.panic.is_none() {
            self.panic = other.panic.take();
        }
    }

    /// Moves the items to the back of `to`, oldest first, leaving a caught
    /// panic where it is. It builds no iterator: this runs for every
    /// issuing call that made a completion (a send done at issue on epoll),
    /// where extending with a chained drain of the items cost 249
    /// instructions per message (`bench/runs/2026-12-06/instructions`).
    pub(crate) fn move_into(&mut self, to: &mut VecDeque<E>) {
        if let Some(e) = self.first.take() {
            to.push_back(e);
        }
        if !self.rest.is_empty() {
            to.append(&mut self.rest);
        }
    }

    /// Drops the items (user code runs: their values' `Drop`).
    pub(crate) fn clear(&mut self) {
        self.first = None;
        self.rest.clear();
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

impl<E> Extend<E> for Batch<E> {
    fn extend<I: IntoIterator<Item = E>>(&mut self, iter: I) {
        for e in iter {
            self.push(e);
        }
    }
}

/// The items, for a caller that drops them one by one; a caught panic is
/// not carried over, so take it first.
impl<E> IntoIterator for Batch<E> {
    type Item = E;
    type IntoIter =
        std::iter::Chain<std::option::IntoIter<E>, std::collections::vec_deque::IntoIter<E>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

#[cfg(test)]
impl<E> From<Vec<E>> for Batch<E> {
    fn from(items: Vec<E>) -> Self {
        let mut b = Batch::new();
        for e in items {
            b.push(e);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::Batch;
    use std::collections::VecDeque;

    fn items(b: Batch<u32>) -> Vec<u32> {
        b.into_iter().collect()
    }

    #[test]
    fn append_keeps_the_order_of_both_batches_in_every_shape() {
        // (items here, items appended): empty, one held inline, several.
        let shapes: [&[u32]; 3] = [&[], &[1], &[1, 2, 3]];
        for here in shapes {
            for there in shapes {
                let mut a = Batch::from(here.to_vec());
                let mut b = Batch::from(there.iter().map(|x| x + 10).collect::<Vec<_>>());
                a.append(&mut b);
                let want: Vec<u32> = here
                    .iter()
                    .copied()
                    .chain(there.iter().map(|x| x + 10))
                    .collect();
                assert!(b.is_empty(), "{here:?} + {there:?}: the source keeps items");
                assert_eq!(a.len(), want.len(), "{here:?} + {there:?}");
                assert_eq!(items(a), want, "{here:?} + {there:?}");
            }
        }
    }

    #[test]
    fn append_carries_the_first_panic_only() {
        let mut a = Batch::<u32>::new();
        let mut b = Batch::from(vec![1]);
        assert!(b.catch(|| panic!("one")).is_none());
        a.append(&mut b);
        let mut c = Batch::new();
        assert!(c.catch(|| panic!("two")).is_none());
        a.append(&mut c);
        let p = a.take_panic().expect("the first panic is carried");
        assert_eq!(p.downcast_ref::<&str>(), Some(&"one"));
        assert!(
            c.take_panic().is_some(),
            "a second panic stays where it was"
        );
        assert_eq!(items(a), vec![1]);
    }

    #[test]
    fn move_into_appends_oldest_first_and_leaves_the_panic() {
        let mut to: VecDeque<u32> = VecDeque::from(vec![0]);
        let mut b = Batch::from(vec![1, 2, 3]);
        assert!(b.catch(|| panic!("kept")).is_none());
        b.move_into(&mut to);
        assert_eq!(Vec::from(to), vec![0, 1, 2, 3]);
        assert!(b.is_empty());
        assert!(b.take_panic().is_some());
    }
}
