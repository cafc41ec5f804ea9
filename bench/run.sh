#!/usr/bin/env bash
# Runs cport's benchmarks and writes a record of the run:
#
#   bench/runs/<YYYY-MM-DD>/library/      (library-<HHMMSS> if that exists)
#     commands.txt      every command run, in order
#     versions.txt      toolchain, kernel, io_uring sysctl, crate versions, git commit
#     machine.txt       CPUs, memory, load and busiest processes before and after
#     criterion-*.txt   criterion's text output
#     criterion/        criterion's raw data (estimates.json, sample.json, ...)
#     syscalls/         strace -c summaries, perf stat counts, workload output
#     summary.md        tables of the figures and the automatic checks
#
# Usage: bench/run.sh [--out DIR] [--quick]
#   --out DIR   write the record to DIR instead
#   --quick     short criterion times and small syscall workloads, to try the
#               script; the record says so, and defaults to a temporary dir
#
# How each figure is measured and what can mislead: docs/design/benchmark-method.md.
# Needs cargo, jq and strace (installed with apt-get when missing and root);
# perf is used as well when it can count syscall tracepoints here.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

OUT=""
QUICK=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --quick) QUICK=1; shift ;;
        -h|--help) sed -n '2,20p' "$0" | cut -c3-; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$OUT" ]; then
    if [ "$QUICK" = 1 ]; then
        OUT=$(mktemp -d /tmp/cport-bench-quick.XXXXXX)
    else
        OUT="bench/runs/$(date -u +%F)/library"
        [ -e "$OUT" ] && OUT="$OUT-$(date -u +%H%M%S)"
    fi
fi
mkdir -p "$OUT/syscalls"
OUT=$(cd "$OUT" && pwd)
SC="$OUT/syscalls"
TMP=$(mktemp -d /tmp/cport-bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

if [ "$QUICK" = 1 ]; then
    CRIT_ARGS=(--noplot --warm-up-time 0.2 --measurement-time 0.5)
    CONNS=8; ROUNDS=200; ROUNDS1=1000; COUNT=5000
else
    CRIT_ARGS=(--noplot)
    CONNS=64; ROUNDS=2000; ROUNDS1=20000; COUNT=100000
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SYSCALLS="$TARGET_DIR/release/syscalls"

# Logs a command line, with paths inside the repository made relative to it.
log() { local l="$*"; printf '%s\n' "${l//$ROOT\//}" >>"$OUT/commands.txt"; }
# Runs a command, logging it first.
run() { log "$*"; "$@"; }
say() { printf '== %s\n' "$*" >&2; }

need() {
    command -v "$1" >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing $2"
        run apt-get install -y "$2" >/dev/null || { run apt-get update >/dev/null && run apt-get install -y "$2" >/dev/null; }
    fi
    command -v "$1" >/dev/null || { echo "run.sh: $1 is needed (Debian package $2)" >&2; exit 1; }
}

: >"$OUT/commands.txt"
log "# bench/run.sh$([ "$QUICK" = 1 ] && echo ' --quick') at $(date -u +%FT%TZ), in $ROOT, CARGO_TARGET_DIR=$TARGET_DIR"
need jq jq
need strace strace

# ----- machine and versions ---------------------------------------------
machine_state() {
    echo "uptime: $(uptime)"
    echo "busiest processes (%CPU, elapsed, command):"
    # ps's %CPU is averaged over each process's life; ps itself is left out.
    ps -eo pcpu=,etime=,comm= --sort=-pcpu | awk '$3 != "ps"' | head -8 | sed 's/^/  /'
}
{
    echo "nproc: $(nproc)"
    lscpu | grep -E '^(Model name|Architecture|CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|Hypervisor vendor|CPU max MHz|L3 cache)' || true
    echo
    free -h
    echo
    echo "## before"
    machine_state
} >"$OUT/machine.txt"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

{
    echo "date: $(date -u +%FT%TZ)"
    rustc -V
    cargo -V
    uname -a
    echo "kernel.io_uring_disabled: $(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 'absent (kernel before 6.6)')"
    echo "strace: $(strace -V | head -1)"
    echo "perf: $(perf --version 2>/dev/null || echo 'not installed')"
    echo "git commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "git status (uncommitted files measured as they are):"
    git status --short 2>/dev/null | sed 's/^/  /' || true
    echo "crate versions (Cargo.lock):"
    for c in cport cport-bench criterion crossbeam-channel io-uring libc socket2 log; do
        v=$(awk -v n="$c" '$1=="name" && $3=="\""n"\"" {getline; gsub(/"/,"",$3); print $3}' Cargo.lock | paste -sd, -)
        echo "  $c ${v:-?}"
    done
} >"$OUT/versions.txt"

# ----- build everything before measuring anything --------------------------
say "building"
run cargo build --release -p cport-bench --bin syscalls
run cargo bench -p cport-bench --no-run

# ----- criterion ------------------------------------------------------------
for b in handoff roundtrip; do
    say "criterion: $b"
    log "CRITERION_HOME=$OUT/criterion cargo bench -p cport-bench --bench $b -- ${CRIT_ARGS[*]} 2>&1 | tee $OUT/criterion-$b.txt"
    CRITERION_HOME="$OUT/criterion" timeout 1800 cargo bench -p cport-bench --bench "$b" -- "${CRIT_ARGS[@]}" 2>&1 |
        tee "$OUT/criterion-$b.txt" | { grep -E '^[a-z_0-9]+/|time:|skipping' >&2 || true; }
done
# A fresh CRITERION_HOME makes each `base` a copy of `new`: keep one.
find "$OUT/criterion" -mindepth 3 -maxdepth 3 -type d -name base -exec rm -r {} +

# ----- system calls per operation --------------------------------------------
BACKENDS=()
for be in uring epoll; do
    if err=$("$SYSCALLS" post "$be" --count 1 2>&1 >/dev/null); then
        BACKENDS+=("$be")
    else
        echo "skipping the $be backend in the syscall counts: $err" | tee -a "$SC/skipped.txt" >&2
    fi
done

PERF_EVENTS=""
if command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
    PERF_EVENTS=raw_syscalls:sys_enter
    for s in io_uring_enter epoll_wait epoll_pwait epoll_pwait2 read write recvfrom sendto recvmsg sendmsg futex sched_yield accept4 close; do
        perf stat -e "syscalls:sys_enter_$s" -- true >/dev/null 2>&1 && PERF_EVENTS="$PERF_EVENTS,syscalls:sys_enter_$s"
    done
else
    echo "perf cannot count syscall tracepoints here: strace counts only" | tee -a "$SC/skipped.txt" >&2
fi

# tracer_cmd TRACER TAG: the command prefix that counts into $SC/TAG.*
tracer_cmd() {
    case "$1" in
        strace) TRACER=(strace -f -c -o "$SC/$2.strace.txt") ;;
        perf) TRACER=(perf stat -x, -e "$PERF_EVENTS" -o "$SC/$2.perf.csv" --) ;;
    esac
}

