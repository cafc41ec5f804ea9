//! What the commands write and the signals they take.

use std::error::Error;
use std::fmt;
use std::io::{self, Write};
use std::panic::{self, AssertUnwindSafe};
use std::thread;

use anyhow::Context;

/// stdout's reader has gone.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl Error for StdoutClosed {}

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

/// Calls `respond(signal, n)` on the `n`th SIGINT or SIGTERM (counting
/// from 1), from a thread of its own. A panic in `respond` is caught: the
/// next signal is still answered.
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
