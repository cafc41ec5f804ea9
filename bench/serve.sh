#!/usr/bin/env bash
# The issue-3 server benchmark: `cport serve` (io_uring and epoll) against a
# plain tokio echo server (`tokio-echo`, crates/bench) under `cport load`,
# server pinned to CPU 0 and load to CPU 1. Writes a record:
#
#   bench/runs/<YYYY-MM-DD>/serve/        (serve-<HHMMSS> if that exists)
#     commands.txt   every command run, in order
#     versions.txt   toolchain, kernel, io_uring sysctl, tokio version, git commit
#     machine.txt    CPUs, the wait for a quiet machine, load before and after
#     raw.csv        one row per run (columns below)
#     runs.log       per run: the server's first line, the sampled window, stderr
#     load/          each run's `cport load --json` report
#     perf/          flat CPU profiles of each server at 500 connections (--profile)
#     costs.csv      kernel events and the TCP share of CPU per server (--costs)
#     summary.md     medians per cell, ratios to tokio, the targets checked
#
# Usage: bench/serve.sh [--out DIR] [--quick] [--no-wait] [--profile] [--costs]
#   --out DIR    write the record to DIR instead
#   --quick      1 s runs, one repetition, two cells (50 and 500 connections,
#                128 B), no wait for a quiet machine; record in /tmp
#   --no-wait    do not wait for CI to finish and the load average to drop
#   --profile    after the measured runs, profile each server at 500
#                connections, 128 B, with `perf record` (not counted in raw.csv)
#   --costs      after the measured runs, run each server twice more at 50
#                and 500 connections × 128 B and 50 × 4096 B: count per
#                message what it asks of the kernel (system calls, context
#                switches, io_uring requests and poll arms, rescheduling IPIs
#                on CPU 0), then split its CPU time with a call-graph profile
#                into the TCP send path, the TCP receive path and the rest
#                (not counted in raw.csv)
#
# What is measured. Each run starts the server (`taskset -c 0`, workers sized
# for one core: cport --workers 2 --concurrency 1, tokio 1 worker thread), runs
# `taskset -c 1 cport load ADDR --depth 1 --json`, and reads the server's
# utime + stime (/proc/PID/stat fields 14 and 15, in clock ticks, all threads)
# twice inside load's measured period: once the load has opened all its
# connections (its clock starts then), the first sample is taken WARMUP + 0.1 s
# later and the second 0.15 s before the period ends. The margins keep both
# samples inside the period, away from connection set-up, warm-up and
# tear-down. The server's CPU rate over that window divided by load's
# messages/s is the CPU time per echoed message (`cpu_us_per_msg`).
# On a shared two-core machine messages/s swings and saturates at the load
# generator; CPU per message is the stable figure (docs/design/benchmark-method.md).
#
# raw.csv columns: server, backend, conns, size, run, messages, msgs_per_s,
# mb_per_s, p50_us, p99_us, server_cpu_s (CPU seconds in the sampled window),
# cpu_us_per_msg, errors, cpu_window_s (wall length of the sampled window).
#
# Needs cargo, jq, taskset and 2 CPUs; perf for --profile.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

OUT=""
QUICK=0
WAIT=1
PROFILE=0
# The brief for the first record: wait up to 25 minutes for CI to end and the
# 1-minute load average to fall below 1.5.
WAIT_MINUTES=25
QUIET_LOAD=1.5
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --quick) QUICK=1; WAIT=0; shift ;;
        --no-wait) WAIT=0; shift ;;
        --profile) PROFILE=1; shift ;;
        --costs) COSTS=1; shift ;;
        -h|--help) sed -n '2,30p' "$0" | cut -c3-; exit 0 ;;
        *) echo "serve.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$OUT" ]; then
    if [ "$QUICK" = 1 ]; then
        OUT=$(mktemp -d /tmp/cport-serve-quick.XXXXXX)
    else
        OUT="bench/runs/$(date -u +%F)/serve"
        [ -e "$OUT" ] && OUT="$OUT-$(date -u +%H%M%S)"
    fi
fi
mkdir -p "$OUT/load"
OUT=$(cd "$OUT" && pwd)
TMP=$(mktemp -d /tmp/cport-serve.XXXXXX)

