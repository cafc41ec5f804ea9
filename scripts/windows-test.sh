#!/usr/bin/env bash
# Builds crates/cport for x86_64-pc-windows-gnu with Debian's Rust 1.63
# (the only Windows std Debian packages) and runs it under wine.
#
# Route: the current cargo drives Debian's rustc 1.63 in the scratch
# workspace of scripts/rust163.sh (shared with scripts/msrv-check.sh).
#
# Usage: scripts/windows-test.sh [smoke|test] [cargo test args...]
#   smoke (default): builds the library, its tests and examples; runs the
#                    lib's unit tests under wine.
#   test:            runs the integration tests too (`--tests`; doctests
#                    are left out).
# Both end with an echo round trip from a Linux client (bash /dev/tcp) to
# the Windows-built echo example running under wine.
# WINDOWS_DIR overrides the scratch directory (default target/windows).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-smoke}
[ $# -gt 0 ] && shift
target=x86_64-pc-windows-gnu

need=()
[ -x /usr/bin/rustc ] || need+=(rustc)
[ -d /usr/lib/rustlib/$target ] || need+=(libstd-rust-dev-windows)
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64)
command -v wine >/dev/null || need+=(wine64 wine)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
/usr/bin/rustc -V
wine --version

work=${WINDOWS_DIR:-$top/target/windows}
. "$top/scripts/rust163.sh"
rust163_workspace "$top" "$work"

# A fresh wine prefix per run, removed at the end with its wineserver.
prefix=$(mktemp -d)
cleanup() {
    WINEPREFIX="$prefix" wineserver -k 2>/dev/null || true
    rm -rf "$prefix"
}
trap cleanup EXIT
export WINEPREFIX="$prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
# Printing a panic's backtrace crashes Rust 1.63 windows-gnu programs under
# wine 8 (a page fault in the unwinder), turning a failed test into a dead
# test binary; the panic message itself is enough.
export RUST_BACKTRACE=0
export RUSTC="$work/rustc163" CARGO_TARGET_DIR="$work/target"
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine
# One persistent wineserver for the whole run: with the default 3-second
# linger, a test binary starting as the previous one's server exits dies
# with "wine client error: recvmsg: Connection reset by peer".
wineserver -p
wineboot -i >/dev/null 2>&1 || true

cargo build -p cport --target $target --all-targets
status=0
case "$mode" in
    smoke) timeout 600 cargo test -p cport --target $target --lib "$@" || status=$? ;;
    # --tests: doctests would need the 1.63 rustdoc, which Debian does not
    # ship for this target.
    test) timeout 1800 cargo test -p cport --target $target --tests "$@" || status=$? ;;
    *) echo "unknown mode $mode (smoke|test)" >&2; exit 2 ;;
esac
# An echo round trip from a Linux client to the Windows-built echo example.
port=$(shuf -i 20000-60000 -n 1)
wine "$CARGO_TARGET_DIR/$target/debug/examples/echo.exe" "127.0.0.1:$port" > "$work/echo.log" 2>&1 &
echo_pid=$!
answer=
deadline=$((SECONDS + 60))
while [ $SECONDS -lt $deadline ]; do
    if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
        printf 'hello from linux' >&3
        answer=$(timeout 10 head -c 16 <&3 || true)
        exec 3<&- 3>&-
        break
    fi
    sleep 0.2
done
kill "$echo_pid" 2>/dev/null || true
wait "$echo_pid" 2>/dev/null || true
if [ "$answer" != "hello from linux" ]; then
    echo "echo round trip failed: got '$answer'; server log:" >&2
    cat "$work/echo.log" >&2
    exit 1
fi
echo "echo round trip through the Windows-built echo example: ok"
if [ $status != 0 ]; then
    echo "crates/cport: the $mode run under wine failed (exit $status)" >&2
    exit $status
fi
echo "crates/cport: built for $target with $(/usr/bin/rustc -V); $mode run under $(wine --version) passed"
