//! `uring-echo`, a peer echo server of `cport bench`. The server is in
//! `linux.rs` beside this file: it is written on Linux's io_uring
//! (SINGLE_ISSUER, DEFER_TASKRUN, multishot receive into provided
//! buffers). Built for another system, the binary says so and exits 1, so
//! that the whole workspace builds there.

use std::process::ExitCode;

#[cfg(target_os = "linux")]
mod linux;

#[cfg(target_os = "linux")]
fn main() -> ExitCode {
    linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> ExitCode {
    cport_bench::peer::linux_only("uring-echo")
}
