cd /work/main
A=bench/runs/2026-12-06/leader-submits/ab4.sh
W="serve --port 0 --no-udp --workers 2 --concurrency 2"
echo "== two cores, 2 workers / concurrency 2 (peers --threads 2), 50 x 64 B x 1"
bash $A 5 50 64 1 "uring-echo=./target/release/uring-echo --port 0 --threads 2" "before-uring=/tmp/cport-base $W --backend uring" "after-uring=/tmp/cport-fs2 $W --backend uring" "epoll-echo=./target/release/epoll-echo --port 0 --threads 2" "before-epoll=/tmp/cport-base $W --backend epoll" "after-epoll=/tmp/cport-fs2 $W --backend epoll" "tokio-echo=./target/release/tokio-echo --port 0 --threads 2"
