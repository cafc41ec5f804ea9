//! The serving thread: its timers (accept re-arm, idle scan), the stop and
//! the drain; and the counters the workers keep.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cport::GetError;
use tracing::warn;

use super::{add_single_writer, Dequeue, Inner, FORCE_CLOSE_BOUND, WAKE_KEY};
use crate::{lock, plural};

/// What the serving thread waits for: a stop, a timed accept re-arm, the
/// end of the drain.
#[derive(Default)]
pub(super) struct Events {
    state: Mutex<EventState>,
    cv: Condvar,
}

#[derive(Default)]
pub(super) struct EventState {
    /// 0 serving, 1 draining, 2 closing every connection now.
    stop: u32,
    rearm_accept_at: Option<Instant>,
}

impl Events {
    fn lock(&self) -> MutexGuard<'_, EventState> {
        lock(&self.state)
    }

    pub(super) fn notify(&self) {
        let _held = self.lock();
        self.cv.notify_all();
    }

    pub(super) fn rearm_accept_at(&self, at: Instant) {
        let mut st = self.lock();
        st.rearm_accept_at = Some(at);
        self.cv.notify_all();
    }
}

/// What a wait's check decides.
enum Wait<R> {
    Done(R),
    Until(Instant),
}

/// What ends the serving thread's wait between timers.
enum Timer {
    Stop,
    RearmAccept,
    ScanIdle,
}

impl Inner {
    /// Raises the stop level (1: drain, 2: close every connection now).
    pub(super) fn request_stop(&self, level: u32) {
        {
            let mut st = self.events.lock();
            if st.stop >= level {
                return;
            }
            st.stop = level;
            self.events.cv.notify_all();
        }
        if self.dequeue == Dequeue::Caller {
            // The serving thread waits in `get`, not on the condition.
            let _ = self.port.post(WAKE_KEY, 0, None);
        }
    }