SERVERS=(cport-uring cport-epoll tokio)
if [ "$QUICK" = 1 ]; then
    WARM_MS=500; DUR_MS=1000; REPS=1
    CELLS=("50 128" "500 128")
else
    WARM_MS=1000; DUR_MS=5000; REPS=3
    CELLS=("1 128" "1 4096" "50 128" "50 4096" "500 128" "500 4096")
fi
# The cells run REPS times; the others once.
KEY_CELLS=("50 128" "500 128")
# Inside load's measured period: skip this much after warm-up ends, stop
# this much before the period ends (µs).
HEAD_US=100000
TAIL_US=150000

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CPORT="$TARGET_DIR/release/cport"
TOKIO_ECHO="$TARGET_DIR/release/tokio-echo"
TCK=$(getconf CLK_TCK)

# Logs a command line, with paths inside the repository made relative to it.
log() { local l="$*"; l=${l//$ROOT\//}; printf '%s\n' "${l//$TARGET_DIR\//\$CARGO_TARGET_DIR/}" >>"$OUT/commands.txt"; }
run() { log "$*"; "$@"; }
say() { printf '== %s\n' "$*" >&2; }
now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
# Sleeps until the given time (µs since the epoch); returns at once if past.
sleep_until() {
    local d=$(($1 - $(now_us)))
    [ "$d" -gt 0 ] && sleep "$(printf '%d.%06d' $((d / 1000000)) $((d % 1000000)))"
    return 0
}
# utime + stime of every thread of a process, in clock ticks. The command
# name (field 2) may hold spaces, so fields are counted after its ')'.
cpu_ticks() {
    local s
    s=$(<"/proc/$1/stat") || return 1
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    echo $((${12} + ${13}))
}

for tool in jq taskset getconf; do
    command -v "$tool" >/dev/null || { echo "serve.sh: $tool is needed" >&2; exit 1; }
done
if [ "$(nproc)" -lt 2 ]; then
    echo "serve.sh: needs 2 CPUs (server on CPU 0, load on CPU 1); this machine has $(nproc)" >&2
    exit 1
fi

SERVER_PID=""
LOAD_PID=""
cleanup() {
    for p in $LOAD_PID $SERVER_PID; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

: >"$OUT/commands.txt"
log "# bench/serve.sh$([ "$QUICK" = 1 ] && echo ' --quick')$([ "$PROFILE" = 1 ] && echo ' --profile')$([ "$COSTS" = 1 ] && echo ' --costs') at $(date -u +%FT%TZ), in $ROOT, CARGO_TARGET_DIR=$TARGET_DIR"

# ----- build -----------------------------------------------------------------
say "building"
run cargo build --release -p cport-cli --bin cport -p cport-bench --bin tokio-echo

# ----- machine and versions --------------------------------------------------
machine_state() {
    echo "uptime: $(uptime)"
    echo "CI processes (pgrep -f ci/run): $(pgrep -f "ci/run" | paste -sd' ' - || true)"
    echo "busiest processes (%CPU over their life, elapsed, command):"
    ps -eo pcpu=,etime=,comm= --sort=-pcpu | awk '$3 != "ps"' | head -8 | sed 's/^/  /'
}
{
    echo "nproc: $(nproc)"
    lscpu | grep -E '^(Model name|Architecture|CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|Hypervisor vendor|CPU max MHz|L3 cache)' || true
    echo "clock ticks per second (getconf CLK_TCK): $TCK"
    echo "CPU vulnerability mitigations (they set the price of a kernel call):"
    grep -H . /sys/devices/system/cpu/vulnerabilities/* 2>/dev/null | sed 's|^/sys/devices/system/cpu/vulnerabilities/||; s/^/  /' || true
    echo
    free -h
} >"$OUT/machine.txt"

{
    echo "date: $(date -u +%FT%TZ)"
    rustc -V
    cargo -V
    uname -a
    echo "kernel.io_uring_disabled: $(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 'absent (kernel before 6.6)')"
    echo "perf: $(perf --version 2>/dev/null || echo 'not installed')"
    echo "git commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "git status (uncommitted files measured as they are):"
    git status --short 2>/dev/null | sed 's/^/  /' || true
    echo "crate versions (Cargo.lock):"
    for c in cport cport-cli cport-bench tokio mio io-uring libc socket2; do
        v=$(awk -v n="$c" '$1=="name" && $3=="\""n"\"" {getline; gsub(/"/,"",$3); print $3}' Cargo.lock | paste -sd, -)
        echo "  $c ${v:-?}"
    done
} >"$OUT/versions.txt"

# ----- wait for a quiet machine ----------------------------------------------
{
    echo
    echo "## before the wait for a quiet machine"
    machine_state
} >>"$OUT/machine.txt"
if [ "$WAIT" = 1 ]; then
    say "waiting (at most $WAIT_MINUTES min) for no CI and a 1-min load average below $QUIET_LOAD"
    start=$(date +%s)
    deadline=$((start + WAIT_MINUTES * 60))
    quiet=0
    while :; do
        load1=$(cut -d' ' -f1 /proc/loadavg)
        if ! pgrep -f "ci/run" >/dev/null && awk -v l="$load1" -v q="$QUIET_LOAD" 'BEGIN {exit !(l < q)}'; then
            quiet=1
            break
        fi
        [ "$(date +%s)" -ge "$deadline" ] && break
        sleep 15
    done
    {
        echo
        if [ "$quiet" = 1 ]; then
            echo "quiet after waiting $(($(date +%s) - start)) s: no CI, 1-min load $load1 < $QUIET_LOAD"
        else
            echo "NOT quiet after waiting $WAIT_MINUTES min (1-min load $load1, CI: $(pgrep -f "ci/run" | paste -sd' ' - || echo none)); measured anyway"
        fi
    } >>"$OUT/machine.txt"
else
    echo -e "\nno wait for a quiet machine (--quick or --no-wait)" >>"$OUT/machine.txt"
fi
{
    echo
    echo "## before the runs"
    machine_state
} >>"$OUT/machine.txt"

# ----- one run ---------------------------------------------------------------
server_cmd() {
    case "$1" in
        cport-uring) echo "$CPORT serve --port 0 --backend uring --workers 2 --concurrency 1" ;;
        cport-epoll) echo "$CPORT serve --port 0 --backend epoll --workers 2 --concurrency 1" ;;
        tokio) echo "$TOKIO_ECHO --port 0 --threads 1" ;;
    esac
}

# Starts a server on CPU 0; sets SERVER_PID and ADDR.
start_server() {
    local cmd
    read -ra cmd <<<"$(server_cmd "$1")"
    log "taskset -c 0 ${cmd[*]} &"
    taskset -c 0 "${cmd[@]}" >"$TMP/server.out" 2>"$TMP/server.err" &
    SERVER_PID=$!
    local deadline=$(($(now_us) + 10000000))
    ADDR=""
    while [ -z "$ADDR" ]; do
        ADDR=$(sed -n '1s/^listening on \([^ ]*\).*/\1/p' "$TMP/server.out")
        [ -n "$ADDR" ] && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null || [ "$(now_us)" -ge "$deadline" ]; then
            echo "serve.sh: $1 did not start: $(cat "$TMP/server.err")" >&2
            exit 1
        fi
        sleep 0.02
    done
}

# SIGTERM, then SIGKILL if it is still there after 10 s.
stop_server() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    local deadline=$(($(now_us) + 10000000))
    while kill -0 "$SERVER_PID" 2>/dev/null && [ "$(now_us)" -lt "$deadline" ]; do
        # A server that exited is a zombie until waited for; kill -0 still
        # finds it, so look at its state.
        [ "$(awk '{print $3}' "/proc/$SERVER_PID/stat" 2>/dev/null)" = Z ] && break
        sleep 0.05
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# Starts the load on CPU 1 and returns once it has opened all its
# connections (its measured period starts WARM_MS after that); sets
# LOAD_PID and T_START (µs). Arguments: connections, size, report file,
# and the measured duration in ms (default DUR_MS).
start_load() {
    local conns=$1 size=$2 json=$3 dur_ms=${4:-$DUR_MS}
    log "taskset -c 1 $CPORT load $ADDR --conns $conns --size $size --depth 1 --duration ${dur_ms}ms --warmup ${WARM_MS}ms --json"
    taskset -c 1 "$CPORT" load "$ADDR" --conns "$conns" --size "$size" --depth 1 \
        --duration "${dur_ms}ms" --warmup "${WARM_MS}ms" --json >"$json" 2>"$TMP/load.err" &
    LOAD_PID=$!
    local deadline=$(($(now_us) + 60000000)) n=0
    while :; do
        # find fails when a descriptor closes while it reads the directory
        # (or the load has exited); that is not an error of the benchmark.
        n=$(find "/proc/$LOAD_PID/fd" -lname 'socket:*' 2>/dev/null | wc -l || true)
        [ "$n" -ge "$conns" ] && break
        if ! kill -0 "$LOAD_PID" 2>/dev/null || [ "$(now_us)" -ge "$deadline" ]; then
            break
        fi
        sleep 0.01
    done
    T_START=$(now_us)
}

server_gone() {
    echo "serve.sh: $1 exited during the run: $(cat "$TMP/server.err")" >&2
    exit 1
}

CSV="$OUT/raw.csv"
echo "server,backend,conns,size,run,messages,msgs_per_s,mb_per_s,p50_us,p99_us,server_cpu_s,cpu_us_per_msg,errors,cpu_window_s" >"$CSV"
: >"$OUT/runs.log"

measure() {
    local name=$1 conns=$2 size=$3 rep=$4
    local server backend
    case "$name" in
        cport-uring) server=cport; backend=uring ;;
        cport-epoll) server=cport; backend=epoll ;;
        tokio) server=tokio; backend=epoll ;;
    esac
    local json="$OUT/load/$name-c$conns-s$size-r$rep.json"
    say "$name, $conns connections, $size B, run $rep"
    start_server "$name"
    local first_line
    first_line=$(head -1 "$TMP/server.out")
    start_load "$conns" "$size" "$json"
    sleep_until $((T_START + WARM_MS * 1000 + HEAD_US))
    local c1 t1 c2 t2
    c1=$(cpu_ticks "$SERVER_PID") || server_gone "$name"
    t1=$(now_us)
    sleep_until $((T_START + (WARM_MS + DUR_MS) * 1000 - TAIL_US))
    c2=$(cpu_ticks "$SERVER_PID") || server_gone "$name"
    t2=$(now_us)
    local rc=0
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=""
    local alive=yes
    kill -0 "$SERVER_PID" 2>/dev/null || alive=no
    stop_server
    {
        echo "## $name conns=$conns size=$size run=$rep"
        echo "server: $first_line (alive at the end: $alive)"
        echo "load exit $rc; window $(((t1 - T_START) / 1000))..$(((t2 - T_START) / 1000)) ms after the connections; ticks $c1 -> $c2"
        sed 's/^/load stderr: /' "$TMP/load.err"
        sed 's/^/server stderr: /' "$TMP/server.err"
    } >>"$OUT/runs.log"
    if ! jq -e .messages "$json" >/dev/null 2>&1; then
        echo "$server,$backend,$conns,$size,$rep,0,0,0,,,,,NA,"  >>"$CSV"
        say "  no report from the load (exit $rc); see runs.log"
        return
    fi
    local row
    row=$(jq -r '[.messages, .messages_per_sec, .mb_per_sec, .latency_us.p50, .latency_us.p99, .errors] | @tsv' "$json")
    # shellcheck disable=SC2086
    set -- $row
    awk -v s="$server" -v b="$backend" -v c="$conns" -v z="$size" -v r="$rep" \
        -v m="$1" -v mps="$2" -v mb="$3" -v p50="$4" -v p99="$5" -v e="$6" \
        -v dt="$((c2 - c1))" -v tck="$TCK" -v win="$((t2 - t1))" 'BEGIN {
            cpu = dt / tck; w = win / 1e6
            per = (mps > 0 && w > 0) ? cpu / w / mps * 1e6 : 0
            printf "%s,%s,%s,%s,%s,%s,%.1f,%.3f,%.1f,%.1f,%.3f,%.3f,%s,%.3f\n", s, b, c, z, r, m, mps, mb, p50, p99, cpu, per, e, w
        }' >>"$CSV"
    say "  $(tail -1 "$CSV")"
}

