"""Issue 22, session 24 (an exploration; it chooses nothing): a larger held-out share for the
calibration, at no extra fit. The `cpu` preset's splats fit is run again with every N-th
training view held out until the fold-in step (instead of every 5th), then the calibration
stage, in a fresh work folder. Reports what changes for the threshold: the held-out views, the
threshold, and its 90 % range (``models.calibration.threshold_spread``), beside the fit's
PSNR. The shipped model's detection is then measured at true poses with
`rpe-pad lab evaluate OUT CATEGORY_DIR --pose oracle` on the same folder.

    python docs/results/issue22_holdout_share.py CATEGORY_DIR OUT_WORK_DIR N
"""
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from models.data import load_category
from training.calibrate import run_calibration_stage
from training.pipeline import CALIBRATION
from training.splats import preset, run_splats_stage

if __name__ == "__main__":
    category_dir, work, every = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    splats = preset("cpu")
    category = load_category(category_dir, size=splats.image_size)
    calibration = replace(CALIBRATION["cpu"], holdout_every=every)
    start = time.perf_counter()
    fit = run_splats_stage(category, splats, work, progress=False, holdout_every=every)
    fitted = time.perf_counter() - start
    report = run_calibration_stage(category, calibration, work, progress=False, splats=splats)
    out = {"holdout_every": every, "fit_seconds": round(fitted, 1), "psnr_test_mean": fit.get("psnr_test_mean"),
           "num_gaussians": fit.get("num_gaussians"), "heldout_views": report["heldout_views"],
           "threshold": report["threshold"], "threshold_range": report["threshold_range"],
           "false_alarm_range": report["false_alarm_range"], "calibration_seconds": report["seconds"]}
    print(json.dumps(out))
    (work / "holdout_share.json").write_text(json.dumps(out, indent=1) + "\n")
