#!/bin/bash
# usage: irq.sh CONNS SIZE DUR -- server cmd ; prints exp.sh line + interrupts per msg on cpu0
a=$(awk '/RES:|CAL:|LOC:|TLB:/{print $1, $2}' /proc/interrupts | tr '\n' ' ')
bash "$(dirname "$0")/exp.sh" "$@"
b=$(awk '/RES:|CAL:|LOC:|TLB:/{print $1, $2}' /proc/interrupts | tr '\n' ' ')
m=$(jq ".messages_per_sec*.duration_s" /tmp/exp.json)
python3 - "$a" "$b" "$m" <<'PY'
import sys
a=sys.argv[1].split(); b=sys.argv[2].split(); m=float(sys.argv[3])
out=[]
for i in range(0,len(a),2):
    out.append(f"{a[i]}{(int(b[i+1])-int(a[i+1]))/m:.4f}/msg")
print("   cpu0", " ".join(out))
PY
