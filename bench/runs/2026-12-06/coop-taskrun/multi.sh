#!/bin/bash
AB=/work/main/bench/runs/2026-12-06/leader-submits/ab4.sh
cd /tmp/msrec
B=/tmp/msrec/cport-base; M=/tmp/msrec/cport-ms
PIN=1 bash $AB 5 50 64 1 "single=$B serve --backend uring" "multi=$M serve --backend uring" "multi-coop=env CPORT_COOP=1 $M serve --backend uring" 2>&1 | grep us/msg > one-core-50x64.txt
PIN=1 bash $AB 5 500 4096 16 "single=$B serve --backend uring" "multi=$M serve --backend uring" "multi-coop=env CPORT_COOP=1 $M serve --backend uring" 2>&1 | grep us/msg > one-core-500x4096x16.txt
bash $AB 5 50 64 1 "single=$B serve --backend uring --workers 2 --concurrency 2" "multi=$M serve --backend uring --workers 2 --concurrency 2" "multi-coop=env CPORT_COOP=1 $M serve --backend uring --workers 2 --concurrency 2" 2>&1 | grep us/msg > two-core-50x64.txt
echo done
