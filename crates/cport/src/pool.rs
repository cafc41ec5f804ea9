//! [`Workers`]: the tutorials' pool of threads blocked in
//! GetQueuedCompletionStatus, each running a handler per completion.

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use crate::completion::{Completion, GetError, OpKind};
use crate::port::CompletionPort;
use crate::sync::lock_std;

/// The completion key of the quit packets [`Workers::stop`] posts. A worker
/// that dequeues a posted packet with this key exits without calling the
/// handler; posting one stops one worker (SEMANTICS PQ3).
pub const QUIT_KEY: u64 = u64::MAX;

/// A pool of threads, each looping on [`CompletionPort::get`] and calling
/// a handler for every completion.
///
/// A worker ends when it dequeues a quit packet ([`QUIT_KEY`]), when the
/// port is closed, or when its handler panics; the panic is logged at once
/// and reported by [`stop`](Workers::stop) / [`join`](Workers::join).
pub struct Workers<T> {
    port: CompletionPort<T>,
    threads: Vec<JoinHandle<()>>,
    panics: Arc<Mutex<Vec<String>>>,
    /// Workers that have not ended: `stop` posts one quit packet each, so
    /// that none is left queued to stop a later pool on the same port.
    live: Arc<AtomicUsize>,
}

impl<T> fmt::Debug for Workers<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl<T: Send + 'static> Workers<T> {
    /// Starts `threads` workers (0: twice the number of CPUs, as the
    /// tutorials advise) running `handler` for each completion of `port`.
    pub fn spawn<F>(port: &CompletionPort<T>, threads: usize, handler: F) -> io::Result<Workers<T>>
    where
        F: Fn(&CompletionPort<T>, Completion<T>) + Send + Sync + 'static,
    {
        let threads = match threads {
            0 => 2 * thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let handler = Arc::new(handler);
        let panics = Arc::new(Mutex::new(Vec::new()));
        let live = Arc::new(AtomicUsize::new(0));
        let mut pool = Workers {
            port: port.clone(),
            threads: Vec::with_capacity(threads),
            panics: panics.clone(),
            live: live.clone(),
        };
        for i in 0..threads {
            let port = port.clone();
            let handler = handler.clone();
            let panics = panics.clone();
            let live = live.clone();
            pool.live.fetch_add(1, Ordering::SeqCst);
            let spawned = thread::Builder::new()
                .name(format!("cport-worker-{i}"))
                .spawn(move || work(&port, &*handler, &panics, &live));
            match spawned {
                Ok(t) => pool.threads.push(t),
                Err(e) => {
                    pool.live.fetch_sub(1, Ordering::SeqCst);
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

    /// Posts one quit packet per worker still running (each carrying a
    /// clone of `quit`) and waits for every worker to end. Completions
    /// queued before the quit packets are handled first (SEMANTICS Q3 for
    /// each worker). Workers that already ended (a panic, a quit packet
    /// posted elsewhere) get none, so no packet is left queued behind.
    pub fn stop(self, quit: T) -> Result<(), WorkerPanic>
    where
        T: Clone,
    {
        for _ in 0..self.live.load(Ordering::SeqCst) {
            // A closed port has already stopped the workers.
            if self.port.post(QUIT_KEY, 0, quit.clone()).is_err() {
                break;
            }
        }
        self.join()
    }

    /// Waits for every worker to end (after quit packets posted elsewhere,
    /// or [`CompletionPort::close_port`]).
    pub fn join(self) -> Result<(), WorkerPanic> {
        for t in self.threads {
            // Panics are caught in `work`; a join error would be a panic in
            // the pool's own code, reported the same way.
            if let Err(p) = t.join() {
                lock_std(&self.panics).push(message(&*p));
            }
        }
        let panics = std::mem::take(&mut *lock_std(&self.panics));
        if panics.is_empty() {
            Ok(())
        } else {
            Err(WorkerPanic { messages: panics })
        }
    }
}

fn work<T: Send + 'static, F>(
    port: &CompletionPort<T>,
    handler: &F,
    panics: &Mutex<Vec<String>>,
    live: &AtomicUsize,
) where
    F: Fn(&CompletionPort<T>, Completion<T>),
{
    loop {
        match port.get(None) {
            Ok(c) if c.kind == OpKind::Post && c.key == QUIT_KEY => break,
            Ok(c) => {
                if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| handler(port, c))) {
                    let msg = message(&*p);
                    log::error!(target: "cport", "worker {:?} stopped: its handler panicked: {msg}", thread::current().name());
                    lock_std(panics).push(msg);
                    break;
                }
            }
            Err(GetError::Timeout) => {}
            Err(_) => break,
        }
    }
    // Counted out before the slot is given up: whoever sees this thread
    // stop running also sees it gone from the count `stop` reads.
    live.fetch_sub(1, Ordering::SeqCst);
    port.leave();
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

/// Handlers of a [`Workers`] pool panicked; each ended its worker.
#[derive(Debug)]
pub struct WorkerPanic {
    /// The panic messages, one per worker that panicked.
    pub messages: Vec<String>,
}

impl fmt::Display for WorkerPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} worker handler(s) panicked", self.messages.len())?;
        if let Some(m) = self.messages.first() {
            write!(f, "; first: {m}")?;
        }
        Ok(())
    }
}

impl Error for WorkerPanic {}
