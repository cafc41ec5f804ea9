#!/usr/bin/env bash
# Builds the whole `cport` command (crates/cli, with crates/models and the
# library) for x86_64-pc-windows-gnu with current Rust, and in `test` mode
# runs it under wine against Linux peers over loopback.
#
# Route: rustup cannot fetch a Windows standard library here, and Debian's
# only packaged one is 1.63 (scripts/windows-test.sh), older than the
# command's rust-version. Debian 12's `rustc-web` (bookworm-security) is
# current Rust with its standard library's source (`rust-web-src`): cargo's
# `-Zbuild-std` compiles std for the Windows target from that source
# (RUSTC_BOOTSTRAP=1 lets a stable toolchain take the -Z flag) and
# mingw-w64 links. The packages are not installed: `rustc-web` replaces
# Debian's `rustc` 1.63, which scripts/msrv-check.sh and
# scripts/windows-test.sh need, so its .debs are downloaded and unpacked
# into a folder of this build's own (WEB below), and cargo is pointed at
# that compiler. The libraries they link with (libLLVM, libgit2, ...) are
# installed with apt: they replace nothing.
#
# Usage: scripts/windows-cmd.sh [build|workspace|test|models [test args...]]
#   build (default): builds target/windows-web/target/x86_64-pc-windows-gnu/
#                    <profile>/cport.exe
#   workspace:       builds every crate of the workspace with all its targets
#                    (libraries, binaries, tests, benches, examples) for
#                    Windows, as `cargo build --workspace --all-targets` on
#                    Windows would; runs nothing. The Linux-only parts (the
#                    io_uring and epoll peers, the command's /proc-based
#                    tests) build to a stub or to nothing there.
#   models:          builds crates/models' tests for Windows and runs them
#                    under wine (the Winsock models' echo tests); further
#                    arguments go to every test binary (a filter, flags).
#   test:            builds, then under wine 8 (a fresh prefix): a Linux
#                    client's TCP and UDP echo round trips to `cport.exe
#                    serve`, stopped by Ctrl-C (SIGINT); `cport.exe client`
#                    (TCP and UDP) and `cport.exe load` against the Linux
#                    `cport serve`; `cport.exe bench --quick`, whose record
#                    (raw.csv, chart.svg, summary.md) is checked, and its
#                    refusals of what Windows lacks. Every byte is checked;
#                    every step is bounded in time; nothing is left running.
# Environment:
#   WINDOWS_WEB_DIR  the folder of the toolchain, the build and the runs
#                    (default $CARGO_TARGET_DIR/windows-web, else
#                    target/windows-web)
#   WINDOWS_TARGET_DIR  the build's target folder (default $WINDOWS_WEB_DIR/
#                    target): several checkouts can share one toolchain
#   WINDOWS_PROFILE  dev (default) or release
#   LINUX_CPORT      the Linux `cport` the test talks to (default: built
#                    here with the host's cargo, debug)
#   WINDOWS_BENCH_SERVERS  `cport.exe bench --servers` (default: none given,
#                    the default list: every model Windows runs)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-build}
case "$mode" in
    build|workspace|test) ;;
    models) shift ;;
    *) echo "usage: $0 [build|workspace|test|models [test args...]]" >&2; exit 2 ;;
esac
target=x86_64-pc-windows-gnu
out=${CARGO_TARGET_DIR:-$top/target}
web=${WINDOWS_WEB_DIR:-$out/windows-web}
profile=${WINDOWS_PROFILE:-dev}
case "$profile" in dev) profdir=debug ;; release) profdir=release ;;
    *) echo "WINDOWS_PROFILE must be dev or release" >&2; exit 2 ;; esac
started=$SECONDS
step() { printf '\n--- %s (%ds)\n' "$*" $((SECONDS - started)); }

