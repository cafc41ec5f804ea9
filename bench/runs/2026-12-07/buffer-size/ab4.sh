#!/bin/bash
# usage: [PIN=1] ab4.sh ROUNDS CONNS SIZE DEPTH NAME=CMD... ; CMD is a quoted command line (may set env)
# unpinned, or with PIN=1 the server on CPU 0 and the load on CPU 1
rounds=$1 conns=$2 size=$3 depth=$4; shift 4
mkdir -p /tmp/ab
one() { # name cmd
  out=/tmp/ab/$1
  if [ -n "$PIN" ]; then srv=(taskset -c 0) load=(taskset -c 1); else srv=() load=(); fi
  "${srv[@]}" bash -c "exec $2" > $out.srv 2>&1 &
  spid=$!
  for i in $(seq 100); do grep -q "listening on" $out.srv 2>/dev/null && break; sleep 0.1; done
  addr=$(grep -m1 -o "listening on [^ ]*" $out.srv | cut -d' ' -f3)
  "${load[@]}" /work/main/target/release/cport load $addr -c $conns -s $size -d $depth --duration 6s --warmup 1s --threads 1 --json > $out.load 2>&1 &
  lpid=$!
  sleep 2
  perf stat -x, -e task-clock,context-switches,io_uring:io_uring_submit_req,io_uring:io_uring_poll_arm -p $spid -o $out.stat -- sleep 4
  wait $lpid
  kill -INT $spid; wait $spid 2>/dev/null
  python3 - "$1" "$out" <<'PY'
import json,sys
name,out=sys.argv[1],sys.argv[2]
d=json.load(open(out+'.load')); mps=d['messages_per_sec']
v={}
for l in open(out+'.stat'):
    f=l.split(',')
    if len(f)>3: v[f[2]]=float(f[0]) if f[0][0].isdigit() else 0
print(f"{name} {v['task-clock']/4000/mps*1e6:.3f} us/msg  req {v['io_uring:io_uring_submit_req']/4/mps:.3f} poll {v['io_uring:io_uring_poll_arm']/4/mps:.3f} cs {v['context-switches']/4/mps:.3f} {mps:.0f} msg/s")
PY
}
for r in $(seq $rounds); do
  for b in "$@"; do one "${b%%=*}" "${b#*=}"; done
done
