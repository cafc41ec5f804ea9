//! What the runner reads about its children from /proc, and perf's
//! count. Parsers are pure; readers are one file each.

use std::fs;
use std::io;

/// utime + stime (clock ticks, every thread, the exited ones included)
/// from the text of /proc/PID/stat. The command name (field 2) is in
/// parentheses and may hold spaces and ')', so fields are counted after
/// the last ')': state is field 3, utime 14, stime 15.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A number from a `Key:\tvalue [kB]` line of /proc/PID/status.
pub fn parse_status_field(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k != key {
            return None;
        }
        v.split_whitespace().next()?.parse().ok()
    })
}

pub fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu_ticks(&stat).ok_or_else(|| io::Error::other(format!("cannot parse {stat:?}")))
}

fn status_field(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_field(&status, key)
}

/// Threads the process runs now.
pub fn threads(pid: u32) -> Option<u64> {
    status_field(pid, "Threads")
}

/// The process's peak resident set (KiB).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM")
}

/// The CPUs the process may run on, as the kernel lists them ("0", "0-1").
pub fn cpus_allowed(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// Sockets the process holds open. Entries that vanish while the
/// directory is read (a descriptor closed meanwhile) are not errors.
pub fn socket_count(pid: u32) -> io::Result<usize> {
    let mut n = 0;
    for e in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(e) = e else { continue };
        let socket = fs::read_link(e.path())
            .is_ok_and(|t| t.as_os_str().as_encoded_bytes().starts_with(b"socket:"));
        if socket {
            n += 1;
        }
    }
    Ok(n)
}

/// The count of `perf stat -x, -e EVENT` from its stderr: the line naming
/// the event, whose first field is the count, or why there is none
/// (`<not counted>`, `<not supported>`, or perf's own complaint).
pub fn parse_perf_count(stderr: &str, event: &str) -> Result<u64, String> {
    for line in stderr.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() >= 3 && fields[2] == event {
            return fields[0]
                .trim()
                .parse()
                .map_err(|_| format!("perf reported {:?} for {event}", fields[0].trim()));
        }
    }
    let why: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(3)
        .collect();
    if why.is_empty() {
        Err("perf printed no count".into())
    } else {
        Err(format!("perf counted nothing: {}", why.join(" ")))
    }
}

/// The CPU model, from /proc/cpuinfo's first `model name`.
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime ...
        let plain = "42 (cport) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_ticks(plain), Some(22));
        let tricky = "42 (a b) c) R 1 42 42 0 -1 4194560 100 0 0 0 1234 66 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_ticks(tricky), Some(1300));
        assert_eq!(parse_stat_cpu_ticks("42 (cut) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("no parenthesis 1 2 3"), None);
    }

    #[test]
    fn this_process_has_a_stat_and_threads() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_ok());
        assert!(threads(me).unwrap() >= 1);
        assert!(peak_rss_kib(me).unwrap() > 0);
    }

    #[test]
    fn status_fields() {
        let s = "Name:\tcport\nThreads:\t7\nVmHWM:\t    2048 kB\nVmRSS:\t1 kB\n";
        assert_eq!(parse_status_field(s, "Threads"), Some(7));
        assert_eq!(parse_status_field(s, "VmHWM"), Some(2048));
        assert_eq!(parse_status_field(s, "Vm"), None);
        assert_eq!(parse_status_field(s, "VmPeak"), None);
    }

    #[test]
    fn perf_counts_and_refusals() {
        let ok = "1225793,,raw_syscalls:sys_enter,825492674,100.00,,\n";
        assert_eq!(
            parse_perf_count(ok, "raw_syscalls:sys_enter"),
            Ok(1_225_793)
        );
        let nc = "<not counted>,,raw_syscalls:sys_enter,0,100.00,,\n";
        let e = parse_perf_count(nc, "raw_syscalls:sys_enter").unwrap_err();
        assert!(e.contains("not counted"), "{e}");
        let refused = "\nError:\nNo permission to enable raw_syscalls:sys_enter event.\n";
        let e = parse_perf_count(refused, "raw_syscalls:sys_enter").unwrap_err();
        assert!(e.contains("Error: No permission"), "{e}");
        assert!(parse_perf_count("", "raw_syscalls:sys_enter").is_err());
    }
}
