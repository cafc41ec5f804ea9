use cport::{Backend, Builder};
use std::net::UdpSocket;
use std::time::Instant;
fn main() {
    let n = 100_000;
    for round in 0..3 {
        for slots in [0u32, 16384] {
            let port = Builder::new()
                .backend(Backend::Uring)
                .registered_files(slots)
                .build::<u32>()
                .unwrap();
            let mut made = 0u128;
            let mut assoc = 0u128;
            for _ in 0..n {
                let t0 = Instant::now();
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                let t1 = Instant::now();
                let h = port.associate(s, 1).unwrap();
                port.close(h).unwrap();
                let t2 = Instant::now();
                made += (t1 - t0).as_nanos();
                assoc += (t2 - t1).as_nanos();
            }
            println!(
                "round {round} slots {slots:5}: bind {} ns, associate+close {} ns",
                made / n as u128,
                assoc / n as u128
            );
        }
    }
}
