//! What the runner reads about its children and the machine on Windows,
//! from Windows' own process APIs: the counterpart of proc.rs's /proc
//! readers, under the same names, so that the runner reads either through
//! `super::os`.
//!
//! - CPU time: `GetProcessTimes`, kernel + user time of every thread, the
//!   exited ones included, in 100 ns units ([`TICKS_PER_SEC`]). Windows
//!   charges it at its clock interrupt (15.6 ms by default), so a short
//!   window is coarse, as /proc's 10 ms ticks are.
//! - threads: a `CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD)` walk,
//!   counting the threads the process owns.
//! - peak memory: `PeakWorkingSetSize` of `K32GetProcessMemoryInfo`, the
//!   counterpart of Linux's `VmHWM`.
//! - the load's connections: Windows has no /proc/PID/fd. The TCP table
//!   (`GetTcpTable`) lists every connection; the load's are those that are
//!   established towards the server's address, an ephemeral port nothing
//!   else connects to. (`GetExtendedTcpTable` can name each connection's
//!   process too, but wine finds that owner by scanning every process's
//!   descriptors for every connection of the machine, too slow to poll.)
//!
//! Every reader takes a pid, as proc.rs's do. The runner reads a child
//! only while its `Proc` holds the `std::process::Child`, whose process
//! handle keeps Windows from giving the pid to another process, so the
//! handle each reader opens is the child's.
//!
//! Under wine (seen with wine 8.0, and so in wine's source today) two of
//! these calls do not measure another process:
//! - `GetProcessTimes` returns the *caller's* user and kernel times for
//!   any process (ntdll's `ProcessTimes` calls times(2) whatever the
//!   handle: "user/kernel times only work for current process");
//! - `GetThreadTimes` on another process's thread reads that thread's
//!   /proc/PID/task/TID/stat, whose whole clock ticks (10 ms) are rounded
//!   down per thread: summed over the 53 threads of the blocking model
//!   under 50 connections, they stayed 0 while it echoed 2,700 messages a
//!   second.
//!
//! Wine's `NtQuerySystemInformation(SystemProcessInformation)` fills each
//! process's times from /proc/LINUXPID/stat of the Linux process it runs
//! in (every thread's, exited ones and wine's own included, in ticks of
//! 10 ms), so under wine [`cpu_ticks`] reads those: the same figure as on
//! Linux. On Windows, `GetProcessTimes` it is.

use std::ffi::{c_char, CStr};
use std::io;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};
use std::sync::OnceLock;

use windows_sys::Wdk::System::SystemInformation::{
    NtQuerySystemInformation, SystemProcessInformation,
};
use windows_sys::Win32::Foundation::{
    ERROR_INSUFFICIENT_BUFFER, FILETIME, HANDLE, NO_ERROR, STATUS_INFO_LENGTH_MISMATCH,
};
use windows_sys::Win32::NetworkManagement::IpHelper::{
    GetTcpTable, MIB_TCPROW_LH, MIB_TCPTABLE, MIB_TCP_STATE_ESTAB,
};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, Thread32First, Thread32Next, TH32CS_SNAPTHREAD, THREADENTRY32,
};
use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
use windows_sys::Win32::System::ProcessStatus::{K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS};
use windows_sys::Win32::System::Threading::{
    GetProcessAffinityMask, GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_VM_READ,
};
use windows_sys::Win32::System::WindowsProgramming::SYSTEM_PROCESS_INFORMATION;

pub use super::proc::CpuTime;

/// CPU times are FILETIME intervals: 100 ns units.
pub const TICKS_PER_SEC: u64 = 10_000_000;

fn handle(h: &OwnedHandle) -> HANDLE {
    h.as_raw_handle() as HANDLE
}

/// A handle `OpenProcess` returned (0 on failure), owned.
fn owned(h: HANDLE) -> io::Result<OwnedHandle> {
    if h == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `h` is a valid handle the caller just opened and gives to
    // nobody else: the OwnedHandle is its only owner and closes it once.
    Ok(unsafe { OwnedHandle::from_raw_handle(h as RawHandle) })
}

