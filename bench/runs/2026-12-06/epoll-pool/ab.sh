cd /work/main
A=bench/runs/2026-12-06/leader-submits/ab4.sh
W="serve --port 0 --no-udp --backend epoll --workers 2 --concurrency 2"
O="serve --port 0 --no-udp --backend epoll --model port --workers 2 --concurrency 1"
echo "== two cores, 2 workers / concurrency 2, 50 x 64 B x 1"
bash $A 5 50 64 1 "epoll-echo=./target/release/epoll-echo --port 0 --threads 2" "before=/tmp/cport-head $W" "after=/tmp/cport-stripes $W"
echo "== one core, 2 workers / concurrency 1, 500 x 128 B x 1"
PIN=1 bash $A 3 500 128 1 "before=/tmp/cport-head $O" "after=/tmp/cport-stripes $O"
