//! The runner's child processes (servers, loads, perf): started pinned to
//! a CPU, registered while they live so that Ctrl-C can kill them, always
//! reaped, their output read by threads so that no child ever blocks on a
//! full pipe.
//!
//! Pinning needs neither unsafe code nor taskset(1): a thread's CPU
//! affinity is copied into a process it forks (and kept across exec), so
//! each child is spawned from a short-lived thread that pins itself first.

use std::io::{self, BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustix::process::{kill_process, waitpid, Pid, Signal, WaitOptions};
use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

/// Children started and not yet reaped. Spawning and reaping happen under
/// this lock, so the signal handler never kills a pid that was reaped (and
/// may have been reused) nor misses one that was just started.
static LIVE: Mutex<Vec<Pid>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<Pid>> {
    // A list of pids stays consistent across a panic.
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Commands that undo a change to the machine (a perf probe), run on Ctrl-C
/// after the children are gone.
static UNDO: Mutex<Vec<Vec<String>>> = Mutex::new(Vec::new());

fn undo() -> MutexGuard<'static, Vec<Vec<String>>> {
    UNDO.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `cmd` if the bench is interrupted before [`forget_undo`].
pub fn undo_on_interrupt(cmd: Vec<String>) {
    undo().push(cmd);
}

pub fn forget_undo(cmd: &[String]) {
    undo().retain(|c| c != cmd);
}

/// Kept of a child's output in runs.log.
const LOG_CAP: usize = 16 * 1024;

/// A child's output, read by a thread; capped for the log.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<String>>);

impl Captured {
    pub fn push(&self, s: &str) {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() < LOG_CAP {
            b.push_str(s);
            if b.len() >= LOG_CAP {
                b.push_str("\n[... cut]\n");
            }
        }
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Reads `r` into `into` until its end, on a thread of its own.
pub fn read_into(r: impl Read + Send + 'static, into: Captured) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => into.push(&line),
            }
        }
    })
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(None) {
        Ok(set) => (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(_) => Vec::new(),
    }
}

/// A running child; killed and reaped on drop if still running, so that
/// an early return leaves no process behind.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    pub pid: u32,
    exited: Option<ExitStatus>,
}

/// Spawns `cmd`, on `cpu` only when given.
pub fn spawn(cmd: &mut Command, cpu: Option<usize>) -> anyhow::Result<Proc> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut live = live();
    let child = match cpu {
        None => cmd.spawn(),
        Some(cpu) => thread::scope(|s| {
            s.spawn(|| {
                let mut set = CpuSet::new();
                set.set(cpu);
                sched_setaffinity(None, &set)
                    .map_err(|e| io::Error::other(format!("cannot pin to CPU {cpu}: {e}")))?;
                cmd.spawn()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the spawning thread panicked")))
        }),
    }
    .with_context(|| format!("cannot start {program}"))?;
    let pid = child.id();
    if let Some(p) = Pid::from_raw(pid as i32) {
        live.push(p);
    }
    Ok(Proc {
        child,
        pid,
        exited: None,
    })
}

impl Proc {
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Whether it has exited (reaping it if so).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            let mut live = live();
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some(st);
                live.retain(|p| p.as_raw_pid() as u32 != self.pid);
            }
        }
        self.exited
    }

    /// Waits for it to exit, at most `within`.
    pub fn wait_for(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `sig` if it has not been reaped (so the pid is still its own).
    pub fn signal(&self, sig: Signal) {
        let ours = Pid::from_raw(self.pid as i32).filter(|_| self.exited.is_none());
        if let Some(p) = ours {
            let _ = kill_process(p, sig);
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; reaped either way. Returns the
    /// exit status and whether SIGKILL was needed.
    pub fn stop(&mut self, grace: Duration) -> (Option<ExitStatus>, bool) {
        if let Some(st) = self.try_wait() {
            return (Some(st), false);
        }
        self.signal(Signal::TERM);
        if let Some(st) = self.wait_for(grace) {
            return (Some(st), false);
        }
        (self.kill(), true)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.signal(Signal::KILL);
        // A killed process is reaped within milliseconds; the bound only
        // keeps a kernel stuck in uninterruptible sleep from hanging us.
        self.wait_for(Duration::from_secs(10))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.kill();
        }
    }
}

/// On SIGINT or SIGTERM: kill every child, reap them, undo what must be
/// undone, exit 128 + the signal (130, 143), as a shell reports a command
/// a signal ended.
pub fn kill_children_on_signal() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                // Held until exit: nothing is spawned or reaped meanwhile.
                let live = live();
                for &p in live.iter() {
                    let _ = kill_process(p, Signal::KILL);
                }
                for &p in live.iter() {
                    let _ = waitpid(Some(p), WaitOptions::empty());
                }
                for cmd in undo().iter() {
                    if let Some((program, args)) = cmd.split_first() {
                        let _ = Command::new(program).args(args).output();
                    }
                }
                // Never a panic here (a log pipe gone): this thread is what
                // stops the command.
                crate::console::note(&format!(
                    "\ncport bench: interrupted ({}); {} child process(es) killed",
                    crate::console::signal_name(sig),
                    live.len()
                ));
                std::process::exit(128 + sig);
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}
