"""Issue 22, session 23: the five maps of `either` blurred with other sigmas, or joined pixel by
pixel otherwise than by their maximum, on the cached selection data of
`issue22_interior_cache.py` (exploration on a set already chosen on; a choice is a rule's, on a
fresh set). Each variant's maps are each over their clean 98th percentile (the product's
levels), and its threshold the 98th percentile of its clean image scores (the product's rule).

    python docs/results/issue22_blur_explore.py CACHE_DIR SEED VARIANT[,VARIANT...] [OUT.json]

With ``POLISH=1`` in the environment it reads `issue22_polish_cache.py`'s files instead.

VARIANT: `product` (sigma 4, the maximum), `sN` (every map blurred with sigma N, e.g. `s2`,
`s1.5`), or a join of the five at sigma 4 (`JOINS`): `mean`, `top2` / `top3` (the two or three
largest, summed), `rms`, `p4` (the power mean of order 4).
"""
import json
import os
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


def settings_of(variant: str) -> tuple[float, str]:
    """``(sigma, join)`` of a variant's name."""
    if variant == "product":
        return 4.0, "max"
    if variant in JOINS:
        return 4.0, variant
    return float(variant[1:]), "max"


def cached_sets(cache: Path, seed: int, prefix: str = "sel"):
    """``(category, data)`` of each category's cached selection data painted with ``seed``
    (`issue22_interior_cache.py`), those not cached skipped."""
    for c in CATEGORIES:
        path = cache / f"{prefix}{seed}_{c}.pt"
        if path.exists():
            yield c, torch.load(path, weights_only=False)


def run(d: dict, pres: list, sigma: float, join: str = "max") -> dict:
    labels, clean = d["labels"].numpy(), ~d["labels"]
    levelled = []
    for pre in pres:
        m = blur_maps(pre, sigma)
        levelled.append(m / float(np.quantile(m[clean].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM)))
    out = JOINS[join](torch.stack(levelled))
    thr = float(np.quantile(out[clean].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM))
    r = _figures(out, labels, d["masks"].numpy(), thr)
    sc, kinds = out.flatten(1).amax(1).numpy(), np.array(d["kinds"])
    clean_scores = np.sort(sc[clean.numpy()])[::-1]
    r["clean_top5"], r["clean_median"] = [round(float(v), 3) for v in clean_scores[:5]], round(float(np.median(clean_scores)), 3)
    r["by_kind"] = {str(k): [int(((sc > thr) & (kinds == k)).sum()), int((kinds == k).sum())]
                    for k in sorted(set(kinds)) if k != "good"}
    return r


if __name__ == "__main__":
    cache, seed, variants = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    rows = {v: {} for v in variants}
    for c, d in cached_sets(cache, seed, "polish" if os.environ.get("POLISH") else "sel"):
        pres = maps(d, "product")
        for v in variants:
            r = run(d, pres, *settings_of(v))
            rows[v][c] = {k: r[k] for k in ("found", "of", "image_auroc", "pixel_auroc", "aupro", "false_alarm_rate",
                                            "by_kind", "clean_top5", "clean_median")}
            print(c, v, "found", r["found"], "/", r["of"], "auroc", round(r["image_auroc"], 4), "FAR",
                  round(r["false_alarm_rate"], 3), "pix", round(r["pixel_auroc"], 4), "aupro", round(r["aupro"], 4),
                  r["by_kind"], "clean: top", r["clean_top5"], "median", r["clean_median"], flush=True)
    for v in variants:
        found = sum(r["found"] for r in rows[v].values())
        of = sum(r["of"] for r in rows[v].values())
        auroc = np.mean([r["image_auroc"] for r in rows[v].values()])
        print("TOTAL", v, found, "/", of, "mean image AUROC", round(float(auroc), 4))
    if len(sys.argv) > 4:
        Path(sys.argv[4]).write_text(json.dumps({"seed": seed, "variants": rows}, indent=1) + "\n")
