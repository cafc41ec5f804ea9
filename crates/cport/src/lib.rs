//! cport: the I/O completion port model (IOCP) for Rust.
//!
//! A [`CompletionPort`] is what `CreateIoCompletionPort` makes on Windows: a
//! queue that overlapped operations complete into and that a pool of worker
//! threads dequeues from, with at most N of them running at once. cport
//! gives that model, with its exact semantics (the repository's
//! `docs/SEMANTICS.md`, whose item ids P1, Q2, … the docs quote; "LESSONS
//! n" in comments is item n of `docs/LESSONS.md`, bugs other projects paid
//! for), to Rust programs on Linux (io_uring, with
//! an epoll fallback) and on Windows' own port — without its
//! memory-safety traps: every operation owns its buffers and its
//! per-operation value until its one completion hands them back.
//!
//! # The model, call by call
//!
//! | Windows | cport |
//! |---|---|
//! | `CreateIoCompletionPort(INVALID_HANDLE_VALUE, 0, 0, N)` | [`CompletionPort::new(N)`](CompletionPort::new), [`CompletionPort::builder`] |
//! | `CreateIoCompletionPort(handle, port, key, 0)` | [`associate(source, key)`](CompletionPort::associate) → [`Handle`] |
//! | `OVERLAPPED_PLUS` / `PER_IO_DATA` | the value `T` every operation takes and its [`Completion`] returns |
//! | `WSARecv` / `WSASend` (one or several `WSABUF`s) | [`recv`](CompletionPort::recv), [`recv_vectored`](CompletionPort::recv_vectored), [`send`](CompletionPort::send), [`send_vectored`](CompletionPort::send_vectored) |
//! | zero-byte `WSARecv` for idle connections | [`recv_pooled`](CompletionPort::recv_pooled) + [`recycle`](CompletionPort::recycle) |
//! | `AcceptEx`, `ConnectEx` | [`accept`](CompletionPort::accept), [`accept_multi`](CompletionPort::accept_multi), [`connect`](CompletionPort::connect) |
//! | `WSARecvFrom` / `WSASendTo` | [`recv_from`](CompletionPort::recv_from), [`send_to`](CompletionPort::send_to) |
//! | `ReadFile` / `WriteFile` with `OVERLAPPED.Offset` | [`read_at`](CompletionPort::read_at), [`write_at`](CompletionPort::write_at) and their vectored forms |
//! | `GetQueuedCompletionStatus(Ex)` | [`get(timeout)`](CompletionPort::get), [`get_many`](CompletionPort::get_many) |
//! | `PostQueuedCompletionStatus` | [`post(key, bytes, value)`](CompletionPort::post) |
//! | `CancelIoEx(handle, ov)` / `CancelIoEx(handle, NULL)` | [`cancel(op)`](CompletionPort::cancel) / [`cancel_handle`](CompletionPort::cancel_handle) |
//! | `closesocket`, `CloseHandle(port)` | [`close(handle)`](CompletionPort::close), [`close_port`](CompletionPort::close_port) |
//! | a pool of threads in `GetQueuedCompletionStatus` | [`Workers`], stopped by [`shutdown`](Workers::shutdown) or its drop (or posted [`QUIT_KEY`] packets) |
//!
//! A completion carries the handle's key, the operation's result (bytes, or
//! the error it failed with: a failed operation is still a completion, Q5),
//! the value, and the buffers in [`Payload`]. Nothing dequeued is the `Err`
//! of `get` ([`GetError::Timeout`], [`GetError::Closed`]), never a
//! completion. An operation the port refuses at issue comes back at once as
//! [`Rejected`], with its value and buffers, and never completes (O1).
//!
//! # Backends
//!
//! | | io_uring (Linux ≥ 5.19) | epoll (Linux) | Windows |
//! |---|---|---|---|
//! | completion queue, LIFO release, concurrency N | user space, one thread reaps the ring (leader/follower) | user space, one thread waits on epoll | user space, one thread dequeues the kernel port (`GetQueuedCompletionStatusEx`) |
//! | recv, send, accept, connect, UDP | native: the kernel does the operation | emulated: done by the port on readiness | native (`WSARecv`, `WSASend`, `AcceptEx`, `ConnectEx`, `WSARecvFrom`, `WSASendTo`) |
//! | multishot accept | native (`IORING_ACCEPT_MULTISHOT`) | accept on every readiness | `AcceptEx` re-issued |
//! | receive pinning no buffer while idle (O6) | provided-buffer ring | readiness, then a pool buffer | zero-byte `WSARecv`, then a pool buffer |
//! | file reads and writes | native, asynchronous | `pread`/`pwrite` at issue (synchronous: files are always ready) | `ReadFile`/`WriteFile` at issue (std opens files for synchronous I/O) |
//! | cancel | `IORING_OP_ASYNC_CANCEL`; the operation may still win | in user space; wins unless already done | `CancelIoEx`; the operation may still win |
//! | a worker blocking elsewhere frees its slot (C3) | only inside [`CompletionPort::blocking`] | same | same (the queue is cport's, not the kernel's) |
//!
//! On Windows the port is always [`Backend::Auto`]; asking for `Uring` or
//! `Epoll` there is an `Unsupported` error. The Windows backend is tested
//! under wine (`scripts/windows-test.sh`), not yet on Windows itself.
//!
//! [`Backend::Auto`] tries io_uring and falls back to epoll with one log
//! line (target `cport`) naming the reason; `CPORT_BACKEND=uring|epoll`
//! forces one. `docs/design/backends.md` maps every SEMANTICS item onto
//! each backend and lists where they differ.
//!
//! # Portability notes
//!
//! * Completions come out in the order they were queued, which is not the
//!   order operations were issued: two receives on one socket fill in issue
//!   order, but a send and a receive complete in whichever order the
//!   network decides.
//! * A cancelled operation may still succeed: [`cancel`](CompletionPort::cancel)
//!   is a request, and the one completion says who won (X1). Keep draining
//!   completions after a cancel or close; the buffers come back in them.
//! * A receive completing with 0 bytes means the peer closed (O5), and a
//!   read at or past end of file completes with 0 bytes (O8).
//!
//! # Examples
//!
//! One echo exchange on 127.0.0.1, dequeued on this thread:
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::{TcpListener, TcpStream};
//! use std::time::Duration;
//!
//! use cport::{CompletionPort, OpKind, Payload};
//!
//! # fn main() -> std::io::Result<()> {
//! // Per-operation data: here, which step of the echo an operation is.
//! #[derive(Debug, PartialEq)]
//! enum Step { Accept, Recv, Send }
//!
//! let port = CompletionPort::<Step>::new(0)?;
//! let listener = port.associate(TcpListener::bind("127.0.0.1:0")?, 1)?;
//! let addr = port.local_addr(listener)?;
//! port.accept(listener, Step::Accept)?;
//!
//! let mut client = TcpStream::connect(addr)?;
//! client.write_all(b"hello")?;
//!
//! let timeout = Some(Duration::from_secs(10));
//! let mut conn = None;
//! loop {
//!     let c = port.get(timeout).expect("a completion");
//!     let n = c.result?;
//!     match (c.value, c.payload) {
//!         (Step::Accept, Payload::Accepted { stream, .. }) => {
//!             let h = port.associate(stream, 2)?; // completion key 2
//!             conn = Some(h);
//!             port.recv(h, Vec::with_capacity(4096), Step::Recv)?;
//!         }
//!         (Step::Recv, Payload::Buf(buf)) => {
//!             assert_eq!((c.key, c.kind, n), (2, OpKind::Recv, 5));
//!             port.send(conn.unwrap(), buf, Step::Send)?; // echo it
//!         }
//!         (Step::Send, Payload::Buf(buf)) => {
//!             assert_eq!(buf, b"hello"); // the buffer came back
//!             break;
//!         }
//!         (step, payload) => unreachable!("{step:?} {payload:?}"),
//!     }
//! }
//! let mut echo = [0u8; 5];
//! client.read_exact(&mut echo)?;
//! assert_eq!(&echo, b"hello");
//! # Ok(())
//! # }
//! ```
//!
//! The same echo served by a pool of [`Workers`], the tutorials' server
//! model (`examples/echo.rs` is a complete server): each completion runs
//! on whichever worker is free, and four clients talk to it at once. The
//! handler returns a `Result`, so `?` takes refused operations
//! ([`Rejected`] converts into `io::Error`); an error is logged with the
//! worker's name and the completion's key, and the worker goes on.
//!
//! ```
//! use std::io::{self, Read, Write};
//! use std::net::{TcpListener, TcpStream};
//! use std::thread;
//! use std::time::Duration;
//!
//! use cport::{CompletionPort, OpKind, Payload, Workers};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // No per-operation data is needed here: the kind says what completed.
//! let port = CompletionPort::<()>::new(0)?;
//! let listener = port.associate(TcpListener::bind("127.0.0.1:0")?, 0)?;
//! let addr = port.local_addr(listener)?;
//!
//! let workers = Workers::spawn(&port, 4, |port, c| -> io::Result<()> {
//!     let n = c.result?;
//!     let handle = c.handle.expect("an I/O completion");
//!     match (c.kind, c.payload) {
//!         (OpKind::Accept, Payload::Accepted { stream, .. }) => {
//!             let conn = port.associate(stream, 1)?;
//!             port.recv(conn, Vec::with_capacity(4096), ())?;
//!         }
//!         (OpKind::Recv, Payload::Buf(_)) if n == 0 => port.close(handle)?,
//!         (OpKind::Recv, Payload::Buf(buf)) => {
//!             port.send(handle, buf, ())?;
//!         }
//!         (OpKind::Send, Payload::Buf(mut buf)) => {
//!             buf.clear();
//!             port.recv(handle, buf, ())?;
//!         }
//!         (kind, payload) => unreachable!("{kind:?} {payload:?}"),
//!     }
//!     Ok(())
//! })?;
//! // One completion per connection, until cancelled.
//! port.accept_multi(listener, ())?;
//!
//! let clients: Vec<_> = (0..4u8)
//!     .map(|i| {
//!         thread::spawn(move || -> io::Result<()> {
//!             let mut s = TcpStream::connect(addr)?;
//!             s.set_read_timeout(Some(Duration::from_secs(10)))?;
//!             for round in 0..10u8 {
//!                 s.write_all(&[i, round])?;
//!                 let mut echo = [0u8; 2];
//!                 s.read_exact(&mut echo)?;
//!                 assert_eq!(echo, [i, round]);
//!             }
//!             Ok(())
//!         })
//!     })
//!     .collect();
//! for c in clients {
//!     c.join().expect("a client panicked")?;
//! }
//! // The workers handle what is queued, then end; a panic in one would be
//! // reported here. (Dropping the pool stops it the same way.)
//! workers.shutdown()?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod builder;
mod completion;
mod config;
mod issue;
mod local;
mod pool;
mod port;
mod queue;
mod sync;
mod sys;

pub use builder::Builder;
pub use completion::{Completion, GetError, Handle, OpId, OpKind, Payload, Rejected};
pub use config::Backend;
pub use local::{LocalPort, Poster};
pub use pool::{HandlerResult, WorkerPanic, Workers, QUIT_KEY};
pub use port::CompletionPort;
pub use queue::QueueStats;
pub use sys::error::is_aborted;
pub use sys::Source;
