//! Starting a ring: the probes of every opcode and feature the backend
//! needs, and errors that name why the kernel refused (SEMANTICS R1).

use std::fs;
use std::io;

use io_uring::register::Probe;
use io_uring::types::{CancelBuilder, Fd};
use io_uring::{opcode, squeue, IoUring};

use super::raw::{self, Heap};
use super::{CANCEL, WAKE};
use crate::config::Config;
use crate::sys::unix::EventFd;

/// Registers an empty (sparse) table of `want` files with the ring, fewer
/// if the process may hold fewer descriptors, and returns its size. A
/// handle whose slab index is below the size names its file by slot
/// (`IOSQE_FIXED_FILE`) once it has issued `REGISTER_AT` operations, which
/// spares each of its requests the kernel's fget and fput of the
/// descriptor: atomic operations on the file's count, 1.15 % of the
/// single-issuer echo server's CPU (bench/runs/2026-12-05/registered-files).
/// 0 when the kernel refuses (sparse tables are Linux 5.19): every request
/// then names its descriptor.
pub(super) fn files(ring: &IoUring, want: u32) -> u32 {
    // The kernel refuses a table larger than RLIMIT_NOFILE.
    let limit = raw::soft_limit(libc::RLIMIT_NOFILE).unwrap_or(0);
    let n = u32::try_from(limit.min(u64::from(want))).unwrap_or(0);
    if n == 0 {
        return 0;
    }
    match ring.submitter().register_files_sparse(n) {
        Ok(()) => n,
        Err(e) => {
            log::debug!(target: "cport", "io_uring: no table of registered files ({e}): requests name descriptors");
            0
        }
    }
}

/// Makes the ring: any thread submits and reaps (the port's queue orders
/// them), with COOP_TASKRUN when handlers return promptly, or, for a port of
/// one thread, SINGLE_ISSUER | DEFER_TASKRUN (Linux 6.1), where completions
/// are posted only when that thread enters the kernel for them, with no
/// interrupt of a running thread. Returns the ring and whether it defers its
/// task work.
pub(super) fn ring(config: &Config) -> io::Result<(IoUring, bool)> {
    let build = |single: bool| {
        let mut b = IoUring::builder();
        // dontfork: a forked child must not share the rings' pages.
        // submit_all: an SQE that fails to prepare must not strand the ones
        // behind it in the SQ until some later enter.
        b.dontfork()
            .setup_clamp()
            .setup_submit_all()
            .setup_cqsize(config.entries.saturating_mul(4));
        if single {
            // taskrun_flag: a look at the CQ can tell whether completions
            // wait for an enter.
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_taskrun_flag();
        } else if config.prompt_handlers {
            // No interrupt of a thread running a handler to run its task
            // work: see "Task work" in the module docs.
            b.setup_coop_taskrun();
        }
        b.build(config.entries)
    };
    if config.single_issuer {
        match build(true) {
            Ok(ring) => return Ok((ring, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::info!(target: "cport", "io_uring: no SINGLE_ISSUER | DEFER_TASKRUN here (Linux 6.1): a local port runs on a shared ring");
            }
            Err(e) => return Err(setup_error(e, config.entries)),
        }
    }
    build(false)
        .map(|ring| (ring, false))
        .map_err(|e| setup_error(e, config.entries))
}

/// Names the cause of an io_uring_setup failure (SEMANTICS R1, LESSONS 5, 9).
pub(super) fn setup_error(e: io::Error, entries: u32) -> io::Error {
    let why = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            let disabled = fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "absent (kernel before 6.6)".to_string());
            format!(
                "io_uring_setup was refused: kernel.io_uring_disabled is {disabled} \
                 (1: only for a group, 2: for everyone), or a seccomp filter blocks io_uring \
                 (Docker's default profile does)"
            )
        }
        Some(libc::ENOSYS) => {
            "io_uring_setup does not exist here: a kernel built without io_uring, \
                               or a seccomp filter that answers ENOSYS"
                .to_string()
        }
        Some(libc::ENOMEM) => format!(
            "io_uring_setup ran out of locked memory: RLIMIT_MEMLOCK is {} (raise `ulimit -l`)",
            raw::memlock_limit()
        ),
        Some(libc::EINVAL) => format!(
            "io_uring_setup rejected the parameters (entries {entries}, IORING_SETUP_SUBMIT_ALL): \
             the kernel is probably older than 5.19"
        ),
        _ => "io_uring_setup failed".to_string(),
    };
    io::Error::new(e.kind(), format!("{why} ({e})"))
}

