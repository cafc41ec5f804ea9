#!/bin/bash
# usage: ipi.sh NAME CONNS SIZE DEPTH -- server...   pinned; IPIs on CPU 0 per message over 4 s
BASE=${BASE:-/work/main/target/release/cport}  # the load generator
name=$1 conns=$2 size=$3 depth=$4; shift 5
mkdir -p /tmp/ipi; out=/tmp/ipi/$name
taskset -c 0 "$@" > $out.srv 2>&1 &
spid=$!
for i in $(seq 100); do grep -q "listening on" $out.srv 2>/dev/null && break; sleep 0.1; done
addr=$(grep -m1 -o "listening on [^ ]*" $out.srv | cut -d' ' -f3)
taskset -c 1 $BASE load $addr -c $conns -s $size -d $depth --duration 7s --warmup 1s --threads 1 --json > $out.load 2>&1 &
lpid=$!
sleep 2
grep -E "^ *(RES|CAL|TLB|LOC|IWI):" /proc/interrupts > $out.i0
sleep 4
grep -E "^ *(RES|CAL|TLB|LOC|IWI):" /proc/interrupts > $out.i1
wait $lpid
kill -INT $spid; wait $spid 2>/dev/null
python3 - $out <<'P'
import json,sys
o=sys.argv[1]; m=json.load(open(o+'.load'))['messages_per_sec']*4
a={l.split()[0]:int(l.split()[1]) for l in open(o+'.i0')}
b={l.split()[0]:int(l.split()[1]) for l in open(o+'.i1')}
print(o.split('-',1)[1], ' '.join('%s %.4f'%(k,(b[k]-a[k])/m) for k in a), 'per msg (CPU0)')
P
