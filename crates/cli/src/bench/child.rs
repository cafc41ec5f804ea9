//! The runner's child processes (servers, loads, perf): started pinned to
//! a CPU, registered while they live so that Ctrl-C can kill them, always
//! reaped, their output read by threads so that no child ever blocks on a
//! full pipe.
//!
//! On Linux, pinning needs neither unsafe code nor taskset(1): a thread's
//! CPU affinity is copied into a process it forks (and kept across exec),
//! so each child is spawned from a short-lived thread that pins itself
//! first. A child is stopped by SIGTERM, then SIGKILL.
//!
//! On Windows a process's affinity is its own, not a thread's: the child
//! is pinned by `SetProcessAffinityMask` on its handle right after the
//! spawn, which moves every thread it has and sets the mask its later
//! threads start with (its first instructions, the loader's, may run on
//! any CPU). It is started in a process group of its own
//! (`CREATE_NEW_PROCESS_GROUP`), so that `GenerateConsoleCtrlEvent
//! (CTRL_BREAK_EVENT, pid)` reaches it alone: Ctrl-Break is what stops a
//! console program gracefully there (the servers answer it as SIGINT),
//! and `TerminateProcess` what kills it. A Ctrl-C typed at the console
//! reaches the bench alone (a new group ignores Ctrl-C), which kills its
//! children.

use std::io::{self, BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context;
#[cfg(unix)]
use rustix::process::{kill_process, waitpid, Pid, Signal, WaitOptions};
#[cfg(unix)]
use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

/// How a child is asked to stop, and how it is made to, in the log.
#[cfg(unix)]
pub const GRACEFUL: &str = "SIGTERM";
#[cfg(unix)]
pub const FORCED: &str = "SIGKILL";
#[cfg(windows)]
pub const GRACEFUL: &str = "Ctrl-Break";
#[cfg(windows)]
pub const FORCED: &str = "TerminateProcess";

/// Children started and not yet reaped, by pid. Spawning and reaping
/// happen under this lock, so the signal handler never kills a pid that
/// was reaped (and may have been reused) nor misses one that was just
/// started.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<u32>> {
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
#[cfg(unix)]
pub fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(None) {
        Ok(set) => (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(_) => Vec::new(),
    }
}

/// The CPUs this process may run on, in order (of its processor group:
/// an affinity mask covers 64 CPUs at most).
#[cfg(windows)]
pub fn allowed_cpus() -> Vec<usize> {
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, GetProcessAffinityMask};
    let (mut mask, mut system) = (0usize, 0usize);
    // SAFETY: the pseudo-handle of this process (never closed) and two
    // words to write into.
    if unsafe { GetProcessAffinityMask(GetCurrentProcess(), &mut mask, &mut system) } == 0 {
        return Vec::new();
    }
    (0..usize::BITS as usize)
        .filter(|c| mask >> c & 1 == 1)
        .collect()
}

/// A running child; killed and reaped on drop if still running, so that
/// an early return leaves no process behind.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    pub pid: u32,
    exited: Option<ExitStatus>,
    /// Why the last [`Proc::stop`] could not ask it to stop (it was killed
    /// at once).
    pub stop_failure: Option<String>,
}

/// Spawns `cmd`, on `cpu` only when given.
#[cfg(unix)]
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
    live.push(pid);
    Ok(Proc {
        child,
        pid,
        exited: None,
        stop_failure: None,
    })
}

