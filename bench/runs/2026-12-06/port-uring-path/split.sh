#!/bin/bash
# split.sh ROUNDS CONNS SIZE NAME=CMD... : server pinned CPU0 (saturated), load CPU1; perf record 3 s (cpu-clock);
# prints msg/s, user share, user and kernel ns per message (time per message = task-clock / messages)
rounds=$1 conns=$2 size=$3; shift 3
mkdir -p /tmp/split
for r in $(seq $rounds); do for b in "$@"; do
  name=${b%%=*}; cmd=${b#*=}; out=/tmp/split/$name.$r
  taskset -c 0 bash -c "exec $cmd" > $out.srv 2>&1 & spid=$!
  for i in $(seq 100); do grep -q "listening on" $out.srv 2>/dev/null && break; sleep 0.1; done
  addr=$(grep -m1 -o "listening on [^ ]*" $out.srv | cut -d' ' -f3)
  taskset -c 1 /work/main/target/release/cport load $addr -c $conns -s $size -d 1 --duration 6s --warmup 1s --threads 1 --json > $out.load 2>&1 &
  lpid=$!
  sleep 2.5
  perf stat -x, -e task-clock -p $spid -o $out.stat -- sleep 3 &
  perf record -F 2999 -p $spid -o $out.rec -- sleep 3 > /dev/null 2>&1
  wait $lpid; kill -INT $spid; wait $spid 2>/dev/null
  user=$(perf report -i $out.rec --no-children --sort dso -q -g none 2>/dev/null | grep -v kernel.kallsyms | awk '{gsub("%","",$1); s+=$1} END {print s+0}')
  python3 -c "
import json
d=json.load(open('$out.load')); r=d['messages_per_sec']
tc=[float(l.split(',')[0]) for l in open('$out.stat') if 'task-clock' in l][0]
ns=tc*1e6/3/r  # task-clock ms over 3 s
u=$user/100
print(f'$name round $r: {r:8.0f} msg/s  cpu {ns:6.0f} ns/msg  user {u*100:4.1f}%  user {u*ns:5.0f} ns  kernel {(1-u)*ns:6.0f} ns')"
done; done
