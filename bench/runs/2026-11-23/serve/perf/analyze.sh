#!/usr/bin/env bash
# By-hand follow-up to bench/serve.sh: perf stat and a full flat profile of
# one server in one cell, from the repository root after bench/serve.sh
# built the binaries. Usage: analyze.sh SERVER CONNS SIZE OUTFILE
# (SERVER: cport-uring, cport-epoll or tokio). Needs perf and jq.
set -euo pipefail
T=${CARGO_TARGET_DIR:-target}/release
name=$1 conns=$2 size=$3 out=$4
case $name in
  cport-uring) cmd=("$T/cport" serve --port 0 --backend uring --workers 2 --concurrency 1) ;;
  cport-epoll) cmd=("$T/cport" serve --port 0 --backend epoll --workers 2 --concurrency 1) ;;
  tokio) cmd=("$T/tokio-echo" --port 0 --workers 1) ;;
esac
tmp=$(mktemp -d)
load0=$(cut -d' ' -f1-3 /proc/loadavg)
taskset -c 0 "${cmd[@]}" >"$tmp/srv.out" 2>"$tmp/srv.err" & spid=$!
for _ in $(seq 100); do grep -q listening "$tmp/srv.out" && break; sleep 0.05; done
addr=$(awk '{print $3; exit}' $tmp/srv.out)
taskset -c 1 $T/cport load $addr --conns $conns --size $size --depth 1 --duration 7s --warmup 1s --json >$tmp/load.json & lpid=$!
sleep 1.5
tck=$(getconf CLK_TCK)
threads() { for t in /proc/$spid/task/*; do s=$(<$t/stat); c=$(<$t/comm); s=${s##*) }; set -- $s; echo "$c $(( ${12} + ${13} ))"; done; }
threads > $tmp/th1
perf stat -e task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,syscalls:sys_enter_sched_yield,syscalls:sys_enter_write,syscalls:sys_enter_read,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom -p $spid -o $tmp/stat.txt -- sleep 2.5
threads > $tmp/th2
perf record -q -e cpu-clock -F 4999 -p $spid -o $tmp/p.data -- sleep 2.5 2>/dev/null
wait $lpid || true
kill $spid; wait $spid 2>/dev/null || true
mps=$(jq -r .messages_per_sec $tmp/load.json)
{
echo "# $name, $conns connections, $size B; load 1 s warm-up + 7 s; perf stat over 2.5 s from 1.5 s, then perf record over 2.5 s"
echo "# load messages/s over the 7 s (perf stat and record running): $mps"
echo "# load average before: $load0; after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "## CPU seconds per thread from just before perf stat starts to just after it ends (perf start-up included), utime+stime, /proc/PID/task/*/stat"
join <(sort $tmp/th1) <(sort $tmp/th2) | awk -v t=$tck '{printf "  %-16s %.2f s\n", $1, ($3-$2)/t}'
echo "## perf stat (per message: count / (msgs/s x 2.5 s))"
grep -E '^ +[0-9]' $tmp/stat.txt | sed 's/#.*//' | awk -v m=$mps '$2 != "seconds" {gsub(",","",$1); if ($2 == "msec") printf "  %-45s %14s  %8.3f µs per msg\n", "task-clock (ms)", $1, $1*1000/(m*2.5); else printf "  %-45s %14s  %8.3f per msg\n", $2, $1, $1/(m*2.5)}'
echo "## flat profile by category (self time)"
perf report -i $tmp/p.data --stdio -F overhead,dso,sym 2>/dev/null | grep -v '^#' | grep -v '^$' | awk '
  { p=$1; sub("%","",p); dso=$2; sym=$NF }
  dso != "[kernel.kallsyms]" { user += p; next }
  sym ~ /^(io_|__io_|io_uring)/ { uring += p; next }
  sym ~ /^(ep_|__ep_|do_epoll|__x64_sys_epoll|epoll)/ { ep += p; next }
  sym ~ /(schedule|switch|futex|enqueue|dequeue|pick_next|update_curr|try_to_wake|wake_up|yield)/ { sched += p; next }
  sym ~ /(irqentry_exit_to_user_mode|_raw_spin_unlock_irq|do_syscall_64|entry_SYSCALL|syscall_exit|fdget|fget|fput)/ { entry += p; next }
  { other += p }
  END { printf "  user space (program + libc)          %5.1f%%\n  io_uring (io_*)                      %5.1f%%\n  epoll (ep_*, epoll_*)                %5.1f%%\n  scheduler, futex, wake-ups           %5.1f%%\n  syscall/irq entry+exit, fd lookup    %5.1f%%\n  rest of the kernel (TCP/IP, skb, mm) %5.1f%%\n", user, uring, ep, sched, entry, other }'
echo "## user-space functions (self time, top 20)"
perf report -i $tmp/p.data --stdio -F overhead,dso,sym 2>/dev/null | grep -v '^#' | grep -v '^$' | grep -v kallsyms | sed 's/ *$//' | head -20
} > $out
rm -rf $tmp
