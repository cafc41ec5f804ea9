//! SEMANTICS O10: a multishot operation's value is cloned by the port, for
//! each completion but the last, in the middle of its own work (io_uring:
//! under the driver's state lock; epoll: under the socket's). A `Clone` that calls
//! back into the port must get an answer, not wait for that lock forever:
//! `post`, `stats` and `recycle` work, `blocking` runs its closure,
//! `close_port` closes the port, every call into a port that needs a lock
//! fails at once with `WouldBlock` (the value and buffers handed back), on
//! every backend alike, and the port goes on as before once the clone
//! returns.

mod common;

use std::cell::RefCell;
use std::io::{self, ErrorKind, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use cport::{Builder, Completion, Handle, LocalPort, OpId, OpKind, Rejected};

/// What a clone saw of each call it made, in order.
type Seen = Arc<Mutex<Vec<(&'static str, Outcome)>>>;

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Worked,
    /// Refused with `WouldBlock`, a message that says why, and (for an
    /// operation) the value and buffer handed back.
    Refused,
    Other(String),
}

fn outcome<R>(r: io::Result<R>) -> Outcome {
    match r {
        Ok(_) => Outcome::Worked,
        Err(e) if e.kind() == ErrorKind::WouldBlock && e.to_string().contains("Clone") => {
            Outcome::Refused
        }
        Err(e) => Outcome::Other(format!("{:?}: {e}", e.kind())),
    }
}

/// An operation's refusal must give back what the call was handed.
fn op_outcome(r: Result<OpId, Rejected<Value>>, want_buf: Option<usize>) -> Outcome {
    match r {
        Ok(_) => Outcome::Worked,
        Err(r) => {
            let back = r.value.id == 99 && r.payload.into_buf().map(|b| b.len()) == want_buf;
            match outcome::<()>(Err(r.error)) {
                Outcome::Refused if !back => Outcome::Other("not handed back".into()),
                o => o,
            }
        }
    }
}

/// The calls a clone makes, through whichever port it reaches.
trait Calls {
    fn send(&self, h: Handle, buf: Vec<u8>, v: Value) -> Result<OpId, Rejected<Value>>;
    fn recv(&self, h: Handle, buf: Vec<u8>, v: Value) -> Result<OpId, Rejected<Value>>;
    fn associate(&self, s: UdpSocket) -> io::Result<Handle>;
    fn associate_stream(&self, s: TcpStream, key: u64) -> io::Result<Handle>;
    fn cancel(&self, op: OpId) -> io::Result<()>;
    fn cancel_handle(&self, h: Handle) -> io::Result<usize>;
    fn close(&self, h: Handle) -> io::Result<()>;
    fn shutdown(&self, h: Handle) -> io::Result<()>;
    fn local_addr(&self, h: Handle) -> io::Result<std::net::SocketAddr>;
    fn post(&self, key: u64) -> io::Result<()>;
    fn stats(&self);
    fn recycle(&self, buf: Vec<u8>);
}

/// Every call, on the stream being received on (`this`) and on another
/// (`other`, with `other_op` pending on it).
fn call_everything(port: &dyn Calls, this: Handle, other: Handle, other_op: OpId, seen: &Seen) {
    let v = || Value {
        id: 99,
        calls: None,
    };
    let mut s = seen.lock().unwrap();
    s.push((
        "send here",
        op_outcome(port.send(this, vec![1; 3], v()), Some(3)),
    ));
    s.push((
        "send elsewhere",
        op_outcome(port.send(other, vec![1; 3], v()), Some(3)),
    ));
    s.push((
        "recv elsewhere",
        op_outcome(port.recv(other, Vec::with_capacity(8), v()), Some(0)),
    ));
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.push(("associate", outcome(port.associate(udp))));
    s.push(("cancel", outcome(port.cancel(other_op))));
    s.push(("cancel_handle", outcome(port.cancel_handle(other))));
    s.push(("close", outcome(port.close(other))));
    s.push(("shutdown", outcome(port.shutdown(other))));
    s.push(("local_addr", outcome(port.local_addr(this))));
    s.push(("post", outcome(port.post(5))));
    port.stats();
    port.recycle(vec![0; 16]);
}

/// Where a clone finds its port: a `CompletionPort` travels in the value,
/// a `LocalPort` (not `Send`) in the thread's own storage.
enum Reach {
    /// The port, and another one.
    Shared(cport::CompletionPort<Value>, cport::CompletionPort<Value>),
    Local,
}

struct Caller {
    reach: Reach,
    this: Handle,
    other: Handle,
    other_op: OpId,
    seen: Seen,
}

struct Value {
    id: u32,
    /// Set on the receive's value: its first clone makes the calls.
    calls: Option<Arc<Mutex<Option<Caller>>>>,
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Value({})", self.id)
    }
}

