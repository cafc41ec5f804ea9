//! `LocalPort`: the port of one thread (SEMANTICS P1 with N = 1, O1, O9),
//! on every backend: what it issues completes when the thread comes back
//! to `get`, a zero-timeout look sees what the kernel finished, and ports
//! on several threads share nothing.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::panic;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use cport::{Backend, Builder, LocalPort, OpKind, Payload};

fn local(backend: Backend) -> LocalPort<u64> {
    Builder::new()
        .backend(backend)
        .pool(8, 2048)
        .build_local()
        .unwrap_or_else(|e| panic!("a local {backend} port: {e}"))
}

/// Panics raised on threads named `x3-dropper`, caught or not. A panic the
/// library catches (inside a port's drop) leaves no other trace a test
/// can see; the hook counts it and passes every panic on to the default
/// hook, so other tests' panics print as usual.
static DROPPER_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_dropper_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if thread::current().name() == Some("x3-dropper") {
                DROPPER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

/// Serves one echo connection on `port` until the peer closes: a
/// multishot receive, and a send of every arrival from its own buffer.
fn echo_until_closed(port: &LocalPort<u64>, conn: cport::Handle) -> usize {
    port.recv_multi(conn, 0).unwrap();
    let (mut echoed, mut sends) = (0, 0);
    loop {
        let c = port.get(common::LONG).expect("a completion");
        match c.kind {
            OpKind::RecvMulti if c.more => {
                let n = c.result.unwrap();
                let buf = c.payload.into_buf().unwrap();
                assert_eq!(buf.len(), n);
                port.send(conn, buf, 1).unwrap();
                sends += 1;
            }
            OpKind::RecvMulti => {
                assert_eq!(c.result.unwrap(), 0, "the peer closed");
                break;
            }
            OpKind::Send => {
                echoed += c.result.unwrap();
                sends -= 1;
                port.recycle(c.payload.into_buf().unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    while sends > 0 {
        let c = port.get(common::LONG).expect("a send");
        echoed += c.result.unwrap();
        sends -= 1;
    }
    echoed
}

backends! {
    fn p1_a_local_port_echoes_on_its_thread(backend: Backend) {
        let port = local(backend);
        let listener = port.associate(TcpListener::bind("127.0.0.1:0").unwrap(), 0).unwrap();
        let addr = port.local_addr(listener).unwrap();
        let data = common::pattern(256 << 10);
        let sent = data.clone();
        let client = thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(common::LONG).unwrap();
            let mut r = s.try_clone().unwrap();
            let reader = thread::spawn(move || {
                let mut got = Vec::new();
                r.read_to_end(&mut got).unwrap();
                got
            });
            s.write_all(&sent).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            reader.join().unwrap()
        });
        port.accept(listener, 0).unwrap();
        let c = port.get(common::LONG).unwrap();
        let stream = match c.payload {
            Payload::Accepted { stream, .. } => stream,
            other => panic!("an accept without its stream: {other:?}"),
        };
        let conn = port.associate(stream, 1).unwrap();
        assert_eq!(echo_until_closed(&port, conn), data.len());
        port.close(conn).unwrap();
        let got = client.join().unwrap();
        assert!(got == data, "every byte echoed, in order");
        assert_eq!(port.stats().running, 1, "one thread, the one that dequeued");
    }

    // A look that does not wait still sees what the kernel finished: on a
    // ring that defers its task work, completions are posted only when the
    // thread enters the kernel for them, so even the look must.
    fn q1_a_zero_timeout_look_sees_finished_io(backend: Backend) {
        let port = local(backend);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let h = port.associate(l.accept().unwrap().0, 3).unwrap();
        port.recv(h, Vec::with_capacity(16), 7).unwrap();
        peer.write_all(b"done").unwrap();
        let deadline = Instant::now() + common::LONG.unwrap();
        let c = loop {
            match port.get(Some(Duration::ZERO)) {
                Ok(c) => break c,
                Err(cport::GetError::Timeout) => {
                    assert!(Instant::now() < deadline, "a look never saw the receive");
                    thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!((c.kind, c.value, c.result.unwrap()), (OpKind::Recv, 7, 4));
    }

    // Sends queued on one stream go out one after another: each is started
    // when the one before it completes, inside a reap, and must reach the
    // kernel with the thread's next look even when no `get` ever waits.
    fn o4_queued_sends_go_out_with_zero_timeout_looks(backend: Backend) {
        const SENDS: usize = 4;
        const EACH: usize = 512 << 10;
        let port = local(backend);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let h = port.associate(l.accept().unwrap().0, 3).unwrap();
        let data = common::pattern(SENDS * EACH);
        let reader = thread::spawn(move || {
            let mut peer = peer;
            peer.set_read_timeout(common::LONG).unwrap();
            let mut got = vec![0u8; SENDS * EACH];
            peer.read_exact(&mut got).unwrap();
            got
        });
        for (i, chunk) in data.chunks(EACH).enumerate() {
            port.send(h, chunk.to_vec(), i as u64).unwrap();
        }
        let deadline = Instant::now() + common::LONG.unwrap();
        let mut done = Vec::new();
        while done.len() < SENDS {
            match port.get(Some(Duration::ZERO)) {
                Ok(c) => {
                    assert_eq!((c.kind, c.result.unwrap()), (OpKind::Send, EACH));
                    done.push(c.value);
                }
                Err(cport::GetError::Timeout) => {
                    assert!(Instant::now() < deadline, "sends done: {done:?}");
                    thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(done, (0..SENDS as u64).collect::<Vec<_>>(), "in the order issued");
        assert!(reader.join().unwrap() == data, "every byte, in order");
    }

    // A port per thread, sharing nothing: four threads each serve their
    // own listener at once.
    fn p5_local_ports_on_several_threads_share_nothing(backend: Backend) {
        let servers: Vec<_> = (0..4)
            .map(|i| {
                let (tx, rx) = std::sync::mpsc::channel();
                let t = thread::spawn(move || {
                    let port = local(backend);
                    let l = port.associate(TcpListener::bind("127.0.0.1:0").unwrap(), 0).unwrap();
                    tx.send(port.local_addr(l).unwrap()).unwrap();
                    port.accept(l, 0).unwrap();
                    let c = port.get(common::LONG).unwrap();
                    let stream = match c.payload {
                        Payload::Accepted { stream, .. } => stream,
                        other => panic!("an accept without its stream: {other:?}"),
                    };
                    let conn = port.associate(stream, 1).unwrap();
                    echo_until_closed(&port, conn)
                });
                (i, t, rx.recv_timeout(common::LONG.unwrap()).unwrap())
            })
            .collect();
        for (i, t, addr) in servers {
            let msg = format!("to server {i}").into_bytes();
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(common::LONG).unwrap();
            s.write_all(&msg).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            assert_eq!(got, msg);
            assert_eq!(t.join().unwrap(), msg.len());
        }
    }

    // The thread's own posts and other threads' posts leave in the order
    // they were queued (Q3): a post from a thread that has finished comes
    // before anything this thread queues later, though the two are kept
    // in different queues until the thread looks.
    fn q3_posts_from_this_thread_and_others_keep_their_order(backend: Backend) {
        let port = local(backend);
        let post_from_another_thread = |value: u64| {
            let poster = port.poster();
            thread::spawn(move || poster.post(0, 0, value).unwrap()).join().unwrap();
        };
        post_from_another_thread(10);
        port.post(0, 0, 1).unwrap();
        post_from_another_thread(11);
        port.post(0, 0, 2).unwrap();
        post_from_another_thread(12);
        port.post(0, 0, 3).unwrap();
        let got: Vec<u64> = (0..6)
            .map(|_| port.get(common::LONG).expect("a post").value)
            .collect();
        assert_eq!(got, vec![10, 1, 11, 2, 12, 3]);
        assert!(matches!(port.get(Some(Duration::ZERO)), Err(cport::GetError::Timeout)));
    }

    // A post from another thread ends a `get` waiting in the kernel, however
    // the two meet: before the wait, while the thread enters it, or inside.
    // A lost wake-up leaves the `get` to its 10 s bound and fails the round.
    fn pq1_every_post_ends_a_get_waiting_in_the_kernel(backend: Backend) {
        let port = local(backend);
        let poster = port.poster();
        let (go, rounds) = std::sync::mpsc::channel::<u64>();
        let other = thread::spawn(move || {
            for round in rounds {
                poster.post(1, 0, round).unwrap();
            }
        });
        for round in 0..300u64 {
            go.send(round).unwrap();
            let c = port.get(common::LONG).unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!((c.kind, c.value), (OpKind::Post, round));
        }
        drop(go);
        other.join().unwrap();
    }

    // A thread that always has a post of its own queued (a task that
    // re-posts itself) still sees what the kernel finished: its queue never
    // runs empty, so the port must look at the kernel anyway.
    fn pq2_own_posts_do_not_starve_io_completions(backend: Backend) {
        let port = local(backend);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let h = port.associate(l.accept().unwrap().0, 3).unwrap();
        port.recv(h, Vec::with_capacity(8), 7).unwrap();
        peer.write_all(b"x").unwrap();
        port.post(0, 0, 0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut posts = 0u64;
        loop {
            let c = port.get(common::LONG).expect("a completion");
            if c.kind == OpKind::Recv {
                assert_eq!(c.payload.into_buf().unwrap(), b"x");
                break;
            }
            posts += 1;
            assert!(
                Instant::now() < deadline,
                "a finished receive did not come out while {posts} posts did"
            );
            port.post(0, 0, 0).unwrap();
        }
    }

    // Another thread posts to the port's thread, which wakes in `get`;
    // once the port is dropped, posts are refused and the poster says so.
    fn pq1_a_poster_reaches_the_port_from_another_thread(backend: Backend) {
        let port = local(backend);
        let poster = port.poster();
        let other = thread::spawn(move || {
            poster.post(9, 3, 42).unwrap();
            poster
        });
        let c = port.get(common::LONG).expect("the post");
        assert_eq!((c.kind, c.key, c.result.unwrap(), c.value), (OpKind::Post, 9, 3, 42));
        let poster = other.join().unwrap();
        assert!(!poster.is_closed());
        drop(port);
        assert!(poster.is_closed());
        let refused = poster.post(1, 0, 7).unwrap_err();
        assert_eq!(refused.value, 7, "the value comes back");
    }

    // The port's last reference may go on another thread: a poster that
    // outlived its port, dropped there, ends the backend (whose locks are
    // cells of the port's thread) without a panic, and the port's stream
    // is closed.
    fn x3_a_poster_dropped_on_another_thread_ends_the_port(backend: Backend) {
        let port = local(backend);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let conn = port.associate(server, 1).unwrap();
        port.recv_multi(conn, 0).unwrap();
        let poster = port.poster();
        drop(port);
        count_dropper_panics();
        let before = DROPPER_PANICS.load(Ordering::SeqCst);
        let dropped = thread::Builder::new()
            .name("x3-dropper".into())
            .spawn(move || {
                assert!(poster.is_closed());
                drop(poster);
            })
            .unwrap()
            .join();
        assert!(dropped.is_ok(), "dropping the last reference on another thread panicked");
        // Caught inside the drop, a panic would leave the port closed all
        // the same; it must not happen at all (a server's stop printed one).
        assert_eq!(
            DROPPER_PANICS.load(Ordering::SeqCst),
            before,
            "the drop on another thread panicked inside the port"
        );
        client.set_read_timeout(common::LONG).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(client.read(&mut b).unwrap(), 0, "the stream was closed");
    }
}
