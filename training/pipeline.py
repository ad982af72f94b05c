"""`rpe-pad train`: the offline pipeline, stage by stage.

Stages run in order (``TABLE``) and write under the work folder ``BUNDLES_DIR/.work/<category>/``
(file names in ``models.bundle``): ``splats`` (the Gaussian model of the normal object),
``calibration`` (normal scores -> threshold), ``rvss`` (novel views at perturbed poses),
``irprn`` (the relative-pose network), ``gallery`` (descriptors and encoder features of
every posed view), ``onnx`` (IRPRN's encoder and pair head exported and checked against
PyTorch); then ``bundle`` assembles ``BUNDLES_DIR/<category>/`` atomically
(``training/bundle.py``). Each stage is skipped when its valid output for the same
configuration and inputs exists, so an interrupted run resumes where it stopped.

Every stage is one ``Stage`` record whose function takes the run's ``StageContext`` (the
category, the folders, the preset and every stage's resolved config) and returns its report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from models import registry
from models.bundle import WORK_FILES, check_category_name
from models.data import Category, load_category
from models.inspector import resolve_device
from training.bundle import run_bundle_stage
from training.calibrate import CalibConfig, check_validation, run_calibration_stage
from training.export import run_onnx_stage
from training.gallery import run_gallery_stage
from training.irprn import IRPRNTrainConfig, run_irprn_stage
from training.irprn import preset as irprn_preset
from training.rvss import RVSSConfig, run_rvss_stage
from training.splats import SplatConfig, run_splats_stage
from training.splats import preset as splat_preset

WORK = ".work"  # BUNDLES_DIR/.work/<category>: the stages' outputs, checkpoints and reports
# Held-out calibration (rule false_alarm) for the presets that build real bundles, with the
# scorer's CIELAB and feature terms balanced by their normal scales plus the silhouette
# evidence, and the map the largest of that sum, the sum normalised by the reference's
# structure, the colour terms opened with a 3 x 3 and a 5 x 5 square and the two finest feature
# layers, each over its normal level (``either``, with its area maps since session 20 and its
# fine map since session 21: chosen on held-out painted defects
# of Lego and three synthetic seeds, docs/SCORING.md and docs/RESULTS.md); the demo keeps the
# quick in-sample rule and the peers' sum, to stay within its minutes. Since session 31 the map a
# query gets back is blurred with sigma 2 (``map_sigma``), the score and decision with sigma 4.
CALIBRATION = {"demo": CalibConfig(max_views=24),
               "cpu": CalibConfig(holdout_every=5, folds=5, combination="either", colour="lab", map_sigma=2.0),
               "paper": CalibConfig(holdout_every=5, folds=5, combination="either", colour="lab", map_sigma=2.0)}
MIN_TRAIN_VIEWS = 2  # fewer make no pair for IRPRN (a crash after the fit); the cpu preset's folds need more
PRESETS = tuple(registry.PRESETS)  # the names, from the one registry (each stage module has a config per name)
# RVSS orbit views per training view (training.rvss; docs/POSE.md, revision 3): on for the
# presets that build real bundles; the demo keeps the paper's RVSS alone, to stay quick.
RVSS_ORBIT = {"demo": 0, "cpu": 6, "paper": 6}


@dataclass(frozen=True)
class StageContext:
    """What every stage of one ``run_train`` call is given."""

    category: Category  # loaded at the splats config's image size
    work: Path  # BUNDLES_DIR/.work/<category>: the stages' outputs
    bundles_dir: Path  # where the bundle stage assembles BUNDLES_DIR/<category>
    preset: str  # one of PRESETS
    splats: SplatConfig  # the resolved config of each stage
    calibration: CalibConfig
    rvss: RVSSConfig
    irprn: IRPRNTrainConfig
    validation: Category | None  # labelled category for the F1-optimal threshold (calibration only)
    progress: bool  # progress bars
    device: torch.device | None = None  # where the Gaussian model fits and renders, and IRPRN trains (None: CUDA)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StageContext], dict]  # the stage's report (``skipped`` when its output was reused)
    doc: str  # one line: what the stage makes


def _splats(ctx: StageContext) -> dict:
    return run_splats_stage(ctx.category, ctx.splats, ctx.work, progress=ctx.progress,
                            holdout_every=ctx.calibration.holdout_every, device=ctx.device, folds=ctx.calibration.folds)


def _calibration(ctx: StageContext) -> dict:
    return run_calibration_stage(ctx.category, ctx.calibration, ctx.work, ctx.validation, progress=ctx.progress,
                                 splats=ctx.splats, device=ctx.device)


def _rvss(ctx: StageContext) -> dict:
    return run_rvss_stage(ctx.category, ctx.rvss, ctx.work, progress=ctx.progress, device=ctx.device)


def _irprn(ctx: StageContext) -> dict:
    return run_irprn_stage(ctx.category, ctx.irprn, ctx.work, progress=ctx.progress, device=ctx.device)


def _gallery(ctx: StageContext) -> dict:
    return run_gallery_stage(ctx.category, ctx.work, progress=ctx.progress, device=ctx.device)


def _onnx(ctx: StageContext) -> dict:
    return run_onnx_stage(ctx.category, ctx.work, progress=ctx.progress)


def _bundle(ctx: StageContext) -> dict:
    return run_bundle_stage(ctx.category, ctx.work, ctx.bundles_dir, ctx.preset, ctx.calibration, progress=ctx.progress)


TABLE = (
    Stage("splats", _splats, "fit the Gaussian model of the normal object (and the calibration model on the way)"),
    Stage("calibration", _calibration, "normal scores of views the calibration model never saw -> threshold"),
    Stage("rvss", _rvss, "render novel views at perturbed and orbit poses"),
    Stage("irprn", _irprn, "train the relative-pose network"),
    Stage("gallery", _gallery, "encode every posed view: descriptors, features, depths"),
    Stage("onnx", _onnx, "export IRPRN's encoder and pair head, checked against PyTorch"),
    Stage("bundle", _bundle, "assemble BUNDLES_DIR/<category> with its manifest"),
)
STAGES = tuple(stage.name for stage in TABLE)
_BY_NAME = {stage.name: stage for stage in TABLE}


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


def calibration_config(preset: str, false_alarm_rate: float | None = None) -> CalibConfig:
    """The preset's calibration settings; ``false_alarm_rate`` (None = the preset's, 2 %) sets the
    share of good parts the threshold may reject on the held-out views (``ValueError`` for the
    ``demo`` preset, whose quick rule holds none out, and outside (0, 0.5))."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
    cfg = CALIBRATION[preset]
    if false_alarm_rate is None:
        return cfg
    if not cfg.holdout_every:
        raise ValueError(f"--false-alarm-rate sets the threshold on held-out views, which the {preset} preset's quick "
                         "calibration has none of: use the cpu or paper preset")
    if not 0.0 < false_alarm_rate < 0.5:
        raise ValueError(f"--false-alarm-rate {false_alarm_rate:g}: give the share of good parts the threshold may "
                         "reject, above 0 and under 0.5 (the default 0.02 is 2 %)")
    return replace(cfg, false_alarm_rate=false_alarm_rate)


