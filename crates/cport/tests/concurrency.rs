//! SEMANTICS C1–C3: concurrency accounting (NumberOfConcurrentThreads).
//!
//! Each test drives threads one step at a time ([`Agent`]) and reads the
//! port's counts between steps; a wrong release shows as a count that
//! differs, with no timing involved.

mod common;

use std::io::Write;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use cport::{Backend, CompletionPort, GetError, OpKind};

/// A thread that runs jobs on a port one after another. Being one thread
/// across jobs is the point: what it dequeued in one job keeps it running
/// (C1) in the next, until it comes back to `get`, leaves or exits.
struct Agent<T: Send + 'static> {
    jobs: Option<mpsc::Sender<Job<T>>>,
    thread: Option<thread::JoinHandle<()>>,
}

type Job<T> = Box<dyn FnOnce(&CompletionPort<T>) + Send>;

impl<T: Send + 'static> Agent<T> {
    fn spawn(port: &CompletionPort<T>) -> Agent<T> {
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
    fn start<R: Send + 'static>(
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
    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&CompletionPort<T>) -> R + Send + 'static,
    ) -> R {
        recv(&self.start(f))
    }

    /// Ends the thread and joins it, so its thread-local state is gone.
    fn exit(mut self) {
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

/// The next value on `rx`, failing the test after [`common::LONG`].
#[track_caller]
fn recv<R>(rx: &mpsc::Receiver<R>) -> R {
    match rx.recv_timeout(common::LONG.unwrap()) {
        Ok(v) => v,
        Err(e) => panic!("expected a result within {:?}: {e}", common::LONG),
    }
}

/// (queued, waiting, running) now.
fn counts<T: Send + 'static>(port: &CompletionPort<T>) -> (usize, usize, usize) {
    let s = port.stats();
    (s.queued, s.waiting, s.running)
}

#[track_caller]
fn wait_waiting<T: Send + 'static>(port: &CompletionPort<T>, n: usize) {
    common::wait_until(&format!("{n} threads wait"), || port.stats().waiting == n);
}

/// A port of concurrency 1 with a thread running on it and another parked
/// in `get`. An I/O completion that arrives while nothing is queued is
/// reaped by the parked thread, which cannot run it: it stays queued, where
/// `stats` counts it. (Once something is queued the parked thread no longer
/// polls the kernel, so tests make their I/O completions first.)
fn held<T: Send + 'static>(backend: Backend, warm: T) -> (CompletionPort<T>, Agent<T>, Parked<T>) {
    let port = common::port::<T>(backend, 1);
    let runner = Agent::spawn(&port);
    port.post(0, 0, warm).unwrap();
    runner.call(|p| p.get(common::LONG).map(drop)).unwrap();
    let parked = Agent::spawn(&port);
    let got = parked.start(|p| p.get(common::LONG));
    wait_waiting(&port, 1);
    (port, runner, Parked { agent: parked, got })
}

struct Parked<T: Send + 'static> {
    agent: Agent<T>,
    got: mpsc::Receiver<Result<cport::Completion<T>, GetError>>,
}

