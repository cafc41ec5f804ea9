//! Echo correctness of `cport serve` over loopback, on each backend: every
//! byte, in order, for messages of 0 bytes to 4 MiB written back to back.

// Linux only, as tests/common is (see there).
#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, UdpSocket};
use std::thread;
use std::time::Duration;

use common::{connect, pattern, run_cport, wait_until, Server, STEP};

const SIZES: [usize; 14] = [
    0,
    1,
    2,
    255,
    256,
    4095,
    4096,
    4097,
    16383,
    16384,
    16385,
    65536,
    1 << 20,
    4 << 20,
];

/// Messages of every size are written without waiting for their echo
/// (pipelined); the echoed stream must be their exact concatenation.
fn tcp_messages_0_to_4mib_pipelined_echo_exactly_in_order(backend: &str) {
    pipelined_echo(backend, &[]);
}

/// The same with a port per thread (`--shards`): a multishot receive per
/// connection, each arrival sent back from its own buffer.
fn shards_echo_0_to_4mib_pipelined_exactly_in_order(backend: &str) {
    pipelined_echo(backend, &["--shards", "2"]);
}

fn pipelined_echo(backend: &str, extra: &[&str]) {
    let Some(server) = Server::start(backend, extra) else {
        return;
    };
    let stream = connect(server.addr);
    let mut writer = stream.try_clone().unwrap();
    let messages: Vec<Vec<u8>> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern(i, n))
        .collect();
    let expected: Vec<u8> = messages.concat();
    let sender = thread::spawn(move || {
        for m in &messages {
            writer.write_all(m).unwrap();
        }
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::with_capacity(expected.len());
    let mut reader = stream;
    if let Err(e) = reader.read_to_end(&mut got) {
        panic!(
            "echo until the server closes: {e}, after {} of {} bytes",
            got.len(),
            expected.len()
        );
    }
    sender.join().unwrap();
    assert_eq!(got.len(), expected.len(), "echoed length");
    if let Some(i) = got.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!(
            "first difference at byte {i}: got {:#04x}, sent {:#04x}",
            got[i], expected[i]
        );
    }
}

/// A shard stops reading a connection while 32 of its echoes are pending
/// and reads it again at 16. A write of exactly 32 pool buffers arrives as
/// one batch: 32 arrivals and, on epoll, their 32 sends finished at issue,
/// the cancelled receive's last completion queued behind them. Each round's
/// echo must come back, and the next round's too: the connection must not
/// stay paused once the sends are out.
fn shards_read_again_after_pausing_for_pending_echoes(backend: &str) {
    const BUF: usize = 1024;
    let size = BUF.to_string();
    let Some(server) = Server::start(backend, &["--shards", "1", "--buffer-size", &size]) else {
        return;
    };
    let mut stream = connect(server.addr);
    for round in 0..20 {
        let msg = pattern(round, 32 * BUF);
        stream.write_all(&msg).unwrap();
        let mut got = vec![0; msg.len()];
        if let Err(e) = stream.read_exact(&mut got) {
            panic!("round {round}: the echo stopped: {e}");
        }
        assert!(got == msg, "round {round}: the echo differs");
    }
}

/// Several clients at once, each with its own bytes: no echo crosses
/// connections.
fn concurrent_clients_each_get_their_own_bytes(backend: &str) {
    concurrent_clients(backend, &[]);
}

/// The same, spread over three shards.
fn shards_serve_concurrent_clients_each_their_own_bytes(backend: &str) {
    concurrent_clients(backend, &["--shards", "3"]);
}

