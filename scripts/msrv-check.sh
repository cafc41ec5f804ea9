#!/usr/bin/env bash
# Checks that the library, its examples and its tests build with Rust 1.63
# (crates/cport's rust-version: the Windows backend is built with Debian's
# Rust 1.63 toolchain), in the scratch workspace of scripts/rust163.sh.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -x /usr/bin/rustc ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc libstd-rust-dev
fi
/usr/bin/rustc -V
work=${MSRV_DIR:-$top/target/msrv}
. "$top/scripts/rust163.sh"
rust163_workspace "$top" "$work"
RUSTC="$work/rustc163" CARGO_TARGET_DIR="$work/target" cargo check -p cport --all-targets
echo "crates/cport builds with $(/usr/bin/rustc -V)"
