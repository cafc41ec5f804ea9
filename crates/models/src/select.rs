//! `select(2)`: one thread per group of sockets, as the tutorials write it
//! for Windows, where an `fd_set` holds at most FD_SETSIZE = 64 sockets.
//!
//! The accepting thread blocks in `accept` and hands each connection to
//! the first group with room, starting a new group thread when all are
//! full. Each group thread rebuilds its `fd_set`s and calls `select` with
//! its sockets and a wake socket.
//!
//! On Linux an `fd_set` is a bitmap indexed by descriptor *number*, fixed
//! at `libc::FD_SETSIZE` (1024) bits: `FD_SET` with a higher number writes
//! past it. A connection whose descriptor is that high cannot be served by
//! this model at all, so it is refused (closed, counted in
//! [`Stats::refused`], and reported once on stderr), never added.

use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread;

use crate::{accept_blocking, drain, keep, spawn, stop_socket, Echo, Stats, Stop};

/// Sockets per group thread: Windows' FD_SETSIZE, the limit the tutorials'
/// "64 sockets per thread" comes from. The wake socket is not counted.
pub const GROUP: usize = 64;

/// The highest descriptor number an `fd_set` can hold, plus one.
pub const FD_LIMIT: usize = libc::FD_SETSIZE;

struct Group {
    tx: Sender<Echo>,
    wake: UnixStream,
    /// Sockets the group holds or has been sent.
    count: Arc<AtomicUsize>,
}

/// Runs the echo server until `stop` is set; see the [crate] docs.
pub fn serve(
    listener: TcpListener,
    stop: Stop,
    stats: Arc<Stats>,
    buffer: usize,
) -> io::Result<()> {
    crate::check_buffer(buffer)?;
    let _me = stats.thread();
    listener.set_nonblocking(false)?;
    stop.wake_accept(listener.local_addr()?);
    // The first group is started now, while low descriptor numbers are
    // free: its wake sockets must fit in an fd_set too.
    let (first, t) = start_group(&stop, &stats)?;
    let mut groups: Vec<Group> = vec![first];
    let mut threads = vec![t];
    let warned = AtomicBool::new(false);
    let result = loop {
        let Some(stream) = accept_blocking(&listener, &stop) else {
            break Ok(());
        };
        let fd = stream.as_raw_fd();
        if !fits(fd) {
            refuse(stream, fd, &stats, &warned);
            continue;
        }
        let Ok(echo) = Echo::new(stream, buffer) else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        stats.opened();
        let group = match crate::group_with_room(
            &mut groups,
            &mut threads,
            GROUP,
            |g| &g.count,
            || start_group(&stop, &stats),
        ) {
            Ok(i) => &groups[i],
            Err(e) => break Err(e),
        };
        group.count.fetch_add(1, Ordering::AcqRel);
        if group.tx.send(echo).is_err() {
            // The group thread failed; its error is reported by the join.
            stats.ended(true);
            continue;
        }
        let _ = (&group.wake).write(&[1]);
    };
    drop(groups);
    let joined = crate::join_all(threads);
    stats.end_all();
    result.and(joined)
}

/// Whether `fd` may be put in an `fd_set`.
pub fn fits(fd: RawFd) -> bool {
    fd >= 0 && (fd as usize) < FD_LIMIT
}

fn refuse(stream: TcpStream, fd: RawFd, stats: &Stats, warned: &AtomicBool) {
    // Counted before the close, so that a peer that sees the close also
    // sees the count.
    stats.refused.fetch_add(1, Ordering::Relaxed);
    drop(stream);
    if !warned.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "select: connection refused: its descriptor {fd} is not below FD_SETSIZE \
             ({FD_LIMIT}), the most an fd_set can hold; use another model for this many \
             descriptors"
        );
    }
}

