"""`rpe-pad train`: the offline pipeline, stage by stage.

Stages run in order and write under the work folder ``BUNDLES_DIR/.work/<category>/``:
``splats`` (the Gaussian model of the normal object), ``calibration`` (normal scores ->
threshold), ``rvss`` (novel views at perturbed poses), ``irprn`` (the relative-pose
network), ``gallery`` (descriptors and encoder features of every posed view), ``onnx``
(IRPRN's encoder and pair head exported and checked against PyTorch); then ``bundle``
assembles ``BUNDLES_DIR/<category>/`` atomically (``training/bundle.py``). Each stage is
skipped when its valid output for the same configuration and inputs exists, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from models.data import load_category
from training.bundle import run_bundle_stage
from training.calibrate import CalibConfig, run_calibration_stage
from training.export import run_onnx_stage
from training.irprn import IRPRNTrainConfig, run_gallery_stage, run_irprn_stage
from training.irprn import preset as irprn_preset
from training.rvss import RVSSConfig, run_rvss_stage
from training.splats import preset as splat_preset
from training.splats import run_splats_stage

STAGES = ("splats", "calibration", "rvss", "irprn", "gallery", "onnx", "bundle")
WORK = ".work"  # BUNDLES_DIR/.work/<category>: the stages' outputs, checkpoints and reports
CALIBRATION = {"demo": CalibConfig(max_views=24), "cpu": CalibConfig(), "paper": CalibConfig()}
PRESETS = ("demo", "cpu", "paper")
# RVSS orbit views per training view (training.rvss; docs/POSE.md, revision 3): on for the
# presets that build real bundles; the demo keeps the paper's RVSS alone, to stay quick.
RVSS_ORBIT = {"demo": 0, "cpu": 6, "paper": 6}


def irprn_config(preset: str, rvss_m: int | None = None, n_refine: int | None = None, k: int | None = None,
                 mpts: bool | None = None, epochs: int | None = None,
                 rvss_orbit: int | None = None, holdout: int | None = None) -> tuple[RVSSConfig, IRPRNTrainConfig]:
    """The preset's RVSS and IRPRN settings with the ablation switches applied (None = keep)."""
    rvss = RVSSConfig() if rvss_m is None else replace(RVSSConfig(), m=rvss_m)
    if rvss_orbit is None:  # the preset's orbit views, none when RVSS is switched off
        rvss_orbit = 0 if rvss_m == 0 else RVSS_ORBIT[preset]
    rvss = replace(rvss, orbit_m=rvss_orbit)
    cfg = irprn_preset(preset)
    if n_refine is not None:
        cfg = replace(cfg, model=replace(cfg.model, n_refine=n_refine))
    for name, value in (("k", k), ("mpts", mpts), ("epochs", epochs), ("holdout", holdout)):
        if value is not None:
            cfg = replace(cfg, **{name: value})
    if rvss.m == 0 and rvss.orbit_m == 0:
        cfg = replace(cfg, use_novel=False)
    return rvss, cfg


def work_dir(bundles_dir: Path, category: str) -> Path:
    return bundles_dir / WORK / category


def run_train(category_dir: Path, bundles_dir: Path, preset: str = "cpu", stages: list[str] | None = None,
              progress: bool = True, validation_dir: Path | None = None, ablation: dict | None = None) -> dict:
    """Run the requested stages (all by default) and return their reports by stage.

    ``validation_dir``: a labelled category (its test split, with true poses) whose
    F1-optimal threshold replaces the normal-quantile rule."""
    stages = list(stages or STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; available: {list(STAGES)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
    rvss_cfg, irprn_cfg = irprn_config(preset, **(ablation or {}))
    if irprn_cfg.holdout and "bundle" in stages:
        raise ValueError(f"--holdout {irprn_cfg.holdout} is a validation run (IRPRN without some training views): "
                         "it builds no bundle; run its stages (e.g. --stages splats,rvss,irprn) into their own --out")
    reports: dict[str, dict] = {}
    splat_cfg = splat_preset(preset)
    category = load_category(category_dir, size=splat_cfg.image_size, progress=progress)
    validation = None
    if validation_dir is not None and "calibration" in stages:
        validation = load_category(validation_dir, size=splat_cfg.image_size)
    out = work_dir(bundles_dir, category.name)
    for stage in stages:
        start = time.perf_counter()
        if stage == "splats":
            reports[stage] = run_splats_stage(category, splat_cfg, out, progress=progress)
        elif stage == "calibration":
            reports[stage] = run_calibration_stage(category, CALIBRATION[preset], out, validation, progress=progress)
        elif stage == "rvss":
            reports[stage] = run_rvss_stage(category, rvss_cfg, out, progress=progress)
        elif stage == "irprn":
            reports[stage] = run_irprn_stage(category, irprn_cfg, out, progress=progress)
        elif stage == "gallery":
            reports[stage] = run_gallery_stage(category, out, progress=progress)
        elif stage == "onnx":
            reports[stage] = run_onnx_stage(category, out, progress=progress)
        elif stage == "bundle":
            reports[stage] = run_bundle_stage(category, out, bundles_dir, preset, CALIBRATION[preset], progress=progress)
        reports[stage]["stage_seconds"] = round(time.perf_counter() - start, 1)
    summary = {stage: {k: v for k, v in rep.items() if k not in ("config", "scores", "key", "history")} for stage, rep in reports.items()}
    (out / "reports").mkdir(parents=True, exist_ok=True)
    (out / "reports" / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return reports


def summary_table(reports: dict[str, dict]) -> str:
    """The closing summary: seconds per stage (``skipped`` when reused) and the headline
    figure of each: PSNR, threshold, held-out relative rotation error, parity, bundle size."""
    headline = {
        "splats": lambda r: f"PSNR {r.get('psnr_test_mean')} dB on {r.get('eval_views')}, {r.get('num_gaussians')} Gaussians",
        "calibration": lambda r: f"threshold {r.get('threshold', 0):.1f} ({r.get('rule')})",
        "rvss": lambda r: f"{r.get('n_novel', r.get('n_views', '?'))} novel views",
        "irprn": lambda r: (f"held-out relative rotation error {r.get('final', {}).get('val_rot_deg', float('nan')):.2f} deg, "
                            f"translation {r.get('final', {}).get('val_trans', float('nan')):.3f}"),
        "gallery": lambda r: f"{r.get('n_views')} views",
        "onnx": lambda r: f"parity max |diff| {r.get('max_abs_diff', float('nan')):.1e}",
        "bundle": lambda r: f"{r.get('bundle')} ({r.get('files')} files, {r.get('bytes', 0) / 1e6:.1f} MB)",
    }
    rows = ["| stage | seconds | result |", "|---|---:|---|"]
    total = 0.0
    for stage, rep in reports.items():
        secs = rep.get("stage_seconds", 0.0)
        total += secs
        shown = "skipped (valid output reused)" if rep.get("skipped") else f"{secs:.1f}"
        try:
            text = headline[stage](rep)
        except (TypeError, ValueError, KeyError):
            text = ""
        rows.append(f"| {stage} | {shown} | {text} |")
    rows.append(f"| total | {total:.1f} | |")
    return "\n".join(rows)
