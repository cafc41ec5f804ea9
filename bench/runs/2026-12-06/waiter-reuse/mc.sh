#!/bin/bash
# usage: mc.sh ROUNDS NAME=BIN... ; two cores unpinned, 50x64, port model 2 workers concurrency 2
rounds=$1; shift
for r in $(seq $rounds); do for b in "$@"; do
  name=${b%%=*} bin=${b#*=} out=/tmp/mc/$name
  $bin serve --model port --backend ${BACKEND:-uring} --no-udp --workers 2 --concurrency 2 -p 0 > $out.srv 2>&1 &
  spid=$!
  for i in $(seq 100); do grep -q "listening on" $out.srv 2>/dev/null && break; sleep 0.1; done
  addr=$(grep -m1 -o "listening on [^ ]*" $out.srv | cut -d' ' -f3)
  /work/main/target/release/cport load $addr -c 50 -s 64 -d 1 --duration 6s --warmup 1s --threads 2 --json > $out.load 2>&1 &
  lpid=$!
  sleep 2
  perf stat -x, -e task-clock,context-switches,probe_libc:malloc -p $spid -o $out.stat -- sleep 4
  wait $lpid; kill -INT $spid; wait $spid 2>/dev/null
  python3 - $name $out <<'PY'
import json,sys
name,out=sys.argv[1],sys.argv[2]
mps=json.load(open(out+'.load'))['messages_per_sec']
v={}
for l in open(out+'.stat'):
    f=l.split(',')
    if len(f)>3: v[f[2]]=float(f[0]) if f[0][0].isdigit() else 0
print(f"{name} {v['task-clock']/4000/mps*1e6:.3f} us/msg  malloc {v['probe_libc:malloc']/4/mps:.4f} cs {v['context-switches']/4/mps:.4f} {mps:.0f} msg/s")
PY
done; done
