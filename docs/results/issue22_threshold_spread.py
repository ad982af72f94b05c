"""Issue 22, session 23 (a measurement; it chooses nothing): how much of a rebuild's change in
the calibrated threshold is the sampling of the held-out views. From a training folder's
calibration report, the held-out views (each with its jittered scores, kept together) are
resampled with replacement, and the threshold is taken as the calibration stage takes it: the
``1 - false_alarm_rate`` quantile of the scores times ``heldout_scale``. Drawn with as many
views as the calibration had, then with twice as many (what a second calibration snapshot
would give).

    python docs/results/issue22_threshold_spread.py WORK_DIR [WORK_DIR ...] [--out OUT.json]

WORK_DIR: BUNDLES_DIR/.work/<category> after its calibration stage.
"""
import json
import sys
from pathlib import Path

import numpy as np

DRAWS, SEED = 4000, 0


def spread(report: dict, views: int, rng: np.random.Generator) -> dict:
    scores = np.asarray(report["scores"]["heldout"]) * report["heldout_scale"]
    per_view = scores.reshape(report["heldout_views"], -1)  # the jitters of a view are consecutive
    q = 1.0 - report["false_alarm_rate"]
    draws = np.array([np.quantile(per_view[rng.integers(len(per_view), size=views)], q) for _ in range(DRAWS)])
    lo, hi = np.quantile(draws, [0.05, 0.95])
    return {"views": views, "median": round(float(np.median(draws)), 4), "p05": round(float(lo), 4),
            "p95": round(float(hi), 4), "relative_90pct_width": round(float((hi - lo) / np.median(draws)), 3)}


if __name__ == "__main__":
    args = sys.argv[1:]
    out = None
    if "--out" in args:
        out = Path(args[args.index("--out") + 1])
        args = args[:args.index("--out")]
    rng = np.random.default_rng(SEED)
    result = {}
    for work in map(Path, args):
        report = json.loads((work / "reports" / "calibration.json").read_text())
        n = report["heldout_views"]
        result[work.name] = {"threshold": report["threshold"], "heldout_views": n,
                             "as_built": spread(report, n, rng), "twice_the_views": spread(report, 2 * n, rng)}
        print(work.name, json.dumps(result[work.name]))
    if out:
        out.write_text(json.dumps(result, indent=1) + "\n")
