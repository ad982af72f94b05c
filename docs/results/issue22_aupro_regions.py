"""Issue 22, session 20: per-region overlap on a test split through the product (which region holds
AUPRO down): each connected region of the 224 px masks, its mean overlap over the FPR range
of AUPRO (0.001-0.3), and its overlap at FPR 0.01 and 0.05.

    python docs/results/issue22_aupro_regions.py BUNDLE_DIR CATEGORY_DIR
"""
import sys
from pathlib import Path
import numpy as np, torch
from scipy import ndimage
from models.data import load_category
from models.inspector import Inspector
from models.metrics import aupro
from training.evaluate import image_labels_and_masks, resize_maps

bundle, cat_dir = Path(sys.argv[1]), Path(sys.argv[2])
insp = Inspector.load(bundle, device="cpu")
cat = load_category(cat_dir, size=insp.width)
qs = cat.test
res = []
for i in range(0, len(qs), 8):
    res += insp.inspect(torch.stack([q.image for q in qs[i:i + 8]]))
maps = resize_maps(torch.stack([torch.from_numpy(r.anomaly_map) for r in res]), 224)
labels, masks = image_labels_and_masks(qs, 224)
print("aupro", round(aupro(masks, maps), 4))
normal = maps[~masks]
thr = np.quantile(normal, 1 - np.linspace(0, 0.3, 301)[1:])  # thresholds at FPR 0.001..0.3
for i, (q, m) in enumerate(zip(qs, masks)):
    lab, n = ndimage.label(m, structure=np.ones((3, 3), bool))
    for r in range(1, n + 1):
        reg = lab == r
        ov = np.array([(maps[i][reg] > t).mean() for t in thr])
        print(q.name if hasattr(q, "name") else i, q.label, "region", r, "px", int(reg.sum()), "mean overlap (FPR<=0.3)", round(float(ov.mean()), 3),
              "at FPR 0.01", round(float(ov[9]), 3), "at 0.05", round(float(ov[49]), 3), "score", round(res[i].score, 3))