# Repetitions go round the cells, and the order of the servers rotates with
# each, so a slow minute on the shared machine does not fall on one server.
for rep in $(seq 1 "$REPS"); do
    for cell in "${CELLS[@]}"; do
        if [ "$rep" -gt 1 ]; then
            key=0
            for k in "${KEY_CELLS[@]}"; do [ "$k" = "$cell" ] && key=1; done
            [ "$key" = 1 ] || continue
        fi
        read -r conns size <<<"$cell"
        for i in 0 1 2; do
            measure "${SERVERS[$(((i + rep - 1) % 3))]}" "$conns" "$size" "$rep"
        done
    done
done

{
    echo
    echo "## after the runs"
    machine_state
} >>"$OUT/machine.txt"

# ----- profiles --------------------------------------------------------------
PROFILE_S=3
# perf's table without its comments and padding; `|| true` because head
# closing the pipe early is not a failure.
report() {
    { perf report -i "$1" --stdio -F "$2" 2>/dev/null || true; } | grep -v -e '^#' -e '^$' | sed 's/ *$//' | head -"$3" || true
}
if [ "$PROFILE" = 1 ]; then
    if perf record -e cpu-clock -o "$TMP/probe.data" -- true >/dev/null 2>&1; then
        mkdir -p "$OUT/perf"
        for name in "${SERVERS[@]}"; do
            say "profiling $name at 500 connections, 128 B"
            start_server "$name"
            # Longer than the 3 s profile, whatever DUR_MS is.
            start_load 500 128 "$TMP/profile-load.json" $((PROFILE_S * 1000 + 1000))
            sleep_until $((T_START + WARM_MS * 1000 + HEAD_US))
            # A flat profile: release builds keep no frame pointers, so call
            # graphs would be guesses; self time per function is exact enough
            # to name where the time goes.
            run perf record -e cpu-clock -F 4999 -p "$SERVER_PID" -o "$TMP/$name.data" \
                -- sleep "$PROFILE_S" >/dev/null 2>"$TMP/perf.err" || cat "$TMP/perf.err" >&2
            wait "$LOAD_PID" || true
            LOAD_PID=""
            stop_server
            {
                echo "# perf record -e cpu-clock -F 4999 -p SERVER -- sleep $PROFILE_S during cport load 500 conns, 128 B"
                echo "# messages/s of that load (perf running): $(jq -r .messages_per_sec "$TMP/profile-load.json" 2>/dev/null)"
                echo "## by shared object"
                report "$TMP/$name.data" overhead,dso 12
                echo "## by function (self time, top 50)"
                report "$TMP/$name.data" overhead,dso,sym 50
            } >"$OUT/perf/$name.txt"
            log "perf report -i $name.data --stdio --sort dso / --sort dso,symbol > perf/$name.txt"
        done
    else
        echo "serve.sh: perf cannot record here; no profiles" | tee "$OUT/perf-skipped.txt" >&2
    fi