def check_stages(stages: list[str] | None) -> list[str]:
    """The stages to run (None: all), each name stripped; ``ValueError`` for an unknown name or
    for none at all (``--stages ""`` ran every stage, hours of work nobody asked for)."""
    names = list(STAGES) if stages is None else [s.strip() for s in stages]
    unknown = [s for s in names if s not in _BY_NAME]
    if unknown or not names:
        raise ValueError(f"unknown stage(s) {unknown or 'none given'}; available: {list(STAGES)}")
    return names


def work_dir(bundles_dir: Path, category: str) -> Path:
    return bundles_dir / WORK / category


def run_train(category_dir: Path, bundles_dir: Path, preset: str = "cpu", stages: list[str] | None = None,
              progress: bool = True, validation_dir: Path | None = None, ablation: dict | None = None,
              device: str = "auto", false_alarm_rate: float | None = None) -> dict:
    """Run the requested stages (all by default) and return their reports by stage.

    ``validation_dir``: a labelled category (its test split, with true poses) whose
    F1-optimal threshold replaces the normal-quantile rule. ``false_alarm_rate``: the stated
    rate the threshold is set at (``calibration_config``; None: the preset's 2 %); with
    ``stages=["calibration", "bundle"]`` it recalibrates a built category without refitting
    anything (the stages whose output is valid are reused). ``device``: where the Gaussian
    model fits and renders and IRPRN trains (``auto``: CUDA when present; ``cpu``, e.g. where
    gsplat's kernels cannot be built; ``cuda``)."""
    dev = resolve_device(device)  # cuda without a GPU: refused before any stage
    stages = check_stages(stages)
    calib_cfg = calibration_config(preset, false_alarm_rate)  # refused before any stage
    rvss_cfg, irprn_cfg = irprn_config(preset, **(ablation or {}))
    if irprn_cfg.holdout and "bundle" in stages:
        raise ValueError(f"--holdout {irprn_cfg.holdout} is a validation run (IRPRN without some training views): "
                         "it builds no bundle; run its stages (e.g. --stages splats,rvss,irprn) into their own --out")
    splat_cfg = splat_preset(preset)
    category = load_category(category_dir, size=splat_cfg.image_size, progress=progress)
    try:  # the work folder and the bundle take the folder's name: refuse it now, not after hours of training
        check_category_name(category.name)
    except ValueError as exc:
        raise ValueError(f"{category_dir}: {exc}; the bundle is named after the category folder: rename the folder, "
                         "or give its path from outside it") from None
    if len(category.train) < MIN_TRAIN_VIEWS:
        raise ValueError(f"{category_dir}: {len(category.train)} training view; a bundle needs at least "
                         f"{MIN_TRAIN_VIEWS} (IRPRN learns from pairs of them, the gallery matches among them)")
    validation = None
    if validation_dir is not None and "calibration" in stages:
        validation = load_category(validation_dir, size=splat_cfg.image_size)
        check_validation(validation)  # now, not after the Gaussian model's fit
    ctx = StageContext(category=category, work=work_dir(bundles_dir, category.name), bundles_dir=bundles_dir,
                       preset=preset, splats=splat_cfg, calibration=calib_cfg, rvss=rvss_cfg,
                       irprn=irprn_cfg, validation=validation, progress=progress, device=dev)
    reports: dict[str, dict] = {}
    for name in stages:
        start = time.perf_counter()
        reports[name] = _BY_NAME[name].run(ctx)
        reports[name]["stage_seconds"] = round(time.perf_counter() - start, 1)
    summary = compact(reports)
    path = ctx.work / WORK_FILES["train_summary"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return reports


def compact(reports: dict[str, dict]) -> dict[str, dict]:
    """The reports by stage without their bulky fields (configs, scores, keys, histories):
    the closing summary's content, and what a fan-out task sends back (``training/fanout.py``)."""
    return {stage: {k: v for k, v in rep.items() if k not in ("config", "scores", "key", "history")}
            for stage, rep in reports.items()}


def _calibration_headline(report: dict) -> str:
    text = f"threshold {report.get('threshold', 0):.2f} ({report.get('rule')}"
    text += f", {report['heldout_views']} held-out views)" if report.get("heldout_views") else ")"
    if report.get("threshold_range"):
        (lo, hi), (r_lo, r_hi) = report["threshold_range"], report["false_alarm_range"]
        text += f"; 90 % range {lo:.2f}-{hi:.2f}, false alarms {100 * r_lo:.1f}-{100 * r_hi:.1f} %, held-out views resampled"
    if report.get("highest_heldout_views"):  # where to look first: reports/calibration_views.png
        top = report["highest_heldout_views"][0]
        text += f"; highest held-out view {top['view']} {top['score']:.2f} (fold {top['fold_offset']})"
        share = top.get("residue", {}).get("shipped_share")
        if share is not None:  # near 1: a part the model cannot draw; well under: one photograph alone shows it
            text += f", the shipped model leaves {100 * share:.0f} % of its residue"
    return text


def summary_table(reports: dict[str, dict]) -> str:
    """The closing summary: seconds per stage (``skipped`` when reused) and the headline
    figure of each: PSNR, threshold, held-out relative rotation error, parity, bundle size."""
    headline = {
        "splats": lambda r: (f"PSNR {r.get('psnr_test_mean')} dB on {r.get('eval_views')}, {r.get('num_gaussians')} Gaussians"
                             + (f"; {len(r['calibration_folds']) + 1} calibration folds" if r.get("calibration_folds") else "")),
        "calibration": _calibration_headline,
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
