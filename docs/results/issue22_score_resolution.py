"""Diagnosis (chooses nothing): the test split at true poses, scored by the bundle's scorer, with
(A) the product's resolution path: query resized to the model's 200 px, render at 200, both resized
to the scorer's 224; (B) query resized from its native size straight to 224, render at 224.
    python docs/results/issue22_score_resolution.py BUNDLE_DIR CATEGORY_DIR   (session 31)
"""
import sys
from pathlib import Path
import numpy as np
import torch
from models.data import load_category
from models.inspector import Inspector
from models.metrics import auroc
from models.splat.scene import render

bundle, cat = Path(sys.argv[1]), Path(sys.argv[2])
ins = Inspector.load(bundle, device="cpu")
sc = ins.scorer
out = {}
for name, size in (("A 200", ins.width), ("B 224", sc.size)):
    c = load_category(cat, size=size)
    scores, labels, names = [], [], []
    for q in c.test:
        ref = render(ins.scene, q.w2c[None].float(), q.K[None].float(), c.width, c.height).colors.clamp(0, 1)
        _, s = sc(q.image[None].float(), ref)
        scores.append(float(s[0])); labels.append(q.is_anomalous); names.append(q.name)
    s, l = np.array(scores), np.array(labels)
    good = np.sort(s[~l])[::-1]
    weak = sorted([(round(x, 2), n) for x, n, y in zip(s, names, l) if y])[:3]
    print(name, "AUROC", round(auroc(l.astype(float), s), 4), "good top", np.round(good[:4], 2), "weakest", weak, flush=True)
