import sys,re,statistics as S
d={}
for l in open(sys.argv[1]):
    m=re.match(r'(\S+) ([\d.]+) us/msg  req ([\d.]+) poll ([\d.]+) cs ([\d.]+) (\d+) msg/s',l)
    if m: d.setdefault(m.group(1),[]).append([float(x) for x in m.groups()[1:]])
for k,v in d.items():
    us=[x[0] for x in v]; cs=[x[3] for x in v]; mps=[x[4] for x in v]
    print(f"| {k} | {S.median(us):.3f} ({min(us):.3f}–{max(us):.3f}) | {S.median([x[1] for x in v]):.3f} | {S.median([x[2] for x in v]):.3f} | {S.median(cs):.3f} | {S.median(mps)/1000:.0f}k | n={len(v)}")
