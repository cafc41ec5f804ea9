//! `select` on Windows, as the tutorials write it: one thread per group of
//! sockets, because an `fd_set` holds at most FD_SETSIZE = 64 of them.
//!
//! The tutorial's procedure (seed 003, "Select 모델을 이용한 소켓 입출력
//! 절차") and where each step is here:
//!
//! | tutorial | here |
//! |---|---|
//! | ① `FD_ZERO` the read and write sets | `FdSet::zero`, at the top of every pass of `group` |
//! | ② `FD_SET` each socket, at most FD_SETSIZE (64) | `FdSet::set`: the group's wake socket, each connection that wants to read (read set) or to write (write set) |
//! | ③ `select(0, &rset, &wset, NULL, NULL)`: wait with no timeout | `group`'s one `select` call |
//! | ④ `FD_ISSET`, then `accept`/`recv`/`send` on each socket left in a set | `FdSet::is_set`, then `Echo::pump` |
//! | ⑤ repeat ①–④ | the group's loop |
//! | "64 sockets, then another thread" | the accepting thread starts a group thread when every group is full |
//!
//! Threads: the caller's thread accepts (a blocking `accept` on the
//! listener, woken at the stop by a connection to itself, as in the Unix
//! form) and hands each connection to the first group with room, starting
//! a group thread when all are full: 1 + ⌈n / [`GROUP`]⌉ threads for n
//! connections.
//!
//! The wake socket: a thread blocked in `select` can only be woken through
//! a socket in one of its sets, and Windows has no socket pair, so each
//! group has a UDP socket on 127.0.0.1 connected to itself
//! (`win::self_socket`). One datagram on it means "look at the hand-over
//! channel, and at the stop flag": the accepting thread sends one after
//! each connection it hands over, and the stop sends one to every group.
//! That one socket takes one of the 64 slots, so a group holds
//! [`GROUP`] = 63 connections (the Unix form, whose limit is on descriptor
//! numbers, counts 64 and its wake sockets apart).
//!
//! How Windows' `select` differs from the Unix stand-in's:
//!
//! - An `fd_set` is `fd_count` and an array of 64 `SOCKET` handles, not a
//!   bitmap indexed by descriptor number: any socket fits, whatever its
//!   handle value, so nothing is refused here (the Unix form refuses
//!   descriptors ≥ 1024); the limit is the count, 64 per set. The
//!   winsock2.h macros are re-stated in `FdSet`: `FD_SET` appends a
//!   handle not yet present (and silently ignores it once 64 are held:
//!   here that is an error, though [`GROUP`] keeps it from happening),
//!   `FD_ISSET` (`__WSAFDIsSet`) scans the array.
//! - `nfds` is ignored ("included only for compatibility"): 0 is passed.
//! - `select` with all three sets empty fails with WSAEINVAL (POSIX would
//!   just sleep): the wake socket is always in the read set, so the sets
//!   are never empty.
//! - `select` returns the sets compacted to the sockets that are ready.
//!
//! The exception set (`exceptfds`) is not passed. On Windows it reports
//! two things: out-of-band (TCP urgent) data when SO_OOBINLINE is off, and
//! the failure of a non-blocking `connect`. This server makes no
//! `connect`, and the echo is of the normal stream, of which an urgent
//! byte is not part (Windows keeps it apart unless SO_OOBINLINE is set, as
//! Linux does, and it is never read here). Worse, an urgent byte stays
//! "exceptional" until read with `recv(MSG_OOB)`, so a connection in the
//! exception set would make every `select` return at once: a spin. The
//! tutorial's server passes NULL there too.
//!
//! What the read set reports on Windows: data to read, a connection to
//! accept, and a connection closed or reset by the peer; the write set
//! only room to send. A peer's close or reset is therefore learnt through
//! the read set (`recv` returns 0 or fails), and a connection is in the
//! read set whenever it wants to read. One that does not (its 16 KiB echo
//! buffer is full because the peer does not read its echo, or the peer
//! has finished sending) is only in the write set, and learns of a reset
//! when that `send` fails, or at the stop. Putting it in the read set
//! anyway would not do: it would be reported readable at once on every
//! pass while its unread data or its end of stream waits, a spin.
//!
//! Buffers: every `recv` and `send` here is synchronous and non-blocking
//! (the sockets are non-blocking, as `Echo` makes them: `select` works in
//! either mode, and this way a `send` reported possible but short of room
//! cannot block the group); no operation outlives its call, so each
//! connection's buffer is freed with the connection and nothing else.
//!
//! Stopping: [`Stop::stop`] sets the flag, then connects to the listener
//! (waking the accept) and sends a datagram to every group's wake socket.
//! Each group thread returns from `select`, sees the flag, and drops its
//! connections (closing them); the accepting thread drops the hand-over
//! ends, joins every group thread, and counts what was still open as
//! closed. On an error of the accepting thread (no stop), the hand-over
//! channels close and a datagram to each group makes it see that and end,
//! so the joins do not wait for a stop.