impl Clone for Value {
    fn clone(&self) -> Value {
        if let Some(calls) = &self.calls {
            if let Some(c) = calls.lock().unwrap().take() {
                match &c.reach {
                    Reach::Shared(p, another) => {
                        call_everything(p, c.this, c.other, c.other_op, &c.seen);
                        let mut s = c.seen.lock().unwrap();
                        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
                        s.push(("another port", outcome(another.associate(udp, 3))));
                        let ran = p.blocking(|| true);
                        s.push(("blocking", outcome(Ok::<_, io::Error>(ran))));
                    }
                    Reach::Local => LOCAL.with(|p| {
                        let p = p.borrow();
                        let p = p.as_ref().expect("the thread's port");
                        call_everything(p, c.this, c.other, c.other_op, &c.seen)
                    }),
                }
            }
        }
        Value {
            id: self.id,
            calls: None,
        }
    }
}

thread_local! {
    static LOCAL: RefCell<Option<LocalPort<Value>>> = const { RefCell::new(None) };
}

macro_rules! calls_through {
    ($t:ty) => {
        impl Calls for $t {
            fn send(&self, h: Handle, buf: Vec<u8>, v: Value) -> Result<OpId, Rejected<Value>> {
                <$t>::send(self, h, buf, v)
            }
            fn recv(&self, h: Handle, buf: Vec<u8>, v: Value) -> Result<OpId, Rejected<Value>> {
                <$t>::recv(self, h, buf, v)
            }
            fn associate(&self, s: UdpSocket) -> io::Result<Handle> {
                <$t>::associate(self, s, 3)
            }
            fn associate_stream(&self, s: TcpStream, key: u64) -> io::Result<Handle> {
                <$t>::associate(self, s, key)
            }
            fn cancel(&self, op: OpId) -> io::Result<()> {
                <$t>::cancel(self, op)
            }
            fn cancel_handle(&self, h: Handle) -> io::Result<usize> {
                <$t>::cancel_handle(self, h)
            }
            fn close(&self, h: Handle) -> io::Result<()> {
                <$t>::close(self, h)
            }
            fn shutdown(&self, h: Handle) -> io::Result<()> {
                <$t>::shutdown(self, h, Shutdown::Write)
            }
            fn local_addr(&self, h: Handle) -> io::Result<std::net::SocketAddr> {
                <$t>::local_addr(self, h)
            }
            fn post(&self, key: u64) -> io::Result<()> {
                let v = Value { id: 5, calls: None };
                <$t>::post(self, key, 0, v).map_err(|r| r.error)
            }
            fn stats(&self) {
                let _ = <$t>::stats(self);
            }
            fn recycle(&self, buf: Vec<u8>) {
                <$t>::recycle(self, buf)
            }
        }
    };
}

calls_through!(cport::CompletionPort<Value>);
calls_through!(LocalPort<Value>);

/// A connected pair on 127.0.0.1, the far end with bounded waits.
fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    b.set_read_timeout(common::LONG).unwrap();
    (a, b)
}

/// Every call needing the port's lock is refused, a call into another
/// port too (two ports' reaps could each wait for the other); the rest
/// work. `extra`: what only a shared port's clone tried.
fn check(seen: &[(&'static str, Outcome)], extra: &[(&'static str, Outcome)]) {
    let want: Vec<(&str, Outcome)> = [
        "send here",
        "send elsewhere",
        "recv elsewhere",
        "associate",
        "cancel",
        "cancel_handle",
        "close",
        "shutdown",
        "local_addr",
    ]
    .into_iter()
    .map(|n| (n, Outcome::Refused))
    .chain([("post", Outcome::Worked)])
    .collect();
    let want: Vec<(&str, &Outcome)> = want.iter().chain(extra).map(|(n, o)| (*n, o)).collect();
    let seen: Vec<(&str, &Outcome)> = seen.iter().map(|(n, o)| (*n, o)).collect();
    assert_eq!(seen, want);
}

/// Runs `f` on a thread of its own and waits for it at most 20 s: a call
/// that waits forever fails the test instead of hanging it.
fn bounded(f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(())) => {}
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("a call from inside Clone did not return within 20 s"),
    }
}

/// Two streams on `port`: `this` (key 1), to receive on, and `other`
/// (key 2) with a receive pending (value 7); the far ends.
fn two_streams(port: &dyn Calls) -> (Handle, Handle, OpId, TcpStream, TcpStream) {
    let (a, peer) = tcp_pair();
    let (b, peer_b) = tcp_pair();
    let this = port.associate_stream(a, 1).unwrap();
    let other = port.associate_stream(b, 2).unwrap();
    let other_op = port
        .recv(other, Vec::with_capacity(8), Value { id: 7, calls: None })
        .unwrap();
    (this, other, other_op, peer, peer_b)
}

