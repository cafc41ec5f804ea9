#!/bin/bash
# ring-size.sh "SERVER COMMAND" CONNS SIZE DEPTH: the buffer ring's growth lines (RUST_LOG=cport=debug)
CMD=$1; C=$2; S=$3; D=$4
RUST_LOG=cport=debug taskset -c 0 $CMD >/tmp/lvl-server.log 2>&1 &
SP=$!
sleep 0.5
PORT=$(grep -o "127.0.0.1:[0-9]*" /tmp/lvl-server.log | head -1)
taskset -c 1 /work/main/target/release/cport load -c $C -s $S -d $D --duration 3s --warmup 1s --threads 1 $PORT | grep -i "messages\|msg" | head -2
kill -INT $SP; sleep 0.5; kill -9 $SP 2>/dev/null
grep -c "buffer ring now" /tmp/lvl-server.log; grep "buffer ring now" /tmp/lvl-server.log | tail -1