use std::io;
use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread;

use windows_sys::Win32::Networking::WinSock::{select, FD_SET, FD_SETSIZE, SOCKET, SOCKET_ERROR};

use crate::win::{drain, self_socket, socket, wsa_error};
use crate::{accept_blocking, keep, spawn, Echo, Stats, Stop};

/// Connections per group thread: Windows' FD_SETSIZE (64), the limit the
/// tutorials' "64 sockets per thread" comes from, less the one slot the
/// group's wake socket takes in the read set.
pub const GROUP: usize = FD_SETSIZE as usize - 1;

/// The accepting thread's end of one group.
struct Group {
    tx: Sender<Echo>,
    /// The group's wake socket (a handle to the same UDP socket the group
    /// waits on): a datagram sent on it is received by the group.
    wake: UdpSocket,
    /// Connections the group holds or has been sent.
    count: Arc<AtomicUsize>,
}

impl Group {
    fn wake(&self) {
        // If the socket's queue is full the group has datagrams waiting
        // already, so it wakes anyway: a failure here loses nothing.
        let _ = self.wake.send(&[1]);
    }
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
    let mut groups: Vec<Group> = Vec::new();
    let mut threads = Vec::new();
    let result = loop {
        let Some(stream) = accept_blocking(&listener, &stop) else {
            break Ok(());
        };
        let Ok(mut echo) = Echo::new(stream, buffer) else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        stats.opened();
        // Hand it to the first group with room, or to a new group.
        let handed = loop {
            let i = match crate::group_with_room(
                &mut groups,
                &mut threads,
                GROUP,
                |g| &g.count,
                || start_group(&stop, &stats),
            ) {
                Ok(i) => i,
                Err(e) => break Err(e),
            };
            let g = &groups[i];
            g.count.fetch_add(1, Ordering::AcqRel);
            match g.tx.send(echo) {
                Ok(()) => {
                    g.wake();
                    break Ok(());
                }
                Err(mpsc::SendError(back)) => {
                    // The group thread failed (its error is logged and
                    // reported by the join): try the next group.
                    echo = back;
                    groups.swap_remove(i);
                }
            }
        };
        if let Err(e) = handed {
            // The connection is dropped (closed) with `echo`.
            stats.ended(true);
            break Err(e);
        }
    };
    // Close every hand-over channel, then wake each group: one still
    // running (an error here rather than a stop) sees the channel closed
    // and ends.
    for g in groups {
        drop(g.tx);
        let _ = g.wake.send(&[1]);
    }
    let joined = crate::join_all(threads);
    stats.end_all();
    result.and(joined)
}

