"""Issue 22: how the pose check's flow spreads over the object, per test view (an exploration).

Runs the default mode on a category's test split and, inside the Verify stage, records the
DIS flow from each final reference to its query over the object: its median (what the check
bounds), 75th and 90th percentiles, and the share of the object moved by more than 2.5 and
1.5 px. Usage: ``PYTHONPATH=. python docs/results/issue22_flow_spread.py BUNDLE/CAT CATEGORY_DIR``."""

import sys, torch, numpy as np, cv2
from models import data, camera, verify as V
from models.inspector import Inspector
insp = Inspector.load(sys.argv[1])
cat = data.load_category(sys.argv[2], size=insp.width)
orig = V.verify
rows = []
def patched(queries, references, background, cfg=V.VerifyConfig(), warps=None):
    q, r = V._square(queries, cfg.size), V._square(references, cfg.size)
    fq, fr = V.foreground(q, background, cfg.foreground_tol), V.foreground(r, background, cfg.foreground_tol)
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    for i in range(len(q)):
        f = flow.calc(V._gray(r[i].numpy()), V._gray(q[i].numpy()), None)
        L = np.linalg.norm(f, axis=-1)[(fq[i] | fr[i]).numpy()]
        rows.append([float(np.median(L)), float(np.percentile(L, 75)), float(np.percentile(L, 90)), float((L > 2.5).mean()), float((L > 1.5).mean())])
    return orig(queries, references, background, cfg, warps)
import models.inspector as I
I.verify = patched
names, labels = [], []
for i in range(0, len(cat.test), 8):
    chunk = cat.test[i:i+8]
    insp.inspect(torch.stack([q.image for q in chunk]))
    names += [q.name for q in chunk]
from training.evaluate import pose_report
for n, r in zip(names, rows):
    print(f"{n:20s} median {r[0]:.2f} p75 {r[1]:.2f} p90 {r[2]:.2f} frac>2.5 {r[3]:.3f} frac>1.5 {r[4]:.3f}")