fn open_process(pid: u32, access: u32) -> io::Result<OwnedHandle> {
    // SAFETY: OpenProcess takes no pointer; a failure returns 0, which
    // `owned` turns into the error.
    owned(unsafe { OpenProcess(access, 0, pid) })
}

fn filetime(t: FILETIME) -> u64 {
    u64::from(t.dwHighDateTime) << 32 | u64::from(t.dwLowDateTime)
}

const ZERO: FILETIME = FILETIME {
    dwLowDateTime: 0,
    dwHighDateTime: 0,
};

/// The version of wine this runs under, or `None` on Windows: wine's
/// ntdll exports `wine_get_version`, Windows' does not.
pub fn wine_version() -> Option<&'static str> {
    static VERSION: OnceLock<Option<String>> = OnceLock::new();
    VERSION
        .get_or_init(|| {
            // SAFETY: a NUL-terminated name; ntdll is mapped into every
            // process, and the handle GetModuleHandleA returns is not
            // owned (nothing to close).
            let ntdll = unsafe { GetModuleHandleA(c"ntdll.dll".as_ptr().cast()) };
            if ntdll == 0 {
                return None;
            }
            // SAFETY: a module handle of this process and a NUL-terminated
            // name; the result is checked for None.
            let f = unsafe { GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()) }?;
            // SAFETY: wine declares `const char *wine_get_version(void)`:
            // no argument, a pointer returned; on x86-64 the C and system
            // calling conventions are the same one.
            let get: unsafe extern "system" fn() -> *const c_char =
                unsafe { std::mem::transmute(f) };
            // SAFETY: the function takes nothing; it returns a pointer to a
            // static NUL-terminated string (or null, checked).
            let p = unsafe { get() };
            if p.is_null() {
                return None;
            }
            // SAFETY: non-null, NUL-terminated, static: it outlives the copy.
            Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        })
        .as_deref()
}

/// How [`cpu_ticks`] counts, for the summary.
pub fn cpu_source() -> String {
    match wine_version() {
        None => "GetProcessTimes (kernel + user time of every thread, the exited ones \
                 included), in 100 ns units; Windows charges CPU time at its clock interrupt \
                 (15.6 ms by default), so over a short window this figure is coarse"
            .into(),
        Some(v) => format!(
            "under wine {v}: NtQuerySystemInformation(SystemProcessInformation), which wine \
             fills from /proc/LINUXPID/stat of the server's Linux process (every thread's, \
             wine's own included, in clock ticks of 10 ms), as on Linux; wine's \
             GetProcessTimes returns the caller's own times for another process"
        ),
    }
}