fn start_group(stop: &Stop, stats: &Arc<Stats>) -> io::Result<(Group, thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let (wake_rx, wake_tx) = self_socket()?;
    let stop_tx = wake_tx.try_clone()?;
    stop.on_stop(move || {
        let _ = stop_tx.send(&[1]);
    });
    let count = Arc::new(AtomicUsize::new(0));
    let t = {
        let (stop, stats, count) = (stop.clone(), stats.clone(), count.clone());
        spawn("model-select", &stats.clone(), move || {
            if let Err(e) = group(rx, wake_rx, &stop, &stats, &count) {
                // Its connections are dropped with it and counted by the
                // accepting thread's `end_all`; the accepting thread sees
                // the closed channel and hands new ones to other groups.
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

/// One group thread: ①–⑤ of the tutorial's procedure over its wake socket
/// and at most [`GROUP`] connections, until the stop (or until the
/// accepting thread closes the hand-over channel).
fn group(
    rx: Receiver<Echo>,
    wake: UdpSocket,
    stop: &Stop,
    stats: &Stats,
    count: &AtomicUsize,
) -> io::Result<()> {
    let wake_s = socket(&wake);
    let mut conns: Vec<Echo> = Vec::new();
    let mut rset = FdSet::new();
    let mut wset = FdSet::new();
    while !stop.is_stopped() {
        // ① and ②.
        rset.zero();
        wset.zero();
        rset.set(wake_s)?;
        for c in &conns {
            let s = socket(&c.stream);
            if c.wants_read() {
                rset.set(s)?;
            }
            if c.wants_write() {
                wset.set(s)?;
            }
        }
        // ③.
        // SAFETY: both sets are live FD_SET values borrowed exclusively
        // for the call, each with fd_count <= FD_SETSIZE (kept by `set`)
        // and every counted entry an open socket owned by this thread
        // (`wake` and the connections in `conns`, none dropped before the
        // call returns); NULL exception set and NULL timeout (wait until
        // a socket is ready) are allowed; nfds is ignored by Windows.
        let n = unsafe {
            select(
                0,
                &mut rset.0,
                &mut wset.0,
                std::ptr::null_mut(),
                std::ptr::null(),
            )
        };
        if n == SOCKET_ERROR {
            return Err(wsa_error());
        }
        // ④: the hand-over first, so new connections join the next pass.
        if rset.is_set(wake_s) {
            drain(&wake);
            loop {
                match rx.try_recv() {
                    Ok(c) => conns.push(c),
                    Err(TryRecvError::Empty) => break,
                    // The accepting thread has ended (after an error, or
                    // after the stop): so does this group.
                    Err(TryRecvError::Disconnected) => return Ok(()),
                }
            }
        }
        conns.retain_mut(|c| {
            let s = socket(&c.stream);
            if !rset.is_set(s) && !wset.is_set(s) {
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

/// Windows' `fd_set`: `fd_count` and an array of FD_SETSIZE socket
/// handles, with winsock2.h's macros as methods.
struct FdSet(FD_SET);

impl FdSet {
    fn new() -> FdSet {
        FdSet(FD_SET {
            fd_count: 0,
            fd_array: [0; FD_SETSIZE as usize],
        })
    }

    /// `FD_ZERO`: the count to 0.
    fn zero(&mut self) {
        self.0.fd_count = 0;
    }

    /// `FD_SET`: appends `s` unless it is already held. winsock2.h's macro
    /// silently drops a 65th socket; here that is an error (it cannot
    /// happen with [`GROUP`] connections and one wake socket).
    fn set(&mut self, s: SOCKET) -> io::Result<()> {
        if self.is_set(s) {
            return Ok(());
        }
        let n = self.0.fd_count as usize;
        if n >= self.0.fd_array.len() {
            return Err(io::Error::other(format!(
                "select: an fd_set holds at most FD_SETSIZE ({FD_SETSIZE}) sockets"
            )));
        }
        self.0.fd_array[n] = s;
        self.0.fd_count += 1;
        Ok(())
    }

    /// `FD_ISSET`: whether `s` is among the counted entries (what
    /// `__WSAFDIsSet` checks). After `select`, the sets hold only the
    /// sockets that are ready.
    fn is_set(&self, s: SOCKET) -> bool {
        let n = (self.0.fd_count as usize).min(self.0.fd_array.len());
        self.0.fd_array[..n].contains(&s)
    }
}
