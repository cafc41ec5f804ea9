#!/bin/bash
# cpu.sh NAME CONNS SIZE DEPTH -- server...: server pinned CPU0, load CPU1 7s; CPU us/msg over 4s of the measured period
NAME=$1; C=$2; S=$3; D=$4; shift 5
cd "${PROF_DIR:-.}"
"$@" > srv.$NAME 2>&1 & SP=$!; sleep 0.4; ADDR=$(head -1 srv.$NAME | grep -o "127.0.0.1:[0-9]*" | head -1); taskset -apc 0 $SP >/dev/null
taskset -c 1 "${CPORT:-target/release/cport}" load $ADDR --conns $C --size $S --depth $D --threads 1 --duration 7s --warmup 1s --json > load.$NAME 2>/dev/null &
LP=$!
sleep 2.5
t0=$(awk '{print $14+$15}' /proc/$SP/stat)
sleep 4
t1=$(awk '{print $14+$15}' /proc/$SP/stat)
huge=$(grep AnonHuge /proc/$SP/smaps_rollup | awk '{print $2}')
wait $LP; kill $SP; wait $SP 2>/dev/null
python3 - $NAME $t0 $t1 $huge <<PY
import json,sys
n,t0,t1,h=sys.argv[1],int(sys.argv[2]),int(sys.argv[3]),sys.argv[4]
d=json.load(open('load.'+n)); r=d['messages_per_sec']
print(f"{n}: {r:.0f} msg/s cpu {(t1-t0)/100/4*1e6/r:.3f} us/msg hugeKB {h}")
PY
