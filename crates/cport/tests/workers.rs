//! The [`Workers`] pool: how it stops (SEMANTICS PQ3 without a quit value,
//! and by its drop), what becomes of a handler's error and of a panic in
//! the handler or inside `get`, with the pool's and the port's counts
//! exact (C1, C3).

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use cport::{Completion, CompletionPort, OpKind, Workers};

use common::agent::{counts, recv, wait_waiting};

/// Key of packets whose handler holds its worker until a condition holds.
const HOLD: u64 = 1 << 20;

/// Waits, bounded, until `cond` holds; for handlers, which must not panic
/// (that would end their worker and blur what a test observes): a failed
/// wait shows up in the test's own assertions instead.
fn hold_until(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + common::LONG.unwrap();
    while !cond() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
}

/// Sets its flag when dropped: moved into a handler, it shows that every
/// worker has let the handler go, which each does as its thread ends.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Counts threads whose thread-local state was destroyed: a thread that
/// ran a handler registered one, and it is counted only once the thread
/// has ended.
struct Ended(Arc<AtomicUsize>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

thread_local! {
    static ENDED: RefCell<Option<Ended>> = const { RefCell::new(None) };
}

fn register_end(ended: &Arc<AtomicUsize>) {
    ENDED.with(|e| {
        e.borrow_mut().get_or_insert_with(|| Ended(ended.clone()));
    });
}

/// Every packet a handler saw: (worker, key, value).
type Seen = Arc<Mutex<Vec<(String, u64, u32)>>>;

fn note(seen: &Seen, c: &Completion<u32>) {
    let name = thread::current().name().unwrap_or("?").to_string();
    seen.lock().unwrap().push((name, c.key, c.value));
}

/// The values of `seen` with key `key`, per worker, in the order handled.
fn per_worker(seen: &Seen, key: u64) -> BTreeMap<String, Vec<u32>> {
    let mut by = BTreeMap::<String, Vec<u32>>::new();
    for (w, k, v) in seen.lock().unwrap().iter() {
        if *k == key {
            by.entry(w.clone()).or_default().push(*v);
        }
    }
    by
}

/// Asserts that the packets of key `key` were handled exactly once each,
/// `want` in all, each worker taking them in queue order (Q3).
#[track_caller]
fn assert_handled_in_order(seen: &Seen, key: u64, want: std::ops::Range<u32>) {
    let by = per_worker(seen, key);
    let mut all: Vec<u32> = by.values().flatten().copied().collect();
    for (w, vs) in &by {
        assert!(
            vs.windows(2).all(|p| p[0] < p[1]),
            "{w} took them out of order: {vs:?}"
        );
    }
    all.sort_unstable();
    assert_eq!(all, want.collect::<Vec<_>>(), "handled: {by:?}");
}

/// The log lines of target `cport`, captured for the whole test binary.
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target() == "cport"
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let line = format!("{} {}", r.level(), r.args());
            LINES.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&CAPTURE).expect("no other logger in this binary");
        log::set_max_level(log::LevelFilter::Debug);
    });
}

fn logged(containing: &str) -> Vec<String> {
    LINES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|l| l.contains(containing))
        .cloned()
        .collect()
}

/// A key no other test of this binary uses, so that its log lines are told
/// apart from those of the tests running beside it.
fn unique_key() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0x5eed_0000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A per-operation value with neither `Clone` nor anything to quit with.
struct Job {
    text: String,
}

/// A per-operation value whose first clone panics.
#[derive(Debug)]
struct Bomb {
    clones: Arc<AtomicUsize>,
}

impl Clone for Bomb {
    fn clone(&self) -> Self {
        let n = self.clones.fetch_add(1, Ordering::SeqCst) + 1;
        if n == 1 {
            panic!("clone {n} of the accept's value panics");
        }
        Bomb {
            clones: self.clones.clone(),
        }
    }
}

