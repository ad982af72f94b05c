"""Issue 22, session 35 (a diagnosis; it chooses nothing): does a fit's residue on its own
training views rank fits of one category as their test good views do?

Each Gaussian model given is scored by one bundle's scorer (levels and threshold fixed) on the
category's training views at their own poses, aligned as the product aligns (the views every
model was fitted on), and on the test split at true poses (``issue22_probes.score_split``).
If the training views' scores order the fits as the test good views' do, a build could fit
several draws and keep the one its own views judge best, at no cost per query.

    PYTHONPATH=.:docs/results python docs/results/issue22_draw_insample.py BUNDLE_DIR CATEGORY_DIR OUT.json NAME=SCENE.safetensors ...
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from issue22_probes import aligned_scores, score_split
from models.data import load_category
from models.inspector import Inspector
from models.splat.scene import GaussianScene


if __name__ == "__main__":
    bundle, cat_dir, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    ins = Inspector.load(bundle, device="cpu")
    threshold = ins.calibration.threshold
    cat = load_category(cat_dir, size=ins.width)
    rows = {}
    for arg in sys.argv[4:]:
        name, path = arg.split("=", 1)
        scene = GaussianScene.load(Path(path), device=torch.device("cpu"))
        s = np.sort(aligned_scores(ins, scene, cat.train)[0])[::-1]
        test = score_split(ins, scene, cat.test, threshold)
        rows[name] = {"train_median": round(float(np.median(s)), 3), "train_p90": round(float(np.quantile(s, 0.9)), 3),
                      "train_p98": round(float(np.quantile(s, 0.98)), 3), "train_top3": [round(float(x), 3) for x in s[:3]],
                      "test_good_top3": test["good_scores_desc"][:3], "test_good_median": round(float(np.median(test["good_scores_desc"])), 3),
                      "image_auroc": test["image_auroc"], "found": test["found"], "rejected": test["rejected"]}
        print(name, rows[name], flush=True)
    out.write_text(json.dumps({"bundle": str(bundle), "threshold": threshold, "models": rows}, indent=1) + "\n")
