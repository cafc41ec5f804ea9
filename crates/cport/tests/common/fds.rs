//! This process's descriptor table, for the tests that exhaust it (R1,
//! R2): read and set RLIMIT_NOFILE without unsafe code (/proc and
//! prlimit(1)), and fill the table.

use std::fs::File;
use std::io;
use std::process::Command;

/// RLIMIT_NOFILE of this process (soft, hard), as /proc/self/limits says.
pub fn nofile() -> (String, String) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut f = line["Max open files".len()..].split_whitespace();
    (f.next().unwrap().to_string(), f.next().unwrap().to_string())
}

/// Sets this process's RLIMIT_NOFILE with prlimit(1) from util-linux.
pub fn set_nofile(soft: &str, hard: &str) -> io::Result<()> {
    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={soft}:{hard}"))
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::Other,
            format!("prlimit: {status}"),
        ))
    }
}

/// The highest descriptor number open now.
pub fn highest_fd() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap()
}

/// Opens /dev/null until the table is full; the files free it when dropped.
pub fn fill_table() -> Vec<File> {
    let mut fillers = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => fillers.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return fillers,
            Err(e) => panic!("filling the descriptor table: {e}"),
        }
        assert!(fillers.len() < 100_000, "the lowered limit did not take");
    }
}
