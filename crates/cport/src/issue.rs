//! [`Ops`]: the calls that start or stop operations, behind both
//! [`CompletionPort`]'s and [`LocalPort`](crate::LocalPort)'s methods of
//! the same names.
//!
//! They differ in one thing only, their [`Via`]: where the completions a
//! call makes at once go (an operation refused by the kernel, a send done
//! at issue on epoll, what a cancel or a close ended), and whether a
//! submission may wait for the caller's next `get`.

use std::io;
use std::net::SocketAddr;

use crate::completion::{Handle, OpId, Payload, Rejected};
use crate::port::CompletionPort;
use crate::queue::Batch;
use crate::sync::{clone_value, outside_clone};
use crate::sys::error::{self, no_room, port_closed};
use crate::sys::{Op, Opts, Ready, Source, SourceInner};

/// Where an issuing call's completions made at once go.
pub(crate) trait Via<T> {
    /// Whether the calling thread dequeued a completion and will come back
    /// to `get`: then a submission may wait for that `get`
    /// ([`Builder::batch_submissions`](crate::Builder::batch_submissions)),
    /// and the thread takes what the call made itself.
    fn running(&self, port: &CompletionPort<T>) -> bool;

    /// Queues `ready` (drained), `running` as [`running`](Via::running)
    /// said; a panic caught in it stays there.
    fn queue(&self, port: &CompletionPort<T>, ready: &mut Ready<T>, running: bool);
}

/// A port's calls, issued through `via`.
pub(crate) struct Ops<'a, T, V> {
    pub(crate) port: &'a CompletionPort<T>,
    pub(crate) via: V,
}

impl<T: Send + 'static, V: Via<T>> Ops<'_, T, V> {
    pub(crate) fn close(&self, handle: Handle) -> io::Result<()> {
        outside_clone("close")?;
        let mut ready = Batch::new();
        let r = self.port.driver().close(handle, &mut ready);
        self.queue_ready(&mut ready);
        r
    }

    pub(crate) fn accept(&self, listener: Handle, value: T) -> Result<OpId, Rejected<T>> {
        self.issue(listener, Op::Accept, value, None)
    }

    pub(crate) fn accept_multi(&self, listener: Handle, value: T) -> Result<OpId, Rejected<T>>
    where
        T: Clone,
    {
        self.issue(listener, Op::Accept, value, Some(clone_value::<T>))
    }

