#!/bin/bash
# usage: segs.sh CONNS SIZE DUR -- server cmd ; TCP segments per message system-wide during the run
CONNS=$1; SIZE=$2; DUR=$3; shift 4
T=/tmp/target-bench/release
taskset -c 0 "$@" > /tmp/exp.out 2>/tmp/exp.err &
SP=$!
for i in $(seq 100); do ADDR=$(sed -n '1s/^listening on \([^ ]*\).*/\1/p' /tmp/exp.out); [ -n "$ADDR" ] && break; sleep 0.05; done
nstat -n >/dev/null
taskset -c 1 $T/cport load $ADDR --conns $CONNS --size $SIZE --duration ${DUR}s --warmup 0s --threads 1 --json > /tmp/exp.json
nstat -z 2>/dev/null | awk '/TcpOutSegs|TcpExtDelayedACKs|TcpExtTCPPureAcks|TcpExtTCPHPAcks|TcpExtTCPHPHits|TcpExtTCPDelivered |TcpExtDelayedACKLost|TcpExtTCPAutoCorking|TcpExtTCPLossProbes/ {print $1, $2}' > /tmp/nstat.txt
kill $SP; wait $SP 2>/dev/null
m=$(jq .messages /tmp/exp.json)
awk -v m=$m '{printf "%s %.3f/msg  ", $1, $2/m} END {print ""}' /tmp/nstat.txt
echo "msgs/s $(jq .messages_per_sec /tmp/exp.json)"
