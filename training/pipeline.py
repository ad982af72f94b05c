"""`rpe-pad train`: the offline pipeline, stage by stage.

Stages run in order and write under ``BUNDLES_DIR/<category>/``. Today: ``splats`` (the
Gaussian model of the normal object). Later issues add calibration, RVSS, the gallery,
IRPRN, the ONNX export and bundle assembly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from models.data import load_category
from training.splats import preset as splat_preset
from training.splats import run_splats_stage

STAGES = ("splats",)
PRESETS = ("demo", "cpu", "paper")


def run_train(category_dir: Path, bundles_dir: Path, preset: str = "cpu", stages: list[str] | None = None,
              progress: bool = True) -> dict:
    """Run the requested stages (all by default) and return their reports by stage."""
    stages = list(stages or STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; available: {list(STAGES)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
    reports: dict[str, dict] = {}
    splat_cfg = splat_preset(preset)
    category = load_category(category_dir, size=splat_cfg.image_size, progress=progress)
    out = bundles_dir / category.name
    for stage in stages:
        start = time.perf_counter()
        if stage == "splats":
            reports[stage] = run_splats_stage(category, splat_cfg, out, progress=progress)
        reports[stage]["stage_seconds"] = round(time.perf_counter() - start, 1)
    summary = {stage: {k: v for k, v in rep.items() if k != "config"} for stage, rep in reports.items()}
    (out / "reports").mkdir(parents=True, exist_ok=True)
    (out / "reports" / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return reports
