//! What the runner reads about its children and the machine from /proc,
//! and perf's counts. Parsers are pure, and tested on text recorded on
//! this project's machine; readers are one file each. The readers of a
//! process are Linux's (winproc.rs has Windows' under the same names); the
//! parsers of perf's output and of /proc/interrupts are built everywhere,
//! with the costs code that uses them (never run on Windows).

use std::fs;
#[cfg(unix)]
use std::io;

/// A process's CPU time so far, as the system splits it: time in its own
/// code (user) and in the kernel on its behalf (system). Units are the
/// platform's: clock ticks on Linux, 100 ns on Windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTime {
    pub user: u64,
    pub system: u64,
}

impl CpuTime {
    pub fn total(self) -> u64 {
        self.user + self.system
    }
}

/// utime and stime (clock ticks, every thread, the exited ones included)
/// from the text of /proc/PID/stat. The command name (field 2) is in
/// parentheses and may hold spaces and ')', so fields are counted after
/// the last ')': state is field 3, utime 14, stime 15.
#[cfg(unix)]
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<CpuTime> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(CpuTime { user, system })
}

/// A number from a `Key:\tvalue [kB]` line of /proc/PID/status.
#[cfg(unix)]
pub fn parse_status_field(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k != key {
            return None;
        }
        v.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(unix)]
pub fn cpu_ticks(pid: u32) -> io::Result<CpuTime> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu_ticks(&stat).ok_or_else(|| io::Error::other(format!("cannot parse {stat:?}")))
}

#[cfg(unix)]
fn status_field(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_field(&status, key)
}

/// Threads the process runs now.
#[cfg(unix)]
pub fn threads(pid: u32) -> Option<u64> {
    status_field(pid, "Threads")
}

/// The process's peak resident set (KiB).
#[cfg(unix)]
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM")
}

/// The CPUs the process may run on, as the kernel lists them ("0", "0-1").
#[cfg(unix)]
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
#[cfg(unix)]
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

/// One row of /proc/interrupts (`RES:`, the rescheduling interrupts), as
/// (CPU number, count) for each CPU the header names. The row's label may
/// be indented, and text after the counts describes it.
pub fn parse_interrupts(text: &str, row: &str) -> Option<Vec<(usize, u64)>> {
    let mut lines = text.lines();
    let cpus: Vec<usize> = lines
        .next()?
        .split_whitespace()
        .map(|c| c.strip_prefix("CPU")?.parse().ok())
        .collect::<Option<_>>()?;
    let label = format!("{row}:");
    let rest = lines.find_map(|l| l.trim_start().strip_prefix(label.as_str()))?;
    let counts: Vec<u64> = rest
        .split_whitespace()
        .take(cpus.len())
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    (counts.len() == cpus.len()).then(|| cpus.into_iter().zip(counts).collect())
}

/// The sum of one /proc/interrupts row over `cpus`, or why not.
pub fn interrupts(row: &str, cpus: &[usize]) -> Result<u64, String> {
    let text = fs::read_to_string("/proc/interrupts")
        .map_err(|e| format!("cannot read /proc/interrupts: {e}"))?;
    let counts = parse_interrupts(&text, row)
        .ok_or_else(|| format!("/proc/interrupts has no {row} row it can be read from"))?;
    let mut sum = 0;
    for cpu in cpus {
        let (_, n) = counts
            .iter()
            .find(|(c, _)| c == cpu)
            .ok_or_else(|| format!("/proc/interrupts has no column for CPU {cpu}"))?;
        sum += n;
    }
    Ok(sum)
}

/// The C library a process maps, from the text of /proc/PID/maps: the
/// file `perf probe -x` takes to count its `malloc` calls.
pub fn parse_libc_path(maps: &str) -> Option<&str> {
    maps.lines().find_map(|l| {
        let path = l.split_whitespace().nth(5)?;
        let file = path.rsplit('/').next()?;
        (file == "libc.so.6" || (file.starts_with("libc-") && file.ends_with(".so")))
            .then_some(path)
    })
}