/// The receive's value, whose first clone makes every call through
/// `reach`, and where it writes what it saw.
fn calling_value(reach: Reach, this: Handle, other: Handle, other_op: OpId) -> (Value, Seen) {
    let seen: Seen = Arc::default();
    let caller = Caller {
        reach,
        this,
        other,
        other_op,
        seen: seen.clone(),
    };
    let value = Value {
        id: 1,
        calls: Some(Arc::new(Mutex::new(Some(caller)))),
    };
    (value, seen)
}

/// The arrival the value was cloned for and the post the clone made. The
/// post is queued at once, the arrival once the reap ends: either may
/// come first.
fn arrival_and_post(mut two: [Completion<Value>; 2], op: OpId) -> Completion<Value> {
    two.sort_by_key(|c| c.kind == OpKind::Post);
    let [c, p] = two;
    assert_eq!((c.kind, c.op, c.more), (OpKind::RecvMulti, Some(op), true));
    assert_eq!(c.value.id, 1);
    assert_eq!((p.kind, p.key, p.value.id), (OpKind::Post, 5, 5));
    c
}

backends! {
    fn o10_a_clone_calling_a_shared_port_is_answered(backend: Backend) {
        bounded(move || {
            let port: cport::CompletionPort<Value> = Builder::new()
                .backend(backend)
                .concurrency(1)
                .build()
                .unwrap();
            let (this, other, other_op, mut peer, _peer_b) = two_streams(&port);
            let another: cport::CompletionPort<Value> =
                Builder::new().backend(backend).build().unwrap();
            let reach = Reach::Shared(port.clone(), another);
            let (value, seen) = calling_value(reach, this, other, other_op);
            let op = port.recv_multi(this, value).unwrap();
            peer.write_all(b"ping").unwrap();
            let c = arrival_and_post([common::next(&port), common::next(&port)], op);
            port.recycle(c.payload.into_buf().unwrap());
            let extra = [("another port", Outcome::Refused), ("blocking", Outcome::Worked)];
            check(&seen.lock().unwrap(), &extra);
            // The receive pending elsewhere was neither cancelled nor closed.
            common::assert_empty(&port);
            // From the handler the same calls work.
            port.send(this, b"pong".to_vec(), Value { id: 2, calls: None }).unwrap();
            assert_eq!(common::next(&port).result.unwrap(), 4);
            port.close(other).unwrap();
            let aborted = common::next(&port);
            assert_eq!((aborted.op, aborted.value.id), (Some(other_op), 7));
            assert!(cport::is_aborted(&aborted.result.unwrap_err()));
        });
    }

    fn o10_a_clone_calling_a_local_port_is_answered(backend: Backend) {
        bounded(move || {
            let port: LocalPort<Value> = Builder::new().backend(backend).build_local().unwrap();
            let (this, other, other_op, mut peer, _peer_b) = two_streams(&port);
            LOCAL.with(|p| *p.borrow_mut() = Some(port));
            let (value, seen) = calling_value(Reach::Local, this, other, other_op);
            let get = || LOCAL.with(|p| p.borrow().as_ref().unwrap().get(common::LONG).unwrap());
            let op = LOCAL.with(|p| p.borrow().as_ref().unwrap().recv_multi(this, value).unwrap());
            peer.write_all(b"ping").unwrap();
            arrival_and_post([get(), get()], op);
            check(&seen.lock().unwrap(), &[]);
            LOCAL.with(|p| {
                let p = p.borrow();
                let p = p.as_ref().unwrap();
                p.send(this, b"pong".to_vec(), Value { id: 2, calls: None }).unwrap();
            });
            assert_eq!(get().result.unwrap(), 4);
            // Dropped on this thread, before its storage goes.
            drop(LOCAL.with(|p| p.borrow_mut().take()));
        });
    }

    // close_port inside a Clone closes the port without waiting for the
    // lock the clone runs under (it hung on both backends before): the
    // backend closes once the reap that ran the clone lets go of it.
    fn o10_a_clone_closing_a_shared_port_closes_it(backend: Backend) {
        bounded(move || {
            let port: cport::CompletionPort<Closing> =
                Builder::new().backend(backend).build().unwrap();
            let for_clone = port.clone();
            close_from_a_clone(&|| Box::new(port.clone()), |dropped| Closing {
                id: 1,
                port: Some(for_clone),
                local: false,
                dropped,
            });
        });
    }

    fn o10_a_clone_closing_a_local_port_closes_it(backend: Backend) {
        bounded(move || {
            let port: LocalPort<Closing> = Builder::new().backend(backend).build_local().unwrap();
            LOCAL_CLOSING.with(|p| *p.borrow_mut() = Some(port));
            close_from_a_clone(&|| Box::new(ThreadsPort), |dropped| Closing {
                id: 1,
                port: None,
                local: true,
                dropped,
            });
            drop(LOCAL_CLOSING.with(|p| p.borrow_mut().take()));
        });
    }
}

