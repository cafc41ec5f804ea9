#!/bin/bash
# count.sh SERVER CONNS SIZE DEPTH: one run of `SERVER serve --backend epoll
# --shards 1` pinned to CPU 0 against `cport load` on CPU 1 (6 s measured
# after a 1 s warm-up); over 4 s inside the measured period it counts the
# server's malloc calls (uprobe probe_libc:malloc, added beforehand with
# `perf probe -x LIBC malloc`) and system calls, and prints them per
# message with the CPU time per message (ticks of /proc/PID/stat; perf
# runs meanwhile, so it is higher than a bench round's).
# LOAD: the cport binary that drives the load (default target/release/cport).
set -u
BIN=$1; C=$2; S=$3; D=$4
LOAD=$(realpath "${LOAD:-target/release/cport}")
W=$(mktemp -d)
$BIN serve --port 0 --backend epoll --shards 1 > $W/srv 2>&1 & SP=$!
sleep 0.3; ADDR=$(head -1 $W/srv | awk '{print $3}'); taskset -pc 0 $SP >/dev/null
taskset -c 1 "$LOAD" load $ADDR --conns $C --size $S --depth $D --threads 1 \
    --duration 6s --warmup 1s --json > $W/load 2>/dev/null &
LP=$!
sleep 1.5
T0=$(awk '{print $14+$15}' /proc/$SP/stat)
perf stat -e probe_libc:malloc,raw_syscalls:sys_enter -p $SP -x, -o $W/perf -- sleep 4
T1=$(awk '{print $14+$15}' /proc/$SP/stat)
wait $LP; kill $SP; wait $SP 2>/dev/null
python3 - $T0 $T1 $W <<PY
import json, sys
t0, t1, w = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
d = json.load(open(w + '/load'))
r = d['messages_per_sec']
c = {}
for l in open(w + '/perf'):
    f = l.strip().split(',')
    if len(f) > 3 and f[0].replace('.', '').isdigit():
        c[f[2]] = float(f[0])
print(f"{r:9.0f} msg/s malloc/msg {c.get('probe_libc:malloc', 0) / 4 / r:.4f} "
      f"sys/msg {c.get('raw_syscalls:sys_enter', 0) / 4 / r:.3f} "
      f"cpu_us {(t1 - t0) * 1e4 / 4 / r:.2f} p50 {d['latency_us']['p50']:.0f} err {d['errors']}")
PY
rm -rf $W
