#!/bin/bash
# run.sh NAME CONNS SIZE DEPTH -- server command...: pinned server on CPU0, load CPU1; perf record 4s
NAME=$1; C=$2; S=$3; D=$4; shift 5
cd "${PROF_DIR:-.}"
"$@" > srv.$NAME 2>&1 & SP=$!; sleep 0.4; ADDR=$(head -1 srv.$NAME | grep -o "127.0.0.1:[0-9]*" | head -1); taskset -apc 0 $SP >/dev/null
taskset -c 1 "${CPORT:-target/release/cport}" load $ADDR --conns $C --size $S --depth $D --threads 1 --duration 7s --warmup 1s --json > load.$NAME 2>/dev/null &
LP=$!
sleep 2
perf stat -e raw_syscalls:sys_enter,kmem:mm_page_alloc,kmem:mm_page_free,kmem:kmalloc -p $SP -x, -o stat.$NAME -- sleep 2
perf record -g -p $SP -o rec.$NAME -- sleep 2 2>/dev/null >/dev/null
wait $LP; kill $SP; wait $SP 2>/dev/null
python3 - $NAME <<PY
import json,sys
n=sys.argv[1]
d=json.load(open('load.'+n)); r=d['messages_per_sec']
out=[f"{n}: {r:.0f} msg/s"]
for l in open('stat.'+n):
    f=l.strip().split(',')
    if len(f)>3 and f[0].replace('.','').isdigit(): out.append(f"{f[2]} {float(f[0])/2/r:.4f}")
print('  '.join(out))
PY