/// A value whose first clone closes its port (through `port`, or the
/// thread's local port), and which records its id when dropped.
struct Closing {
    id: u32,
    port: Option<cport::CompletionPort<Closing>>,
    local: bool,
    dropped: Arc<Mutex<Vec<u32>>>,
}

impl Clone for Closing {
    fn clone(&self) -> Closing {
        if let Some(p) = &self.port {
            p.close_port();
        } else if self.local {
            LOCAL_CLOSING.with(|p| p.borrow().as_ref().expect("the thread's port").close_port());
        }
        Closing {
            id: self.id + 100,
            port: None,
            local: false,
            dropped: self.dropped.clone(),
        }
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        self.dropped.lock().unwrap().push(self.id);
    }
}

thread_local! {
    static LOCAL_CLOSING: RefCell<Option<LocalPort<Closing>>> = const { RefCell::new(None) };
}

/// On `port`: a stream with a receive pending (value 7), and one whose
/// multishot receive (value 1) gets data, so that the port clones its
/// value. `get` is how the test dequeues from `port`.
fn close_from_a_clone(
    port: &dyn Fn() -> Box<dyn ClosingCalls>,
    value: impl FnOnce(Arc<Mutex<Vec<u32>>>) -> Closing,
) {
    let dropped: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (a, mut peer) = tcp_pair();
    let (b, _peer_b) = tcp_pair();
    let p = port();
    let this = p.associate(a, 1);
    let other = p.associate(b, 2);
    p.recv(other, closing(7, &dropped));
    p.recv_multi(this, value(dropped.clone()));
    drop(p);
    peer.write_all(b"ping").unwrap();
    let r = port().get().map(|c| (c.kind, c.value.id));
    assert_eq!(r, Err(cport::GetError::Closed), "the clone closed the port");
    assert!(port().is_closed());
    let dropped = dropped.lock().unwrap();
    assert!(
        dropped.contains(&7),
        "the pending receive's value went with the close: {dropped:?}"
    );
}

fn closing(id: u32, dropped: &Arc<Mutex<Vec<u32>>>) -> Closing {
    Closing {
        id,
        port: None,
        local: false,
        dropped: dropped.clone(),
    }
}

/// What `close_from_a_clone` asks of either kind of port.
trait ClosingCalls {
    fn associate(&self, s: TcpStream, key: u64) -> Handle;
    fn recv(&self, h: Handle, v: Closing);
    fn recv_multi(&self, h: Handle, v: Closing);
    fn get(&self) -> Result<Completion<Closing>, cport::GetError>;
    fn is_closed(&self) -> bool;
}

macro_rules! closing_calls {
    ($t:ty) => {
        impl ClosingCalls for $t {
            fn associate(&self, s: TcpStream, key: u64) -> Handle {
                <$t>::associate(self, s, key).unwrap()
            }
            fn recv(&self, h: Handle, v: Closing) {
                <$t>::recv(self, h, Vec::with_capacity(8), v).unwrap();
            }
            fn recv_multi(&self, h: Handle, v: Closing) {
                <$t>::recv_multi(self, h, v).unwrap();
            }
            fn get(&self) -> Result<Completion<Closing>, cport::GetError> {
                <$t>::get(self, common::LONG)
            }
            fn is_closed(&self) -> bool {
                <$t>::is_closed(self)
            }
        }
    };
}

closing_calls!(cport::CompletionPort<Closing>);
closing_calls!(LocalPort<Closing>);

/// The thread's local port (`LOCAL_CLOSING`), as `ClosingCalls`.
struct ThreadsPort;

impl ThreadsPort {
    fn with<R>(f: impl FnOnce(&LocalPort<Closing>) -> R) -> R {
        LOCAL_CLOSING.with(|p| f(p.borrow().as_ref().expect("the thread's port")))
    }
}

impl ClosingCalls for ThreadsPort {
    fn associate(&self, s: TcpStream, key: u64) -> Handle {
        Self::with(|p| ClosingCalls::associate(p, s, key))
    }
    fn recv(&self, h: Handle, v: Closing) {
        Self::with(|p| ClosingCalls::recv(p, h, v))
    }
    fn recv_multi(&self, h: Handle, v: Closing) {
        Self::with(|p| ClosingCalls::recv_multi(p, h, v))
    }
    fn get(&self) -> Result<Completion<Closing>, cport::GetError> {
        Self::with(ClosingCalls::get)
    }
    fn is_closed(&self) -> bool {
        Self::with(LocalPort::is_closed)
    }
}
