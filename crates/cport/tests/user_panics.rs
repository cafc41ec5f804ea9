//! SEMANTICS O1 under user code that panics inside the port (LESSONS 12).
//!
//! A multishot operation's per-event value is made by the value's `Clone`,
//! which the port runs while it reaps the kernel (or, on epoll, inside the
//! issuing call when connections are already waiting). A panic there must
//! lose only the event it was cloning for: every other completion already
//! taken from the kernel is queued, every readiness event already read is
//! acted on, and the panic comes out of the call that ran the clone.

mod common;

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cport::{
    Builder, Completion, CompletionPort, GetError, Handle, LocalPort, OpId, OpKind, Payload,
    Rejected, Source,
};

/// A per-operation value whose `n`th clone (counted across all clones of
/// it) panics, once.
#[derive(Debug)]
struct Bomb {
    id: u32,
    clone: bool,
    clones: Arc<AtomicUsize>,
    fuse: usize,
}

impl Bomb {
    fn new(id: u32, fuse: usize) -> Bomb {
        Bomb {
            id,
            clone: false,
            clones: Arc::new(AtomicUsize::new(0)),
            fuse,
        }
    }

    fn inert(id: u32) -> Bomb {
        Bomb::new(id, 0)
    }
}

impl Clone for Bomb {
    fn clone(&self) -> Self {
        let n = self.clones.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fuse {
            panic!("clone {n} of value {} panics", self.id);
        }
        Bomb {
            id: self.id,
            clone: true,
            clones: self.clones.clone(),
            fuse: self.fuse,
        }
    }
}

/// The calls these tests make, on a shared port and on a thread's own
/// (whose `get` reaps into a queue of its own: a panic there must lose
/// nothing either).
trait Port {
    fn associate(&self, source: impl Into<Source>, key: u64) -> io::Result<Handle>;
    fn local_addr(&self, handle: Handle) -> io::Result<SocketAddr>;
    fn accept_multi(&self, listener: Handle, value: Bomb) -> Result<OpId, Rejected<Bomb>>;
    fn recv(&self, handle: Handle, buf: Vec<u8>, value: Bomb) -> Result<OpId, Rejected<Bomb>>;
    fn cancel(&self, op: OpId) -> io::Result<()>;
    fn get(&self, timeout: Option<Duration>) -> Result<Completion<Bomb>, GetError>;
}

macro_rules! port {
    ($ty:ty) => {
        impl Port for $ty {
            fn associate(&self, source: impl Into<Source>, key: u64) -> io::Result<Handle> {
                <$ty>::associate(self, source, key)
            }
            fn local_addr(&self, handle: Handle) -> io::Result<SocketAddr> {
                <$ty>::local_addr(self, handle)
            }
            fn accept_multi(&self, listener: Handle, value: Bomb) -> Result<OpId, Rejected<Bomb>> {
                <$ty>::accept_multi(self, listener, value)
            }
            fn recv(
                &self,
                handle: Handle,
                buf: Vec<u8>,
                value: Bomb,
            ) -> Result<OpId, Rejected<Bomb>> {
                <$ty>::recv(self, handle, buf, value)
            }
            fn cancel(&self, op: OpId) -> io::Result<()> {
                <$ty>::cancel(self, op)
            }
            fn get(&self, timeout: Option<Duration>) -> Result<Completion<Bomb>, GetError> {
                <$ty>::get(self, timeout)
            }
        }
    };
}

port!(CompletionPort<Bomb>);
port!(LocalPort<Bomb>);

/// Calls `f`, telling a panic apart from its result.
fn catching<R>(f: impl FnOnce() -> R) -> Result<R, ()> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|_| ())
}

/// Dequeues until `done` says enough, counting the `get`s that panicked.
/// Fails the test if nothing comes within the bound.
#[track_caller]
fn drain(
    port: &impl Port,
    mut done: impl FnMut(&[Completion<Bomb>]) -> bool,
) -> (Vec<Completion<Bomb>>, usize) {
    let deadline = Instant::now() + common::LONG.unwrap();
    let (mut got, mut panics) = (Vec::new(), 0);
    while !done(&got) {
        assert!(
            Instant::now() < deadline,
            "only {} completions came ({panics} panics)",
            got.len()
        );
        match catching(|| port.get(common::LONG)) {
            Ok(Ok(c)) => got.push(c),
            Ok(Err(e)) => panic!("nothing more came ({} so far): {e}", got.len()),
            Err(()) => panics += 1,
        }
    }
    (got, panics)
}