fi

# ----- costs -----------------------------------------------------------------
# What each server asks of the kernel per echoed message, and how much of its
# CPU time is the TCP stack itself, which no I/O model can avoid. On loopback
# the send path (tcp_sendmsg) also runs the peer's receive processing (the
# packet is delivered in the sender's softirq), so it is larger than on a NIC.
COSTS_S=3
COSTS_CSV="$OUT/costs.csv"
# rescheduling interrupts taken by CPU 0 so far (/proc/interrupts, RES row)
res_cpu0() { awk '$1 == "RES:" { print $2 }' /proc/interrupts; }
# the "children" share (%) of one kernel function in a call-graph profile
share() {
    { perf report -i "$1" --children --sort sym --stdio -g none 2>/dev/null || true; } |
        awk -v f="$2" '$NF == f && $(NF-1) == "[k]" { sub("%", "", $1); print $1; found = 1; exit }
            END { if (!found) print 0 }'
}
if [ "$COSTS" = 1 ]; then
    EVENTS=raw_syscalls:sys_enter,sched:sched_switch,io_uring:io_uring_submit_req,io_uring:io_uring_poll_arm
    if ! perf stat -e "$EVENTS" -- true >/dev/null 2>&1 || ! perf record -g -e cpu-clock -o "$TMP/probe.data" -- true >/dev/null 2>&1; then
        echo "serve.sh: perf cannot count $EVENTS or record call graphs here; no costs" | tee "$OUT/costs-skipped.txt" >&2
        COSTS=0
    fi
