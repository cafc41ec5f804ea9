#!/bin/bash
AB=/work/main/bench/runs/2026-12-06/leader-submits/ab4.sh
B=/tmp/msrec/cport-base; A=/tmp/msrec/cport-after
PIN=1 bash $AB 5 500 4096 16 "before=$B serve --backend uring" "after=$A serve --backend uring" "uring-echo=/work/main/target/release/uring-echo" 2>&1 | grep us/msg > after-one-core-500x4096x16.txt
bash $AB 5 50 64 1 "before=$B serve --backend uring --workers 2 --concurrency 2" "after=$A serve --backend uring --workers 2 --concurrency 2" "uring-echo=/work/main/target/release/uring-echo --threads 2" 2>&1 | grep us/msg > after-two-core-50x64.txt
echo done
