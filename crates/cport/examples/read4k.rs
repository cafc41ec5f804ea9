//! Seed 002's `Read4kAsync`, on cport: asynchronous file reads through the
//! same completion port that serves sockets.
//!
//! Two files are associated under completion keys 100 and 200; four reads
//! of 4 KiB are issued at offsets 0 and 4096 of each, each read carrying
//! its own per-operation value (the seed's `OVERLAPPED_PLUS` with an `id`);
//! two worker threads print the completions as they come.
//!
//! ```text
//! cargo run -p cport --example read4k [FILE1 [FILE2]]
//! ```
//!
//! The seed reads calc.exe and notepad.exe; by default this reads its own
//! executable twice, a file that is sure to exist and be large enough.

use std::env;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::process;
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::Duration;

use cport::{CompletionPort, Workers};

/// The seed's `OVERLAPPED_PLUS`: which read this is. The buffer is not
/// here: the operation owns it and the completion hands it back.
#[derive(Clone, Debug)]
struct Read4k {
    id: u32,
    offset: u64,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("read4k: {e}");
        process::exit(1);
    }
}

fn run() -> io::Result<()> {
    let me = env::current_exe()?;
    let mut args = env::args_os().skip(1).map(PathBuf::from);
    let path1 = args.next().unwrap_or_else(|| me.clone());
    let path2 = args.next().unwrap_or(me);

    // 1. The port, concurrency 2 (the seed's CreateIoCompletionPort(.., 2)).
    let port = CompletionPort::<Read4k>::new(2)?;

    // 2. The files, under completion keys 100 and 200.
    let open = |p: &PathBuf| {
        File::open(p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    };
    let file1 = port.associate(open(&path1)?, 100)?;
    let file2 = port.associate(open(&path2)?, 200)?;

    // 3. Two threads waiting on the port, printing what completes.
    let (done, finished) = mpsc::channel();
    // (A Mutex makes the Sender shareable by the workers on Rust 1.63.)
    let done = Mutex::new(done);
    let workers = Workers::spawn(&port, 2, move |_port, c| {
        let bytes = match &c.result {
            Ok(n) => n.to_string(),
            Err(e) => format!("error: {e}"),
        };
        println!(
            "COMPLETE : key {}, id {}, offset {}, bytes {} (on {})",
            c.key,
            c.value.id,
            c.value.offset,
            bytes,
            thread::current().name().unwrap_or("?")
        );
        let _ = done.lock().map(|d| d.send(()));
    })?;

    // 4. The asynchronous requests.
    for (id, (file, offset)) in (1..).zip([(file1, 0), (file1, 4096), (file2, 0), (file2, 4096)]) {
        port.read_at(
            file,
            Vec::with_capacity(4096),
            offset,
            Read4k { id, offset },
        )?;
    }
    println!("Main Continue ..");

    for _ in 0..4 {
        finished
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "a read did not complete within 10 s",
                )
            })?;
    }
    workers
        .stop(Read4k { id: 0, offset: 0 })
        .map_err(|e| io::Error::new(io::ErrorKind::Other, e))
}