/// The CPU model, from /proc/cpuinfo's first `model name`.
#[cfg(unix)]
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

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime ...
        let plain = "42 (cport) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 3 0";
        let t = |user, system| Some(CpuTime { user, system });
        assert_eq!(parse_stat_cpu_ticks(plain), t(17, 5));
        let tricky = "42 (a b) c) R 1 42 42 0 -1 4194560 100 0 0 0 1234 66 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_ticks(tricky), t(1234, 66));
        assert_eq!(t(1234, 66).map(CpuTime::total), Some(1300));
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

    /// /proc/interrupts as this project's 2-CPU machine printed it
    /// (abridged: most device rows left out).
    const INTERRUPTS: &str = "           CPU0       CPU1       
 24:          1          0  IO-APIC   5-edge      ACPI:Ged
 26:          0          2  IO-APIC   4-edge      ttyS0
NMI:          0          0   Non-maskable interrupts
LOC:     939080     883904   Local timer interrupts
RES:     467206     434084   Rescheduling interrupts
CAL:    1526059    1432224   Function call interrupts
ERR:          0
MIS:          0
";

    #[test]
    fn interrupts_are_read_per_cpu_by_row() {
        assert_eq!(
            parse_interrupts(INTERRUPTS, "RES"),
            Some(vec![(0, 467_206), (1, 434_084)])
        );
        assert_eq!(
            parse_interrupts(INTERRUPTS, "LOC"),
            Some(vec![(0, 939_080), (1, 883_904)])
        );
        // A row with fewer counts than CPUs, and a row that is not there.
        assert_eq!(parse_interrupts(INTERRUPTS, "ERR"), None);
        assert_eq!(parse_interrupts(INTERRUPTS, "TLB"), None);
        assert_eq!(parse_interrupts("", "RES"), None);
        // Offline CPUs leave gaps in the header; wider tables indent the
        // labels.
        let gap = "      CPU0   CPU2\n RES:   5   7   Rescheduling interrupts\n";
        assert_eq!(parse_interrupts(gap, "RES"), Some(vec![(0, 5), (2, 7)]));
        // The machine this runs on has a RES row for each CPU.
        let cpus: Vec<usize> =
            (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        let n = interrupts("RES", &cpus[..1]);
        assert!(n.is_ok(), "{n:?}");
        assert!(interrupts("RES", &[100_000])
            .unwrap_err()
            .contains("100000"));
    }

    #[test]
    fn libc_is_found_in_the_maps() {
        let maps = "\
5581e6a00000-5581e6a3c000 r--p 00000000 fd:01 1055 /work/target/release/cport
7f2b0e96b000-7f2b0e993000 r--p 00000000 fd:01 2243 /usr/lib/x86_64-linux-gnu/libc.so.6
7f2b0e993000-7f2b0eb1b000 r-xp 00028000 fd:01 2243 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd1c5e1000-7ffd1c602000 rw-p 00000000 00:00 0    [stack]
";
        assert_eq!(
            parse_libc_path(maps),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        let old = "7f00-7f01 r-xp 0 08:01 1 /lib/libc-2.31.so\n";
        assert_eq!(parse_libc_path(old), Some("/lib/libc-2.31.so"));
        let none = "7f00-7f01 r-xp 0 08:01 1 /lib/libcrypt.so.1\n7f-80 rw-p 0 0:0 0\n";
        assert_eq!(parse_libc_path(none), None);
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

    #[test]
    fn several_events_from_one_perf_stat() {
        // `perf stat -x, -e ... -p PID -- sleep 1` on uring-echo under 8
        // connections, as perf 6.1 printed it on this project's machine.
        let out = "\
100868,,raw_syscalls:sys_enter,447162112,100.00,,
44147,,sched:sched_switch,447144859,100.00,,
135820,,io_uring:io_uring_submit_req,447100367,100.00,,
0,,io_uring:io_uring_poll_arm,447084411,100.00,,
0,,probe_libc:malloc,447061508,100.00,,
";
        assert_eq!(
            parse_perf_count(out, "io_uring:io_uring_submit_req"),
            Ok(135_820)
        );
        assert_eq!(parse_perf_count(out, "io_uring:io_uring_poll_arm"), Ok(0));
        assert_eq!(parse_perf_count(out, "sched:sched_switch"), Ok(44_147));
        assert_eq!(parse_perf_count(out, "probe_libc:malloc"), Ok(0));
        let unsupported = out.replace("0,,probe_libc", "<not supported>,,probe_libc");
        let e = parse_perf_count(&unsupported, "probe_libc:malloc").unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        // An event perf was not asked for is not found in the others' lines.
        assert!(parse_perf_count(out, "sched:sched_wakeup").is_err());
    }
}
