//! What comes out of the port: [`Completion`], its [`Payload`], and the
//! identifiers ([`Handle`], [`OpId`]) that tie it to what was put in.

use std::error::Error;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroU32;

/// An associated handle: a socket or file the port owns, named by the slot
/// the port keeps it in.
///
/// A `Handle` is a plain token (`Copy`). The descriptor itself belongs to
/// the port from [`associate`](crate::CompletionPort::associate) until
/// [`close`](crate::CompletionPort::close), which is what makes descriptor
/// reuse harmless (SEMANTICS X4): a closed handle's slot gets a new
/// generation, so a stale `Handle` is refused instead of reaching whatever
/// descriptor now has the old number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Handle {
    /// Never 0 (see [`PortId`]).
    pub(crate) port: PortId,
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// One issued operation, for [`cancel`](crate::CompletionPort::cancel) and
/// for matching a completion to its issue (Windows: the `OVERLAPPED`
/// pointer's identity).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct OpId {
    pub(crate) port: PortId,
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// A port's number, in its handles and operations. Never 0, so that
/// `Option<Handle>` and `Option<OpId>` are no larger than what they hold:
/// that keeps a [`Completion`] of a word-sized value within 128 bytes (with
/// current Rust's layouts), which the compiler moves with a few vector
/// stores instead of a call to `memcpy` (2 % of a single-issuer echo
/// server's samples went to those calls: `bench/runs/2026-12-06/
/// completion-size`).
pub(crate) type PortId = NonZeroU32;

/// The operation a completion belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum OpKind {
    /// A packet queued by [`post`](crate::CompletionPort::post).
    Post,
    /// [`accept`](crate::CompletionPort::accept) or its multishot form.
    Accept,
    /// [`connect`](crate::CompletionPort::connect).
    Connect,
    /// [`recv`](crate::CompletionPort::recv) and
    /// [`recv_vectored`](crate::CompletionPort::recv_vectored).
    Recv,
    /// [`recv_pooled`](crate::CompletionPort::recv_pooled): the receive that
    /// pins no buffer while idle.
    RecvPooled,
    /// [`recv_multi`](crate::CompletionPort::recv_multi): the receive that
    /// completes once per arrival.
    RecvMulti,
    /// [`send`](crate::CompletionPort::send) and
    /// [`send_vectored`](crate::CompletionPort::send_vectored).
    Send,
    /// [`recv_from`](crate::CompletionPort::recv_from).
    RecvFrom,
    /// [`send_to`](crate::CompletionPort::send_to).
    SendTo,
    /// [`read_at`](crate::CompletionPort::read_at) and its vectored form.
    ReadAt,
    /// [`write_at`](crate::CompletionPort::write_at) and its vectored form.
    WriteAt,
}

/// What an operation hands back besides its byte count: always its
/// buffers (on success, error and cancellation alike), and for some
/// operations what they produced.
#[derive(Debug)]
#[non_exhaustive]
pub enum Payload {
    /// Nothing to give back (posts, connect, a failed accept).
    None,
    /// The operation's one buffer. For receives and reads, its length was
    /// advanced by the bytes received.
    Buf(Vec<u8>),
    /// The operation's buffers, in the order given. For scatter receives,
    /// each one's length was advanced by the bytes that landed in it.
    Bufs(Vec<Vec<u8>>),
    /// A connection from [`accept`](crate::CompletionPort::accept): not yet
    /// associated with any port.
    Accepted {
        /// The new connection, in blocking mode until associated.
        stream: TcpStream,
        /// The peer's address.
        peer: SocketAddr,
    },
    /// A datagram from [`recv_from`](crate::CompletionPort::recv_from).
    Datagram {
        /// The buffer, its length advanced by the bytes received.
        buf: Vec<u8>,
        /// The sender, when the operation succeeded or was truncated.
        from: Option<SocketAddr>,
    },
}

impl Payload {
    /// The single buffer this payload carries, if any (`Buf` or `Datagram`).
    pub fn into_buf(self) -> Option<Vec<u8>> {
        match self {
            Payload::Buf(b) => Some(b),
            Payload::Datagram { buf, .. } => Some(buf),
            _ => None,
        }
    }

    /// The buffers of a vectored operation, if this is one.
    pub fn into_bufs(self) -> Option<Vec<Vec<u8>>> {
        match self {
            Payload::Bufs(b) => Some(b),
            _ => None,
        }
    }
}

