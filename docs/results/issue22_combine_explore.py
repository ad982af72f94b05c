"""Issue 22, session 23 (exploration on a set already chosen on; chose nothing): the five maps
of `either`, each blurred (sigma 4) and over its clean 98th percentile as the product's, joined
pixel by pixel by other means than the maximum: the mean (`mean`), the sum of the two or three
largest (`top2`, `top3`), the root mean square (`rms`) and the power mean of order 4 (`p4`).
Thresholds at the 98th percentile of each variant's clean image scores (the product's rule).

    python docs/results/issue22_combine_explore.py CACHE_DIR SEED VARIANT[,VARIANT...] [OUT.json]

VARIANT: `max` (the product), `mean`, `top2`, `top3`, `rms` or `p4`; CACHE_DIR as written by
`issue22_interior_cache.py`.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from issue22_interior_explore import CATEGORIES, maps
from lab.scorer_study import FALSE_ALARM, _figures
from models.scoring import blur_maps

JOINS = {"max": lambda s: s.amax(0), "mean": lambda s: s.mean(0), "top2": lambda s: s.topk(2, dim=0).values.sum(0),
         "top3": lambda s: s.topk(3, dim=0).values.sum(0), "rms": lambda s: s.pow(2).mean(0).sqrt(),
         "p4": lambda s: s.pow(4).mean(0).pow(0.25)}


def run(d: dict, pres: list, join: str) -> dict:
    labels, clean = d["labels"].numpy(), ~d["labels"]
    levelled = []
    for pre in pres:
        m = blur_maps(pre, 4.0)
        levelled.append(m / float(np.quantile(m[clean].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM)))
    out = JOINS[join](torch.stack(levelled))
    thr = float(np.quantile(out[clean].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM))
    r = _figures(out, labels, d["masks"].numpy(), thr)
    sc, kinds = out.flatten(1).amax(1).numpy(), np.array(d["kinds"])
    r["by_kind"] = {str(k): int(((sc > thr) & (kinds == k)).sum()) for k in sorted(set(kinds)) if k != "good"}
    return r


if __name__ == "__main__":
    cache, seed, joins = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    rows = {j: {} for j in joins}
    for c in CATEGORIES:
        path = cache / f"sel{seed}_{c}.pt"
        if not path.exists():
            continue
        d = torch.load(path, weights_only=False)
        pres = maps(d, "product")
        for j in joins:
            r = run(d, pres, j)
            rows[j][c] = {k: r[k] for k in ("found", "of", "image_auroc", "pixel_auroc", "aupro", "by_kind")}
            print(c, j, "found", r["found"], "/", r["of"], "auroc", round(r["image_auroc"], 4), r["by_kind"], flush=True)
    for j in joins:
        print("TOTAL", j, sum(r["found"] for r in rows[j].values()), "/", sum(r["of"] for r in rows[j].values()),
              "mean image AUROC", round(float(np.mean([r["image_auroc"] for r in rows[j].values()])), 4))
    if len(sys.argv) > 4:
        Path(sys.argv[4]).write_text(json.dumps({"seed": seed, "joins": rows}, indent=1) + "\n")