/// Whether the server side of `client` was closed (EOF or reset).
/// A read on an open connection with nothing to read times out (its
/// timeout is the caller's): that is "open", not a failure. EINTR is
/// retried: this thread issued io_uring requests, whose task work
/// interrupts its blocking calls.
fn closed_by_server(client: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    let r = loop {
        match client.read(&mut b) {
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            r => break r,
        }
    };
    match r {
        Ok(0) => true,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => panic!("reading the client: {e}"),
        Ok(_) => false,
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(common::LONG).unwrap();
    s
}

/// 32 receives pending and a multishot accept whose first clone panics;
/// data and a connection arrive before anyone calls `get`, in both
/// orders. Every receive completes, whichever the kernel reports first.
fn clone_panics_mid_reap<P: Port>(make: impl Fn() -> P) {
    for connect_first in [false, true] {
        let port = make();
        let listener = port
            .associate(TcpListener::bind("127.0.0.1:0").unwrap(), 1000)
            .unwrap();
        let addr = port.local_addr(listener).unwrap();
        let accept = port.accept_multi(listener, Bomb::new(1000, 1)).unwrap();
        let mut peers = Vec::new();
        for i in 0..32u32 {
            let (h, peer) = pair(&port, u64::from(i));
            port.recv(h, Vec::with_capacity(64), Bomb::inert(i))
                .unwrap();
            peers.push(peer);
        }
        let mut client = None;
        if connect_first {
            client = Some(connect(addr));
        }
        for (i, peer) in peers.iter_mut().enumerate() {
            peer.write_all(format!("data {i}").as_bytes()).unwrap();
        }
        if !connect_first {
            client = Some(connect(addr));
        }
        let mut client = client.unwrap();

        let recvs =
            |got: &[Completion<Bomb>]| got.iter().filter(|c| c.kind == OpKind::Recv).count();
        let (got, panics) = drain(&port, |got| recvs(got) == 32);
        assert_eq!(panics, 1, "the one panicking clone comes out of one get");
        let mut seen = [false; 32];
        for c in got.into_iter().filter(|c| c.kind == OpKind::Recv) {
            let n = c.result.expect("the receive succeeded");
            let i = c.value.id as usize;
            assert_eq!(c.key, i as u64);
            let buf = c.payload.into_buf().unwrap();
            assert_eq!(&buf[..n], format!("data {i}").as_bytes());
            assert!(!seen[i], "receive {i} completed twice");
            seen[i] = true;
        }
        assert!(seen.iter().all(|s| *s), "every receive completed");
        // What the panicking clone was made for is lost: the accepted
        // connection was closed.
        assert!(
            closed_by_server(&mut client),
            "the lost connection is closed"
        );

        // The accept goes on, and still ends with its own value.
        let _again = connect(addr);
        let (got, panics) = drain(&port, |got| !got.is_empty());
        assert_eq!(panics, 0);
        let c = &got[0];
        assert_eq!(
            (c.kind, c.more, c.value.id, c.value.clone),
            (OpKind::Accept, true, 1000, true)
        );
        assert!(matches!(c.payload, Payload::Accepted { .. }));
        port.cancel(accept).unwrap();
        let (got, _) = drain(&port, |got| got.iter().any(|c| !c.more));
        let last = got.iter().find(|c| !c.more).unwrap();
        assert_eq!((last.value.id, last.value.clone), (1000, false));
        assert!(matches!(
            port.get(Some(std::time::Duration::ZERO)),
            Err(GetError::Timeout)
        ));
    }
}

/// A connected pair: one end associated with `port` under `key`.
fn pair(port: &impl Port, key: u64) -> (Handle, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    b.set_read_timeout(common::LONG).unwrap();
    (port.associate(a, key).unwrap(), b)
}

backends! {
    fn o1_a_clone_that_panics_mid_reap_loses_no_other_completion(backend: Backend) {
        clone_panics_mid_reap(|| common::port::<Bomb>(backend, 1));
    }

    fn o1_a_clone_that_panics_in_a_local_ports_reap_loses_nothing(backend: Backend) {
        clone_panics_mid_reap(|| Builder::new().backend(backend).build_local::<Bomb>().unwrap());
    }

    // Three connections wait before the multishot accept is issued, and
    // its second clone panics. On epoll the accepts happen inside the
    // issuing call, on io_uring in the kernel and then the reap: either
    // way exactly one call panics, the other two connections are delivered
    // and the second is closed.
    fn o1_a_clone_that_panics_while_issuing_loses_only_its_event(backend: Backend) {
        let port = common::port::<Bomb>(backend, 1);
        let listener = port
            .associate(TcpListener::bind("127.0.0.1:0").unwrap(), 7)
            .unwrap();
        let addr = port.local_addr(listener).unwrap();
        let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(addr)).collect();
        for c in &mut clients {
            // The server has the connection once its first byte is there.
            c.write_all(b"x").unwrap();
        }
        let issued = catching(|| port.accept_multi(listener, Bomb::new(7, 2)).is_ok());
        let (got, panics) = drain(&port, |got| {
            got.iter().filter(|c| c.kind == OpKind::Accept).count() == 2
        });
        assert_eq!(
            panics + usize::from(issued.is_err()),
            1,
            "exactly one call panics"
        );
        assert!(issued.unwrap_or(true), "a refused issue would have no panic to report");
        // Kept open while the clients look: a delivered connection must
        // read as open.
        let accepted: Vec<(SocketAddr, TcpStream)> = got
            .into_iter()
            .map(|c| match c.payload {
                Payload::Accepted { peer, stream } => (peer, stream),
                other => panic!("an accept without its stream: {other:?}"),
            })
            .collect();
        for c in &clients {
            c.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
        }
        let closed: Vec<bool> = clients.iter_mut().map(closed_by_server).collect();
        for (c, closed) in clients.iter().zip(&closed) {
            let delivered = accepted.iter().any(|(peer, _)| *peer == c.local_addr().unwrap());
            assert_ne!(delivered, *closed, "each connection is delivered or closed, not both");
        }
        assert_eq!(closed.iter().filter(|c| **c).count(), 1, "only the panicking event is lost");
        // Cancelled by handle (the issuing call that panicked returned no
        // id): the final completion carries the original value.
        assert_eq!(port.cancel_handle(listener).unwrap(), 1);
        let (got, _) = drain(&port, |got| got.iter().any(|c| !c.more));
        let last = got.iter().find(|c| !c.more).unwrap();
        assert_eq!((last.value.id, last.value.clone), (7, false));
    }

    // A multishot receive whose value panics on its second clone: the
    // arrival it was cloned for is lost, the receive and every other
    // operation go on.
    fn o9_a_clone_that_panics_loses_only_its_arrival(backend: Backend) {
        let port = common::port::<Bomb>(backend, 1);
        let (multi, mut multi_peer) = common::pair(&port, 1);
        let (single, mut single_peer) = common::pair(&port, 2);
        port.recv_multi(multi, Bomb::new(1, 2)).unwrap();
        let arrival = |port: &CompletionPort<Bomb>| {
            let (got, panics) = drain(port, |got| !got.is_empty());
            assert_eq!(panics, 0);
            let c = got.into_iter().next().unwrap();
            let n = c.result.unwrap();
            assert!(c.more);
            c.payload.into_buf().unwrap()[..n].to_vec()
        };
        multi_peer.write_all(b"one").unwrap();
        assert_eq!(arrival(&port), b"one");

        // The panicking arrival, with another receive's data there too.
        port.recv(single, Vec::with_capacity(8), Bomb::inert(2)).unwrap();
        multi_peer.write_all(b"two").unwrap();
        single_peer.write_all(b"other").unwrap();
        let deadline = Instant::now() + common::LONG.unwrap();
        let (mut other, mut panics) = (None, 0);
        while other.is_none() || panics == 0 {
            assert!(Instant::now() < deadline, "panics {panics}, other {other:?}");
            match catching(|| port.get(common::LONG)) {
                Ok(Ok(c)) => {
                    assert_eq!(c.kind, OpKind::Recv, "the lost arrival came after all");
                    let n = c.result.unwrap();
                    other = Some(c.payload.into_buf().unwrap()[..n].to_vec());
                }
                Ok(Err(e)) => panic!("nothing came: {e}"),
                Err(()) => panics += 1,
            }
        }
        assert_eq!((other.unwrap(), panics), (b"other".to_vec(), 1));

        // The receive goes on.
        multi_peer.write_all(b"three").unwrap();
        assert_eq!(arrival(&port), b"three");
        multi_peer.shutdown(std::net::Shutdown::Write).unwrap();
        let (got, _) = drain(&port, |got| got.iter().any(|c| !c.more));
        let last = got.iter().find(|c| !c.more).unwrap();
        assert_eq!((last.value.id, last.value.clone, last.result.as_ref().ok()), (1, false, Some(&0)));
    }
}