    /// Waits until `check` is done with the events, re-checking when they
    /// change or when the instant it names comes. With a pool the workers
    /// run the completions meanwhile; otherwise this thread runs them, and
    /// re-checks after each (the callback model's alertable wait).
    fn wait<R>(&self, mut check: impl FnMut(&mut EventState, Instant) -> Wait<R>) -> R {
        match self.dequeue {
            Dequeue::Pool(_) => {
                let mut st = self.events.lock();
                loop {
                    let now = Instant::now();
                    match check(&mut st, now) {
                        Wait::Done(r) => return r,
                        Wait::Until(t) => {
                            st = self
                                .events
                                .cv
                                .wait_timeout(st, t.saturating_duration_since(now))
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                    }
                }
            }
            Dequeue::Caller => loop {
                let now = Instant::now();
                let until = match check(&mut self.events.lock(), now) {
                    Wait::Done(r) => return r,
                    Wait::Until(t) => t,
                };
                match self.port.get(Some(until.saturating_duration_since(now))) {
                    Ok(c) => self.complete(&self.port, c),
                    Err(GetError::Timeout) => {}
                    // Nothing can complete any more: stop at once.
                    Err(_) => self.events.lock().stop = 2,
                }
            },
        }
    }

    /// Runs the timers (idle scan, accept re-arm) until a stop.
    pub(super) fn housekeep(&self) {
        let scan_every = self
            .idle_timeout
            .map(|d| (d / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
        let mut next_scan = scan_every.map(|d| Instant::now() + d);
        loop {
            let timer = self.wait(|st, now| {
                if st.stop > 0 {
                    return Wait::Done(Timer::Stop);
                }
                if st.rearm_accept_at.is_some_and(|t| t <= now) {
                    st.rearm_accept_at = None;
                    return Wait::Done(Timer::RearmAccept);
                }
                if next_scan.is_some_and(|t| t <= now) {
                    return Wait::Done(Timer::ScanIdle);
                }
                let later = now + Duration::from_secs(3600);
                let until = [st.rearm_accept_at, next_scan]
                    .into_iter()
                    .flatten()
                    .fold(later, Instant::min);
                Wait::Until(until)
            });
            match timer {
                Timer::Stop => return,
                Timer::RearmAccept => self.rearm_accept(),
                Timer::ScanIdle => {
                    if let (Some(limit), Some(every)) = (self.idle_timeout, scan_every) {
                        self.close_idle(limit);
                        next_scan = Some(Instant::now() + every);
                    }
                }
            }
        }
    }

    /// Stops accepting, lets echoes in progress finish, closes everything.
    pub(super) fn drain(&self) {
        let timeout = self.shutdown_timeout;
        let deadline = Instant::now() + timeout;
        {
            let _table = lock(&self.conns);
            self.draining.store(true, Ordering::Release);
        }
        if let Some(l) = self.listener {
            let _ = self.port.close(l);
        }
        if let Some(udp) = &self.udp {
            udp.cancel(&self.port);
        }
        for conn in self.snapshot() {
            let mut io = lock(&conn.io);
            io.ending.get_or_insert(super::tcp::Reason::Shutdown);
            // A connection that is sending finishes its echo and ends at its
            // next receive; one waiting to receive ends now.
            if let Some(op) = io.recv_op {
                let _ = self.port.cancel(op);
            }
        }
        if !self.wait_drained(deadline, true) {
            let left = self.snapshot();
            let them = if left.len() == 1 { "it" } else { "them" };
            warn!(
                "{} still busy after {timeout:?}: closing {them}",
                plural(left.len() as u64, "connection")
            );
            for conn in left {
                let _ = self.port.close(conn.handle);
            }
            if let Some(udp) = &self.udp {
                let _ = self.port.close(udp.handle);
            }
            if !self.wait_drained(Instant::now() + FORCE_CLOSE_BOUND, false) {
                warn!("connections did not report their close in time; stopping anyway");
            }
        }
        if let Some(udp) = &self.udp {
            let _ = self.port.close(udp.handle);
        }
    }

    /// Waits until no connection or UDP receive is left, or the deadline,
    /// or (when `cut_by_stop_now`) a request to close everything now.
    fn wait_drained(&self, deadline: Instant, cut_by_stop_now: bool) -> bool {
        self.wait(|st, now| {
            let udp_live = self
                .udp
                .as_ref()
                .map_or(0, |u| u.live.load(Ordering::Acquire));
            if self.open.load(Ordering::Acquire) == 0 && udp_live == 0 {
                Wait::Done(true)
            } else if now >= deadline || (cut_by_stop_now && st.stop > 1) {
                Wait::Done(false)
            } else {
                Wait::Until(deadline)
            }
        })
    }
}

/// Per-thread counters, summed when asked: a worker only writes its own
/// cache line, so counting costs no shared atomic per completion.
pub(super) struct Counters {
    /// Tells this set from another server's in a thread's list.
    id: u64,
    all: Mutex<Vec<Arc<ThreadCounters>>>,
}

#[derive(Default)]
#[repr(align(128))]
struct ThreadCounters {
    completions: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

thread_local! {
    /// This thread's counters, one per server it has counted for: a thread
    /// may serve more than one server in its life (the callback model's
    /// serving thread, a test's).
    static MINE: RefCell<Vec<(u64, Arc<ThreadCounters>)>> = const { RefCell::new(Vec::new()) };
}

impl Default for Counters {
    fn default() -> Counters {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Counters {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            all: Mutex::new(Vec::new()),
        }
    }
}

impl Counters {
    pub(super) fn add(&self, completions: u64, bytes_in: u64, bytes_out: u64) {
        MINE.with(|cell| {
            let mut cell = cell.borrow_mut();
            let i = match cell.iter().position(|(id, _)| *id == self.id) {
                Some(i) => i,
                None => {
                    // Those only this thread still holds belong to servers
                    // that are gone.
                    cell.retain(|(_, c)| Arc::strong_count(c) > 1);
                    let c = Arc::new(ThreadCounters::default());
                    lock(&self.all).push(c.clone());
                    cell.push((self.id, c));
                    cell.len() - 1
                }
            };
            let mine = &cell[i].1;
            // One writer per counter.
            for (a, n) in [
                (&mine.completions, completions),
                (&mine.bytes_in, bytes_in),
                (&mine.bytes_out, bytes_out),
            ] {
                if n != 0 {
                    add_single_writer(a, n);
                }
            }
        });
    }

    pub(super) fn sum(&self) -> (u64, u64, u64) {
        lock(&self.all).iter().fold((0, 0, 0), |s, c| {
            (
                s.0 + c.completions.load(Ordering::Relaxed),
                s.1 + c.bytes_in.load(Ordering::Relaxed),
                s.2 + c.bytes_out.load(Ordering::Relaxed),
            )
        })
    }
}
