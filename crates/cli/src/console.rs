//! What the commands write and the signals they take, made safe for the
//! places a command runs in: a pipe whose reader exits (`| head`), a log
//! pipe that goes away (`2>&1 | tee log`), Ctrl-C at any moment.
//!
//! * stdout: a write that fails because its reader has gone ends the
//!   command quietly, as Unix tools end ([`StdoutClosed`]); `print!`
//!   would panic there instead.
//! * logs: a log line that cannot be written is dropped. tracing reports a
//!   failed write with `eprintln!`, which panics when stderr is the broken
//!   pipe, and a panic in the signal thread left a server that no signal
//!   could stop.
//! * signals: one thread runs each command's response; its own logging
//!   cannot stop it. On Windows the signals are Ctrl-C and Ctrl-Break,
//!   answered as SIGINT is.
//!
//! (A closed descriptor, `>&-` or `2>&-`, is no failure: the Rust runtime
//! opens /dev/null in its place before `main`.)

use std::error::Error;
use std::fmt;
use std::io::{self, Write};
use std::panic::{self, AssertUnwindSafe};
#[cfg(unix)]
use std::thread;

use anyhow::Context;
use tracing_subscriber::fmt::MakeWriter;

/// stdout's reader has gone: the command ends quietly (exit 0).
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl Error for StdoutClosed {}

/// The command was stopped by a signal: exit 128 + the signal's number
/// (130 for SIGINT, 143 for SIGTERM), as a shell reports it.
#[derive(Debug)]
pub struct Interrupted(pub i32);

impl Interrupted {
    pub fn exit_code(&self) -> u8 {
        u8::try_from(128 + self.0).unwrap_or(1)
    }
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interrupted by {}", signal_name(self.0))
    }
}

impl Error for Interrupted {}

/// `SIGINT`, `SIGTERM`, …
pub fn signal_name(sig: i32) -> String {
    signal_hook::low_level::signal_name(sig).map_or_else(|| format!("signal {sig}"), str::to_string)
}

/// A failed write to stdout as the command's error: [`StdoutClosed`] when
/// the reader has gone.
pub fn stdout_error(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("cannot write to stdout")
    }
}

/// Writes `text` to stdout and flushes it.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// One line on stdout.
pub fn line(text: &str) -> anyhow::Result<()> {
    print(&format!("{text}\n"))
}

/// Calls `gone` once stdout's reader has gone (the pipe's reading end, a
/// socket's peer, the terminal hung up), watched by a thread of its own:
/// a command whose next line may be a long time coming still ends with
/// its reader. Never calls it for a file or /dev/null.
#[cfg(unix)]
pub fn watch_stdout(gone: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    use rustix::event::{poll, PollFd, PollFlags};
    thread::Builder::new()
        .name("cport-stdout".into())
        .spawn(move || {
            let stdout = io::stdout();
            // No events asked for: poll still reports POLLERR (a pipe
            // without readers) and POLLHUP (a hang-up), and nothing else.
            let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
            loop {
                match poll(&mut fds, None) {
                    Ok(_) if !fds[0].revents().is_empty() => return gone(),
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    // poll(2) on one valid descriptor fails only for want
                    // of memory: stop watching rather than spin.
                    Err(_) => return,
                }
            }
        })
        .context("cannot start the thread watching stdout")?;
    Ok(())
}

/// On Windows nothing watches stdout: a pipe cannot be waited on for its
/// reader's end there, so a reader that has gone is found at the next
/// write (which ends the command quietly, as on Unix).
#[cfg(windows)]
pub fn watch_stdout(gone: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    drop(gone);
    Ok(())
}

/// Calls `respond(signal, n)` on the `n`th SIGINT or SIGTERM (counting
/// from 1), from a thread of its own. A panic in `respond` is caught: the
/// next signal is still answered.
#[cfg(unix)]
pub fn on_signals(mut respond: impl FnMut(i32, u32) + Send + 'static) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    thread::Builder::new()
        .name("cport-signals".into())
        .spawn(move || {
            for (n, sig) in (1..).zip(signals.forever()) {
                let _ = panic::catch_unwind(AssertUnwindSafe(|| respond(sig, n)));
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// Calls `respond(SIGINT, n)` on the `n`th Ctrl-C or Ctrl-Break (counting
/// from 1), from the thread of the console control handler: Windows has
/// no SIGTERM to send a console program, and Ctrl-C is its SIGINT. A
/// panic in `respond` is caught: the next Ctrl-C is still answered.
#[cfg(windows)]
pub fn on_signals(mut respond: impl FnMut(i32, u32) + Send + 'static) -> anyhow::Result<()> {
    use signal_hook::consts::SIGINT;
    let mut n = 0;
    ctrlc::set_handler(move || {
        n += 1;
        let _ = panic::catch_unwind(AssertUnwindSafe(|| respond(SIGINT, n)));
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(())
}

/// The log writer: stderr, with write errors dropped (see the module
/// docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Logs;

/// One log line's writer.
#[derive(Debug)]
pub struct LogLine;

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

impl MakeWriter<'_> for Logs {
    type Writer = LogLine;

    fn make_writer(&self) -> LogLine {
        LogLine
    }
}

/// An error line on stderr, `cport: …`, never failing.
pub fn error_line(text: &str) {
    note(&format!("cport: {text}"));
}

/// A line on stderr as it is (progress, notices), never failing: a log
/// pipe that has gone must not stop the command.
pub fn note(text: &str) {
    let _ = writeln!(io::stderr(), "{text}");
}
