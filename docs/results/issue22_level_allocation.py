"""Issue 22, session 26: which quantile of its clean image scores each of the five maps is
levelled at. The product levels all five at 0.98 and joins them by their maximum, with the
threshold at the 98th percentile of the joined clean scores. Giving the maps different
quantiles moves the false-alarm budget between them, at the same false-alarm rate.

On the cached painted sets of `issue22_interior_cache.py` (``sel{SEED}_*``), each map's image
scores are computed once (its blurred map's maximum; a level only divides it).

    python docs/results/issue22_level_allocation.py search CACHE_DIR SEED[,SEED...]
    python docs/results/issue22_level_allocation.py rule CACHE_DIR SEED Q1,Q2,Q3,Q4,Q5 OUT.json
"""
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

from issue22_blur_explore import cached_sets
from issue22_interior_explore import maps
from lab.scorer_study import FALSE_ALARM
from models.metrics import auroc
from models.scoring import EITHER_MAPS, blur_maps

PRODUCT = (0.98,) * 5
GRID = (0.9, 0.95, 0.98, 0.99, 1.0)


def per_map_scores(cache: Path, seed: int) -> dict:
    """``{category: (scores [N, 5], labels [N], kinds [N])}`` of the cached set painted with ``seed``."""
    out = {}
    for c, d in cached_sets(cache, seed):
        scores = torch.stack([blur_maps(p, float(d["sigma"])).flatten(1).amax(1) for p in maps(d, "product")], 1)
        out[c] = (scores.numpy(), d["labels"].numpy(), np.array(d["kinds"]))
    return out


def evaluate(scores: np.ndarray, labels: np.ndarray, kinds: np.ndarray, quantiles) -> dict:
    clean = ~labels
    levels = np.array([np.quantile(scores[clean, i], q) for i, q in enumerate(quantiles)])
    joined = (scores / levels).max(1)
    threshold = np.quantile(joined[clean], 1 - FALSE_ALARM)
    flagged = joined > threshold
    return {"found": int((flagged & labels).sum()), "of": int(labels.sum()),
            "recall": round(float((flagged & labels).sum() / labels.sum()), 4),
            "false_alarm_rate": round(float((flagged & clean).sum() / clean.sum()), 4),
            "image_auroc": round(float(auroc(labels, joined)), 4),
            "by_kind": {str(k): [int((flagged & (kinds == k)).sum()), int((kinds == k).sum())]
                        for k in sorted(set(kinds)) if k != "good"}}


def search(cache: Path, seeds: list[int]) -> None:
    sets = {s: per_map_scores(cache, s) for s in seeds}
    rows = []
    for qs in itertools.product(GRID, repeat=len(EITHER_MAPS)):
        found = [sum(evaluate(*v, qs)["found"] for v in sets[s].values()) for s in seeds]
        rows.append((sum(found), found, qs))
    rows.sort(key=lambda r: -r[0])
    print("product", next(r for r in rows if r[2] == PRODUCT))
    for r in rows[:15]:
        print(r)


def rule(cache: Path, seed: int, challenger: tuple, out: Path) -> None:
    data = per_map_scores(cache, seed)
    result = {}
    for name, qs in (("product", PRODUCT), ("challenger", challenger)):
        rows = {c: evaluate(*v, qs) for c, v in data.items()}
        result[name] = {"quantiles": dict(zip(EITHER_MAPS, qs)), "categories": rows,
                        "found": sum(r["found"] for r in rows.values()), "of": sum(r["of"] for r in rows.values())}
        for c, r in rows.items():
            print(name, c, json.dumps(r))
        print(name, "summed found", result[name]["found"], "of", result[name]["of"], flush=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    mode, cache = sys.argv[1], Path(sys.argv[2])
    if mode == "search":
        search(cache, [int(s) for s in sys.argv[3].split(",")])
    else:
        rule(cache, int(sys.argv[3]), tuple(float(q) for q in sys.argv[4].split(",")), Path(sys.argv[5]))