fi
if [ "$COSTS" = 1 ]; then
    echo "server,backend,conns,size,msgs_per_s,syscalls_per_msg,switches_per_msg,uring_requests_per_msg,uring_poll_arms_per_msg,res_ipis_per_msg,tcp_send_pct,tcp_recv_pct" >"$COSTS_CSV"
    for cell in "50 128" "500 128" "50 4096"; do
        read -r conns size <<<"$cell"
        for name in "${SERVERS[@]}"; do
            say "costs: $name, $conns connections, $size B"
            # Counting: perf stat over load's whole measured period, so the
            # counts divide by the messages load reports for that period.
            start_server "$name"
            start_load "$conns" "$size" "$TMP/costs-load.json" $((COSTS_S * 1000))
            sleep_until $((T_START + WARM_MS * 1000))
            r1=$(res_cpu0)
            run perf stat -x, -e "$EVENTS" -p "$SERVER_PID" -o "$TMP/stat.txt" -- sleep "$COSTS_S" >/dev/null 2>&1 ||
                { echo "serve.sh: perf stat failed on $name:" >&2; cat "$TMP/stat.txt" >&2; exit 1; }
            r2=$(res_cpu0)
            wait "$LOAD_PID" || true
            LOAD_PID=""
            stop_server
            # Profiling: a second run, so sampling does not slow the counted one.
            start_server "$name"
            start_load "$conns" "$size" "$TMP/profile-load.json" $((COSTS_S * 1000 + 1000))
            sleep_until $((T_START + WARM_MS * 1000 + HEAD_US))
            run perf record -g -e cpu-clock -F 999 -p "$SERVER_PID" -o "$TMP/costs.data" \
                -- sleep "$COSTS_S" >/dev/null 2>"$TMP/perf.err" || cat "$TMP/perf.err" >&2
            wait "$LOAD_PID" || true
            LOAD_PID=""
            stop_server
            mps=$(jq -r '.messages_per_sec // 0' "$TMP/costs-load.json" 2>/dev/null || echo 0)
            msgs=$(jq -r '.messages // 0' "$TMP/costs-load.json" 2>/dev/null || echo 0)
            send=$(share "$TMP/costs.data" tcp_sendmsg)
            recv=$(share "$TMP/costs.data" tcp_recvmsg)
            backend=$([ "$name" = tokio ] && echo epoll || echo "${name#cport-}")
            server=$([ "$name" = tokio ] && echo tokio || echo cport)
            # perf stat -x, rows: count,unit,event,...
            awk -F, -v s="$server" -v b="$backend" -v c="$conns" -v z="$size" -v m="$mps" -v d="$msgs" \
                -v res="$((r2 - r1))" -v snd="$send" -v rcv="$recv" '
                $3 != "" { n[$3] = $1 + 0 }
                END {
                    if (d <= 0) d = 1
                    printf "%s,%s,%s,%s,%.1f,%.3f,%.3f,%.3f,%.3f,%.3f,%.1f,%.1f\n", s, b, c, z, m,
                        n["raw_syscalls:sys_enter"] / d, n["sched:sched_switch"] / d,
                        n["io_uring:io_uring_submit_req"] / d, n["io_uring:io_uring_poll_arm"] / d,
                        res / d, snd, rcv
                }' "$TMP/stat.txt" >>"$COSTS_CSV"
            say "  $(tail -1 "$COSTS_CSV")"
        done
    done
    log "perf report -i costs.data --children --sort sym: the children share of tcp_sendmsg and tcp_recvmsg"
