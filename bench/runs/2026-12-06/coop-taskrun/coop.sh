#!/bin/bash
AB=/work/main/bench/runs/2026-12-06/leader-submits/ab4.sh
cd /tmp/msrec
S=/tmp/msrec/cport-single-env; M=/tmp/msrec/cport-ms
PIN=1 bash $AB 5 500 4096 16 "single=$S serve --backend uring" "single-coop=env CPORT_COOP=1 $S serve --backend uring" "multi-coop=env CPORT_COOP=1 $M serve --backend uring" 2>&1 | grep us/msg > b-one-core-500x4096x16.txt
bash $AB 5 50 64 1 "single=$S serve --backend uring --workers 2 --concurrency 2" "single-coop=env CPORT_COOP=1 $S serve --backend uring --workers 2 --concurrency 2" "multi-coop=env CPORT_COOP=1 $M serve --backend uring --workers 2 --concurrency 2" "uring-echo=/work/main/target/release/uring-echo --threads 2" 2>&1 | grep us/msg > b-two-core-50x64.txt
echo done
#!/bin/bash
AB=/work/main/bench/runs/2026-12-06/leader-submits/ab4.sh
cd /tmp/msrec
S=/tmp/msrec/cport-single-env
PIN=1 bash $AB 5 50 64 1 "single=$S serve --backend uring" "single-coop=env CPORT_COOP=1 $S serve --backend uring" 2>&1 | grep us/msg > c-one-core-50x64.txt
PIN=1 bash $AB 5 500 128 1 "single=$S serve --backend uring" "single-coop=env CPORT_COOP=1 $S serve --backend uring" 2>&1 | grep us/msg > c-one-core-500x128.txt
PIN=1 bash $AB 3 50 65536 4 "single=$S serve --backend uring" "single-coop=env CPORT_COOP=1 $S serve --backend uring" 2>&1 | grep us/msg > c-one-core-50x65536x4.txt
echo done
