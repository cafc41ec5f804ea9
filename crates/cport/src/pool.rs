//! [`Workers`]: the tutorials' pool of threads blocked in
//! GetQueuedCompletionStatus, each running a handler per completion.

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::io;
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::completion::{Completion, GetError, OpKind};
use crate::port::CompletionPort;
use crate::sync::lock_std;

/// The completion key of quit packets. A worker that dequeues a posted
/// packet with this key exits without calling the handler; posting one
/// stops one worker (SEMANTICS PQ3). [`Workers::stop`] posts them;
/// [`Workers::shutdown`] needs none.
pub const QUIT_KEY: u64 = u64::MAX;

/// A pool of threads, each looping on [`CompletionPort::get`] and calling
/// a handler for every completion.
///
/// * **A handler's error** (it returns `Result<(), E>`, so `?` works on
///   `io::Error` and on [`Rejected`](crate::Rejected)) is logged at error
///   level (target `cport`) with the worker's name, the completion's key and
///   kind, and the error; it is counted in [`errors`](Workers::errors), and
///   the worker goes on with the next completion. One bad connection does
///   not take a worker down.
/// * **A panic**, in the handler or in user code the port ran inside `get`
///   (a multishot operation's `Clone` of its value), is caught and logged
///   at once; it ends that worker, which gives its running slot back (C1),
///   and [`shutdown`](Workers::shutdown), [`stop`](Workers::stop) and
///   [`join`](Workers::join) report it. The other workers go on.
/// * **Stopping**: [`shutdown`](Workers::shutdown), or dropping the pool,
///   lets the workers handle every completion queued at that moment, each
///   worker in queue order (SEMANTICS Q3), then ends them and waits for
///   their threads. Completions queued later stay on the port, but for at
///   most as many as the pool has workers: a worker already waiting in
///   `get` may be handed one before it sees the stop. Idle workers are
///   woken for the stop at once (the port interrupts their `get`, queuing
///   nothing). A worker also ends on a posted quit
///   packet ([`QUIT_KEY`], SEMANTICS PQ3) and when the port is closed.
///
/// Waiting for the workers, by any of these calls or by the drop, gives the
/// calling thread's running slot on the port up meanwhile (as
/// [`CompletionPort::blocking`] does), so a handler may stop its own pool
/// even at concurrency 1. Called on one of the pool's own workers, they do
/// not wait for that worker: it ends after its handler returns.
///
/// ```
/// use std::io;
/// use std::time::Duration;
///
/// use cport::{CompletionPort, Workers};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // No quit value in the per-operation type, no `Clone` needed.
/// struct Job(String);
///
/// let port = CompletionPort::<Job>::new(0)?;
/// let (tx, rx) = std::sync::mpsc::channel();
/// let tx = std::sync::Mutex::new(tx);
/// let workers = Workers::spawn(&port, 2, move |_, c| -> io::Result<()> {
///     let n = c.result?;
///     tx.lock().unwrap().send((c.value.0, n)).unwrap();
///     Ok(())
/// })?;
/// port.post(1, 5, Job("hello".to_string()))?;
/// assert_eq!(
///     rx.recv_timeout(Duration::from_secs(10))?,
///     ("hello".to_string(), 5)
/// );
/// workers.shutdown()?;
/// # Ok(())
/// # }
/// ```
pub struct Workers<T: Send + 'static> {
    port: CompletionPort<T>,
    /// Empty once joined: the drop then has nothing left to do.
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

/// What the pool and its workers share.
struct Shared {
    /// Set once by the first stop request, before `stopping`.
    requested: AtomicBool,
    stopping: AtomicBool,
    /// Completions the workers may still take after a stop: those queued
    /// when it was asked. Each take after the workers saw the stop is
    /// reserved from it first, so the completions queued later are left
    /// where a quit packet would have left them.
    budget: AtomicUsize,
    /// Workers that have not ended: `stop` posts one quit packet each, so
    /// that none is left queued to stop a later pool on the same port.
    live: AtomicUsize,
    errors: AtomicU64,
    panics: Mutex<Vec<String>>,
}

impl Shared {
    fn reserve(&self) -> bool {
        self.budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(1))
            .is_ok()
    }

    fn unreserve(&self) {
        self.budget.fetch_add(1, Ordering::AcqRel);
    }

    fn panicked(&self, p: &(dyn Any + Send), place: &str) {
        let msg = message(p);
        log::error!(
            target: "cport",
            "worker {} stopped: {place} panicked: {msg}",
            worker_name()
        );
        lock_std(&self.panics).push(msg);
    }
}

