//! [`Seat`]: what a thread holds of a queue's running slots (SEMANTICS
//! C1–C3), and the changes a thread makes to the count besides `get`.

use super::{Queue, Reactor};
use crate::sync;

/// What a thread holds of a queue's running slots: the record the port
/// keeps per thread, through which every change the thread makes to the
/// count goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Seat {
    /// Counted in `running`: took an item and has not come back.
    Running,
    /// Gave its slot up for a blocking section (C3) and will take it back
    /// when the section ends; not counted.
    Blocked,
}

impl<E> Queue<E> {
    /// A thread enters a blocking section (C3): if it is running, its slot
    /// is given up and its seat says so. Returns whether it was given up,
    /// that is, whether [`unblock`](Queue::unblock) is owed; a nested
    /// section, or one entered with no slot, gives nothing up.
    pub(crate) fn block<R: Reactor<E> + ?Sized>(
        &self,
        reactor: &R,
        seat: &mut Option<Seat>,
    ) -> bool {
        if *seat != Some(Seat::Running) {
            return false;
        }
        *seat = Some(Seat::Blocked);
        self.release(reactor);
        true
    }

    /// A blocking section ends: a thread whose seat is still `Blocked`
    /// runs again. The count may exceed the limit for a while (C3); no
    /// waiter is released until it drops below. A thread that took a slot
    /// inside the section (a `get`) or left (`leave`) takes nothing.
    pub(crate) fn unblock(&self, seat: &mut Option<Seat>) {
        if *seat == Some(Seat::Blocked) {
            *seat = Some(Seat::Running);
            sync::lock(&self.state).running += 1;
        }
    }

    /// The thread stops running without coming back through `get` (it
    /// quits, or exits): a slot it holds is given up, one given up already
    /// is not given again.
    pub(crate) fn leave<R: Reactor<E> + ?Sized>(&self, reactor: &R, seat: &mut Option<Seat>) {
        if seat.take() == Some(Seat::Running) {
            self.release(reactor);
        }
    }

    fn release<R: Reactor<E> + ?Sized>(&self, reactor: &R) {
        let mut st = sync::lock(&self.state);
        st.running -= 1;
        let wake = self.rebalance(&mut st);
        drop(st);
        if wake {
            reactor.wake();
        }
    }
}
