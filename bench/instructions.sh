#!/usr/bin/env bash
# User-space instructions per echoed message: each server runs under
# valgrind's callgrind while `cport load` (not under valgrind) drives it
# over loopback; the server's instruction count divided by the messages the
# load echoed is the figure. A count, not a time: it does not swing with the
# shared machine, so a change to cport's own path can be weighed in one run
# where CPU time needs medians of many (docs/design/benchmark-method.md).
# Beside it, the locked instructions (atomic read-modify-writes, each a
# full barrier of about 5 ns uncontended) the server ran per message,
# counted by bench/locked.py from the same dump: callgrind counts each as
# one instruction. Neither says anything about the kernel's share or cache
# misses; serve.sh measures those, as time.
#
# The epoll servers and both cport servers on io_uring. The count is
# dumped while the server still runs, right after the load
# (callgrind_control --dump), and the server is then killed: under valgrind
# the pool server on io_uring (port-uring) does not stop on SIGINT, and
# shards-uring stops only when one more connection wakes it. Valgrind
# (3.19) keeps its scheduler lock while a thread waits in io_uring_enter,
# so no other thread of the server runs until a completion arrives; at
# start that can stall port-uring for good (seen: 50 connections in the
# listener's queue, worker 0 in io_cqring_wait, every other thread reading
# valgrind's lock pipe), and the run then fails with every message
# unanswered: run it again. uring-echo does not start under valgrind (its
# ring setup); its count would be a few dozen instructions, as
# epoll-echo's.
#
#   OUT/counts.csv        server,run,messages,instructions,per_message,
#                         locked,locked_per_message
#   OUT/<server>-<run>.txt  callgrind_annotate's top functions (self cost)
#   OUT/commands.txt      this script's command, versions, machine
#
# Usage: bench/instructions.sh [--out DIR] [--bin DIR] [--runs N]
#                              [--conns N] [--size B] [--servers LIST]
#   --out DIR      record folder (default bench/runs/<date>/instructions-<HHMMSS>)
#   --bin DIR      the release binaries to count (default target/release,
#                  built first); another build's folder compares two builds
#   --runs N       runs per server (default 2: the count repeats within
#                  about 0.1 %, and the second run shows it)
#   --conns N      connections (default 50), one message in flight each
#   --size B       message size (default 128)
#   --servers LIST comma-separated, of shards-epoll, port-epoll,
#                  shards-uring, port-uring, epoll-echo (default all five)
#
# Needs valgrind, python3 and objdump (apt install valgrind python3
# binutils).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ARGS="$*"

OUT=""
BIN=""
RUNS=2
CONNS=50
SIZE=128
SERVERS=shards-epoll,port-epoll,shards-uring,port-uring,epoll-echo
# Long enough that start-up (a few million instructions) is under 1 % of
# the count: about 300,000 messages pass under valgrind in this time.
DURATION=6s
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --bin) BIN=${2:?--bin needs a directory}; shift 2 ;;
        --runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
        --conns) CONNS=${2:?--conns needs a number}; shift 2 ;;
        --size) SIZE=${2:?--size needs a number}; shift 2 ;;
        --servers) SERVERS=${2:?--servers needs a list}; shift 2 ;;
        -h|--help) sed -n '2,41p' "$0" | cut -c3-; exit 0 ;;
        *) echo "instructions.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for tool in valgrind callgrind_annotate callgrind_control python3 objdump; do
    if ! command -v "$tool" >/dev/null; then
        echo "instructions.sh: $tool is missing (apt install valgrind python3 binutils)" >&2
        exit 2
    fi
done

if [ -z "$BIN" ]; then
    cargo build --release -p cport-cli --bin cport -p cport-bench --bin epoll-echo
    BIN=$ROOT/target/release
fi
BIN=$(cd "$BIN" && pwd)
if [ -z "$OUT" ]; then
    OUT=bench/runs/$(date -u +%F)/instructions-$(date -u +%H%M%S)
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