# echo_run TRACER BACKEND CONNS ROUNDS TAG: the echo server under the
# tracer, the client as a separate, untraced process.
echo_run() {
    local addr="$TMP/addr-$5"
    rm -f "$addr"
    tracer_cmd "$1" "$5"
    log "${TRACER[*]} $SYSCALLS serve $2 --conns $3 --addr-file $addr > $SC/$5.out &"
    timeout 900 "${TRACER[@]}" "$SYSCALLS" serve "$2" --conns "$3" --addr-file "$addr" >"$SC/$5.out" 2>&1 &
    local server=$!
    log "$SYSCALLS client --addr-file $addr --conns $3 --rounds $4 > $SC/$5.client.out"
    if ! timeout 900 "$SYSCALLS" client --addr-file "$addr" --conns "$3" --rounds "$4" >"$SC/$5.client.out" 2>&1; then
        kill "$server" 2>/dev/null || true
        echo "run.sh: the echo client failed: $(cat "$SC/$5.client.out")" >&2
        exit 1
    fi
    wait "$server" || { echo "run.sh: the echo server failed: $(cat "$SC/$5.out")" >&2; exit 1; }
}

# plain_run TRACER WORKLOAD QUEUE COUNT TAG
plain_run() {
    tracer_cmd "$1" "$5"
    log "${TRACER[*]} $SYSCALLS $2 $3 --count $4 > $SC/$5.out"
    timeout 900 "${TRACER[@]}" "$SYSCALLS" "$2" "$3" --count "$4" >"$SC/$5.out" 2>&1 ||
        { echo "run.sh: $2 $3 failed: $(cat "$SC/$5.out")" >&2; exit 1; }
}

TRACERS=(strace)
[ -n "$PERF_EVENTS" ] && TRACERS+=(perf)
for tr in "${TRACERS[@]}"; do
    for be in "${BACKENDS[@]}"; do
        say "syscalls ($tr): echo $be, $CONNS connections"
        echo_run "$tr" "$be" "$CONNS" "$ROUNDS" "echo$CONNS-$be"
        echo_run "$tr" "$be" "$CONNS" 0 "echo$CONNS-$be.base"
        say "syscalls ($tr): echo $be, 1 connection"
        echo_run "$tr" "$be" 1 "$ROUNDS1" "echo1-$be"
        echo_run "$tr" "$be" 1 0 "echo1-$be.base"
    done
    for q in "${BACKENDS[@]}" crossbeam condvar; do
        say "syscalls ($tr): handoff $q"
        plain_run "$tr" handoff "$q" "$COUNT" "handoff-$q"
        plain_run "$tr" handoff "$q" 0 "handoff-$q.base"
    done
    for q in "${BACKENDS[@]}" crossbeam; do
        say "syscalls ($tr): post $q"
        plain_run "$tr" post "$q" "$COUNT" "post-$q"
        plain_run "$tr" post "$q" 0 "post-$q.base"
    done