fi

# ----- summary ---------------------------------------------------------------
# Per (conns, size, server): median, min and max of msgs/s and CPU µs/msg,
# median p50/p99 and server CPU use, errors summed; then the ratios to tokio.
stats() {
    awk -F, 'NR > 1 && $13 != "NA" {
        k = $3 "," $4 "," ($1 == "tokio" ? "tokio" : $1 "-" $2)
        n[k]++; i = n[k]
        mps[k, i] = $7; cpu[k, i] = $12; p50[k, i] = $9; p99[k, i] = $10
        use[k, i] = ($14 > 0 ? $11 / $14 : 0); err[k] += $13
    }
    function med(a, k, m,    v, i, j, t) {
        for (i = 1; i <= m; i++) v[i] = a[k, i]
        for (i = 2; i <= m; i++) for (j = i; j > 1 && v[j-1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j-1]; v[j-1] = t }
        lo = v[1]; hi = v[m]
        return (m % 2) ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
    }
    END {
        for (k in n) {
            m = n[k]
            x = med(mps, k, m); xlo = lo; xhi = hi
            c = med(cpu, k, m); clo = lo; chi = hi
            printf "%s,%d,%.1f,%.1f,%.1f,%.3f,%.3f,%.3f,%.1f,%.1f,%.2f,%d\n", k, m, x, xlo, xhi, c, clo, chi, med(p50, k, m), med(p99, k, m), med(use, k, m), err[k]
        }
    }' "$CSV" | sort -t, -k1,1n -k2,2n -k3,3
}
STATS="$TMP/stats.csv"
stats >"$STATS"
# conns,size,server,runs,mps,mps_lo,mps_hi,cpu,cpu_lo,cpu_hi,p50,p99,use,errors
ratio() { # $1 conns $2 size $3 server $4 column (5 mps, 8 cpu): server's median / tokio's
    awk -F, -v c="$1" -v z="$2" -v s="$3" -v f="$4" '$1 == c && $2 == z { v[$3] = $f }
        END { if (v[s] != "" && v["tokio"] + 0 > 0) printf "%.3f", v[s] / v["tokio"]; else printf "n/a" }' "$STATS"
}