{
    echo "command: bench/instructions.sh $ARGS"
    echo "date: $(date -u '+%F %T') UTC"
    # The commit of the tree the binaries were built in (--bin may name
    # another checkout's target folder).
    echo "commit: $(git -C "$BIN" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$BIN" diff --quiet HEAD 2>/dev/null || echo ' (uncommitted changes)')"
    echo "binaries: $BIN"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs"
    echo "kernel: $(uname -r)"
    echo "valgrind: $(valgrind --version)"
    echo "rustc: $(rustc --version)"
    echo "cell: $CONNS connections x $SIZE B, 1 in flight, load for $DURATION"
} > "$OUT/commands.txt"

command_of() {
    case "$1" in
        shards-epoll) echo "$BIN/cport serve --port 0 --backend epoll --shards 1" ;;
        port-epoll) echo "$BIN/cport serve --port 0 --model port --backend epoll --no-udp --workers 2 --concurrency 1" ;;
        shards-uring) echo "$BIN/cport serve --port 0 --backend uring --shards 1" ;;
        port-uring) echo "$BIN/cport serve --port 0 --model port --backend uring --no-udp --workers 2 --concurrency 1" ;;
        epoll-echo) echo "$BIN/epoll-echo --port 0" ;;
        *) echo "instructions.sh: unknown server $1" >&2; exit 2 ;;
    esac
}

echo "server,run,messages,instructions,per_message,locked,locked_per_message" > "$OUT/counts.csv"
IFS=, read -r -a LIST <<< "$SERVERS"
for run in $(seq "$RUNS"); do
    for server in "${LIST[@]}"; do
        cmd=$(command_of "$server")
        echo "$server run $run: $cmd" >> "$OUT/commands.txt"
        rm -f "$SCRATCH"/cg*
        # shellcheck disable=SC2086 # the command is split on purpose
        valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$SCRATCH/cg" \
            $cmd > "$SCRATCH/out" 2> "$SCRATCH/err" &
        pid=$!
        addr=""
        for _ in $(seq 100); do
            addr=$(grep -o '127\.0\.0\.1:[0-9]*' "$SCRATCH/out" | head -1 || true)
            [ -n "$addr" ] && break
            sleep 0.1
        done
        if [ -z "$addr" ]; then
            kill "$pid" 2>/dev/null || true
            echo "instructions.sh: $server did not say where it listens" >&2
            cat "$SCRATCH/err" >&2
            exit 1
        fi
        timeout 60 "$BIN/cport" load "$addr" --conns "$CONNS" --size "$SIZE" \
            --duration "$DURATION" --warmup 0s --json > "$SCRATCH/load.json"
        # The dump counts from the start to now: start-up (a few million
        # instructions, under 1 %) is in it, nothing after the load. It is
        # written to cg.1, whose totals line comes last.
        timeout 60 callgrind_control --dump "$pid" > /dev/null 2>&1
        for _ in $(seq 300); do
            grep -q '^totals:' "$SCRATCH/cg.1" 2>/dev/null && break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        locked=$(python3 bench/locked.py "$SCRATCH/cg.1" "${cmd%% *}")
        line=$(python3 - "$SCRATCH/load.json" "$SCRATCH/cg.1" "$server" "$run" "$locked" <<'PY'
import json, re, sys
load, dump, server, run, locked = sys.argv[1:]
messages = json.load(open(load))["messages"]
try:
    m = re.search(r"^totals:\s+(\d+)", open(dump).read(), re.M)
except OSError:
    m = None
if not m or messages == 0:
    sys.exit(f"instructions.sh: no count for {server} (messages {messages})")
ir = int(m.group(1))
locked = int(locked)
print(f"{server},{run},{messages},{ir},{ir / messages:.0f},{locked},{locked / messages:.2f}")
PY
)
        echo "$line" | tee -a "$OUT/counts.csv"
        # awk reads to the end: head would close the pipe early (pipefail).
        callgrind_annotate "$SCRATCH/cg.1" 2>/dev/null | sed -n '/^Ir/,$p' \
            | awk 'NR <= 60' > "$OUT/$server-$run.txt"
    done
done
echo "record: $OUT"
