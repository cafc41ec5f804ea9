//! [`Builder`]: a port's settings, and the opening of its backend.

use std::io;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::{Backend, Config};
use crate::local::LocalPort;
use crate::port::CompletionPort;
use crate::queue::Queue;
use crate::sys;

/// Settings of a port, for [`CompletionPort::builder`].
#[derive(Clone, Debug)]
pub struct Builder {
    concurrency: usize,
    backend: Backend,
    entries: u32,
    pool_buffers: u16,
    pool_buffer_size: usize,
    batch_submissions: bool,
    registered_files: u32,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            concurrency: 0,
            backend: Backend::Auto,
            entries: 1024,
            pool_buffers: 512,
            pool_buffer_size: 4096,
            batch_submissions: false,
            registered_files: 16384,
        }
    }
}

impl Builder {
    /// Default settings: concurrency = number of CPUs, backend `Auto`.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// At most `n` threads run completions at once (SEMANTICS P1, C1);
    /// 0 means the number of CPUs.
    pub fn concurrency(mut self, n: usize) -> Builder {
        self.concurrency = n;
        self
    }

    /// Which backend to run on (default [`Backend::Auto`]).
    pub fn backend(mut self, b: Backend) -> Builder {
        self.backend = b;
        self
    }

    /// io_uring submission queue entries (default 1024; rounded up to a
    /// power of two by the kernel).
    pub fn entries(mut self, n: u32) -> Builder {
        self.entries = n;
        self
    }

    /// io_uring's table of registered files: how many handles at once may
    /// name their descriptor by a slot of it (`IOSQE_FIXED_FILE`), which
    /// spares each of their requests the kernel's lookup and reference
    /// count of the descriptor (default 16384, never more than the process
    /// may hold descriptors, `RLIMIT_NOFILE`; 0: no table). Each slot costs
    /// the kernel 8 bytes. A handle takes its slot at its 32nd operation
    /// (taking it and giving it back at close cost a system call each,
    /// which a handle of a few operations would not earn back); handles
    /// beyond the table, and every handle on a kernel without sparse tables
    /// (before Linux 5.19), name their descriptor. Ignored by the other
    /// backends.
    pub fn registered_files(mut self, n: u32) -> Builder {
        self.registered_files = n;
        self
    }

    /// The pool behind [`CompletionPort::recv_pooled`] and
    /// [`CompletionPort::recv_multi`]: `count` buffers of `size` bytes
    /// (default 512 × 4096). On io_uring they form the provided-buffer ring,
    /// and the buffer the kernel filled is the one handed out; the ring
    /// starts with 64 of them and doubles, up to `count`, whenever a
    /// receive finds it empty, so that a light load cycles through few
    /// buffers (warm in the cache, and only those made resident).
    /// [`CompletionPort::recycle`] takes buffers back for reuse; the filled
    /// buffers waiting to be dequeued never outnumber `count`.
    ///
    /// Buffers the user holds (dequeued, not yet recycled) do not count.
    /// A receive, or a refill of the io_uring ring, takes a kept buffer,
    /// or allocates one when none is kept; `recycle` keeps up to `count`
    /// buffers of `size` bytes' capacity and frees the rest (and any
    /// buffer of another capacity). A server that holds more buffers at
    /// once than `count` (an echo's sends in flight, data it keeps)
    /// therefore allocates and frees buffers in steady state: size `count`
    /// above what it holds at its busiest.
    pub fn pool(mut self, count: u16, size: usize) -> Builder {
        self.pool_buffers = count;
        self.pool_buffer_size = size;
        self
    }

    /// Batches submissions (default off): an operation issued by a thread
    /// while it runs a completion of this port is not handed to the kernel
    /// at once but together with the others that thread issues, when it
    /// comes back to [`get`](CompletionPort::get), enters
    /// [`blocking`](CompletionPort::blocking), or exits — one
    /// `io_uring_enter` for many operations instead of one each. If another
    /// thread is then waiting on the kernel for the port, that thread
    /// submits them (woken if it sleeps): one thread at a time doing the
    /// ring's kernel work is cheaper than several contending for it.
    ///
    /// The price: until then such an operation has not started. A handler
    /// that issues a send and then waits, outside the port and outside
    /// `blocking`, for something that send causes waits forever. Turn it on
    /// for handlers that return promptly (an echo server's do). Operations
    /// issued by threads not running on the port always start at once.
    /// The epoll backend performs operations at issue and ignores this.
    ///
    /// On io_uring it also spares a thread running a handler the
    /// interrupt that would post, at once, the completion of an operation
    /// whose kernel work falls to that thread (it submitted it): the
    /// completion is posted at the thread's next system call, or its next
    /// timer tick if the handler computes without one (a few
    /// milliseconds). A thread that is waiting is woken for it as before.
    pub fn batch_submissions(mut self, on: bool) -> Builder {
        self.batch_submissions = on;
        self
    }

    /// Creates the port (CreateIoCompletionPort with no handle).
    ///
    /// With [`Backend::Auto`], `CPORT_BACKEND` is read first; then io_uring
    /// is tried, and on failure epoll is used with one log line (target
    /// `cport`) naming the reason (SEMANTICS R1). An explicit backend that
    /// cannot start is an error naming its cause.
    pub fn build<T: Send + 'static>(self) -> io::Result<CompletionPort<T>> {
        self.open(false)
    }

    /// Creates a port for the calling thread alone ([`LocalPort`]): every
    /// operation is issued, and every completion dequeued, on this thread.
    /// The concurrency value and [`batch_submissions`](Self::batch_submissions)
    /// do not apply: one thread runs, and its operations start when it
    /// comes back to `get`.
    pub fn build_local<T: Send + 'static>(self) -> io::Result<LocalPort<T>> {
        Ok(LocalPort::new_from(self.open(true)?))
    }

    fn open<T: Send + 'static>(self, local: bool) -> io::Result<CompletionPort<T>> {
        static NEXT_PORT: AtomicU32 = AtomicU32::new(1);
        let concurrency = match self.concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        if self.pool_buffers == 0 || self.pool_buffer_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the receive pool needs at least one buffer of at least one byte",
            ));
        }
        // A local port's thread issues and takes everything, so it batches
        // as a batching port's handlers do; and its completions can go to
        // no other thread: one on a shared ring (no DEFER_TASKRUN here)
        // waits for that thread to enter the kernel anyway.
        let batch = self.batch_submissions || local;
        let config = Config {
            // 0 is skipped, should the count ever wrap (see `PortId`).
            port_id: loop {
                if let Some(id) = NonZeroU32::new(NEXT_PORT.fetch_add(1, Ordering::Relaxed)) {
                    break id;
                }
            },
            entries: self.entries.max(8),
            pool_buffers: self.pool_buffers,
            pool_buffer_size: self.pool_buffer_size,
            single_issuer: local,
            prompt_handlers: batch,
            registered_files: self.registered_files,
        };
        let driver = sys::open::<T>(self.backend, &config)?;
        // A local port's thread dequeues through a queue of its own; the
        // shared one only carries other threads' posts (`local.rs`).
        let queue = Queue::new(if local { 1 } else { concurrency });
        Ok(CompletionPort::from_parts(
            config.port_id,
            queue,
            batch,
            driver,
        ))
    }
}
