"""Issue 22: do the good views that score high lie far from every training camera?

For each test view of a category, the angle between its viewing direction (camera centre
from the object's centre) and the nearest training camera's, beside its score in a saved
default-mode evaluation (``per_query`` of ``rpe-pad lab evaluate``'s metrics JSON).

Usage: ``python docs/results/issue22_view_novelty.py CATEGORY_DIR METRICS.json``."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from scipy.stats import spearmanr

from models import camera, data


def main(category_dir: str, metrics: str) -> None:
    cat = data.load_category(category_dir, size=64)
    scores = {q["query"]: q["score"] for q in json.load(open(metrics))["per_query"]}
    centres = torch.stack([camera.camera_center(v.w2c) for v in cat.train])
    dirs = centres / centres.norm(dim=1, keepdim=True)
    rows = []
    for q in cat.test:
        if q.label != "good" or q.name not in scores:
            continue
        c = camera.camera_center(q.w2c)
        angle = torch.rad2deg(torch.arccos((dirs @ (c / c.norm())).clamp(-1, 1))).min().item()
        rows.append((q.name, angle, scores[q.name]))
    for name, angle, score in sorted(rows, key=lambda r: -r[2]):
        print(f"{name:18s} nearest training camera {angle:5.1f} deg  score {score:.3f}")
    rho = spearmanr([r[1] for r in rows], [r[2] for r in rows])
    print(f"Spearman rank correlation of angle and score over {len(rows)} good views: {rho.statistic:.2f} "
          f"(p = {rho.pvalue:.2f})")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
