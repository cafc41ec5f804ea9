#!/bin/bash
# usage: exp.sh CONNS SIZE DUR -- server command...
CONNS=$1; SIZE=$2; DUR=$3; shift 4
T=/tmp/target-bench/release
taskset -c 0 "$@" > /tmp/exp.out 2>/tmp/exp.err &
SP=$!
for i in $(seq 100); do ADDR=$(sed -n '1s/^listening on \([^ ]*\).*/\1/p' /tmp/exp.out); [ -n "$ADDR" ] && break; sleep 0.05; done
taskset -c 1 $T/cport load $ADDR --conns $CONNS --size $SIZE --duration ${DUR}s --warmup 1s --threads 1 --json > /tmp/exp.json &
LP=$!
sleep 1.5
s1=$(awk '{print $14+$15}' /proc/$SP/stat); v1=$(grep -h ctxt /proc/$SP/task/*/status | awk '{s+=$2} END {print s}'); t1=$(date +%s.%N)
sleep $((DUR-1))
s2=$(awk '{print $14+$15}' /proc/$SP/stat); v2=$(grep -h ctxt /proc/$SP/task/*/status | awk '{s+=$2} END {print s}'); t2=$(date +%s.%N)
u=$(awk '{print $14}' /proc/$SP/stat)
wait $LP
kill $SP; wait $SP 2>/dev/null
mps=$(jq .messages_per_sec /tmp/exp.json)
python3 -c "
w=$t2-$t1; cpu=($s2-$s1)/100; m=$mps
print(f'msgs/s {m:.0f}  cpu_us/msg {cpu/w/m*1e6:.2f}  cpu_use {cpu/w:.2f}  ctxsw/msg {($v2-$v1)/w/m:.3f}')"
