"""Issue 22, session 31: the map of a finer blur beside the product's decision (`map-s2`; the
rule is in docs/RESULTS.md, session 31, written before this set's figures).

The image score, threshold and decisions stay the product's: the five maps blurred with sigma 4,
each over its level, their maximum. The map returned is the five maps blurred with SIGMA (2), each
over its own level, joined by their maximum, times ``map_scale`` (the product's threshold over the
sharp map's own, both at the 2 % rule on the clean views), capped pixel by pixel at the image's
score. Pixel AUROC and AUPRO are measured on that capped map; found / rejected on the score.

    python docs/results/issue22_map_blur.py CACHE_DIR SEED [SIGMA] [OUT.json]
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from issue22_blur_explore import cached_sets
from issue22_hybrid_blur import joined
from issue22_interior_explore import maps
from lab.scorer_study import FALSE_ALARM, _figures
from models.metrics import aupro, pixel_auroc


def threshold(m: torch.Tensor, clean: torch.Tensor) -> float:
    return float(np.quantile(m[clean].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM))


def map_variant(coarse: torch.Tensor, sharp: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """The capped sharp map, ``map_scale`` and the product's threshold."""
    thr = threshold(coarse, clean)
    scale = thr / threshold(sharp, clean)
    score = coarse.flatten(1).amax(1)[:, None, None]
    return torch.minimum(sharp * scale, score), scale, thr


def compare(d: dict, fine: float) -> dict:
    pres, labels, masks = maps(d, "product"), d["labels"].numpy(), d["masks"].numpy()
    clean = ~d["labels"]
    coarse, sharp = joined(d, pres, 4.0), joined(d, pres, fine)
    capped, scale, thr = map_variant(coarse, sharp, clean)
    product = _figures(coarse, labels, masks, thr)
    score = coarse.flatten(1).amax(1).numpy()
    found = labels & (score > thr)
    no_contour = int((found & (capped.flatten(1).amax(1).numpy() <= thr)).sum())
    keys = ("found", "of", "rejected", "good", "image_auroc", "pixel_auroc", "aupro")
    return {"product": {k: product[k] for k in keys},
            f"map-s{fine:g}": {**{k: product[k] for k in keys[:5]},  # the decisions are the product's
                               "pixel_auroc": round(pixel_auroc(masks, capped.numpy()), 4),
                               "aupro": round(aupro(masks, capped.numpy()), 4),
                               "map_scale": round(scale, 4), "found_without_contour": no_contour}}


if __name__ == "__main__":
    cache, seed = Path(sys.argv[1]), int(sys.argv[2])
    fine = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    rows = {}
    for c, d in cached_sets(cache, seed):
        rows[c] = compare(d, fine)
        for name, r in rows[c].items():
            print(c, name, r, flush=True)
    if len(sys.argv) > 4:
        Path(sys.argv[4]).write_text(json.dumps({"seed": seed, "fine_sigma": fine, "categories": rows}, indent=1) + "\n")