backends! {
    fn c1_no_waiter_released_while_n_running(backend: Backend) {
        let (port, runner, parked) = held::<u32>(backend, 0);
        assert_eq!(counts(&port), (0, 1, 1));
        // An I/O completion arrives while N = 1 thread runs: the parked
        // thread reaps it from the kernel but must not run it. (First, while
        // nothing is queued: the parked thread polls the kernel only then.)
        let (h, mut peer) = common::pair(&port, 9);
        port.recv(h, Vec::with_capacity(8), 1).unwrap();
        peer.write_all(b"io").unwrap();
        common::wait_until("the receive is reaped", || port.stats().queued == 1);
        assert_eq!(counts(&port), (1, 1, 1));
        // A post, likewise.
        port.post(2, 0, 2).unwrap();
        assert_eq!(
            counts(&port),
            (2, 1, 1),
            "a completion arrived while N = 1 thread runs: the waiter must stay parked"
        );
        assert!(parked.got.try_recv().is_err(), "the parked thread ran");

        // The running thread stops: exactly one waiter runs, and takes the
        // oldest completion.
        runner.call(|p| p.leave());
        let c = recv(&parked.got).unwrap();
        assert_eq!((c.kind, c.value), (OpKind::Recv, 1));
        assert_eq!(c.payload.into_buf().unwrap(), b"io");
        assert_eq!(counts(&port), (1, 0, 1));
        let c = parked.agent.call(|p| p.get(Some(Duration::ZERO))).unwrap();
        assert_eq!((c.kind, c.value), (OpKind::Post, 2));
        parked.agent.exit();
        runner.exit();
        assert_eq!(counts(&port), (0, 0, 0));
    }

    fn c1_thread_that_exits_or_leaves_stops_running(backend: Backend) {
        let (port, runner, parked) = held::<u32>(backend, 0);
        port.post(1, 0, 1).unwrap();
        assert_eq!(counts(&port), (1, 1, 1));
        // A worker thread that ends without coming back to `get`: its slot
        // is given back when it exits, so the waiter runs.
        runner.exit();
        assert_eq!(recv(&parked.got).unwrap().value, 1);
        assert_eq!(counts(&port), (0, 0, 1));

        // `leave` gives the slot back without exiting; twice is harmless.
        parked.agent.call(|p| p.leave());
        assert_eq!(counts(&port), (0, 0, 0));
        parked.agent.call(|p| p.leave());
        assert_eq!(counts(&port), (0, 0, 0));
        // Left, the thread is a newcomer to `get`: it counts once again.
        port.post(2, 0, 2).unwrap();
        assert_eq!(parked.agent.call(|p| p.get(common::LONG).unwrap().value), 2);
        assert_eq!(counts(&port), (0, 0, 1));
        parked.agent.exit();
        assert_eq!(counts(&port), (0, 0, 0));
    }

    fn c2_running_thread_takes_next_at_once(backend: Backend) {
        let (port, runner, parked) = held::<u32>(backend, 0);
        port.post(1, 0, 1).unwrap();
        assert_eq!(counts(&port), (1, 1, 1));
        // A zero timeout proves no waiting: the completion is there for the
        // thread that comes back, although another one has waited longer.
        let r = runner.call(|p| p.get(Some(Duration::ZERO)).map(|c| c.value));
        assert_eq!(r, Ok(1));
        assert_eq!(counts(&port), (0, 1, 1));
        // Same with a timeout, and with get_many.
        port.post(2, 0, 2).unwrap();
        assert_eq!(runner.call(|p| p.get(common::LONG).map(|c| c.value)), Ok(2));
        port.post(3, 0, 3).unwrap();
        port.post(4, 0, 4).unwrap();
        let r = runner.call(|p| {
            let mut out = Vec::new();
            p.get_many(&mut out, 16, Some(Duration::ZERO))
                .map(|_| out.iter().map(|c| c.value).collect::<Vec<_>>())
        });
        assert_eq!(r, Ok(vec![3, 4]));
        assert_eq!(counts(&port), (0, 1, 1));
        assert!(parked.got.try_recv().is_err(), "the parked thread ran");

        // Once the runner stops, the parked thread gets the next one.
        runner.call(|p| p.leave());
        port.post(5, 0, 5).unwrap();
        assert_eq!(recv(&parked.got).unwrap().value, 5);
        parked.agent.exit();
        runner.exit();
    }

    fn c3_blocking_section_frees_the_slot(backend: Backend) {
        let port = common::port::<u32>(backend, 1);
        let a = Agent::spawn(&port);
        port.post(0, 0, 0).unwrap();
        assert_eq!(a.call(|p| p.get(common::LONG).map(|c| c.value)), Ok(0));
        let b = Agent::spawn(&port);
        let (b_tx, b_rx) = mpsc::channel();
        b.start(move |p| b_tx.send(p.get(common::LONG).map(|c| c.value)).unwrap());
        wait_waiting(&port, 1);
        port.post(1, 0, 1).unwrap();
        assert_eq!(counts(&port), (1, 1, 1));

        // A blocks, and says so: B runs meanwhile. A's section ends only
        // once B has dequeued, so the wait is on an outcome, not a time.
        let (inside, after) = a.call(move |p| {
            let inside = p.blocking(|| b_rx.recv_timeout(common::LONG.unwrap()));
            let s = p.stats();
            (inside, (s.queued, s.waiting, s.running))
        });
        assert_eq!(
            inside,
            Ok(Ok(1)),
            "B must run while A is in its blocking section"
        );
        assert_eq!(
            after,
            (0, 0, 2),
            "back from blocking, A runs again: 2 > N for a while"
        );

        // Over the limit, no waiter is released until the count drops
        // below N, not merely to N.
        let c = Agent::spawn(&port);
        let c_got = c.start(|p| p.get(common::LONG).map(|c| c.value));
        wait_waiting(&port, 1);
        port.post(2, 0, 2).unwrap();
        assert_eq!(counts(&port), (1, 1, 2));
        b.exit();
        assert_eq!(
            counts(&port),
            (1, 1, 1),
            "running == N: the waiter stays parked"
        );
        a.call(|p| p.leave());
        assert_eq!(recv(&c_got), Ok(2));
        assert_eq!(counts(&port), (0, 0, 1));
        c.exit();

        // A thread that is not running has no slot to give: the section
        // just runs.
        assert_eq!(port.blocking(|| 7), 7);
        assert_eq!(counts(&port), (0, 0, 0));
        a.exit();
    }
}
