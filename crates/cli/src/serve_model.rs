//! `cport serve --model NAME` for every model but `port`: the same TCP
//! echo in one of the tutorials' other I/O models (crates/models), so
//! that `cport load` can be pointed at each.
//!
//! These models echo TCP only and have none of the port server's
//! options: those given explicitly are refused rather than ignored
//! (`--buffer-size` and `--shutdown-timeout`, which have defaults, are
//! ignored). Ctrl-C or SIGTERM stops the model at once: its connections
//! are closed without a drain.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use cport_models::{Model, Stats, Stop};
use tracing::info;

use crate::args::{BackendArg, ServeArgs};
use crate::serve::{listen, out_line};
use crate::Usage;

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let model = args.model;
    check_options(&args)?;
    let listener = listen(SocketAddr::new(args.bind, args.port))?;
    let local = listener.local_addr()?;
    let stop = Stop::new();
    watch_signals(&stop)?;
    let stats = Arc::new(Stats::default());
    // The callback model's port is built here, so the first line names
    // the backend `auto` chose.
    let (callback, listener) = match model {
        Model::Callback => (
            Some(cport_models::callback::Server::new(
                listener,
                args.backend.to_backend(),
                stats.clone(),
            )?),
            None,
        ),
        _ => (None, Some(listener)),
    };

    // The first line names the address actually bound, as the port
    // server's does (scripts start on port 0 and read it from here).
    let backend_note = match &callback {
        Some(c) => format!(" backend={}", c.backend()),
        None => String::new(),
    };
    out_line(&format!(
        "listening on {local} (tcp only: the {model} model serves no udp) \
         model={model}{backend_note}"
    ));

    let (done_tx, done_rx) = mpsc::channel();
    {
        let (stop, stats) = (stop.clone(), stats.clone());
        thread::Builder::new()
            .name(format!("model-{model}"))
            .spawn(move || {
                let r = match (callback, listener) {
                    (Some(c), _) => c.serve(stop),
                    (None, Some(l)) => model.serve(l, stop, stats),
                    (None, None) => unreachable!("a model has its listener"),
                };
                let _ = done_tx.send(r);
            })
            .context("cannot start the model's thread")?;
    }

    let started = Instant::now();
    let mut last = (Instant::now(), 0u64);
    let result = loop {
        match done_rx.recv_timeout(Duration::from_secs(1)) {
            Ok(r) => break r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if args.stats {
                    last = print_stats(&stats, last);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                anyhow::bail!("the {model} model's thread panicked")
            }
        }
    };
    info!(
        "stopped after {:.1?}; {} connections served",
        started.elapsed(),
        stats.accepted.load(Ordering::Relaxed)
    );
    result.with_context(|| format!("the {model} model failed"))
}

/// Refuses the port server's options that these models do not have.
fn check_options(args: &ServeArgs) -> anyhow::Result<()> {
    let model = args.model;
    let mut unsupported = Vec::new();
    if args.no_tcp {
        unsupported.push("--no-tcp (this model serves TCP only)");
    }
    if args.workers.is_some() {
        unsupported.push("--workers");
    }
    if args.concurrency.is_some() {
        unsupported.push("--concurrency");
    }
    if args.print {
        unsupported.push("--print");
    }
    if args.max_conns.is_some() {
        unsupported.push("--max-conns");
    }
    if args.idle_timeout.is_some() {
        unsupported.push("--idle-timeout");
    }
    if args.backend != BackendArg::Auto && model != Model::Callback {
        unsupported.push("--backend (only the port and callback models run on a port)");
    }
    if unsupported.is_empty() {
        Ok(())
    } else {
        Err(Usage(format!(
            "--model {model} does not support {}; these are options of --model port",
            unsupported.join(", ")
        ))
        .into())
    }
}

/// One line: open connections, accepted, echo throughput, threads.
fn print_stats(stats: &Stats, (at, bytes): (Instant, u64)) -> (Instant, u64) {
    let now = Instant::now();
    let total = stats.bytes.load(Ordering::Relaxed);
    let secs = now.duration_since(at).as_secs_f64().max(1e-9);
    out_line(&format!(
        "stats: open={} accepted={} refused={} errors={} echoed={:.0}B/s threads={}",
        stats.open.load(Ordering::Relaxed),
        stats.accepted.load(Ordering::Relaxed),
        stats.refused.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed),
        (total - bytes) as f64 / secs,
        stats.threads.load(Ordering::Relaxed),
    ));
    (now, total)
}

/// SIGINT and SIGTERM stop the model.
fn watch_signals(stop: &Stop) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    let stop = stop.clone();
    thread::Builder::new()
        .name("cport-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                info!("signal {sig}: stopping");
                stop.stop();
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}