/// User and kernel time of process `pid` so far, in 100 ns units.
pub fn cpu_ticks(pid: u32) -> io::Result<CpuTime> {
    if wine_version().is_some() {
        return wine_cpu_ticks(pid);
    }
    let h = open_process(pid, PROCESS_QUERY_LIMITED_INFORMATION)?;
    let (mut created, mut exited, mut kernel, mut user) = (ZERO, ZERO, ZERO, ZERO);
    // SAFETY: an open process handle with query access, and four
    // FILETIMEs to write into.
    let ok = unsafe {
        GetProcessTimes(
            handle(&h),
            &mut created,
            &mut exited,
            &mut kernel,
            &mut user,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(CpuTime {
        user: filetime(user),
        system: filetime(kernel),
    })
}

/// Under wine: the process's user and kernel time from the system's process
/// list (`SystemProcessInformation`), in 100 ns units. The public
/// structure hides the times in `Reserved1`; their place there is the
/// documented one of the full structure (after WorkingSetPrivateSize,
/// HardFaultCount, NumberOfThreadsHighWatermark, CycleTime and
/// CreateTime: UserTime at byte 32, KernelTime at 40).
fn wine_cpu_ticks(pid: u32) -> io::Result<CpuTime> {
    let mut buf: Vec<u64> = vec![0; 64 * 1024];
    loop {
        let bytes = u32::try_from(buf.len() * 8).unwrap_or(u32::MAX);
        let mut needed = 0u32;
        // SAFETY: a writable buffer of `bytes` bytes, 8-aligned as the
        // entries are, and a word for the size needed.
        let status = unsafe {
            NtQuerySystemInformation(
                SystemProcessInformation,
                buf.as_mut_ptr().cast(),
                bytes,
                &mut needed,
            )
        };
        if status == STATUS_INFO_LENGTH_MISMATCH && buf.len() < (64 << 20) / 8 {
            // Processes may start meanwhile: room for some more.
            buf = vec![0; (needed as usize * 2).max(buf.len() * 2).div_ceil(8)];
            continue;
        }
        if status != 0 {
            return Err(io::Error::other(format!(
                "NtQuerySystemInformation(SystemProcessInformation): status {status:#x}"
            )));
        }
        break;
    }
    let total = buf.len() * 8;
    let base = buf.as_ptr().cast::<u8>();
    let mut at = 0usize;
    loop {
        if at + size_of::<SYSTEM_PROCESS_INFORMATION>() > total {
            return Err(io::Error::other("the process list overruns its buffer"));
        }
        // SAFETY: the entry lies inside the buffer (checked above), where
        // NtQuerySystemInformation wrote it; read by copy, unaligned (wine
        // packs the entries at offsets that are not multiples of 8).
        let e = unsafe {
            base.add(at)
                .cast::<SYSTEM_PROCESS_INFORMATION>()
                .read_unaligned()
        };
        if e.UniqueProcessId as usize == pid as usize {
            let word = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&e.Reserved1[i..i + 8]);
                u64::from_le_bytes(b)
            };
            return Ok(CpuTime {
                user: word(32),
                system: word(40),
            });
        }
        if e.NextEntryOffset == 0 {
            return Err(io::Error::other(format!(
                "process {pid} is not in the process list"
            )));
        }
        at += e.NextEntryOffset as usize;
    }
}

/// The ids of the threads process `pid` runs now, from a snapshot of every
/// thread of the machine.
fn thread_ids(pid: u32) -> io::Result<Vec<u32>> {
    // SAFETY: no pointer; INVALID_HANDLE_VALUE (-1) on failure, checked
    // before `owned` takes it.
    let snap = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0) };
    if snap == -1 {
        return Err(io::Error::last_os_error());
    }
    let snap = owned(snap)?;
    let mut e = THREADENTRY32 {
        dwSize: size_of::<THREADENTRY32>() as u32,
        cntUsage: 0,
        th32ThreadID: 0,
        th32OwnerProcessID: 0,
        tpBasePri: 0,
        tpDeltaPri: 0,
        dwFlags: 0,
    };
    let mut ids = Vec::new();
    // SAFETY: an open snapshot handle and an entry whose dwSize is set, as
    // Thread32First requires.
    let mut more = unsafe { Thread32First(handle(&snap), &mut e) } != 0;
    while more {
        if e.th32OwnerProcessID == pid {
            ids.push(e.th32ThreadID);
        }
        // SAFETY: as above; the entry keeps its dwSize.
        more = unsafe { Thread32Next(handle(&snap), &mut e) } != 0;
    }
    Ok(ids)
}

/// Threads the process runs now.
pub fn threads(pid: u32) -> Option<u64> {
    match thread_ids(pid) {
        Ok(ids) if !ids.is_empty() => Some(ids.len() as u64),
        _ => None,
    }
}

/// The process's peak working set (KiB): the most of its memory that was
/// resident at once.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let h = open_process(pid, PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_VM_READ).ok()?;
    // SAFETY: PROCESS_MEMORY_COUNTERS is plain integers: all zeros is a
    // valid value.
    let mut c: PROCESS_MEMORY_COUNTERS = unsafe { std::mem::zeroed() };
    let cb = size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
    // SAFETY: an open process handle with the access the call needs, and
    // a structure of `cb` bytes to write into.
    let ok = unsafe { K32GetProcessMemoryInfo(handle(&h), &mut c, cb) };
    (ok != 0).then(|| c.PeakWorkingSetSize as u64 / 1024)
}

