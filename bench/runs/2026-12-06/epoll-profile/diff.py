import subprocess, sys, re
def load(n, scale):
    out = subprocess.run(['perf','report','-i','rec.'+n,'--stdio','--no-children','--sort','sym','-g','none'],capture_output=True,text=True).stdout
    d={}
    for l in out.splitlines():
        m=re.match(r'\s+([\d.]+)%\s+\[(.)\]\s+(.*)',l)
        if m: d[m.group(3).strip()[:70]] = float(m.group(1))*scale/100
    return d
a,sa,b,sb = sys.argv[1],float(sys.argv[2]),sys.argv[3],float(sys.argv[4])
A=load(a,sa); B=load(b,sb)
keys=sorted(set(A)|set(B), key=lambda k: -abs(A.get(k,0)-B.get(k,0)))
print(f"{'sym':70} {a:>6} {b:>6} diff")
for k in keys[:int(sys.argv[5]) if len(sys.argv)>5 else 40]:
    print(f"{k:70} {A.get(k,0):6.3f} {B.get(k,0):6.3f} {A.get(k,0)-B.get(k,0):+6.3f}")
print("total", sum(A.values()), sum(B.values()))
