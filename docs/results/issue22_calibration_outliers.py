"""Issue 22, session 23 (a measurement; it chooses nothing): what the calibration's highest
held-out scores are. The calibration stage's jittered renders of the held-out views are drawn
again exactly as it draws them (``training.calibrate.heldout_scores``: the same seed, jitter
and ECC alignment), and each goes through the product's pose check (``models.verify``) for its
misalignment after the alignment; the highest scores of the stage's report are printed with it.

    python docs/results/issue22_calibration_outliers.py WORK_DIR CATEGORY_DIR SIZE

WORK_DIR: BUNDLES_DIR/.work/<category> after its calibration stage; SIZE: the splats' image size.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from models.camera import perturb_pose
from models.data import load_category
from models.inspector import align_references
from models.refine import RefineConfig
from models.verify import verify
from training.calibrate import CalibConfig
from training.evaluate import render_references
from training.selfcheck import heldout_in

work, category_dir, size = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
category = load_category(category_dir, size=size, load_test=False)
scene, held = heldout_in(work, category)
cfg = CalibConfig(holdout_every=5)  # the presets' jitters, jitter_px and seed
images, poses, Ks = (torch.stack([getattr(v, a) for v in held]) for a in ("image", "w2c", "K"))
rep = lambda t: t.repeat_interleave(cfg.jitters, dim=0)  # noqa: E731
jittered = perturb_pose(rep(poses), cfg.jitter_px / (math.sqrt(2) * float(Ks[0, 0, 0])), 0.0,
                        torch.Generator().manual_seed(cfg.seed))
refs = render_references(scene, jittered, rep(Ks), images.shape[2], images.shape[1]).cpu()
checks = verify(rep(images), align_references(rep(images), refs, RefineConfig()), tuple(scene.background))
report = json.loads((work / "reports" / "calibration.json").read_text())
scores = np.array(report["scores"]["heldout"]) * report["heldout_scale"]
for i in np.argsort(-scores)[:6]:
    c = checks[i]
    print(f"view {i // cfg.jitters} jitter {i % cfg.jitters}: score {scores[i]:.2f}, misalignment "
          f"{c.misalignment_px:.2f} px at 224, IoU {c.silhouette_iou:.3f}, verified {c.verified}")
mis = np.array([c.misalignment_px or 0.0 for c in checks])
print(f"all {len(checks)}: misalignment median {np.median(mis):.3f} px, max {mis.max():.3f} px, "
      f"flagged {sum(not c.verified for c in checks)}")
