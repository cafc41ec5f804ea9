#!/bin/bash
# usage: prof2.sh NAME CONNS SIZE DEPTH -- server command...   (unpinned)
name=$1 conns=$2 size=$3 depth=$4; shift 5
out=/tmp/prof/$name
"$@" > $out.srv 2>&1 &
spid=$!
for i in $(seq 100); do grep -q "listening on" $out.srv 2>/dev/null && break; sleep 0.1; done
addr=$(grep -m1 -o "listening on [^ ]*" $out.srv | cut -d' ' -f3)
/work/main/target/release/cport load $addr -c $conns -s $size -d $depth --duration 8s --warmup 1s --threads 1 --json > $out.load 2>&1 &
lpid=$!
sleep 3
perf stat -e task-clock,context-switches,cpu-migrations -p $spid -o $out.stat -- sleep 4 &
perf record ${PERF_G:-} -F 4999 -p $spid -o $out.data -- sleep 4 2>/dev/null >/dev/null
wait $lpid
kill -INT $spid; wait $spid 2>/dev/null
python3 -c "
import json; d=json.load(open('$out.load')); print('$name', 'msgs/s', d['messages_per_sec'])"
grep -E "task-clock|context-sw|migr" $out.stat
