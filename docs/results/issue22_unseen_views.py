"""Issue 22, session 19: the product's whole inspection (default mode) on photographs no
model saw, the selection data of the dense-polish rule (docs/RESULTS.md). CATEGORY_DIR's
training photographs are good parts with true poses, set aside before BUNDLE_DIR was built
(``issue22_split_heldout.py``). Per photograph: the true alignment error at 224 px, the
refinement's path and inliers, the score against the calibrated threshold and the verdict.
Prints the summary (median error, over 0.5 / 1 / 5 px, false alarms, reviews) and writes the
rows to OUT.json.

    python docs/results/issue22_unseen_views.py BUNDLE_DIR CATEGORY_DIR OUT.json [SETTING=VALUE ...]
    e.g. /tmp/seeds/F0/synth_0_fold /tmp/seeds/synth_0_held /tmp/unseen0.json warp_max_px=1.0

SETTING=VALUE: a refinement setting (``models.refine.RefineConfig``) over the bundle's, for a
challenger.
"""
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from pose_truth import open_with_truth

insp, cat, error = open_with_truth(sys.argv[1], sys.argv[2])
if sys.argv[4:]:
    changes = {k: type(getattr(insp.config.refine, k))(v) for k, v in (a.split("=", 1) for a in sys.argv[4:])}
    insp, cat, error = open_with_truth(sys.argv[1], sys.argv[2], refine=replace(insp.config.refine, **changes))
    print("refinement:", insp.config.refine)
rows = []
for v in cat.train:
    batch = insp.start(v.image[None])
    out = insp.run(batch)[0]
    err = error(batch.poses, v)
    info = batch.refine[0]
    rows.append({"view": v.name, "true_px": round(err, 3), "sift_inliers": info.get("pnp_inliers"),
                 "flow_inliers": info.get("flow_inliers"), "path": info.get("pnp_path"),
                 "ecc_shift_px": info.get("ecc_shift_px"), "score": round(out.score, 4),
                 "threshold": round(out.threshold, 4), "verdict": out.verdict})
    print(v.name, rows[-1], flush=True)
true = np.array([r["true_px"] for r in rows])
verdicts = [r["verdict"] for r in rows]
summary = {"photographs": len(rows), "median_px": round(float(np.median(true)), 3),
           "over_0.5_px": int((true > 0.5).sum()), "over_1_px": int((true > 1).sum()), "over_5_px": int((true > 5).sum()),
           "false_alarms": verdicts.count("anomalous"), "review": verdicts.count("review"),
           "review_over_5_px": sum(r["verdict"] == "review" and r["true_px"] > 5 for r in rows)}
print(cat.name, summary)
Path(sys.argv[3]).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
