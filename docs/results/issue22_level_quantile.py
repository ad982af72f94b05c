"""Issue 22, session 37: the quantile that sets each ``either`` map's normal level
(``models.scoring.LEVEL_QUANTILE``), cross-fitted on training views (the rule is in docs/RESULTS.md,
session 37, written before these figures).

On the caches of ``issue22_kfold_eval.py cache`` (a painted set on the held-out views of each of five
folds, scored against that fold's own calibration model): for each evaluation fold f and each
candidate quantile, the statistics, the five levels and the threshold (the 98th percentile of the
clean image scores) are fitted on the clean copies of the four other folds, as the calibration stage
does, and fold f's painted and clean copies are judged (``issue22_kfold_eval.judge``): the false-alarm
rate and the defects found at that threshold, image AUROC, and the defects found at fold f's own 2 %
point (the same cut for every candidate), by kind.

    python docs/results/issue22_level_quantile.py CACHE_DIR SEED OUT.json CATEGORY [...]
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import models.scoring
from issue22_kfold_eval import FOLDS, RATE, _clean, judge

CANDIDATES = (0.98, 0.95, 0.9, 0.75, 0.5)  # 0.98: the product's since session 18


def main(cache_dir: Path, seed: int, out: Path, categories: list[str]) -> None:
    t0, rows = time.time(), {}
    for name in categories:
        data = [torch.load(cache_dir / f"kf{seed}_{name}_f{f}.pt", weights_only=False) for f in range(FOLDS)]
        sigma, cleans = data[0]["sigma"], [_clean(d) for d in data]
        rows[name] = []
        for f in range(FOLDS):
            for q in CANDIDATES:
                models.scoring.LEVEL_QUANTILE = q
                r = judge([cleans[g] for g in range(FOLDS) if g != f], data[f], sigma)
                rows[name].append({"eval": f, "level_quantile": q, **r})
            print(name, "f", f, [(r["level_quantile"], round(r["false_alarm_rate"], 3), r["found"], r["found_at_own_2pct"],
                                  round(r["image_auroc"], 4)) for r in rows[name][-len(CANDIDATES):]], flush=True)
    summary = {}
    for q in CANDIDATES:
        rs = [r for name in categories for r in rows[name] if r["level_quantile"] == q]
        summary[str(q)] = {
            "mean_abs_far_minus_rate": float(np.mean([abs(r["false_alarm_rate"] - RATE) for r in rs])),
            "mean_far": float(np.mean([r["false_alarm_rate"] for r in rs])),
            "found_at_threshold": sum(r["found"] for r in rs), "found_at_own_2pct": sum(r["found_at_own_2pct"] for r in rs),
            "of": sum(r["of"] for r in rs), "mean_image_auroc": float(np.mean([r["image_auroc"] for r in rs])),
            "by_category": {name: {k: (sum(r[k] for r in rows[name] if r["level_quantile"] == q) if k.startswith("found")
                                       else float(np.mean([r[k] for r in rows[name] if r["level_quantile"] == q])))
                                   for k in ("found", "found_at_own_2pct",
                                             "false_alarm_rate", "image_auroc")} for name in categories},
        }
        print(q, json.dumps(summary[str(q)]), flush=True)
    out.write_text(json.dumps({"seed": seed, "candidates": CANDIDATES, "seconds": round(time.time() - t0),
                               "summary": summary, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
