#!/bin/bash
# usage: pstat.sh EVENTS CONNS SIZE DUR -- server cmd
EV=$1; CONNS=$2; SIZE=$3; DUR=$4; shift 5
T=/tmp/target-bench/release
taskset -c 0 "$@" > /tmp/exp.out 2>/tmp/exp.err &
SP=$!
for i in $(seq 100); do ADDR=$(sed -n '1s/^listening on \([^ ]*\).*/\1/p' /tmp/exp.out); [ -n "$ADDR" ] && break; sleep 0.05; done
taskset -c 1 $T/cport load $ADDR --conns $CONNS --size $SIZE --duration ${DUR}s --warmup 1s --threads 1 --json > /tmp/exp.json &
LP=$!
sleep 2
perf stat -x, -e "$EV" -p $SP -- sleep 3 2>/tmp/pstat.txt
wait $LP
kill $SP; wait $SP 2>/dev/null
mps=$(jq .messages_per_sec /tmp/exp.json)
awk -F, -v m=$mps '{printf "%s %.3f/msg\n", $3, $1/(m*3)}' /tmp/pstat.txt
