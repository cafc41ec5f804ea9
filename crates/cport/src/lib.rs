//! cport: the I/O completion port model (IOCP) for Rust.
//!
//! (Crate documentation is written in `docs`; see the README.)

#![warn(missing_docs)]

mod completion;
mod pool;
mod port;
mod queue;
mod sync;
mod sys;

pub use completion::{is_aborted, Completion, GetError, Handle, OpId, OpKind, Payload, Rejected};
pub use pool::{WorkerPanic, Workers, QUIT_KEY};
pub use port::{Backend, Builder, CompletionPort};
pub use queue::QueueStats;
pub use sys::Source;
