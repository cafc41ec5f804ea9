#!/usr/bin/env bash
# Issue 11's server cells, measured by `cport bench`: `cport serve` on
# io_uring and on epoll, the tutorials' shape (port-uring, port-epoll) and a
# port per thread (shards-uring, shards-epoll), against the peers of
# crates/bench: tokio-echo (the reference), uring-echo (the leanest io_uring
# server, the bound) and epoll-echo. This script only builds the binaries,
# waits for a quiet machine and names the cells; how each figure is taken
# is in docs/design/benchmark-method.md and in every record's summary.md.
#
#   bench/runs/<YYYY-MM-DD>/serve/     (serve-<HHMMSS> if that exists)
#     commands.txt   this script's command, the wait, the cport bench commands
#     one-core/      server pinned to one CPU, load to the other, one server
#                    thread: 50 × 64 B; 50 and 500 connections × 128 B, 1 in
#                    flight; 500 × 4 KiB, 16 in flight; 50 × 64 KiB, 4 in
#                    flight
#     two-core/      server and load unpinned, two server threads
#                    (cport --workers 2 --concurrency 2, --shards 2, peers
#                    --threads 2): 50 × 64 B, 1 in flight
#   each a cport bench record: summary.md (command, machine, versions,
#   medians and spreads, ratios to tokio-echo), raw.csv (a row per run and
#   round), costs.csv (--costs), chart.svg, runs.log.
#
# Usage: bench/serve.sh [--out DIR] [--quick] [--no-wait] [--costs] [--repeat N]
#   --out DIR    write the record to DIR instead
#   --quick      a trial: one round of 1 s runs, record in /tmp, no wait
#   --no-wait    do not wait for CI to finish and the load average to drop
#   --costs      also count per message what each server asks of the kernel
#                (perf: system calls, context switches, io_uring requests
#                and poll arms, malloc calls; rescheduling interrupts)
#   --repeat N   rounds per cell (default 5)
#
# Needs cargo and 2 CPUs; perf for --costs (its columns stay empty, with
# the reason, where perf is missing).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ARGS="$*"

OUT=""
QUICK=0
WAIT=1
COSTS=()
REPEAT=5
# Wait up to 25 minutes for CI to end and the 1-minute load average to fall
# below 1.5: a run on a busy shared machine measures the other users.
WAIT_MINUTES=25
QUIET_LOAD=1.5
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --quick) QUICK=1; WAIT=0; shift ;;
        --no-wait) WAIT=0; shift ;;
        --costs) COSTS=(--costs); shift ;;
        --repeat) REPEAT=${2:?--repeat needs a number}; shift 2 ;;
        -h|--help) sed -n '2,32p' "$0" | cut -c3-; exit 0 ;;
        *) echo "serve.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

SERVERS=port-uring,port-epoll,shards,peers
# Issue 11's cells; 50 × 64 B is where its counts are taken, and its
# two-core cell.
ONE_CORE_CELLS=50x64,50x128,500x128,500x4096x16,50x65536x4
TWO_CORE_CELLS=50x64
TIMING=()
if [ "$QUICK" = 1 ]; then
    TIMING=(--quick)
    REPEAT=1
fi

if [ -z "$OUT" ]; then
    if [ "$QUICK" = 1 ]; then
        OUT=$(mktemp -d /tmp/cport-serve-quick.XXXXXX)
    else
        OUT="bench/runs/$(date -u +%F)/serve"
        [ -e "$OUT" ] && OUT="$OUT-$(date -u +%H%M%S)"
    fi
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CPORT="$TARGET_DIR/release/cport"

log() { local l="$*"; l=${l//$ROOT\//}; printf '%s\n' "${l//$TARGET_DIR\//\$CARGO_TARGET_DIR/}" >>"$OUT/commands.txt"; }
: >"$OUT/commands.txt"
log "# bench/serve.sh $ARGS at $(date -u +%FT%TZ), in $ROOT, CARGO_TARGET_DIR=$TARGET_DIR"

log cargo build --release -p cport-cli --bin cport -p cport-bench --bin tokio-echo --bin uring-echo --bin epoll-echo
cargo build --release -p cport-cli --bin cport \
    -p cport-bench --bin tokio-echo --bin uring-echo --bin epoll-echo

if [ "$WAIT" = 1 ]; then
    echo "serve.sh: waiting (at most $WAIT_MINUTES min) for no CI and a 1-min load average below $QUIET_LOAD" >&2
    start=$(date +%s)
    quiet=0
    while :; do
        load1=$(cut -d' ' -f1 /proc/loadavg)
        if ! pgrep -f "ci/run" >/dev/null && awk -v l="$load1" -v q="$QUIET_LOAD" 'BEGIN {exit !(l < q)}'; then
            quiet=1
            break
        fi
        [ "$(date +%s)" -ge $((start + WAIT_MINUTES * 60)) ] && break
        sleep 15
    done
    if [ "$quiet" = 1 ]; then
        log "# quiet after waiting $(($(date +%s) - start)) s: no CI, 1-min load $load1 < $QUIET_LOAD"
    else
        log "# NOT quiet after waiting $WAIT_MINUTES min (1-min load $load1); measured anyway"
    fi
else
    log "# no wait for a quiet machine"
fi

run() { log "$@"; "$@"; }
run "$CPORT" bench --servers "$SERVERS" --cells "$ONE_CORE_CELLS" --repeat "$REPEAT" \
    --reference tokio-echo "${COSTS[@]}" "${TIMING[@]}" --out "$OUT/one-core"
run "$CPORT" bench --servers "$SERVERS" --cells "$TWO_CORE_CELLS" --repeat "$REPEAT" \
    --threads 2 --unpinned --reference tokio-echo "${COSTS[@]}" "${TIMING[@]}" --out "$OUT/two-core"
echo "serve.sh: record in $OUT" >&2
