//! Post → get hand-off, cport against crossbeam-channel.
//!
//! * `handoff_round_trip/<queue>`: one iteration is one round trip of a
//!   ping-pong between the bench thread and a partner thread (two
//!   hand-offs: bench → partner on the first port or channel, partner →
//!   bench on the second). `cport-uring` and `cport-epoll` run the same
//!   code on two ports of that backend; `crossbeam` on two unbounded
//!   channels. The target: cport no slower than crossbeam.
//!   `std-condvar` (two `Mutex<VecDeque>` + `Condvar` queues) is the
//!   reference for a hand-off that always sleeps in the kernel: crossbeam
//!   spins before it sleeps, cport's waiter does not.
//! * `same_thread_post_get/<queue>`: one post and its get on one thread;
//!   nothing crosses threads, so this is the cost of the queue alone.
//!
//! io_uring is skipped, with its reason printed, where it cannot start.
//! How to read the figures: docs/design/benchmark-method.md.

mod common;

use std::hint::black_box;
use std::time::Instant;

use cport::Backend;
use cport_bench::{
    channel_same_thread, port, post_get_same_thread, usable_backends, ChannelPingPong,
    CondvarPingPong, PingPong,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn label(b: Backend) -> String {
    format!("cport-{b}")
}

fn handoff(c: &mut Criterion) {
    let backends = usable_backends();
    let mut g = c.benchmark_group("handoff_round_trip");
    // One element = one round trip = two hand-offs.
    g.throughput(Throughput::Elements(1));
    for &b in &backends {
        // The partner lives across samples: starting a thread per sample
        // would be measured with it.
        let pp = PingPong::start(b).expect("start the cport ping-pong");
        g.bench_function(label(b), |bench| {
            bench.iter_custom(|iters| {
                let t = Instant::now();
                pp.round_trips(black_box(iters)).expect("cport round trips");
                t.elapsed()
            })
        });
        pp.stop().expect("stop the cport ping-pong");
    }
    let cp = ChannelPingPong::start().expect("start the channel ping-pong");
    g.bench_function("crossbeam", |bench| {
        bench.iter_custom(|iters| {
            let t = Instant::now();
            cp.round_trips(black_box(iters))
                .expect("channel round trips");
            t.elapsed()
        })
    });
    cp.stop().expect("stop the channel ping-pong");
    let cv = CondvarPingPong::start().expect("start the condvar ping-pong");
    g.bench_function("std-condvar", |bench| {
        bench.iter_custom(|iters| {
            let t = Instant::now();
            cv.round_trips(black_box(iters))
                .expect("condvar round trips");
            t.elapsed()
        })
    });
    cv.stop().expect("stop the condvar ping-pong");
    g.finish();
}

fn same_thread(c: &mut Criterion) {
    let backends = usable_backends();
    let mut g = c.benchmark_group("same_thread_post_get");
    g.throughput(Throughput::Elements(1));
    for &b in &backends {
        let p = port(b).expect("make a port");
        g.bench_function(label(b), |bench| {
            bench.iter_custom(|iters| {
                let t = Instant::now();
                post_get_same_thread(&p, black_box(iters)).expect("post and get");
                t.elapsed()
            })
        });
    }
    let (tx, rx) = crossbeam_channel::unbounded();
    g.bench_function("crossbeam", |bench| {
        bench.iter_custom(|iters| {
            let t = Instant::now();
            channel_same_thread(&tx, &rx, black_box(iters)).expect("send and recv");
            t.elapsed()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = handoff, same_thread
}
criterion_main!(benches);