done

{
    echo
    echo "## after"
    machine_state
} >>"$OUT/machine.txt"
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ----- summary ---------------------------------------------------------------
# ops TAG: the operation count the workload reported.
ops() { sed -n 's/^result .* ops=\([0-9]*\).*/\1/p' "$SC/$1.out"; }

# strace_counts FILE: "syscall calls" lines (the total as "total").
strace_counts() {
    awk '/^-+ /{sec++; next} sec>=1 && NF>=5 && $4 ~ /^[0-9]+$/ {print $NF, $4}' "$1"
}

# perf_counts FILE: the same from perf stat -x, output.
perf_counts() {
    awk -F, '$1 ~ /^[0-9]+$/ {n=$3; sub(/^raw_syscalls:sys_enter$/, "total", n); sub(/^syscalls:sys_enter_/, "", n); print n, $1}' "$1"
}

# per_op COUNTER TAG: "syscall per-op" lines, baseline subtracted, largest first.
per_op() {
    local f b
    case "$1" in
        strace) f="$SC/$2.strace.txt"; b="$SC/$2.base.strace.txt"; local fn=strace_counts ;;
        perf) f="$SC/$2.perf.csv"; b="$SC/$2.base.perf.csv"; local fn=perf_counts ;;
    esac
    [ -f "$f" ] && [ -f "$b" ] || return 0
    local n
    n=$(ops "$2")
    [ -n "$n" ] && [ "$n" -gt 0 ] || return 0
    join -a1 -e0 -o 0,1.2,2.2 <($fn "$f" | sort) <($fn "$b" | sort) |
        awk -v n="$n" '{d=($2-$3)/n; printf "%s %.4f\n", $1, d}' | sort -k2,2gr
}

# breakdown TAG: "name x.xx, ..." for the syscalls at >= 0.01 per operation.
breakdown() {
    per_op strace "$1" | awk '$1!="total" && $2>=0.01 {printf "%s%s %.2f", (k++?", ":""), $1, $2} END {if (!k) printf "none at 0.01 or more"}'
}
total_of() { per_op "$1" "$2" | awk '$1=="total" {printf "%.3f", $2; f=1} END {if (!f) printf "n/a"}'; }

fmt_ns() { awk -v v="$1" 'BEGIN { if (v < 1000) printf "%.0f ns", v; else if (v < 1e6) printf "%.2f µs", v/1000; else printf "%.2f ms", v/1e6 }'; }

crit_row() { # GROUP FUNCTION DIVISOR
    local e="$OUT/criterion/$1/$2/new/estimates.json"
    [ -f "$e" ] || return 0
    local mean lo hi med
    mean=$(jq '.mean.point_estimate' "$e"); lo=$(jq '.mean.confidence_interval.lower_bound' "$e")
    hi=$(jq '.mean.confidence_interval.upper_bound' "$e"); med=$(jq '.median.point_estimate' "$e")
    printf '| %s | %s | %s | %s – %s | %s | %s |\n' "$1" "$2" "$(fmt_ns "$mean")" "$(fmt_ns "$lo")" "$(fmt_ns "$hi")" \
        "$(fmt_ns "$med")" "$(fmt_ns "$(awk -v m="$mean" -v d="$3" 'BEGIN{print m/d}')")"
}
crit_mean() { local e="$OUT/criterion/$1/$2/new/estimates.json"; [ -f "$e" ] && jq '.mean.point_estimate' "$e" || echo ""; }

