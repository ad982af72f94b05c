import json, sys, numpy as np
files = sys.argv[1:]
data = {}
for f in files:
    for cat, vs in json.load(open(f)).items():
        for v, s in vs.items():
            data.setdefault(v, []).append((cat, s))
for v, rows in data.items():
    px = np.concatenate([np.array(s['reproj_px']) for _, s in rows])
    m1 = int(((px > 0.5) & (px <= 5)).sum()); m2 = float(px[px <= 5].mean())
    m3 = 0
    for _, s in rows:
        for q in s['per_query']:
            m3 += (q['label'] == 'good' and q['verdict'] != 'normal') or (q['label'] != 'good' and q['verdict'] == 'normal')
    t = [s['timing_ms']['refine'] for _, s in rows]
    print(f"{v:12s} M1 {m1}  M2 {m2:.4f}  M3 {m3}  refine ms {t}  n {len(px)}")