/// The CPUs the process may run on, as Linux lists them ("0", "0-1").
pub fn cpus_allowed(pid: u32) -> String {
    let Ok(h) = open_process(pid, PROCESS_QUERY_LIMITED_INFORMATION) else {
        return "?".into();
    };
    let (mut mask, mut system) = (0usize, 0usize);
    // SAFETY: an open process handle with query access, two words to
    // write into.
    if unsafe { GetProcessAffinityMask(handle(&h), &mut mask, &mut system) } == 0 {
        return "?".into();
    }
    cpu_ranges(mask)
}

/// The CPUs of an affinity mask, as ranges: 0b1011 is "0-1,3".
pub fn cpu_ranges(mask: usize) -> String {
    let cpus: Vec<usize> = (0..usize::BITS as usize)
        .filter(|c| mask >> c & 1 == 1)
        .collect();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// Connections established towards `server` (`IP:PORT`, IPv4), counted
/// from the connecting side, in the machine's TCP table: the load's, as
/// nothing else connects to the server's ephemeral port.
pub fn connections_to(server: &str) -> io::Result<usize> {
    let addr: SocketAddr = server
        .parse()
        .map_err(|_| io::Error::other(format!("not an address: {server}")))?;
    let IpAddr::V4(ip) = addr.ip() else {
        return Err(io::Error::other("the TCP table read here is IPv4's"));
    };
    // Both fields hold network-order bytes: the address as it lies in
    // memory, the port in the low 16 bits.
    let want_ip = u32::from_ne_bytes(ip.octets());
    let want_port = addr.port();
    let mut size: u32 = 0;
    let mut buf: Vec<u64> = Vec::new();
    loop {
        let ptr = if buf.is_empty() {
            std::ptr::null_mut()
        } else {
            buf.as_mut_ptr().cast::<MIB_TCPTABLE>()
        };
        // SAFETY: `buf` holds `size` bytes (or none, with a null pointer
        // and size 0, which asks for the size), aligned for the table's
        // 4-byte fields.
        let rc = unsafe { GetTcpTable(ptr, &mut size, 0) };
        match rc {
            NO_ERROR if !buf.is_empty() => break,
            // An empty table still needs room for its count.
            NO_ERROR | ERROR_INSUFFICIENT_BUFFER => {
                // Connections may open meanwhile: room for some more.
                let bytes = size as usize + 64 * size_of::<MIB_TCPROW_LH>();
                size = bytes as u32;
                buf = vec![0u64; bytes.div_ceil(8)];
            }
            e => return Err(io::Error::from_raw_os_error(e as i32)),
        }
    }
    let table = buf.as_ptr().cast::<MIB_TCPTABLE>();
    // SAFETY: GetTcpTable succeeded: the buffer starts with the table's
    // count.
    let n = unsafe { (*table).dwNumEntries } as usize;
    let bytes = buf.len() * 8;
    let first = std::mem::offset_of!(MIB_TCPTABLE, table);
    if first + n * size_of::<MIB_TCPROW_LH>() > bytes {
        return Err(io::Error::other("the TCP table is larger than its buffer"));
    }
    // SAFETY: the `n` rows follow the count inside the buffer (checked
    // just above), written by GetTcpTable, and the buffer outlives the
    // slice.
    let rows = unsafe {
        std::slice::from_raw_parts(
            buf.as_ptr().cast::<u8>().add(first).cast::<MIB_TCPROW_LH>(),
            n,
        )
    };
    Ok(rows
        .iter()
        .filter(|r| {
            // SAFETY: both members of the union are the same 32-bit state.
            let state = unsafe { r.Anonymous.dwState };
            state == MIB_TCP_STATE_ESTAB as u32
                && r.dwRemoteAddr == want_ip
                && u16::from_be(r.dwRemotePort as u16) == want_port
        })
        .count())
}

/// The CPU model, as Windows names it to programs.
pub fn cpu_model() -> String {
    std::env::var("PROCESSOR_IDENTIFIER").unwrap_or_else(|_| "unknown".into())
}
