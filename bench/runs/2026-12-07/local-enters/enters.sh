#!/bin/bash
# enters.sh "server cmd" conns size depth: io_uring_enter kinds per message over 3 s
set -u
CMD=$1; C=$2; S=$3; D=$4
taskset -c 0 $CMD >/tmp/sc-server.log 2>&1 &
SP=$!
sleep 0.7
PORT=$(grep -o "127.0.0.1:[0-9]*" /tmp/sc-server.log | head -1)
taskset -c 1 /work/main/target/release/cport load -c $C -s $S -d $D --duration 6s --warmup 1s --threads 1 --json $PORT > /tmp/sc-load.json &
LP=$!
sleep 1.2
bpftrace -o /tmp/bt.out -e "tracepoint:syscalls:sys_enter_io_uring_enter /pid == $SP && @on == 1/ { @[args->to_submit > 0 ? 1 : 0, args->min_complete, args->flags] = count(); } interval:ms:500 { @t = @t + 1; if (@t == 1) { @on = 1; } if (@t == 7) { exit(); } }" 2>/tmp/bt.err
wait $LP
kill -INT $SP; sleep 0.3; kill -9 $SP 2>/dev/null
M=$(python3 -c "import json;d=json.load(open('/tmp/sc-load.json'));print(d['messages']/d['duration_s'])")
echo "msgs/s $M  (submit?, min_complete, flags): per message over 3 s"
grep "^@\[" /tmp/bt.out | tr -d '@[]:' | awk -v m=$M '{printf "  %s %s %s  %.3f\n", $1, $2, $3, $4/(3*m); t+=$4} END {printf "  total %.3f\n", t/(3*m)}'
