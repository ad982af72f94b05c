"""Issue 22, session 18 (for the next pose study; no test view used): the product's pose path
(default mode) on a category's training photographs. The pose stages never saw them (the
gallery holds renders at other poses), but the shipped Gaussian model was fitted to them, so
its renders match them better than any new view's: these are not held-out views for the pose. Per photograph: the true alignment error at 224 px, the
refinement's PnP inliers and path, and the pose check's own estimate. Prints how the errors
over 0.5 and 1 px relate to the inliers, and writes the rows to OUT.json.

    python docs/results/issue22_pose_heldout.py BUNDLE_DIR CATEGORY_DIR OUT.json
"""
import json
import sys
from pathlib import Path

import numpy as np

from pose_truth import open_with_truth

insp, cat, error = open_with_truth(sys.argv[1], sys.argv[2])
rows = []
for v in cat.train:
    batch = insp.start(v.image[None])
    insp.locate(batch)
    insp.render_stage(batch)
    insp.verify_stage(batch)
    err = error(batch.poses, v)
    info, ver = batch.refine[0], batch.verification[0]
    rows.append({"view": v.name, "true_px": round(err, 3), "inliers": info.get("pnp_inliers"),
                 "path": info.get("pnp_path"), "ecc_shift_px": info.get("ecc_shift_px"),
                 "measured_px": ver.misalignment_px, "verified": ver.verified})
true = np.array([r["true_px"] for r in rows])
inl = np.array([r["inliers"] or 0 for r in rows])
print(cat.name, len(rows), "photographs; median true error", round(float(np.median(true)), 3), "px;",
      "over 0.5 px:", int((true > 0.5).sum()), "over 1 px:", int((true > 1).sum()), "over 5 px:", int((true > 5).sum()))
for lo, hi in ((0, 15), (15, 30), (30, 60), (60, 10_000)):
    sel = (inl >= lo) & (inl < hi)
    if sel.any():
        print(f"  PnP inliers {lo}-{hi}: {int(sel.sum())} photographs, over 1 px {int((true[sel] > 1).sum())}, "
              f"median {np.median(true[sel]):.3f} px")
Path(sys.argv[3]).write_text(json.dumps(rows, indent=1) + "\n")