    pub(crate) fn connect(
        &self,
        addr: SocketAddr,
        key: u64,
        value: T,
    ) -> Result<(Handle, OpId), Rejected<T>> {
        let socket = match socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        ) {
            Ok(s) => s,
            Err(e) => return Err(Rejected::new(e, value, Payload::None)),
        };
        let handle = match self
            .port
            .associate(Source(SourceInner::TcpSocket(socket)), key)
        {
            Ok(h) => h,
            Err(e) => return Err(Rejected::new(e, value, Payload::None)),
        };
        match self.issue(handle, Op::Connect(addr), value, None) {
            Ok(op) => Ok((handle, op)),
            Err(r) => {
                let _ = self.close(handle);
                Err(r)
            }
        }
    }

    pub(crate) fn recv(&self, handle: Handle, buf: Vec<u8>, value: T) -> Result<OpId, Rejected<T>> {
        if buf.capacity() == buf.len() {
            return Err(no_room("recv", Payload::Buf(buf), value));
        }
        self.issue(handle, Op::Recv(buf), value, None)
    }

    pub(crate) fn recv_vectored(
        &self,
        handle: Handle,
        bufs: Vec<Vec<u8>>,
        value: T,
    ) -> Result<OpId, Rejected<T>> {
        if bufs.iter().all(|b| b.capacity() == b.len()) {
            return Err(no_room("recv_vectored", Payload::Bufs(bufs), value));
        }
        self.issue(handle, Op::RecvVectored(bufs), value, None)
    }

    pub(crate) fn recv_pooled(&self, handle: Handle, value: T) -> Result<OpId, Rejected<T>> {
        self.issue(handle, Op::RecvPooled, value, None)
    }

    pub(crate) fn recv_multi(&self, handle: Handle, value: T) -> Result<OpId, Rejected<T>>
    where
        T: Clone,
    {
        self.issue(handle, Op::RecvMulti, value, Some(clone_value::<T>))
    }

    pub(crate) fn send(&self, handle: Handle, buf: Vec<u8>, value: T) -> Result<OpId, Rejected<T>> {
        self.issue(handle, Op::Send(buf), value, None)
    }

    pub(crate) fn send_vectored(
        &self,
        handle: Handle,
        bufs: Vec<Vec<u8>>,
        value: T,
    ) -> Result<OpId, Rejected<T>> {
        self.issue(handle, Op::SendVectored(bufs), value, None)
    }

    pub(crate) fn recv_from(
        &self,
        handle: Handle,
        buf: Vec<u8>,
        value: T,
    ) -> Result<OpId, Rejected<T>> {
        if buf.capacity() == buf.len() {
            return Err(no_room("recv_from", Payload::Buf(buf), value));
        }
        self.issue(handle, Op::RecvFrom(buf), value, None)
    }

    pub(crate) fn send_to(
        &self,
        handle: Handle,
        buf: Vec<u8>,
        addr: SocketAddr,
        value: T,
    ) -> Result<OpId, Rejected<T>> {
        self.issue(handle, Op::SendTo(buf, addr), value, None)
    }

    pub(crate) fn read_at(
        &self,
        handle: Handle,
        buf: Vec<u8>,
        offset: u64,
        value: T,
    ) -> Result<OpId, Rejected<T>> {
        if buf.capacity() == buf.len() {
            return Err(no_room("read_at", Payload::Buf(buf), value));
        }
        self.issue(handle, Op::ReadAt(buf, offset), value, None)
    }

    pub(crate) fn read_vectored_at(
        &self,
        handle: Handle,
        bufs: Vec<Vec<u8>>,
        offset: u64,
        value: T,
    ) -> Result<OpId, Rejected<T>> {
        if bufs.iter().all(|b| b.capacity() == b.len()) {
            return Err(no_room("read_vectored_at", Payload::Bufs(bufs), value));
        }
        self.issue(handle, Op::ReadVectoredAt(bufs, offset), value, None)
    }

    pub(crate) fn write_at(
        &self,
        handle: Handle,
        buf: Vec<u8>,
        offset: u64,
        value: T,
    ) -> Result<OpId, Rejected<T>> {
        self.issue(handle, Op::WriteAt(buf, offset), value, None)
    }

    pub(crate) fn write_vectored_at(
        &self,
        handle: Handle,
        bufs: Vec<Vec<u8>>,
        offset: u64,
        value: T,
    ) -> Result<OpId, Rejected<T>> {
        self.issue(handle, Op::WriteVectoredAt(bufs, offset), value, None)
    }

    pub(crate) fn cancel(&self, op: OpId) -> io::Result<()> {
        outside_clone("cancel")?;
        let mut ready = Batch::new();
        let r = self.port.driver().cancel(op, &mut ready);
        self.queue_ready(&mut ready);
        r
    }

    pub(crate) fn cancel_handle(&self, handle: Handle) -> io::Result<usize> {
        outside_clone("cancel_handle")?;
        let mut ready = Batch::new();
        let r = self.port.driver().cancel_handle(handle, &mut ready);
        self.queue_ready(&mut ready);
        r
    }

    fn issue(
        &self,
        handle: Handle,
        op: Op,
        value: T,
        multishot: Option<fn(&T) -> T>,
    ) -> Result<OpId, Rejected<T>> {
        if self.port.is_closed() {
            return Err(Rejected::new(port_closed(), value, op.into_payload()));
        }
        if let Err(e) = outside_clone(op.name()) {
            return Err(Rejected::new(e, value, op.into_payload()));
        }
        if op.offset().map_or(false, |o| o > i64::MAX as u64) {
            // Both kernels take a signed offset; refuse here so that every
            // backend refuses alike instead of failing in its own way.
            let e = error::offset_too_large(op.name());
            return Err(Rejected::new(e, value, op.into_payload()));
        }
        let running = self.via.running(self.port);
        let mut ready = Batch::new();
        let r = self.port.driver().submit(
            handle,
            op,
            value,
            Opts {
                defer: running && self.port.batches(),
                multishot,
            },
            &mut ready,
        );
        self.queue_ready_from(&mut ready, running);
        r
    }

    fn queue_ready(&self, ready: &mut Ready<T>) {
        let running = self.via.running(self.port);
        self.queue_ready_from(ready, running);
    }

    /// Queues completions produced inside a call. A panic of user code the
    /// call ran (a multishot value's `Clone`) is resumed only then, so that
    /// it loses nothing else (LESSONS 12).
    fn queue_ready_from(&self, ready: &mut Ready<T>, running: bool) {
        self.port.settle_close();
        if !ready.is_empty() {
            self.via.queue(self.port, ready, running);
        }
        ready.resume_panic();
    }
}