{
    echo "# cport benchmarks: $(date -u +%F)$([ "$QUICK" = 1 ] && echo ' (QUICK MODE: not a real record)')"
    echo
    echo "Recorded by \`bench/run.sh\`; method and pitfalls in \`docs/design/benchmark-method.md\`."
    echo "Commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown) plus the uncommitted files listed in versions.txt;"
    echo "$(uname -sr), $(rustc -V), kernel.io_uring_disabled=$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo absent)."
    echo "Machine: $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(free -h | awk '/^Mem:/ {print $2}') memory."
    echo "**Load average (1, 5, 15 min): $LOAD_BEFORE before, $LOAD_AFTER after** (other processes in machine.txt)."
    echo
    echo "## Criterion (wall time, mean of the samples)"
    echo
    echo "One iteration: a ping-pong round trip (two hand-offs); one post and its get; one 64-byte echo"
    echo "round trip; one round of 32 messages (one per connection). The last column divides by that:"
    echo "per hand-off, per post+get, per message."
    echo
    echo "| group | queue / server | mean per iteration | 95% CI of the mean | median | per operation |"
    echo "|---|---|---|---|---|---|"
    for f in cport-uring cport-epoll crossbeam std-condvar; do crit_row handoff_round_trip "$f" 2; done
    for f in cport-uring cport-epoll crossbeam; do crit_row same_thread_post_get "$f" 1; done
    for f in cport-uring cport-epoll std-thread; do crit_row echo_1conn "$f" 1; done
    for f in cport-uring cport-epoll; do crit_row echo_32conns "$f" 32; done
    echo
    echo "## System calls per operation"
    echo
    echo "Counted on the process that runs the workload (the echo server only: its client is a"
    echo "separate, untraced process), minus a run of the same command with 0 operations."
    echo "Operations: echo$CONNS = one 64-byte message received and sent back ($CONNS connections × $ROUNDS"
    echo "rounds, one message in flight on each); echo1 = the same on one connection ($ROUNDS1 round trips);"
    echo "handoff = one post→get crossing threads ($COUNT round trips = $((2 * COUNT)) hand-offs);"
    echo "post = one post and its get on one thread ($COUNT). strace slows every system call, which"
    echo "changes how much work each kernel entry finds; perf's tracepoint counts perturb less."
    echo
    echo "| workload | backend / queue | total per op (strace) | total per op (perf) | breakdown per op (strace, ≥ 0.01) |"
    echo "|---|---|---|---|---|"
    for w in "echo$CONNS" echo1 handoff post; do
        for q in uring epoll crossbeam condvar; do
            [ -f "$SC/$w-$q.strace.txt" ] || continue
            printf '| %s | %s | %s | %s | %s |\n' "$w" "$q" "$(total_of strace "$w-$q")" "$(total_of perf "$w-$q")" "$(breakdown "$w-$q")"
        done
    done
    if [ -n "$PERF_EVENTS" ]; then
        echo
        echo "perf, per op, the counted syscalls only:"
        echo
        for w in "echo$CONNS" echo1 handoff post; do
            for q in uring epoll crossbeam condvar; do
                [ -f "$SC/$w-$q.perf.csv" ] || continue
                printf -- '- %s %s: %s\n' "$w" "$q" "$(per_op perf "$w-$q" | awk '$1!="total" && $2>=0.01 {printf "%s%s %.2f", (k++?", ":""), $1, $2} END {if (!k) printf "none at 0.01 or more"}')"
            done
        done
    fi
    [ -f "$SC/skipped.txt" ] && { echo; echo "Skipped:"; sed 's/^/- /' "$SC/skipped.txt"; }
    echo
    echo "## Automatic checks"
    echo
    cb=$(crit_mean handoff_round_trip crossbeam)
    for b in uring epoll; do
        m=$(crit_mean handoff_round_trip "cport-$b")
        [ -n "$m" ] && [ -n "$cb" ] || continue
        awk -v m="$m" -v c="$cb" -v b="$b" 'BEGIN { printf "- Hand-off target (cport no slower than crossbeam), %s: %s, cport %.2f× crossbeam'"'"'s round trip.\n", b, (m <= c ? "**met**" : "**not met**"), m/c }'
    done
    t=$(total_of perf "echo$CONNS-uring"); [ "$t" = n/a ] && t=$(total_of strace "echo$CONNS-uring")
    if [ "$t" != n/a ] && [ -n "$t" ]; then
        awk -v t="$t" -v c="$CONNS" 'BEGIN { printf "- io_uring echo with batching (%d connections) needs far fewer than one syscall per message (here: under 0.5): %s, %.3f per message.\n", c, (t < 0.5 ? "**met**" : "**not met**"), t }'
    fi
    t=$(total_of perf handoff-uring); [ "$t" = n/a ] && t=$(total_of strace handoff-uring)
    if [ "$t" != n/a ] && [ -n "$t" ]; then
        awk -v t="$t" 'BEGIN { printf "- io_uring post→get across threads, fewer than one syscall per hand-off: %s, %.3f per hand-off.\n", (t < 1 ? "**met**" : "**not met**"), t }'
    fi
    echo
    echo "## Reading"
    echo
    echo "_Not written yet for this run: compare the tables above with the previous record and write"
    echo "what they say, with the load average above in mind (a shared 2-core machine)._"
} >"$OUT/summary.md"

say "record written to $OUT"