impl<T: Send + 'static> fmt::Debug for Workers<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.threads.len())
            .field("live", &self.live())
            .field("errors", &self.errors())
            .field("stopping", &self.shared.requested.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T: Send + 'static> Workers<T> {
    /// Starts `threads` workers (0: twice the number of CPUs, as the
    /// tutorials advise) running `handler` for each completion of `port`.
    ///
    /// The handler returns `()` or `Result<(), E>` for any displayable `E`
    /// (see [`HandlerResult`]); a closure that uses `?` names its return
    /// type: `|port, c| -> io::Result<()> { .. }`.
    pub fn spawn<F, R>(
        port: &CompletionPort<T>,
        threads: usize,
        handler: F,
    ) -> io::Result<Workers<T>>
    where
        F: Fn(&CompletionPort<T>, Completion<T>) -> R + Send + Sync + 'static,
        R: HandlerResult,
    {
        let threads = match threads {
            0 => 2 * thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let handler = Arc::new(handler);
        let mut pool = Workers {
            port: port.clone(),
            threads: Vec::with_capacity(threads),
            shared: Arc::new(Shared {
                requested: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                budget: AtomicUsize::new(0),
                live: AtomicUsize::new(0),
                errors: AtomicU64::new(0),
                panics: Mutex::new(Vec::new()),
            }),
        };
        for i in 0..threads {
            let port = port.clone();
            let handler = handler.clone();
            let shared = pool.shared.clone();
            pool.shared.live.fetch_add(1, Ordering::SeqCst);
            let spawned = thread::Builder::new()
                .name(format!("cport-worker-{i}"))
                .spawn(move || work(&port, &*handler, &shared));
            match spawned {
                Ok(t) => pool.threads.push(t),
                Err(e) => {
                    pool.shared.live.fetch_sub(1, Ordering::SeqCst);
                    // The drop stops and joins the workers already started.
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    /// The number of worker threads started.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether the pool has no threads.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// The workers that have not ended: [`len`](Workers::len) until a
    /// panic, a quit packet or a closed port ends one.
    pub fn live(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// How many times a handler returned an error so far (each is counted
    /// once its line is logged).
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Acquire)
    }

    /// Stops the workers and waits for them: [`request_stop`] then
    /// [`join`]. Every completion queued now is handled first, each worker
    /// taking them in queue order; then each worker ends. Nothing is posted
    /// and `T` needs nothing.
    ///
    /// Idle workers are woken for it at once. To stop several pools, call
    /// [`request_stop`] on each before joining any.
    ///
    /// [`request_stop`]: Workers::request_stop
    /// [`join`]: Workers::join
    pub fn shutdown(self) -> Result<(), WorkerPanic> {
        self.request_stop();
        self.join()
    }

    /// Asks the workers to end once they have handled the completions
    /// queued now (see [`shutdown`](Workers::shutdown)), and returns at
    /// once. Asking again changes nothing.
    pub fn request_stop(&self) {
        if self.shared.requested.swap(true, Ordering::AcqRel) {
            return;
        }
        let queued = self.port.stats().queued;
        self.shared.budget.store(queued, Ordering::Release);
        self.shared.stopping.store(true, Ordering::Release);
        // After the flag: a worker that read the interrupt count before
        // this wakes now; one that reads it after sees the flag.
        self.port.interrupt();
    }

    /// Stops the workers with quit packets, the tutorials' idiom (SEMANTICS
    /// PQ3): posts one per worker still running, each carrying a clone of
    /// `quit` and the key [`QUIT_KEY`], and waits for every worker to end.
    /// Completions queued before the quit packets are handled first (Q3 for
    /// each worker). Workers that already ended (a panic, a quit packet
    /// posted elsewhere) get none, so no packet is left queued behind.
    /// [`shutdown`](Workers::shutdown) does the same without a quit value.
    pub fn stop(self, quit: T) -> Result<(), WorkerPanic>
    where
        T: Clone,
    {
        if !self.shared.requested.load(Ordering::Acquire) {
            for _ in 0..self.live() {
                // A closed port has already stopped the workers.
                if self.port.post(QUIT_KEY, 0, quit.clone()).is_err() {
                    break;
                }
            }
        }
        self.join()
    }

    /// Waits for every worker to end (after [`request_stop`], quit packets
    /// posted elsewhere, or [`CompletionPort::close_port`]) and reports the
    /// panics that ended any of them.
    ///
    /// [`request_stop`]: Workers::request_stop
    pub fn join(mut self) -> Result<(), WorkerPanic> {
        self.wait()
    }

    fn wait(&mut self) -> Result<(), WorkerPanic> {
        let threads = mem::take(&mut self.threads);
        let me = thread::current().id();
        let panics = &self.shared.panics;
        self.port.blocking(|| {
            for t in threads {
                // Joining itself would never end; this worker ends after
                // its handler returns, and its handle is let go.
                if t.thread().id() == me {
                    continue;
                }
                // Panics are caught in `work`; a join error would be a
                // panic in the pool's own code, reported the same way.
                if let Err(p) = t.join() {
                    lock_std(panics).push(message(&*p));
                }
            }
        });
        let panics = mem::take(&mut *lock_std(panics));
        if panics.is_empty() {
            Ok(())
        } else {
            Err(WorkerPanic { messages: panics })
        }
    }
}

/// Dropping the pool stops it as [`shutdown`](Workers::shutdown) does and
/// waits for its workers; the panics that ended any were logged when they
/// happened. It never panics, so a pool dropped while its owner unwinds
/// does not abort the process.
impl<T: Send + 'static> Drop for Workers<T> {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.request_stop();
        if let Err(e) = self.wait() {
            log::debug!(target: "cport", "worker pool dropped: {e}");
        }
    }
}

/// Counts the worker out however it ends (its own code panicking
/// included). Counted out before the slot is given up: whoever sees this
/// thread stop running also sees it gone from the count `stop` reads.
struct Exit<'a, T: Send + 'static> {
    port: &'a CompletionPort<T>,
    shared: &'a Shared,
}

impl<T: Send + 'static> Drop for Exit<'_, T> {
    fn drop(&mut self) {
        self.shared.live.fetch_sub(1, Ordering::SeqCst);
        self.port.leave();
        if self.shared.stopping.load(Ordering::Acquire) {
            // A worker waiting for a slot to finish the queued work looks
            // again: this one's slot is free, or the work is gone.
            self.port.interrupt();
        }
    }
}

fn work<T: Send + 'static, F, R>(port: &CompletionPort<T>, handler: &F, shared: &Shared)
where
    F: Fn(&CompletionPort<T>, Completion<T>) -> R,
    R: HandlerResult,
{
    let _exit = Exit { port, shared };
    // After a stop, a look that found work queued but no free slot (C1):
    // the next look waits for one instead of ending the worker.
    let mut patient = false;
    loop {
        // Read before the flag: a stop asked after this read interrupts
        // the `get` below.
        let epoch = port.interrupts();
        let stopping = shared.stopping.load(Ordering::Acquire);
        if stopping && !shared.reserve() {
            break;
        }
        let timeout = if stopping && !patient {
            Some(Duration::ZERO)
        } else {
            None
        };
        let got =
            match panic::catch_unwind(AssertUnwindSafe(|| port.get_until(timeout, Some(epoch)))) {
                Ok(got) => got,
                Err(p) => {
                    // The port queued what it reaped before resuming the panic:
                    // this thread took nothing and holds no slot.
                    if stopping {
                        shared.unreserve();
                    }
                    shared.panicked(&*p, "user code the port ran in get");
                    break;
                }
            };
        let c = match got {
            Ok(c) => c,
            Err(GetError::Timeout) => {
                if stopping {
                    shared.unreserve();
                    if port.stats().queued == 0 {
                        break;
                    }
                    patient = true;
                }
                continue;
            }
            Err(_) => {
                if stopping {
                    shared.unreserve();
                }
                break;
            }
        };
        patient = false;
        if c.kind == OpKind::Post && c.key == QUIT_KEY {
            break;
        }
        let (key, kind) = (c.key, c.kind);
        match panic::catch_unwind(AssertUnwindSafe(|| handler(port, c).failure())) {
            Ok(None) => {}
            Ok(Some(e)) => {
                log::error!(
                    target: "cport",
                    "worker {}: the handler failed on a {kind:?} completion with key {key}: {e}",
                    worker_name()
                );
                // Counted once logged: whoever sees the count sees the line.
                shared.errors.fetch_add(1, Ordering::Release);
            }
            Err(p) => {
                shared.panicked(&*p, "its handler");
                break;
            }
        }
    }
}

fn worker_name() -> String {
    thread::current().name().unwrap_or("(unnamed)").to_string()
}

fn message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

mod sealed {
    pub trait Sealed {
        /// The error to report, if the handler failed.
        fn failure(self) -> Option<String>;
    }
}

/// What a [`Workers`] handler returns: `()`, or `Result<(), E>` for any
/// `E` that displays (`io::Error`, into which [`Rejected`](crate::Rejected)
/// converts with `?`). An `Err` is logged and counted, and the worker goes
/// on (see [`Workers`]).
pub trait HandlerResult: sealed::Sealed {}

impl sealed::Sealed for () {
    fn failure(self) -> Option<String> {
        None
    }
}

impl HandlerResult for () {}

impl<E: fmt::Display> sealed::Sealed for Result<(), E> {
    fn failure(self) -> Option<String> {
        self.err().map(|e| e.to_string())
    }
}

impl<E: fmt::Display> HandlerResult for Result<(), E> {}

/// Workers of a [`Workers`] pool panicked, in their handler or in user code
/// the port ran inside `get`; each panic ended its worker.
#[derive(Debug)]
pub struct WorkerPanic {
    /// The panic messages, one per worker that panicked.
    pub messages: Vec<String>,
}

impl fmt::Display for WorkerPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} worker(s) panicked", self.messages.len())?;
        if let Some(m) = self.messages.first() {
            write!(f, "; first: {m}")?;
        }
        Ok(())
    }
}

impl Error for WorkerPanic {}
