"""`rpe-pad train`: the offline pipeline, stage by stage.

Stages run in order and write under ``BUNDLES_DIR/<category>/``: ``splats`` (the
Gaussian model of the normal object), ``calibration`` (normal scores -> threshold). Later
issues add RVSS, the gallery, IRPRN, the ONNX export and bundle assembly. Each stage is
skipped when its valid output for the same configuration exists.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from models.data import load_category
from training.calibrate import CalibConfig, run_calibration_stage
from training.splats import preset as splat_preset
from training.splats import run_splats_stage

STAGES = ("splats", "calibration")
CALIBRATION = {"demo": CalibConfig(max_views=24), "cpu": CalibConfig(), "paper": CalibConfig()}
PRESETS = ("demo", "cpu", "paper")


def run_train(category_dir: Path, bundles_dir: Path, preset: str = "cpu", stages: list[str] | None = None,
              progress: bool = True, validation_dir: Path | None = None) -> dict:
    """Run the requested stages (all by default) and return their reports by stage.

    ``validation_dir``: a labelled category (its test split, with true poses) whose
    F1-optimal threshold replaces the normal-quantile rule."""
    stages = list(stages or STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; available: {list(STAGES)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
    reports: dict[str, dict] = {}
    splat_cfg = splat_preset(preset)
    category = load_category(category_dir, size=splat_cfg.image_size, progress=progress)
    validation = load_category(validation_dir, size=splat_cfg.image_size) if validation_dir else None
    out = bundles_dir / category.name
    for stage in stages:
        start = time.perf_counter()
        if stage == "splats":
            reports[stage] = run_splats_stage(category, splat_cfg, out, progress=progress)
        elif stage == "calibration":
            reports[stage] = run_calibration_stage(category, CALIBRATION[preset], out, validation, progress=progress)
        reports[stage]["stage_seconds"] = round(time.perf_counter() - start, 1)
    summary = {stage: {k: v for k, v in rep.items() if k not in ("config", "scores", "key")} for stage, rep in reports.items()}
    (out / "reports").mkdir(parents=True, exist_ok=True)
    (out / "reports" / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return reports
