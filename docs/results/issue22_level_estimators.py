"""Issue 22, session 25: the five normal levels of `either` read off the clean image scores by
another estimator than the product's 0.98 quantile (which the two or three largest of about 80
clean scores decide), on the cached selection data of `issue22_interior_cache.py`. Everything
else is the product's: sigma 4, the maps joined by their maximum, the threshold the 98th
percentile of the joined clean image scores.

For each estimator it gives the painted set's figures and how firmly the clean scores pin the
levels: each map's level over 2000 resamples of the held-out views (each with its clean
copies), the 90 % range's width over the level (the levels only matter relative to one another,
so the spread of each level over the first map's is given too).

    python docs/results/issue22_level_estimators.py CACHE_DIR SEED EST[,EST...] [OUT.json]

EST: `q0.98` (the product), `qP` (the P quantile), `es10` (the mean of the top 10 %),
`esP` (the mean of the top P %), `madK` (the median plus K scaled median absolute deviations),
`vmedP` (each view's median over its clean copies, then their P quantile).
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from issue22_blur_explore import cached_sets
from issue22_interior_explore import maps
from lab.scorer_study import FALSE_ALARM, _figures
from models.scoring import EITHER_MAPS, blur_maps
from training.selfcheck import SelfCheckConfig

DRAWS = 2000


def level_of(est: str, scores: np.ndarray) -> float:
    """One map's level from its clean image scores ``[views, copies]``, by the estimator ``est``."""
    if est.startswith("vmed"):
        return float(np.quantile(np.median(scores, 1), float(est[4:])))
    scores = scores.ravel()
    if est.startswith("q"):
        return float(np.quantile(scores, float(est[1:])))
    if est.startswith("es"):
        top = np.sort(scores)[::-1]
        return float(top[: max(1, int(round(float(est[2:]) / 100 * len(top))))].mean())
    if est.startswith("mad"):
        med = np.median(scores)
        return float(med + float(est[3:]) * 1.4826 * np.median(np.abs(scores - med)))
    raise ValueError(est)


def run(d: dict, blurred: list[torch.Tensor], est: str, rng: np.random.Generator) -> dict:
    labels, clean = d["labels"].numpy(), ~d["labels"]
    copies = SelfCheckConfig().clean_copies  # the clean copies come view by view (painted_queries)
    clean_scores = [m[clean].flatten(1).amax(1).double().numpy().reshape(-1, copies) for m in blurred]
    levels = [max(level_of(est, s), 1e-6) for s in clean_scores]
    out = torch.stack([m / lv for m, lv in zip(blurred, levels)]).amax(0)
    thr = float(np.quantile(out[clean].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM))
    r = _figures(out, labels, d["masks"].numpy(), thr)
    sc, kinds = out.flatten(1).amax(1).numpy(), np.array(d["kinds"])
    r["by_kind"] = {str(k): [int(((sc > thr) & (kinds == k)).sum()), int((kinds == k).sum())]
                    for k in sorted(set(kinds)) if k != "good"}
    views = len(clean_scores[0])
    picks = rng.integers(0, views, size=(DRAWS, views))
    draws = np.array([[level_of(est, s[p]) for s in clean_scores] for p in picks])  # [DRAWS, maps]
    lo, hi = np.quantile(draws, 0.05, 0), np.quantile(draws, 0.95, 0)
    ratio = draws / draws[:, :1]
    rlo, rhi = np.quantile(ratio, 0.05, 0), np.quantile(ratio, 0.95, 0)
    r["levels"] = {name: {"level": round(lv, 4), "relative_width": round(float((h - l) / lv), 3),
                          "ratio_relative_width": round(float((rh - rl) / (lv / levels[0])), 3)}
                   for name, lv, l, h, rl, rh in zip(EITHER_MAPS, levels, lo, hi, rlo, rhi)}
    r["mean_relative_width"] = round(float(np.mean([v["relative_width"] for v in r["levels"].values()])), 3)
    return r


if __name__ == "__main__":
    cache, seed, ests = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    rows = {e: {} for e in ests}
    for c, d in cached_sets(cache, seed):
        blurred = [blur_maps(pre, 4.0) for pre in maps(d, "product")]
        for e in ests:
            r = run(d, blurred, e, np.random.default_rng(0))
            rows[e][c] = {k: r[k] for k in ("found", "of", "image_auroc", "pixel_auroc", "aupro", "false_alarm_rate",
                                            "by_kind", "levels", "mean_relative_width")}
            print(c, e, "found", r["found"], "/", r["of"], "auroc", r["image_auroc"], "FAR",
                  round(r["false_alarm_rate"], 3), "aupro", r["aupro"], r["by_kind"],
                  "level widths", [v["relative_width"] for v in r["levels"].values()], flush=True)
    for e in ests:
        found = sum(r["found"] for r in rows[e].values())
        of = sum(r["of"] for r in rows[e].values())
        auroc = np.mean([r["image_auroc"] for r in rows[e].values()])
        width = np.mean([r["mean_relative_width"] for r in rows[e].values()])
        print("TOTAL", e, found, "/", of, "mean image AUROC", round(float(auroc), 4), "mean level width", round(float(width), 3))
    if len(sys.argv) > 4:
        Path(sys.argv[4]).write_text(json.dumps({"seed": seed, "estimators": rows}, indent=1) + "\n")