fn concurrent_clients(backend: &str, extra: &[&str]) {
    let Some(server) = Server::start(backend, extra) else {
        return;
    };
    let clients: Vec<_> = (0..16)
        .map(|seed| {
            let addr = server.addr;
            thread::spawn(move || {
                let s = connect(addr);
                let mut w = s.try_clone().unwrap();
                let data = pattern(1000 + seed, 256 * 1024 + seed);
                let sent = data.clone();
                let t = thread::spawn(move || {
                    for chunk in sent.chunks(1000 + seed) {
                        w.write_all(chunk).unwrap();
                    }
                    w.shutdown(Shutdown::Write).unwrap();
                });
                let mut got = Vec::new();
                let mut r = s;
                r.read_to_end(&mut got).unwrap();
                t.join().unwrap();
                assert!(got == data, "client {seed}: echo differs");
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
}

/// UDP echo on the same port: datagrams of 0 bytes to the largest IPv4
/// payload come back whole.
fn udp_datagrams_echo_whole(backend: &str) {
    let Some(server) = Server::start(backend, &[]) else {
        return;
    };
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(server.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = vec![0u8; 70_000];
    for (i, &n) in [0usize, 1, 100, 1472, 9000, 65_507].iter().enumerate() {
        let msg = pattern(i, n);
        // Loopback UDP rarely drops, but may: three tries before failing.
        let mut echoed = None;
        for _ in 0..3 {
            sock.send(&msg).unwrap();
            if let Ok(got) = sock.recv(&mut buf) {
                echoed = Some(buf[..got].to_vec());
                break;
            }
        }
        let echoed = echoed.unwrap_or_else(|| panic!("no echo of a {n}-byte datagram"));
        assert!(echoed == msg, "{n}-byte datagram echoed differently");
    }
}

/// `--no-udp` serves TCP only; `--no-tcp` serves UDP only.
fn either_protocol_can_be_turned_off(backend: &str) {
    let Some(server) = Server::start(backend, &["--no-udp"]) else {
        return;
    };
    assert!(server.first_line.contains("(tcp)"), "{}", server.first_line);
    server.assert_echoes();
    drop(server);

    let Some(server) = Server::start(backend, &["--no-tcp"]) else {
        return;
    };
    assert!(server.first_line.contains("(udp)"), "{}", server.first_line);
    assert!(
        std::net::TcpStream::connect(server.addr).is_err(),
        "nothing listens for TCP"
    );
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 16];
    let mut ok = false;
    for _ in 0..3 {
        sock.send_to(b"udp only", server.addr).unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            ok = &buf[..n] == b"udp only";
            break;
        }
    }
    assert!(ok, "UDP echo with --no-tcp");
}

/// `--print` shows what was received, with the peer, as the tutorials'
/// server does.
fn print_shows_received_data(backend: &str) {
    let Some(server) = Server::start(backend, &["--print"]) else {
        return;
    };
    let mut s = connect(server.addr);
    s.write_all("hello 안녕\n".as_bytes()).unwrap();
    let mut got = [0u8; 13];
    s.read_exact(&mut got).unwrap();
    let local = s.local_addr().unwrap();
    let want = format!("[tcp] {local}: hello 안녕");
    assert!(
        wait_until(STEP, || server.stdout_lines().contains(&want)),
        "no line {want:?} in {:?}",
        server.stdout_lines()
    );
}

/// `cport client` in a pipe: stdin goes to the server and its echo to
/// stdout, every byte value included; with --udp line by line.
fn client_pipes_stdin_through_the_server(backend: &str) {
    let Some(server) = Server::start(backend, &[]) else {
        return;
    };
    let addr = server.addr.to_string();
    let input = pattern(7, 3 << 20);
    let out = run_cport(&["client", &addr], &input, STEP);
    assert!(
        out.status.success(),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == input, "client output differs from its input");

    let lines = b"first line\nsecond\n\nlast without newline";
    let out = run_cport(&["client", "--udp", &addr], lines, STEP);
    assert!(
        out.status.success(),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(lines)
    );
}

/// The tutorials' interactive loop (seed 001): prompt, echo, Q quits.
fn client_prompts_like_the_tutorial(backend: &str) {
    let Some(server) = Server::start(backend, &[]) else {
        return;
    };
    let addr = server.addr.to_string();
    let out = run_cport(&["client", "-i", &addr], b"hello\nQ\nnot sent\n", STEP);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Input message (Q to quit)"), "{text}");
    assert!(text.contains("Message from server: hello\n"), "{text}");
    assert!(!text.contains("not sent"), "Q ends the session: {text}");
}

per_backend!(
    tcp_messages_0_to_4mib_pipelined_echo_exactly_in_order,
    concurrent_clients_each_get_their_own_bytes,
    shards_echo_0_to_4mib_pipelined_exactly_in_order,
    shards_serve_concurrent_clients_each_their_own_bytes,
    shards_read_again_after_pausing_for_pending_echoes,
    udp_datagrams_echo_whole,
    either_protocol_can_be_turned_off,
    print_shows_received_data,
    client_pipes_stdin_through_the_server,
    client_prompts_like_the_tutorial,
);
