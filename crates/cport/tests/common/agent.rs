//! Threads driven one step at a time, for the tests of the queue's counts
//! (C1-C3, Q2, Q6, PQ2-PQ3): each step's effect on `stats` is read before
//! the next, so no result depends on timing.

use std::sync::mpsc;
use std::thread;

use cport::{Backend, CompletionPort, GetError};

/// A thread that runs jobs on a port one after another. Being one thread
/// across jobs is the point: what it dequeued in one job keeps it running
/// (C1) in the next, until it comes back to `get`, leaves or exits.
pub struct Agent<T: Send + 'static> {
    jobs: Option<mpsc::Sender<Job<T>>>,
    thread: Option<thread::JoinHandle<()>>,
}

pub type Job<T> = Box<dyn FnOnce(&CompletionPort<T>) + Send>;

impl<T: Send + 'static> Agent<T> {
    pub fn spawn(port: &CompletionPort<T>) -> Agent<T> {
        let (tx, rx) = mpsc::channel::<Job<T>>();
        let port = port.clone();
        let thread = thread::spawn(move || {
            for job in rx {
                job(&port);
            }
        });
        Agent {
            jobs: Some(tx),
            thread: Some(thread),
        }
    }

    /// Starts `f` on the agent; its result arrives on the returned channel.
    pub fn start<R: Send + 'static>(
        &self,
        f: impl FnOnce(&CompletionPort<T>) -> R + Send + 'static,
    ) -> mpsc::Receiver<R> {
        let (tx, rx) = mpsc::channel();
        let job: Job<T> = Box::new(move |p| {
            let _ = tx.send(f(p));
        });
        self.jobs.as_ref().unwrap().send(job).unwrap();
        rx
    }

    /// Runs `f` on the agent and waits (bounded) for its result.
    #[track_caller]
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&CompletionPort<T>) -> R + Send + 'static,
    ) -> R {
        recv(&self.start(f))
    }

    /// Ends the thread and joins it, so its thread-local state is gone.
    pub fn exit(mut self) {
        self.jobs = None;
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("the agent panicked");
    }
}

impl<T: Send + 'static> Drop for Agent<T> {
    fn drop(&mut self) {
        self.jobs = None;
        // A failed test may leave the agent blocked: do not hang on it.
        if let Some(t) = self.thread.take() {
            if !thread::panicking() {
                t.join().expect("the agent panicked");
            }
        }
    }
}

/// The next value on `rx`, failing the test after [`super::LONG`].
#[track_caller]
pub fn recv<R>(rx: &mpsc::Receiver<R>) -> R {
    match rx.recv_timeout(super::LONG.unwrap()) {
        Ok(v) => v,
        Err(e) => panic!("expected a result within {:?}: {e}", super::LONG),
    }
}

/// (queued, waiting, running) now.
pub fn counts<T: Send + 'static>(port: &CompletionPort<T>) -> (usize, usize, usize) {
    let s = port.stats();
    (s.queued, s.waiting, s.running)
}

#[track_caller]
pub fn wait_waiting<T: Send + 'static>(port: &CompletionPort<T>, n: usize) {
    super::wait_until(&format!("{n} threads wait"), || port.stats().waiting == n);
}

/// A port of concurrency 1 with a thread running on it and another parked
/// in `get`. An I/O completion that arrives while nothing is queued is
/// reaped by the parked thread, which cannot run it: it stays queued, where
/// `stats` counts it. (Once something is queued the parked thread no longer
/// polls the kernel, so tests make their I/O completions first.)
pub fn held<T: Send + 'static>(
    backend: Backend,
    warm: T,
) -> (CompletionPort<T>, Agent<T>, Parked<T>) {
    let port = super::port::<T>(backend, 1);
    let runner = Agent::spawn(&port);
    port.post(0, 0, warm).unwrap();
    runner.call(|p| p.get(super::LONG).map(drop)).unwrap();
    let parked = Agent::spawn(&port);
    let got = parked.start(|p| p.get(super::LONG));
    wait_waiting(&port, 1);
    (port, runner, Parked { agent: parked, got })
}

pub struct Parked<T: Send + 'static> {
    pub agent: Agent<T>,
    pub got: mpsc::Receiver<Result<cport::Completion<T>, GetError>>,
}
