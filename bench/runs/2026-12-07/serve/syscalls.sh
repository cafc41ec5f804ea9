#!/bin/bash
# syscalls.sh "SERVER COMMAND" CONNS SIZE DEPTH [EVENTS]: perf stat of the server over 3 s of
# load (server on CPU 0, load on CPU 1), each count divided by the messages echoed in those 3 s
# usage: ps.sh "server cmd" conns size depth [events]
set -u
CMD=$1; C=$2; S=$3; D=$4; EV=${5:-raw_syscalls:sys_enter,io_uring:io_uring_submit_req}
taskset -c 0 $CMD >/tmp/sc-server.log 2>&1 &
SP=$!
sleep 0.7
PORT=$(grep -o "127.0.0.1:[0-9]*" /tmp/sc-server.log | head -1)
[ -z "$PORT" ] && PORT=127.0.0.1:9000
taskset -c 1 /work/main/target/release/cport load -c $C -s $S -d $D --duration 4s --warmup 1s --threads 1 --json $PORT > /tmp/sc-load.json &
LP=$!
sleep 1.2
perf stat -x, -e $EV -p $SP -- sleep 3 2>/tmp/sc-perf.txt
wait $LP
kill -INT $SP; sleep 0.3; kill -9 $SP 2>/dev/null
M=$(python3 -c "import json;d=json.load(open('/tmp/sc-load.json'));print(d['messages']/d['duration_s'])" 2>/dev/null)
echo "msgs/s $M"
awk -F, -v m="$M" '{printf "%s %s per msg %.3f\n", $3, $1, $1/(m*3)}' /tmp/sc-perf.txt