/// Spawns `cmd` in a process group of its own, then pins it to `cpu` when
/// given (a child that cannot be pinned is killed: its figures would not
/// be the pinned ones).
#[cfg(windows)]
pub fn spawn(cmd: &mut Command, cpu: Option<usize>) -> anyhow::Result<Proc> {
    use std::os::windows::io::AsRawHandle;
    use std::os::windows::process::CommandExt;
    use windows_sys::Win32::System::Threading::{SetProcessAffinityMask, CREATE_NEW_PROCESS_GROUP};
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut live = live();
    let child = cmd
        .creation_flags(CREATE_NEW_PROCESS_GROUP)
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let pid = child.id();
    live.push(pid);
    let mut proc = Proc {
        child,
        pid,
        exited: None,
        stop_failure: None,
    };
    drop(live);
    if let Some(cpu) = cpu {
        let mask = u32::try_from(cpu)
            .ok()
            .and_then(|c| 1usize.checked_shl(c))
            .ok_or_else(|| anyhow::anyhow!("cannot pin {program} to CPU {cpu}: past the mask"))?;
        // SAFETY: the child's process handle, open while `proc` holds the
        // Child, with every access right (CreateProcess's); no pointer.
        let ok = unsafe { SetProcessAffinityMask(proc.child.as_raw_handle() as _, mask) };
        if ok == 0 {
            let e = io::Error::last_os_error();
            proc.kill();
            anyhow::bail!("cannot pin {program} to CPU {cpu}: {e}");
        }
    }
    Ok(proc)
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
                live.retain(|&p| p != self.pid);
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
    #[cfg(unix)]
    pub fn signal(&self, sig: Signal) {
        let ours = Pid::from_raw(self.pid as i32).filter(|_| self.exited.is_none());
        if let Some(p) = ours {
            let _ = kill_process(p, sig);
        }
    }

    /// SIGINT: what ends perf's count.
    #[cfg(unix)]
    pub fn interrupt(&self) {
        self.signal(Signal::INT);
    }

    /// Ctrl-Break to its process group (itself and its children), if it
    /// has not been reaped: Windows' SIGINT for a console program.
    #[cfg(windows)]
    pub fn interrupt(&self) {
        let _ = self.ctrl_break();
    }

    #[cfg(windows)]
    fn ctrl_break(&self) -> io::Result<()> {
        use windows_sys::Win32::System::Console::{GenerateConsoleCtrlEvent, CTRL_BREAK_EVENT};
        if self.exited.is_some() {
            return Ok(());
        }
        // SAFETY: no pointer; the group id is the child's pid, which it
        // keeps while `self` holds its handle.
        if unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, self.pid) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`; reaped either way. Returns the
    /// exit status and whether SIGKILL was needed.
    #[cfg(unix)]
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

    /// Ctrl-Break, then TerminateProcess after `grace`; reaped either way.
    /// Returns the exit status and whether TerminateProcess was needed
    /// after a Ctrl-Break. A Ctrl-Break that cannot be sent (the bench
    /// shares no console with the child: started without one, as under
    /// wine without a terminal) leaves TerminateProcess at once, which is
    /// no fault of the child: the reason goes to [`Proc::stop_failure`].
    #[cfg(windows)]
    pub fn stop(&mut self, grace: Duration) -> (Option<ExitStatus>, bool) {
        if let Some(st) = self.try_wait() {
            return (Some(st), false);
        }
        if let Err(e) = self.ctrl_break() {
            self.stop_failure = Some(format!(
                "GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, {}) failed: {e}; stopped by \
                 TerminateProcess",
                self.pid
            ));
            return (self.kill(), false);
        }
        if let Some(st) = self.wait_for(grace) {
            return (Some(st), false);
        }
        (self.kill(), true)
    }

    /// SIGKILL and reap.
    #[cfg(unix)]
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.signal(Signal::KILL);
        // A killed process is reaped within milliseconds; the bound only
        // keeps a kernel stuck in uninterruptible sleep from hanging us.
        self.wait_for(Duration::from_secs(10))
    }

    /// TerminateProcess and reap.
    #[cfg(windows)]
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            let _ = self.child.kill();
        }
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
#[cfg(unix)]
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
                let pids: Vec<Pid> = live
                    .iter()
                    .filter_map(|&p| Pid::from_raw(p as i32))
                    .collect();
                for &p in &pids {
                    let _ = kill_process(p, Signal::KILL);
                }
                for &p in &pids {
                    let _ = waitpid(Some(p), WaitOptions::empty());
                }
                run_undo();
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

fn run_undo() {
    for cmd in undo().iter() {
        if let Some((program, args)) = cmd.split_first() {
            let _ = Command::new(program).args(args).output();
        }
    }
}

/// On Ctrl-C or Ctrl-Break (or the console closing): terminate every
/// child, wait for each to end, undo what must be undone, exit 130 as
/// after SIGINT. The children, each in a process group of its own, do not
/// get the Ctrl-C themselves.
#[cfg(windows)]
pub fn kill_children_on_signal() -> anyhow::Result<()> {
    use windows_sys::Win32::Foundation::CloseHandle;
    use windows_sys::Win32::System::Threading::{
        OpenProcess, TerminateProcess, WaitForSingleObject, PROCESS_SYNCHRONIZE, PROCESS_TERMINATE,
    };
    ctrlc::set_handler(|| {
        // Held until exit: nothing is spawned or reaped meanwhile, so each
        // pid is still its child's (its Child holds the process handle
        // until it is reaped, and Windows reuses no pid a handle is open
        // on).
        let live = live();
        for &pid in live.iter() {
            // SAFETY: no pointer; 0 on failure, checked.
            let h = unsafe { OpenProcess(PROCESS_TERMINATE | PROCESS_SYNCHRONIZE, 0, pid) };
            if h != 0 {
                // SAFETY: `h` is the handle just opened with the access
                // these calls need, closed once after them.
                unsafe {
                    TerminateProcess(h, 1);
                    WaitForSingleObject(h, 10_000);
                    CloseHandle(h);
                }
            }
        }
        run_undo();
        crate::console::note(&format!(
            "\ncport bench: interrupted (Ctrl-C); {} child process(es) killed",
            live.len()
        ));
        std::process::exit(130);
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(())
}