/// One dequeued completion: GetQueuedCompletionStatus's four outputs
/// (result, bytes, key, OVERLAPPED) as one value.
///
/// `result` is the operation's own outcome: `Ok(bytes transferred)` or the
/// error it failed with. A failed operation is still a completion, with its
/// key, value and buffers (SEMANTICS Q5); "nothing was dequeued" is the
/// `Err` of [`get`](crate::CompletionPort::get), never this.
#[derive(Debug)]
#[non_exhaustive]
pub struct Completion<T> {
    /// The completion key the handle was associated with, or the key given
    /// to [`post`](crate::CompletionPort::post).
    pub key: u64,
    /// Which kind of operation this completes.
    pub kind: OpKind,
    /// The operation (`None` for posted packets).
    pub op: Option<OpId>,
    /// The handle the operation ran on (`None` for posted packets).
    pub handle: Option<Handle>,
    /// Bytes transferred, or the operation's error. Cancelled and aborted
    /// operations fail with an error for which [`is_aborted`](crate::is_aborted) holds.
    pub result: io::Result<usize>,
    /// The per-operation value given at issue (the tutorials' PER_IO_DATA),
    /// unchanged.
    pub value: T,
    /// The buffers and products of the operation.
    pub payload: Payload,
    /// For multishot operations: more completions of the same operation
    /// will follow. `false` for every single-shot operation.
    pub more: bool,
    /// This completion's place among its operation's completions, from 0
    /// (the final one comes last): the order in which the kernel produced
    /// them. Workers that dequeue a multishot receive's arrivals at once
    /// can restore their order with it (SEMANTICS O9). 0 for a single-shot
    /// operation and for a posted packet.
    pub seq: u64,
}

/// An operation the port refused at issue time (bad or closed handle, port
/// closed, wrong kind of handle): the error, and everything that was handed
/// in, handed back. No completion will follow (SEMANTICS O1).
pub struct Rejected<T> {
    /// Why the operation was refused.
    pub error: io::Error,
    /// The per-operation value, unchanged.
    pub value: T,
    /// The buffers, unchanged.
    pub payload: Payload,
}

impl<T> Rejected<T> {
    pub(crate) fn new(error: io::Error, value: T, payload: Payload) -> Self {
        Rejected {
            error,
            value,
            payload,
        }
    }
}

impl<T> fmt::Debug for Rejected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("error", &self.error)
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for Rejected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "operation refused: {}", self.error)
    }
}

impl<T> Error for Rejected<T> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.error)
    }
}

impl<T> From<Rejected<T>> for io::Error {
    fn from(r: Rejected<T>) -> io::Error {
        r.error
    }
}

/// Why [`get`](crate::CompletionPort::get) dequeued nothing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum GetError {
    /// The timeout passed with nothing to dequeue (Windows: WAIT_TIMEOUT).
    Timeout,
    /// The port was closed (Windows: ERROR_ABANDONED_WAIT_0).
    Closed,
    /// [`get_many`](crate::CompletionPort::get_many) was asked for zero
    /// completions (Windows: ERROR_INVALID_PARAMETER). Nothing was removed.
    InvalidInput,
}

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GetError::Timeout => "no completion before the timeout",
            GetError::Closed => "the completion port was closed",
            GetError::InvalidInput => "get_many: max must be at least 1",
        })
    }
}

impl Error for GetError {}

impl From<GetError> for io::Error {
    fn from(e: GetError) -> io::Error {
        let kind = match e {
            GetError::Timeout => io::ErrorKind::TimedOut,
            GetError::Closed => io::ErrorKind::NotConnected,
            GetError::InvalidInput => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    // A port number is never 0 (`PortId`), so the options cost nothing,
    // and a completion of a word-sized value is its payload and 72 bytes:
    // 128 in all where the payload takes 56, as with current Rust (whose
    // `Vec` lends the enum a niche; Rust 1.63's payload is 64), which the
    // compiler moves inline. A field added to `Completion`, or an id that
    // loses its niche, fails here rather than in a profile.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_completion_of_a_word_is_its_payload_and_72_bytes() {
        assert_eq!(size_of::<Option<Handle>>(), size_of::<Handle>());
        assert_eq!(size_of::<Option<OpId>>(), size_of::<OpId>());
        assert!(
            size_of::<Completion<u64>>() <= size_of::<Payload>() + 72,
            "Completion<u64> is {} bytes, its Payload {}",
            size_of::<Completion<u64>>(),
            size_of::<Payload>()
        );
    }
}
