//! What a port is made of: which [`Backend`] it runs on, and the settings a
//! backend is built from ([`Config`]). A leaf module: the facade
//! (`builder.rs`) fills a `Config` from its `Builder`, and the backends under
//! `sys` read it; neither imports the other for it.

use std::fmt;
use std::io;

/// Which kernel mechanism a port runs on.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum Backend {
    /// io_uring where the kernel allows it, else epoll (Linux). The
    /// environment variable `CPORT_BACKEND=uring|epoll` overrides it.
    Auto,
    /// io_uring (Linux 5.19 or later): operations complete in the kernel.
    Uring,
    /// epoll (Linux): operations are done by the port on readiness.
    Epoll,
}

impl Backend {
    /// The backend's name as the CLI, the environment variable and
    /// benchmark columns spell it: `auto`, `uring`, `epoll`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = io::Error;

    fn from_str(s: &str) -> io::Result<Backend> {
        match s {
            "auto" => Ok(Backend::Auto),
            "uring" | "io_uring" => Ok(Backend::Uring),
            "epoll" => Ok(Backend::Epoll),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown backend {s:?} (expected auto, uring or epoll)"),
            )),
        }
    }
}

/// What a backend is built from.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// Tells this port's handles and operation ids from other ports'.
    pub(crate) port_id: crate::completion::PortId,
    /// Submission queue size. Read by the io_uring backend only; the
    /// others have no submission queue to size.
    #[allow(dead_code)]
    pub(crate) entries: u32,
    /// Buffers in the pool behind `recv_pooled`.
    pub(crate) pool_buffers: u16,
    pub(crate) pool_buffer_size: usize,
    /// One thread issues and reaps everything (`LocalPort`): io_uring
    /// runs its ring with SINGLE_ISSUER | DEFER_TASKRUN. Read by the
    /// io_uring backend only.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) single_issuer: bool,
    /// Handlers return promptly (`Builder::batch_submissions`, or a local
    /// port): on a shared ring io_uring then posts a running thread's task
    /// work at its next system call instead of interrupting it
    /// (COOP_TASKRUN). Read by the io_uring backend only.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) prompt_handlers: bool,
    /// Slots of io_uring's table of registered files
    /// (`Builder::registered_files`). Read by the io_uring backend only.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) registered_files: u32,
}