# --- The toolchain: rustc-web and friends, unpacked, never installed.
step "toolchain"
apt_updated=0
apt_update() { [ $apt_updated = 1 ] || { apt-get update -qq; apt_updated=1; }; }
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'; }
# minor VERSION: 96 of 1.96.0+dfsg..., 0 for none.
minor() { local m; m=$(echo "${1%%+*}" | cut -d. -f2 | tr -cd 0-9); echo "${m:-0}"; }
ver=$(candidate rustc-web)
if [ -z "$ver" ] || [ "$ver" = "(none)" ] || [ "$(minor "$ver")" -lt 95 ]; then
    # Missing, or only an older one in stale package lists (a fresh
    # machine's image): ask the archive for the current one.
    apt_update
    ver=$(candidate rustc-web)
fi
upstream=${ver%%+*}                      # 1.96.0
minor=$(minor "$ver")
if [ -z "$ver" ] || [ "$ver" = "(none)" ] || [ "${minor:-0}" -lt 95 ]; then
    echo "rustc-web ${ver:-missing} is older than the command's Rust 1.95: its current" >&2
    echo "version comes from bookworm-security; add that suite to the apt sources" >&2
    exit 1
fi
short=$(echo "$upstream" | cut -d. -f1,2) # 1.96
pkgs=(rustc-web cargo-web "libstd-rust-web-$short" libstd-rust-web-dev rust-web-src)
root=$web/root
if [ "$(cat "$root/.version" 2>/dev/null)" != "$ver" ]; then
    rm -rf "$web/debs" "$root"
    mkdir -p "$web/debs" "$root"
    (cd "$web/debs" && apt-get download -q -o APT::Sandbox::User=root \
        "${pkgs[@]/%/=$ver}" >/dev/null)
    for deb in "$web"/debs/*.deb; do dpkg-deb -x "$deb" "$root"; done
    rm -rf "$web/debs"
    echo "$ver" > "$root/.version"
fi
# What the unpacked packages need from the system, less each other:
# libraries (libLLVM, libgit2, libcurl...), gcc and binutils. Plus the
# mingw-w64 linker, and wine to run the tests.
need=()
deps=$(for p in "${pkgs[@]}"; do
    apt-cache show "$p=$ver" | sed -n 's/^Depends: //p' | head -1 | tr ',' '\n'
done | sed 's/|.*//; s/(.*//; s/:any//; s/ //g' | sort -u)
for d in $deps; do
    case "$d" in rustc-web|cargo-web|libstd-rust-web*|rust-web-*) continue ;; esac
    dpkg -s "$d" >/dev/null 2>&1 || need+=("$d")
done
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64)
if [ "$mode" = test ] || [ "$mode" = models ]; then
    command -v wine >/dev/null || need+=(wine64 wine)
    command -v python3 >/dev/null || need+=(python3)
