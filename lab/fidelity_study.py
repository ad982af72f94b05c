"""`rpe-pad lab fidelity-study`: does a finer Gaussian model find more defects at the
operating point, within the CPU budget? (issue 22, item 3: render fidelity.)

Each variant is the ``cpu`` preset's fit with one change of resolution or size
(``VARIANTS``), fitted into its own work folder by the product's splats stage (with the
held-out calibration model on the way) and calibrated by the product's calibration stage.
Nothing else of the bundle is built: with true poses, the inspection's tail (render, 2D
alignment, score) is all that the model's fidelity changes.

Selection data (never the test split): the self-check (``training.selfcheck``) on the
variant's own calibration model and threshold: 72 painted defects and 48 clean copies of
Lego's 12 training photographs held out of that model.

**The rule, written before any figure of a variant was seen** (docs/RESULTS.md, session 16):

1. Budget. A variant is eligible only if (a) its oracle time per query is at most 1.2 x the
   ``cpu`` variant's (issue 22: the default-mode ``/inspect`` p50 may rise 20 % at most) and
   (b) its fit plus calibration, added to the ``cpu`` build's other stages, stays within the
   40-minute Lego build.
2. Among the eligible, the highest self-check recall at the variant's calibrated threshold
   wins, provided its self-check false-alarm rate is at most 0.05; ties go to the self-check
   image AUROC, then to the cheaper variant.
3. A winner other than ``cpu`` becomes the preset only after a full Lego rebuild confirms
   the build time and the bench p50; otherwise the next one is considered.

Report data: the test split at its true poses (the oracle) against the variant's shipped
model, with its threshold. Reported for every variant, chosen by none.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from models.calibration import Calibration
from models.bundle import FILES
from models.data import GOOD, load_category
from models.inspector import compare_at_poses
from models.refine import RefineConfig
from models.scoring import AnomalyScorer
from models.splat.scene import GaussianScene
from training.calibrate import run_calibration_stage
from training.evaluate import decision_metrics, detection_metrics
from training.pipeline import CALIBRATION
from training.selfcheck import SelfCheckConfig, heldout_in, measure
from training.splats import SplatConfig, run_splats_stage
from training.splats import preset as splat_preset

BASE = "cpu"
# Each variant: the cpu preset with these changes (fixed before any figure was seen).
VARIANTS: dict[str, dict] = {
    "cpu": {},  # 200 px, 2000 steps, at most 40 000 Gaussians: the product's preset
    "dense": {"iterations": 3000, "max_gaussians": 80_000, "refine_stop": 2250},  # twice the Gaussians, longer
    "px400": {"image_size": 400},  # the cpu preset fitted (and inspected) at 400 px
}
BUILD_BUDGET_S = 40 * 60
COST_BUDGET = 1.2


def variant_config(name: str) -> SplatConfig:
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {list(VARIANTS)}")
    return splat_preset(BASE, **VARIANTS[name])


def fit(category_dir: Path, work: Path, name: str, progress: bool = True) -> dict:
    """Fit and calibrate one variant into ``work`` (the product's splats and calibration
    stages; each is skipped when its output for the same settings exists)."""
    cfg = variant_config(name)
    calib_cfg = CALIBRATION[BASE]
    category = load_category(category_dir, size=cfg.image_size, progress=progress)
    start = time.perf_counter()
    splats = run_splats_stage(category, cfg, work, progress=progress, holdout_every=calib_cfg.holdout_every)
    mid = time.perf_counter()
    calib = run_calibration_stage(category, calib_cfg, work, progress=progress, splats=cfg)
    return {"variant": name, "config": asdict(cfg), "splats_seconds": splats.get("seconds", round(mid - start, 1)),
            "calibration_seconds": calib.get("seconds"), "num_gaussians": splats.get("num_gaussians"),
            "psnr_test_mean": splats.get("psnr_test_mean"), "threshold": calib.get("threshold")}
