"""Issue 22 (session 12): the held-out threshold with the pose jitter set to the pipeline's measured
alignment instead of 1 px: Q0.98 of the held-out views' scores under the calibration model at
poses jittered by JITTER_PX rms, times the convergence ratio R.
Run from the checkout: python docs/results/issue22_measured_jitter.py WORK CATEGORY JITTER_PX R"""
import json, sys
from dataclasses import replace
from pathlib import Path
import numpy as np
sys.path.insert(0, ".")
from models.data import load_category
from models.bundle import WORK_FILES
from training.calibrate import CalibConfig, calibration_model, heldout_scores
from training.pipeline import CALIBRATION
from training.splats import SplatConfig
work, cat_dir, jitter, r = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
splats = SplatConfig(**{k: v for k, v in json.loads((work / WORK_FILES["splats_config"]).read_text()).items()})
cfg = replace(CALIBRATION["cpu"], jitter_px=jitter)
cat = load_category(cat_dir, size=splats.image_size, load_test=False)
model, held, _ = calibration_model(cat, splats, cfg, work)
h = heldout_scores(model, held, cfg, progress=False)
print(json.dumps({"jitter_px": jitter, "r": r, "threshold": float(np.quantile(h.jittered, 0.98)),
                  "threshold_corrected": float(np.quantile(h.jittered * r, 0.98))}))