/// Checks every opcode and feature the backend relies on.
pub(super) fn probe(ring: &IoUring) -> io::Result<()> {
    let lacks =
        |what: &str| io::Error::new(io::ErrorKind::Unsupported, format!("kernel lacks {what}"));
    let params = ring.params();
    if !params.is_feature_nodrop() {
        return Err(lacks("IORING_FEAT_NODROP (Linux 5.5)"));
    }
    if !params.is_feature_ext_arg() {
        return Err(lacks("IORING_FEAT_EXT_ARG (Linux 5.11)"));
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| io::Error::new(e.kind(), format!("IORING_REGISTER_PROBE failed ({e})")))?;
    let needed = [
        (opcode::Read::CODE, "IORING_OP_READ"),
        (opcode::Write::CODE, "IORING_OP_WRITE"),
        (opcode::Readv::CODE, "IORING_OP_READV"),
        (opcode::Writev::CODE, "IORING_OP_WRITEV"),
        (opcode::Recv::CODE, "IORING_OP_RECV"),
        (opcode::Send::CODE, "IORING_OP_SEND"),
        (opcode::RecvMsg::CODE, "IORING_OP_RECVMSG"),
        (opcode::SendMsg::CODE, "IORING_OP_SENDMSG"),
        (opcode::Accept::CODE, "IORING_OP_ACCEPT"),
        (opcode::Connect::CODE, "IORING_OP_CONNECT"),
        (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
        (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD"),
    ];
    for (code, name) in needed {
        if !probe.is_supported(code) {
            return Err(lacks(name));
        }
    }
    Ok(())
}

/// `close_port` cancels with IORING_ASYNC_CANCEL_ANY (5.19), which the
/// opcode probe cannot see: with nothing in flight the kernel answers
/// ENOENT if it knows the flag, EINVAL if not.
pub(super) fn probe_cancel_any(ring: &mut IoUring) -> io::Result<()> {
    let sqe = opcode::AsyncCancel2::new(CancelBuilder::any())
        .build()
        .user_data(CANCEL);
    // SAFETY:
    // - `&mut ring`: no other SubmissionQueue exists;
    // - a cancel request points at no memory.
    unsafe { ring.submission().push(&sqe) }
        .map_err(|_| io::Error::new(io::ErrorKind::Other, "io_uring: empty SQ refused an entry"))?;
    ring.submit_and_wait(1)?;
    let res = ring.completion().next().map_or(-libc::EIO, |c| c.result());
    match -res {
        libc::ENOENT | 0 => Ok(()),
        libc::EINVAL => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "kernel lacks IORING_ASYNC_CANCEL_ANY (Linux 5.19)",
        )),
        e => Err(io::Error::new(
            io::Error::from_raw_os_error(e).kind(),
            format!(
                "probing IORING_ASYNC_CANCEL_ANY failed ({})",
                io::Error::from_raw_os_error(e)
            ),
        )),
    }
}

pub(super) fn wake_read(fd: &EventFd, buf: &Heap<u64>) -> squeue::Entry {
    // Offset -1: "the file position", the only one an eventfd accepts.
    opcode::Read::new(Fd(fd.raw()), buf.as_ptr().cast(), 8)
        .offset(u64::MAX)
        .build()
        .user_data(WAKE)
}