backends! {
    fn pq3_shutdown_needs_no_quit_value(backend: Backend) {
        let port = common::port::<Job>(backend, 2);
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let workers = Workers::spawn(&port, 3, move |_, c: Completion<Job>| {
            tx.lock().unwrap().send(c.value.text).unwrap();
        })
        .unwrap();
        wait_waiting(&port, 3);
        for i in 0..5 {
            let job = Job {
                text: format!("job {i}"),
            };
            port.post(1, 0, job).unwrap();
        }
        let got: HashSet<String> = (0..5).map(|_| recv(&rx)).collect();
        assert_eq!(got, (0..5).map(|i| format!("job {i}")).collect());
        workers.shutdown().expect("no worker panicked");
        assert_eq!(counts(&port), (0, 0, 0));
        assert!(rx.try_recv().is_err());
    }

    fn pq3_drop_joins_after_handling_what_was_queued(backend: Backend) {
        // This thread runs on the port too (it took a packet), so its wait
        // in the drop gives its slot up (C3): that is how the handlers,
        // held meanwhile, know that the drop has asked the stop.
        let port = common::port::<u32>(backend, 3);
        port.post(0, 0, 0).unwrap();
        common::next(&port);
        let seen = Seen::default();
        let gone = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(AtomicUsize::new(0));
        let armed = Arc::new(AtomicBool::new(false));
        let handler = {
            let (seen, ended, armed) = (seen.clone(), ended.clone(), armed.clone());
            let guard = Dropped(gone.clone());
            move |port: &CompletionPort<u32>, c: Completion<u32>| {
                let _ = &guard;
                register_end(&ended);
                note(&seen, &c);
                if c.key == HOLD {
                    hold_until(|| armed.load(Ordering::SeqCst) && port.stats().running < 3);
                }
            }
        };
        let workers = Workers::spawn(&port, 2, handler).unwrap();
        wait_waiting(&port, 2);
        port.post(HOLD, 0, 100).unwrap();
        port.post(HOLD, 0, 101).unwrap();
        common::wait_until("both workers hold", || counts(&port) == (0, 0, 3));
        for i in 0..10 {
            port.post(1, 0, i).unwrap();
        }
        armed.store(true, Ordering::SeqCst);
        drop(workers);
        assert!(gone.load(Ordering::SeqCst), "a worker still holds the handler");
        assert_eq!(ended.load(Ordering::SeqCst), 2, "a worker thread has not ended");
        assert_handled_in_order(&seen, 1, 0..10);
        assert_eq!(per_worker(&seen, HOLD).len(), 2);
        // Only this thread runs, and it runs again after the drop.
        assert_eq!(counts(&port), (0, 0, 1));
        port.leave();
        assert_eq!(counts(&port), (0, 0, 0));
    }

    fn pq3_request_stop_leaves_later_completions_queued(backend: Backend) {
        let port = common::port::<u32>(backend, 2);
        let seen = Seen::default();
        let open = Arc::new(AtomicBool::new(false));
        let handler = {
            let (seen, open) = (seen.clone(), open.clone());
            move |_: &CompletionPort<u32>, c: Completion<u32>| {
                note(&seen, &c);
                if c.key == HOLD {
                    hold_until(|| open.load(Ordering::SeqCst));
                }
            }
        };
        let workers = Workers::spawn(&port, 2, handler).unwrap();
        wait_waiting(&port, 2);
        port.post(HOLD, 0, 100).unwrap();
        port.post(HOLD, 0, 101).unwrap();
        common::wait_until("both workers hold", || counts(&port) == (0, 0, 2));
        for i in 0..10 {
            port.post(1, 0, i).unwrap();
        }
        workers.request_stop();
        for i in 10..15 {
            port.post(2, 0, i).unwrap();
        }
        open.store(true, Ordering::SeqCst);
        workers.join().expect("no worker panicked");
        assert_handled_in_order(&seen, 1, 0..10);
        assert!(per_worker(&seen, 2).is_empty(), "a packet posted after the stop was handled");
        assert_eq!(counts(&port), (5, 0, 0));
        for i in 10..15 {
            let c = common::next(&port);
            assert_eq!((c.key, c.value), (2, i));
        }
        port.leave();
    }

    fn pq3_drop_inside_a_handler_does_not_deadlock(backend: Backend) {
        // Concurrency 1: the dropping worker holds the only slot, so the
        // other could not handle what is queued unless the drop's wait gave
        // it up (C3).
        const DROP: u64 = 7;
        let port = common::port::<u32>(backend, 1);
        let seen = Seen::default();
        let gone = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicBool::new(false));
        let slot: Arc<Mutex<Option<Workers<u32>>>> = Arc::default();
        let handler = {
            let (seen, open, dropped, slot) =
                (seen.clone(), open.clone(), dropped.clone(), slot.clone());
            let guard = Dropped(gone.clone());
            move |_: &CompletionPort<u32>, c: Completion<u32>| {
                let _ = &guard;
                note(&seen, &c);
                if c.key == DROP {
                    hold_until(|| open.load(Ordering::SeqCst));
                    let pool = slot.lock().unwrap().take();
                    drop(pool);
                    dropped.store(true, Ordering::SeqCst);
                }
            }
        };
        let workers = Workers::spawn(&port, 2, handler).unwrap();
        *slot.lock().unwrap() = Some(workers);
        wait_waiting(&port, 2);
        port.post(DROP, 0, 0).unwrap();
        common::wait_until("a worker runs the drop", || counts(&port) == (0, 1, 1));
        for i in 0..10 {
            port.post(1, 0, i).unwrap();
        }
        open.store(true, Ordering::SeqCst);
        common::wait_until("the drop returned", || dropped.load(Ordering::SeqCst));
        common::wait_until("both workers ended", || gone.load(Ordering::SeqCst));
        assert_handled_in_order(&seen, 1, 0..10);
        assert_eq!(counts(&port), (0, 0, 0));
    }

    fn pq3_drop_while_unwinding_does_not_abort(backend: Backend) {
        let port = common::port::<u32>(backend, 2);
        let gone = Arc::new(AtomicBool::new(false));
        let guard = Dropped(gone.clone());
        let workers = Workers::spawn(&port, 2, move |_, _| {
            let _ = &guard;
        })
        .unwrap();
        wait_waiting(&port, 2);
        let owner = thread::spawn(move || {
            let _pool = workers;
            panic!("the pool's owner fails");
        });
        assert!(owner.join().is_err());
        assert!(gone.load(Ordering::SeqCst), "the drop did not join the workers");
        assert_eq!(counts(&port), (0, 0, 0));

        // The same inside a worker: a handler that owns the pool panics.
        let gone = Arc::new(AtomicBool::new(false));
        let slot: Arc<Mutex<Option<Workers<u32>>>> = Arc::default();
        let handler = {
            let slot = slot.clone();
            let guard = Dropped(gone.clone());
            move |_: &CompletionPort<u32>, _: Completion<u32>| {
                let _ = &guard;
                let pool = slot.lock().unwrap().take();
                if pool.is_some() {
                    panic!("a handler that owns its pool fails");
                }
            }
        };
        *slot.lock().unwrap() = Some(Workers::spawn(&port, 2, handler).unwrap());
        wait_waiting(&port, 2);
        port.post(1, 0, 1).unwrap();
        common::wait_until("both workers ended", || gone.load(Ordering::SeqCst));
        assert_eq!(counts(&port), (0, 0, 0));
    }

    fn pool_handler_error_is_logged_and_the_worker_goes_on(backend: Backend) {
        capture_logs();
        let bad = unique_key();
        let port = common::port::<u32>(backend, 1);
        // A handle closed at once: every operation on it is refused.
        let (stale, _peer) = common::pair(&port, 3);
        port.close(stale).unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let workers = Workers::spawn(&port, 1, move |port, c| -> io::Result<()> {
            if c.key == bad {
                // A refused operation, through `?`: Rejected into io::Error.
                port.send(stale, vec![1], c.value)?;
                unreachable!("the send on a closed handle was accepted");
            }
            tx.lock().unwrap().send(c.value).unwrap();
            Ok(())
        })
        .unwrap();
        for v in 0..6u32 {
            let key = if v % 2 == 1 { bad } else { 1 };
            port.post(key, 0, v).unwrap();
        }
        // One worker: it handled the packets after each error.
        let ok: Vec<u32> = (0..3).map(|_| recv(&rx)).collect();
        assert_eq!(ok, [0, 2, 4]);
        common::wait_until("the three errors are counted", || workers.errors() == 3);
        let lines = logged(&format!("key {bad}:"));
        assert_eq!(lines.len(), 3, "{lines:?}");
        for l in &lines {
            assert!(l.starts_with("ERROR worker cport-worker-0: "), "{l}");
            assert!(l.contains("a Post completion with key"), "{l}");
        }
        workers.shutdown().expect("an error is not a panic");
        assert_eq!(counts(&port), (0, 0, 0));
    }

    fn pool_panic_inside_get_ends_its_worker_and_is_reported(backend: Backend) {
        // The multishot accept's value is cloned for each connection while
        // the port reaps, inside a worker's `get`; the first clone panics.
        let port = common::port::<Bomb>(backend, 2);
        let listener = port
            .associate(TcpListener::bind("127.0.0.1:0").unwrap(), 1)
            .unwrap();
        let addr = port.local_addr(listener).unwrap();
        let value = Bomb {
            clones: Arc::new(AtomicUsize::new(0)),
        };
        let mut accept = port.accept_multi(listener, value.clone_inert()).unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let workers = Workers::spawn(&port, 2, move |_, c: Completion<Bomb>| {
            tx.lock().unwrap().send((c.kind, c.more)).unwrap();
        })
        .unwrap();
        wait_waiting(&port, 2);
        let _first = TcpStream::connect(addr).unwrap();
        common::wait_until("the worker whose get panicked is gone", || {
            workers.live() == 1 && counts(&port) == (0, 1, 0)
        });
        assert_eq!(value.clones.load(Ordering::SeqCst), 1);
        assert!(rx.try_recv().is_err(), "the lost connection reached the handler");

        // The other worker serves on: the next connection, then the end of
        // the accept.
        let _second = TcpStream::connect(addr).unwrap();
        let mut got = recv(&rx);
        if cfg!(windows) && got == (OpKind::Accept, false) {
            // Wine cancels the overlapped I/O a thread issued when the
            // thread exits, as Windows did before Vista; Windows itself
            // keeps I/O on a handle associated with a port. The AcceptEx
            // re-issued by the worker whose get panicked may end so when
            // its thread exits after `live` fell, and the second connection
            // goes with it when it arrived as the thread was exiting (wine's
            // server accepts it, then cancels the completion it owed the
            // dead thread). Accept again, from here, and connect once more:
            // one of the two connections is still in the backlog.
            accept = port.accept_multi(listener, value.clone_inert()).unwrap();
            let _third = TcpStream::connect(addr).unwrap();
            got = recv(&rx);
        }
        assert_eq!(got, (OpKind::Accept, true));
        port.cancel(accept).unwrap();
        let mut end = recv(&rx);
        if cfg!(windows) && end == (OpKind::Accept, true) {
            // Wine, as above: both the second and the third connection
            // were there, and the second accept took both.
            end = recv(&rx);
        }
        assert_eq!(end, (OpKind::Accept, false));

        // One quit packet for the one worker left: none stays queued.
        let err = workers
            .stop(value)
            .expect_err("stop must report the panic in get");
        assert_eq!(err.messages, ["clone 1 of the accept's value panics"]);
        assert_eq!(counts(&port), (0, 0, 0), "the pool's count of live workers was off");
    }
}

impl Bomb {
    /// Another handle on the same clone count, made without counting.
    fn clone_inert(&self) -> Bomb {
        Bomb {
            clones: self.clones.clone(),
        }
    }
}
