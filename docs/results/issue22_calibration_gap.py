"""Issue 22 diagnostic. Rule written before the figures: the calibration model (fold-in
snapshot) is less converged than the shipped model. Estimate the gap on the 48 views both
models saw: r = median(shipped in-sample / calibration-model in-sample). Corrected held-out
scores = held-out (jittered) x r; threshold' = their 98th percentile (2 % false alarms)."""
import json, sys, math
sys.path.insert(0, ".")  # run from the checkout: python docs/results/issue22_calibration_gap.py WORK CATEGORY OUT
from pathlib import Path
import numpy as np, torch
from tqdm import tqdm
from models.bundle import WORK_FILES
from models.data import load_category
from models.scoring import AnomalyScorer
from models.splat.scene import GaussianScene
from training.calibrate import _score, split_holdout
from training.splats import holdout_indices
work, category_dir, out_path = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
rep = json.loads((work / "reports" / "calibration.json").read_text())
calib = json.loads((work / "calibration" / "calibration.json").read_text())
scorer = AnomalyScorer.from_config(calib["scorer"])
cat = load_category(category_dir, size=json.loads((work / WORK_FILES["splats_config"]).read_text())["image_size"], load_test=False)
held = set(holdout_indices(len(cat.train), rep["key"]["config"]["holdout_every"]))
seen = [i for i in range(len(cat.train)) if i not in held]
scene = GaussianScene.load(work / WORK_FILES["calibration_scene"])
views = [cat.train[i] for i in seen]
imgs = torch.stack([v.image for v in views]); poses = torch.stack([v.w2c for v in views]); Ks = torch.stack([v.K for v in views])
calib_in, _ = _score(scorer, scene, imgs, poses, Ks, 8, tqdm(disable=True))
final_in = np.array(rep["scores"]["in_sample"])[seen]
ratios = final_in / calib_in
r = float(np.median(ratios))
heldout = np.array(rep["scores"]["heldout"]); own = np.array(rep["scores"]["heldout_own"])
out = {"seen_views": len(seen), "calib_in_median": float(np.median(calib_in)), "final_in_median": float(np.median(final_in)),
       "ratio_median": r, "ratio_q25_q75": [float(np.quantile(ratios, .25)), float(np.quantile(ratios, .75))],
       "threshold_now": rep["threshold"], "threshold_corrected": float(np.quantile(heldout * r, 0.98)),
       "threshold_own_only_corrected": float(np.quantile(own * r, 0.98)),
       "heldout_own_median": float(np.median(own)), "final_heldout_views_median": float(np.median(np.array(rep["scores"]["in_sample"])[sorted(held)]))}
print(json.dumps(out, indent=1))
out_path.write_text(json.dumps(out, indent=1))
