"""Issue 22, session 27 (an exploration on a set already chosen on; it chooses nothing): the map
of one blur, the decision of another. The image score stays the product's (the five maps
blurred with sigma 4, each over its level, joined by their maximum: the same defects found at
the same threshold, by construction). The map a query gets back is the same five maps blurred
with a finer sigma, joined, and scaled per image so that its peak equals that score. The
contour therefore still appears exactly when the verdict is a defect. Does localisation
(pixel AUROC, AUPRO) gain what the finer blur gave, without its cost at the threshold?

    python docs/results/issue22_hybrid_blur.py CACHE_DIR SEED [SIGMA] [OUT.json]
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from issue22_blur_explore import cached_sets
from issue22_interior_explore import maps
from lab.scorer_study import FALSE_ALARM, _figures
from models.scoring import blur_maps


def joined(d: dict, pres: list, sigma: float) -> torch.Tensor:
    clean = ~d["labels"]
    levelled = []
    for pre in pres:
        m = blur_maps(pre, sigma)
        levelled.append(m / float(np.quantile(m[clean].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM)))
    return torch.stack(levelled).amax(0)


if __name__ == "__main__":
    cache, seed = Path(sys.argv[1]), int(sys.argv[2])
    fine = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    rows = {}
    for c, d in cached_sets(cache, seed):
        pres, labels, masks = maps(d, "product"), d["labels"].numpy(), d["masks"].numpy()
        coarse, sharp = joined(d, pres, 4.0), joined(d, pres, fine)
        peak = lambda m: m.flatten(1).amax(1)[:, None, None]  # noqa: E731
        hybrid = sharp * (peak(coarse) / peak(sharp).clamp_min(1e-12))
        thr = float(np.quantile(coarse[~d["labels"]].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM))
        rows[c] = {name: {k: r[k] for k in ("found", "of", "image_auroc", "pixel_auroc", "aupro", "false_alarm_rate")}
                   for name, r in (("product", _figures(coarse, labels, masks, thr)),
                                   (f"s{fine:g}", _figures(sharp, labels, masks,
                                                           float(np.quantile(sharp[~d["labels"]].flatten(1).amax(1)
                                                                             .numpy(), 1 - FALSE_ALARM)))),
                                   ("hybrid", _figures(hybrid, labels, masks, thr)))}
        for name, r in rows[c].items():
            print(c, name, r, flush=True)
    if len(sys.argv) > 4:
        Path(sys.argv[4]).write_text(json.dumps({"seed": seed, "fine_sigma": fine, "categories": rows}, indent=1) + "\n")
