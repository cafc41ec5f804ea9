//! The callback model on Windows: not yet written.

use std::io;
use std::net::TcpListener;
use std::sync::Arc;

use crate::{Stats, Stop};

/// Fails: the Windows form of this model is not written yet.
pub fn serve(_listener: TcpListener, _stop: Stop, _stats: Arc<Stats>) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "the callback model is not yet on Windows",
    ))
}
