#!/bin/bash
# rss.sh "server cmd" conns size depth: the server's VmRSS/VmHWM after 3 s of load
CMD=$1; C=$2; S=$3; D=$4
taskset -c 0 $CMD >/tmp/rss-server.log 2>&1 &
SP=$!
sleep 0.5
PORT=$(grep -o "127.0.0.1:[0-9]*" /tmp/rss-server.log | head -1)
taskset -c 1 /work/main/target/release/cport load -c $C -s $S -d $D --duration 3s --warmup 1s --threads 1 $PORT > /tmp/rss-load.txt
R=$(grep -E "VmRSS|VmHWM" /proc/$SP/status | tr -s ' ' | tr '\n' ' ')
kill -INT $SP; sleep 0.5; kill -9 $SP 2>/dev/null
echo "$R $(grep messages /tmp/rss-load.txt | tr -s ' ')"
