cd /work/main
A=bench/runs/2026-12-06/leader-submits/ab4.sh
D="serve --port 0 --no-udp"
W="serve --port 0 --no-udp --workers 2 --concurrency 2"
echo "== two cores default workers 50x64 uring"; bash $A 3 50 64 1 "base=/tmp/cport-base $D --backend uring" "fs=/tmp/cport-fs $D --backend uring"
echo "== two cores default workers 50x64 epoll"; bash $A 3 50 64 1 "base=/tmp/cport-base $D --backend epoll" "fs=/tmp/cport-fs $D --backend epoll"
echo "== two cores w2c2 500x128 uring"; bash $A 3 500 128 1 "base=/tmp/cport-base $W --backend uring" "fs=/tmp/cport-fs $W --backend uring"
echo "== two cores w2c2 500x4096x16 uring"; bash $A 3 500 4096 16 "base=/tmp/cport-base $W --backend uring" "fs=/tmp/cport-fs $W --backend uring"
echo "== one core default workers 50x64 uring"; PIN=1 bash $A 3 50 64 1 "base=/tmp/cport-base $D --backend uring" "fs=/tmp/cport-fs $D --backend uring"
echo "== one core w2c2 50x64 uring"; PIN=1 bash $A 3 50 64 1 "base=/tmp/cport-base $W --backend uring" "fs=/tmp/cport-fs $W --backend uring"