fi
if [ ${#need[@]} -gt 0 ]; then
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export RUSTC=$root/usr/bin/rustc RUSTDOC=$root/usr/bin/rustdoc
cargo=$root/usr/bin/cargo
"$RUSTC" -V
"$cargo" -V

# --- The build: std from source, then the command.
step "build ($profile)"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
cd "$top"
build_dir=${WINDOWS_TARGET_DIR:-$web/target}
mkdir -p "$build_dir"
build_std=(-Zbuild-std=std,panic_unwind --target $target)
if [ "$mode" = workspace ]; then
    CARGO_TARGET_DIR=$build_dir "$cargo" build --locked --profile "$profile" \
        "${build_std[@]}" --workspace --all-targets
    step "the whole workspace built for $target"
    exit 0
elif [ "$mode" = models ]; then
    # The test binaries' paths, from cargo's JSON messages.
    CARGO_TARGET_DIR=$build_dir "$cargo" test --locked --profile "$profile" \
        "${build_std[@]}" -p cport-models --tests --no-run --message-format=json-render-diagnostics \
        > "$build_dir/models-build.json"
    mapfile -t test_exes < <(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])' "$build_dir/models-build.json")
    [ ${#test_exes[@]} -gt 0 ] || { echo "no test binary built" >&2; exit 1; }
else
    CARGO_TARGET_DIR=$build_dir "$cargo" build --locked --profile "$profile" \
        "${build_std[@]}" -p cport-cli --bin cport
    exe=$build_dir/$target/$profdir/cport.exe
    ls -l "$exe"
    [ "$mode" = test ] || { step "built $exe"; exit 0; }
fi

# --- The tests under wine.
step "wine"
wine --version
# The folder the tests run the executable from, with the ProcessPrng stub
# wine 8 lacks beside it (see scripts/wine/bcryptprimitives.c); never the
# build's own folder, which a user might copy to Windows.
# Beside the build, so that checkouts sharing a toolchain do not collide.
run=$build_dir/run-$mode
rm -rf "$run" && mkdir -p "$run"
x86_64-w64-mingw32-gcc -shared -O2 -o "$run/bcryptprimitives.dll" \
    "$top/scripts/wine/bcryptprimitives.c" -ladvapi32

# A fresh wine prefix, removed at the end with its wineserver (which ends
# every process wine still runs in it), and every Linux process started.
prefix=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    WINEPREFIX="$prefix" wineserver -k 2>/dev/null || true
    rm -rf "$prefix"
}
trap cleanup EXIT
export WINEPREFIX="$prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
# Rust prints no backtrace on a panic: the unwinder's walk can fault under
# wine, turning a clear message into a crash.
export RUST_BACKTRACE=0
wineserver -p
timeout 300 wineboot -i >/dev/null 2>&1 || true
logs=$run/logs && mkdir -p "$logs"

if [ "$mode" = models ]; then
    step "crates/models' tests under wine"
    for t in "${test_exes[@]}"; do
        cp "$t" "$run/"
        name=$(basename "$t")
        echo "== $name $*"
        # Bounded: a hung model fails the run instead of stalling CI.
        timeout 900 wine "$run/$name" "$@"
    done
    step "crates/models' tests under $(wine --version): every test passed"
    exit 0
fi
cp "$exe" "$run/cport.exe"
win_cport=$run/cport.exe
linux_cport=${LINUX_CPORT:-}
if [ -z "$linux_cport" ]; then
    # The host's own toolchain, not rustc-web.
    (unset RUSTC RUSTDOC RUSTC_BOOTSTRAP LD_LIBRARY_PATH
     cargo build -q -p cport-cli --bin cport)
    linux_cport=$out/debug/cport
fi

# wait_line FILE SECONDS: the first line of FILE, once written.
wait_line() {
    local deadline=$((SECONDS + $2))
    while [ $SECONDS -lt $deadline ]; do
        if [ -s "$1" ] && head -1 "$1" | grep -q .; then head -1 "$1"; return 0; fi
        sleep 0.2
    done
    return 1
}
# stop PID SIGNAL SECONDS NAME: sends SIGNAL and expects exit 0 in time.
stop() {
    local pid=$1 sig=$2 name=$4 deadline=$((SECONDS + $3)) status=0
    kill -"$sig" "$pid"
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$name did not stop within $3 s of SIG$sig" >&2
        return 1
    fi
    wait "$pid" || status=$?
    if [ $status != 0 ]; then
        echo "$name exited $status after SIG$sig" >&2
        return 1
    fi
}
fail() {
    echo "FAILED: $*" >&2
    for f in "$logs"/*; do echo "== $f" >&2; tail -20 "$f" >&2; done
    exit 1
}

step "cport.exe serve, a Linux client"
timeout 120 wine "$win_cport" -v serve --port 0 > "$logs/win-serve.out" 2> "$logs/win-serve.err" &
win_serve=$!
pids+=("$win_serve")
line=$(wait_line "$logs/win-serve.out" 90) || fail "cport.exe serve did not listen within 90 s"
echo "$line"
addr=$(echo "$line" | awk '{print $3}')
timeout 60 python3 - "$addr" <<'PY' || fail "echo round trips to cport.exe serve"
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
port = int(port)
# TCP: every byte value, 64 KiB in all, echoed exactly.
msg = bytes(range(256)) * 256
s = socket.create_connection((host, port), timeout=20)
s.sendall(msg)
got = b""
while len(got) < len(msg):
    chunk = s.recv(65536)
    if not chunk:
        sys.exit(f"tcp: the server closed after {len(got)} bytes")
    got += chunk
assert got == msg, "tcp: the echo differs from what was sent"
s.shutdown(socket.SHUT_WR)
assert s.recv(1) == b"", "tcp: bytes after the echo"
s.close()
print(f"tcp: {len(msg)} bytes echoed exactly, then end of stream")
# UDP: datagrams of every byte value, each echoed whole (a lost datagram
# is sent again, three times at most).
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
for size in (1, 256, 1400, 8192):
    d = bytes((i * 7 + size) % 256 for i in range(size))
    for attempt in range(3):
        u.sendto(d, (host, port))
        try:
            got, peer = u.recvfrom(65536)
            break
        except socket.timeout:
            continue
    else:
        sys.exit(f"udp: no echo of {size} bytes")
    assert got == d, f"udp: the echo of {size} bytes differs"
    assert peer == (host, port), f"udp: the echo came from {peer}"
print("udp: datagrams of 1, 256, 1400 and 8192 bytes echoed exactly")
PY
stop "$win_serve" INT 30 "cport.exe serve" || fail "cport.exe serve on Ctrl-C"
grep -q 'SIGINT: shutting down' "$logs/win-serve.err" \
    || fail "cport.exe serve did not log its Ctrl-C"
echo "cport.exe serve: stopped by Ctrl-C, exit 0"

step "cport.exe client and load, the Linux server"
"$linux_cport" serve --port 0 > "$logs/linux-serve.out" 2> "$logs/linux-serve.err" &
linux_serve=$!
pids+=("$linux_serve")
line=$(wait_line "$logs/linux-serve.out" 30) || fail "cport serve did not listen within 30 s"
addr=$(echo "$line" | awk '{print $3}')
# TCP: every byte value through stdin, the socket and stdout.
python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 64)' > "$logs/tcp.in"
timeout 60 wine "$win_cport" client "$addr" < "$logs/tcp.in" > "$logs/tcp.got" 2> "$logs/client.err" \
    || fail "cport.exe client (tcp) exited $?"
cmp "$logs/tcp.in" "$logs/tcp.got" || fail "cport.exe client (tcp): the echo differs"
echo "cport.exe client: $(wc -c < "$logs/tcp.got") bytes echoed exactly over tcp"
# UDP: a datagram per line.
printf 'first datagram\nsecond, \xce\xb1\xce\xb2\xce\xb3\n' > "$logs/udp.in"
timeout 60 wine "$win_cport" client --udp "$addr" < "$logs/udp.in" > "$logs/udp.got" 2>> "$logs/client.err" \
    || fail "cport.exe client (udp) exited $?"
cmp "$logs/udp.in" "$logs/udp.got" || fail "cport.exe client (udp): the echo differs"
echo "cport.exe client: 2 datagrams echoed exactly over udp"
timeout 120 wine "$win_cport" load "$addr" --conns 8 --size 512 --duration 2s --warmup 500ms \
    --json > "$logs/load.json" 2> "$logs/load.err" || fail "cport.exe load exited $?"
python3 - "$logs/load.json" <<'PY' || fail "cport.exe load's report"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["errors"] == 0, f"errors: {r['errors']}"
assert r["messages"] > 0, "no message echoed"
print(f"cport.exe load: {r['messages']} messages of 512 B checked, 0 errors")
PY
stop "$linux_serve" TERM 30 "cport serve" || fail "the Linux cport serve on SIGTERM"

step "cport.exe bench --quick"
# What Windows lacks is refused before anything runs, with the reason.
# refuse WHY ARGS...: `cport.exe bench --quick ARGS` exits 2 saying WHY.
refuse() {
    local why=$1 status=0
    shift
    timeout 60 wine "$win_cport" bench --quick "$@" > /dev/null 2> "$logs/bench-refused.err" \
        || status=$?
    [ $status = 2 ] || fail "cport.exe bench $* exited $status, not 2 (usage)"
    grep -qF "$why" "$logs/bench-refused.err" \
        || fail "cport.exe bench $* did not say why: $(cat "$logs/bench-refused.err")"
}
refuse "Linux's perf" --costs
refuse "tokio-echo is Linux's" --servers tokio-echo
refuse "Windows has no epoll" --servers epoll
echo "cport.exe bench: --costs, a Linux peer and the epoll model refused with the reason"
bench_out=$run/bench-record
bench_args=(bench --quick --out "$bench_out")
if [ -n "${WINDOWS_BENCH_SERVERS:-}" ]; then
    bench_args+=(--servers "$WINDOWS_BENCH_SERVERS")
fi
timeout 900 wine "$win_cport" "${bench_args[@]}" > "$logs/bench.out" 2> "$logs/bench.err" \
    || fail "cport.exe ${bench_args[*]} exited $?"
python3 - "$bench_out" "$logs/bench.err" "${WINDOWS_BENCH_SERVERS:-}" <<'PY' || fail "cport.exe bench's record"
import csv, os, sys
out, err, servers = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
models = ["blocking", "nonblocking", "select", "poll", "message", "event",
          "overlapped", "callback", "port-iocp"]
if servers:
    named = set()
    for n in servers.split(","):
        named |= set(models) if n == "models" else {"port-iocp" if n == "port" else n}
    want = [n for n in models if n in named]
else:
    # The default list: every model but epoll, which is skipped with its reason.
    want = models
    assert "epoll is skipped: the epoll model is Linux's" in err, err
rows = list(csv.DictReader(open(os.path.join(out, "raw.csv"))))
cells = {("1", "128"), ("50", "128")}
for name in want:
    mine = [r for r in rows if r["server"] == name]
    got = {(r["conns"], r["size"]) for r in mine}
    assert got == cells, f"{name}: cells {got}, expected {cells}"
    for r in mine:
        where = f"{name} {r['conns']}x{r['size']}"
        assert r["status"] == "ok", f"{where}: {r['status']}: {r['note']}"
        assert r["errors"] == "0", f"{where}: {r['errors']} errors"
        cpu = float(r["cpu_us_per_msg"])  # filled: no ValueError
        assert cpu >= 0, f"{where}: CPU {cpu}"
        assert int(r["peak_threads"]) >= 1, f"{where}: threads {r['peak_threads']}"
        assert int(r["peak_rss_kib"]) > 0, f"{where}: peak memory {r['peak_rss_kib']}"
        assert r["syscalls_per_msg"] == "", f"{where}: syscalls {r['syscalls_per_msg']}"
assert {r["server"] for r in rows} == set(want), {r["server"] for r in rows}
for f in ("chart.svg", "summary.md", "runs.log"):
    assert os.path.getsize(os.path.join(out, f)) > 0, f"{f} is empty"
assert open(os.path.join(out, "chart.svg")).read().lstrip().startswith("<svg"), "chart.svg"
assert not os.path.exists(os.path.join(out, "costs.csv")), "costs.csv without --costs"
summary = open(os.path.join(out, "summary.md")).read()
for why in ("**syscalls/msg**: empty, not counted on Windows",
            "## Costs per message\n\nNot counted: --costs counts with Linux's perf",
            "GetTcpTable", "PeakWorkingSetSize", "CreateToolhelp32Snapshot"):
    assert why in summary, f"summary.md does not say: {why}"
print(f"cport.exe bench --quick: {len(rows)} runs of {len(want)} servers "
      f"({', '.join(want)}) ok, CPU time, threads and peak memory filled; "
      "syscalls empty and costs refused, with the reason in summary.md")
PY

step "cport.exe under $(wine --version): every check passed"
