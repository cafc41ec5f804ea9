//! `cport`: the tutorials' IOCP echo server and client, on the cport
//! library, a load generator to measure them, and the benchmark of the
//! tutorials' I/O models.
//!
//! Exit codes: 0 success (also when stdout's reader has gone), 1 failure
//! while running, 2 bad usage, 128 + N stopped by signal N (`cport load`).

mod args;
mod bench;
mod client;
mod console;
mod load;
mod serve;

use std::error::Error;
use std::fmt;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::args::{Cli, Command};
use crate::console::{Interrupted, Logs, StdoutClosed};

/// A mistake in how the command was called (exit code 2), found after
/// parsing (e.g. flags that contradict each other).
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for Usage {}

fn main() -> ExitCode {
    // clap prints its own message and exits with 2 on bad usage (0 for
    // --help and --version).
    let cli = Cli::try_parse().unwrap_or_else(|e| e.exit());
    init_logging(cli.verbose);
    let result = cli.command.check().and_then(|()| match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Client(a) => client::run(a),
        Command::Load(a) => load::run(a),
        Command::Bench(a) => bench::run(a),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Err(e) => {
            console::error_line(&format!("{e:#}"));
            if let Some(i) = e.downcast_ref::<Interrupted>() {
                ExitCode::from(i.exit_code())
            } else if e.downcast_ref::<Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Logs go to stderr; stdout carries the commands' output (the listening
/// line, echoes, reports). `RUST_LOG` overrides `-v`. A log line that
/// cannot be written is dropped (console::Logs).
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Logs)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false)
        .init();
}