fn start_group(stop: &Stop, stats: &Arc<Stats>) -> io::Result<(Group, thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let (wake_rx, wake_tx) = UnixStream::pair()?;
    wake_rx.set_nonblocking(true)?;
    wake_tx.set_nonblocking(true)?;
    let stop_wake = stop_socket(stop)?;
    if !fits(wake_rx.as_raw_fd()) || !fits(stop_wake.as_raw_fd()) {
        return Err(io::Error::other(format!(
            "select: a wake socket's descriptor is not below FD_SETSIZE ({FD_LIMIT})"
        )));
    }
    let count = Arc::new(AtomicUsize::new(0));
    let t = {
        let (stop, stats, count) = (stop.clone(), stats.clone(), count.clone());
        spawn("model-select", &stats.clone(), move || {
            if let Err(e) = group(rx, wake_rx, stop_wake, &stop, &stats, &count) {
                // Its connections are dropped with it; the accepting
                // thread sees the closed channel and counts later ones.
                tracing::error!("select: a group thread failed: {e}");
            }
        })?
    };
    Ok((
        Group {
            tx,
            wake: wake_tx,
            count,
        },
        t,
    ))
}

fn group(
    rx: Receiver<Echo>,
    wake: UnixStream,
    stop_wake: UnixStream,
    stop: &Stop,
    stats: &Stats,
    count: &AtomicUsize,
) -> io::Result<()> {
    let mut conns: Vec<Echo> = Vec::new();
    let mut rset = FdSet::new();
    let mut wset = FdSet::new();
    while !stop.is_stopped() {
        rset.clear();
        wset.clear();
        rset.insert(wake.as_raw_fd())?;
        rset.insert(stop_wake.as_raw_fd())?;
        for c in &conns {
            let fd = c.stream.as_raw_fd();
            if c.wants_read() {
                rset.insert(fd)?;
            }
            if c.wants_write() {
                wset.insert(fd)?;
            }
        }
        let nfds = 1 + rset.max.max(wset.max);
        // SAFETY: both sets are live, exclusively borrowed fd_sets holding
        // only descriptors below FD_SETSIZE (checked by `insert`); `nfds`
        // does not exceed FD_SETSIZE; no exception set and no timeout.
        let n = unsafe {
            libc::select(
                nfds,
                &mut rset.set,
                &mut wset.set,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rset.contains(wake.as_raw_fd()) {
            drain(&wake);
            loop {
                match rx.try_recv() {
                    Ok(c) => conns.push(c),
                    Err(TryRecvError::Empty) => break,
                    // The accepting thread has gone (it failed, and its
                    // end of the wake socket is closed: readable for ever,
                    // a spin if the group went on). The connections drop
                    // here; `serve` counts them closed.
                    Err(TryRecvError::Disconnected) => return Ok(()),
                }
            }
        }
        conns.retain_mut(|c| {
            let fd = c.stream.as_raw_fd();
            if !rset.contains(fd) && !wset.contains(fd) {
                return true;
            }
            let kept = keep(c.pump(stats), stats);
            if !kept {
                count.fetch_sub(1, Ordering::AcqRel);
            }
            kept
        });
    }
    Ok(())
}

/// An `fd_set` that refuses descriptors it cannot hold.
struct FdSet {
    set: libc::fd_set,
    max: i32,
}

impl FdSet {
    fn new() -> FdSet {
        // SAFETY: fd_set is a plain bitmap for which all-zero bytes are a
        // valid (empty) value; FD_ZERO in `clear` makes that explicit.
        let set = unsafe { std::mem::zeroed::<libc::fd_set>() };
        let mut s = FdSet { set, max: -1 };
        s.clear();
        s
    }

    fn clear(&mut self) {
        // SAFETY: `self.set` is a live, exclusively borrowed fd_set.
        unsafe { libc::FD_ZERO(&mut self.set) };
        self.max = -1;
    }

    fn insert(&mut self, fd: RawFd) -> io::Result<()> {
        // The check FD_SET does not make: a higher number would be written
        // past the end of the set, into whatever follows it in memory.
        if !fits(fd) {
            return Err(io::Error::other(format!(
                "select: descriptor {fd} is not below FD_SETSIZE ({FD_LIMIT})"
            )));
        }
        // SAFETY: 0 <= fd < FD_SETSIZE, checked above, so the bit is inside
        // the live, exclusively borrowed set.
        unsafe { libc::FD_SET(fd, &mut self.set) };
        self.max = self.max.max(fd);
        Ok(())
    }

    fn contains(&self, fd: RawFd) -> bool {
        // SAFETY: as `insert`: the bit read is inside the set.
        fits(fd) && unsafe { libc::FD_ISSET(fd, &self.set) }
    }
}
