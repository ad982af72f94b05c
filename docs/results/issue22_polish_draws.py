"""Issue 22, session 24 (a check; it chooses nothing): how far the calibration's jitter puts each
held-out view of a work folder from its photograph's true pose, and how far the refinement's
polish (SIFT rounds then dense flow, from the jittered pose; the gallery step off, as in
`issue22_polish_cache.py`) leaves it, in pixels (reprojection of the calibration model's
opaque Gaussians). The jitter draws are the calibration's own (``CalibConfig``'s seed and
``jitter_px``, every 5th view held out as the ``cpu`` preset does).

    python docs/results/issue22_polish_draws.py WORK_DIR CATEGORY_DIR [VIEW:DRAW ...]

VIEW:DRAW: draws to print besides the six the polish leaves furthest off.
"""
import math
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from models.bundle import WORK_FILES
from models.camera import perturb_pose, reprojection_error_px
from models.data import load_category
from models.refine import RefineConfig, gallery_pnp_refine
from models.splat.scene import GaussianScene
from training.calibrate import CalibConfig, split_holdout

POLISH = replace(RefineConfig(), gallery_views=0)

if __name__ == "__main__":
    work, category = Path(sys.argv[1]), load_category(Path(sys.argv[2]))
    cfg = CalibConfig(holdout_every=5, combination="either", colour="lab")
    _, held = split_holdout(category, cfg.holdout_every)
    scene = GaussianScene.load(work / WORK_FILES["calibration_scene"])
    images = torch.stack([v.image for v in held])
    poses = torch.stack([v.w2c for v in held])
    Ks = torch.stack([v.K for v in held])
    rep = lambda t: t.repeat_interleave(cfg.jitters, dim=0)  # noqa: E731
    sigma = cfg.jitter_px / (math.sqrt(2) * float(Ks[0, 0, 0]))
    jittered = perturb_pose(rep(poses), sigma, 0.0, torch.Generator().manual_seed(cfg.seed))
    points = scene.means[torch.sigmoid(scene.opacities) > 0.5].double()
    stub = SimpleNamespace(images=torch.zeros(1, *images.shape[1:]), K=Ks[0])  # no gallery view is read
    results = [gallery_pnp_refine(scene, stub, rep(images)[i : i + 8], jittered[i : i + 8].double(),
                                  rep(Ks)[i : i + 8].double(), torch.zeros(len(jittered[i : i + 8]), 1, dtype=torch.long),
                                  POLISH) for i in range(0, len(jittered), 8)]
    before = reprojection_error_px(jittered.double(), rep(poses).double(), rep(Ks).double(), points)
    after = reprojection_error_px(torch.cat([r.poses for r in results]), rep(poses).double(), rep(Ks).double(), points)
    paths = sum((r.paths for r in results), [])
    print(f"{len(after)} draws: jitter median {float(before.median()):.3f} px; after the polish median "
          f"{float(after.median()):.3f} px, largest {float(after.max()):.3f} px")
    asked = [int(v) * cfg.jitters + int(d) for v, d in (a.split(":") for a in sys.argv[3:])]
    for i in list(np.argsort(-after.numpy())[:6]) + asked:
        print(f"view {i // cfg.jitters} draw {i % cfg.jitters}: jitter {before[i]:.2f} px -> polish {after[i]:.2f} px "
              f"({paths[i]})")