{
    echo "# Server benchmark: cport serve against tokio$([ "$QUICK" = 1 ] && echo ' (QUICK run: trying the script, not a result)')"
    echo
    echo "Recorded $(date -u +%F) by \`bench/serve.sh$([ "$QUICK" = 1 ] && echo ' --quick')$([ "$PROFILE" = 1 ] && echo ' --profile')$([ "$COSTS" = 1 ] && echo ' --costs')\`"
    echo "at commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown) (uncommitted files as listed in versions.txt)."
    echo "Machine: $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), kernel $(uname -r)."
    echo "Load average before the runs: see machine.txt; after: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "Each run: the server on CPU 0 (\`taskset -c 0\`; cport \`--workers 2 --concurrency 1\`, tokio 1"
    echo "worker thread), \`cport load --depth 1\` on CPU 1 (one load thread), $((WARM_MS))ms warm-up, $((DUR_MS))ms measured."
    echo "CPU µs/msg = the server's utime+stime rate (/proc/PID/stat) over a window inside the measured"
    echo "period ÷ load's messages/s. The 50- and 500-connection 128 B cells ran $REPS time(s), the others once;"
    echo "the table shows medians, with min–max when a cell ran more than once. \"vs tokio\" is the median"
    echo "over tokio's median in the same cell. \"CPU use\" is the server's CPU seconds per second (1.00 = the"
    echo "whole of CPU 0); a server below 1.00 was waiting for the load generator."
    echo
    echo "| conns | size | server | runs | msgs/s | vs tokio | CPU µs/msg | vs tokio | p50 µs | p99 µs | CPU use | errors |"
    echo "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    while IFS=, read -r c z s m x xlo xhi cp clo chi p50 p99 use e; do
        if [ "$m" -gt 1 ]; then
            xs=$(printf '%.0f (%.0f–%.0f)' "$x" "$xlo" "$xhi"); cs=$(printf '%.2f (%.2f–%.2f)' "$cp" "$clo" "$chi")
        else
            xs=$(printf '%.0f' "$x"); cs=$(printf '%.2f' "$cp")
        fi
        if [ "$s" = tokio ]; then rx="1"; rc="1"; else rx=$(ratio "$c" "$z" "$s" 5); rc=$(ratio "$c" "$z" "$s" 8); fi
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %.0f | %.0f | %s | %s |\n' "$c" "$z" "$s" "$m" "$xs" "$rx" "$cs" "$rc" "$p50" "$p99" "$use" "$e"
    done <"$STATS"
    echo
    echo "## Targets (issue 3), checked on the medians above"
    echo
    for c in 50 500; do
        for z in 128 4096; do
            for s in cport-uring cport-epoll; do
                r=$(ratio "$c" "$z" "$s" 8)
                [ "$r" = n/a ] && continue
                lim=$([ "$s" = cport-uring ] && echo 0.85 || echo 1.0)
                awk -v r="$r" -v l="$lim" -v s="$s" -v c="$c" -v z="$z" 'BEGIN {
                    printf "- CPU per message, %s, %d connections, %d B: %.3f × tokio (target ≤ %s): %s\n", s, c, z, r, l, (r <= l ? "**met**" : "**not met**") }'
            done
        done
    done
    worst=""
    while IFS=, read -r c z s _; do
        [ "$s" = tokio ] && continue
        r=$(ratio "$c" "$z" "$s" 5)
        [ "$r" = n/a ] && continue
        worst+="$r $s $c $z"$'\n'
    done <"$STATS"
    printf '%s' "$worst" | sort -g | awk 'NR == 1 {
        printf "- Messages/s never below tokio'"'"'s (every cell, both backends): %s; lowest ratio %.3f (%s, %d connections, %d B)\n", ($1 >= 1 ? "**met**" : "**not met**"), $1, $2, $3, $4 }'
    printf '%s' "$worst" | sort -g | awk '$1 < 1 { printf "  - below tokio: %s, %d connections, %d B: %.3f × tokio'"'"'s messages/s\n", $2, $3, $4, $1 }'
    if [ "$COSTS" = 1 ] && [ -s "$COSTS_CSV" ]; then
        echo
        echo "## What each server asks of the kernel, per message (--costs)"
        echo
        echo "Two more runs of each server per cell. In the first, \`perf stat\` counts over load's whole"
        echo "${COSTS_S} s measured period (system calls, context switches, io_uring requests and poll arms;"
        echo "rescheduling IPIs on CPU 0 from /proc/interrupts), divided by the messages load reports; msgs/s"
        echo "is that run's. In the second, \`perf record -g\` samples ${COSTS_S} s. \"TCP send\" and \"TCP receive\" are the shares of the server's"
        echo "CPU samples under \`tcp_sendmsg\` and \`tcp_recvmsg\` (on loopback the send path also runs the"
        echo "peer's receive processing). \"Rest\" is the median CPU µs/msg of the table above times the share"
        echo "outside those two: system call entry, epoll or io_uring, the runtime and the server's own code,"
        echo "which is what an I/O model can change."
        echo
        echo "| conns | size | server | msgs/s | syscalls | switches | io_uring requests | poll arms | RES IPIs | TCP send | TCP receive | rest µs/msg | rest vs tokio |"
        echo "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        rest() { # $1 conns $2 size $3 name $4 send% $5 recv%: median CPU µs/msg × the rest share
            awk -F, -v c="$1" -v z="$2" -v s="$3" -v p="$4" -v q="$5" '$1 == c && $2 == z && $3 == s {
                printf "%.2f", $8 * (100 - p - q) / 100; found = 1 } END { if (!found) printf "n/a" }' "$STATS"
        }
        while IFS=, read -r s b c z m sc sw rq pa ri ps pr; do
            name=$([ "$s" = tokio ] && echo tokio || echo "$s-$b")
            r=$(rest "$c" "$z" "$name" "$ps" "$pr")
            tok=$(awk -F, -v c="$c" -v z="$z" '$1 == "tokio" && $3 == c && $4 == z { print $11 "," $12 }' "$COSTS_CSV")
            rt=$(rest "$c" "$z" tokio "${tok%,*}" "${tok#*,}")
            vs=$(awk -v a="$r" -v b="$rt" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else printf "n/a" }')
            printf '| %s | %s | %s | %.0f | %s | %s | %s | %s | %s | %s %% | %s %% | %s | %s |\n' "$c" "$z" "$name" "$m" "$sc" "$sw" "$rq" "$pa" "$ri" "$ps" "$pr" "$r" "$vs"
        done < <(tail -n +2 "$COSTS_CSV")
    fi
    echo
    echo "Raw rows: raw.csv; per-run details (server line, sampled window, stderr): runs.log."
    [ "$PROFILE" = 1 ] && [ -d "$OUT/perf" ] && echo "Profiles at 500 connections, 128 B: perf/."
} >"$OUT/summary.md"

say "record in $OUT"
cat "$OUT/summary.md"
