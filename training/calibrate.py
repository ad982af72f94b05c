"""The `calibration` stage of `rpe-pad train`: normal scores -> threshold and floors.

Normal evidence, all from the category's training views and its fitted Gaussian model:

- ``in_sample``: each training view against its render at its own pose (the model's
  render error on views it was fitted to: optimistic);
- ``jittered``: each training view against a render at its pose rotated by a small random
  camera rotation whose image displacement has an rms of ``jitter_px`` pixels (per-axis
  std ``jitter_px / (sqrt(2) fx)`` radians), so the threshold also covers the residual
  pose error the pose stages leave (about a pixel: docs/SCORING.md). The threshold rule
  of ``models/calibration.py`` runs on these scores.

With a labelled validation category (``validation``: its test split, true poses), the
threshold is the F1-optimal one on that set instead (rule ``f1``); the normal statistics
are kept either way. Output: ``calibration/calibration.json`` (a ``Calibration``),
``reports/calibration.json`` and ``reports/calibration_hist.png``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from models.calibration import (
    Calibration,
    ScoreStats,
    f1_threshold,
    pixel_quantiles,
    quantile_threshold,
)
from models.camera import perturb_pose
from models.bundle import FILES, REPORTS
from models.data import GOOD, Category
from models.hashing import sha256_file
from models.inspector import compare_at_poses
from models.scoring import DEFAULT_TOLERANCE, AnomalyScorer
from models.splat.scene import GaussianScene


@dataclass(frozen=True)
class CalibConfig:
    quantile: float = 0.99
    margin: float = 0.10
    jitter_px: float = 1.0
    max_views: int = 0  # 0 = every training view
    tolerance: int = DEFAULT_TOLERANCE
    batch: int = 8
    seed: int = 0


def _score(scorer: AnomalyScorer, scene: GaussianScene, images: torch.Tensor, poses: torch.Tensor, Ks: torch.Tensor,
           batch: int, bar: tqdm) -> tuple[np.ndarray, np.ndarray]:
    """Scores [V] and maps subsampled to 64 x 64 [V, 64, 64] of ``images`` vs renders at
    ``poses``: the inspection pipeline's render and score stages at known poses
    (``models.inspector.compare_at_poses``)."""
    scores, maps = [], []
    for i in range(0, len(images), batch):
        m, s = compare_at_poses(scene, scorer, images[i : i + batch], poses[i : i + batch], Ks[i : i + batch])
        scores.append(s.numpy())
        maps.append(torch.nn.functional.interpolate(m[:, None], size=(64, 64), mode="area")[:, 0].numpy())
        bar.update(len(m))
    return np.concatenate(scores), np.concatenate(maps)


def calibrate(category: Category, scene: GaussianScene, cfg: CalibConfig, validation: Category | None = None,
              progress: bool = True) -> tuple[Calibration, dict]:
    """The category's Calibration and the raw score lists behind it."""
    views = category.train
    if cfg.max_views and len(views) > cfg.max_views:
        views = views[:: math.ceil(len(views) / cfg.max_views)]
    images = torch.stack([v.image for v in views])
    poses = torch.stack([v.w2c for v in views])
    Ks = torch.stack([v.K for v in views])
    focal = float(Ks[0, 0, 0])
    gen = torch.Generator().manual_seed(cfg.seed)
    jittered = perturb_pose(poses, cfg.jitter_px / (math.sqrt(2) * focal), 0.0, gen)
    scorer = AnomalyScorer(tolerance=cfg.tolerance)
    n_val = len(validation.test) if validation is not None else 0
    bar = tqdm(total=2 * len(views) + n_val, desc="calibration", unit="view", disable=not progress)
    in_sample, _ = _score(scorer, scene, images, poses, Ks, cfg.batch, bar)
    normal, normal_maps = _score(scorer, scene, images, jittered, Ks, cfg.batch, bar)
    raw = {"in_sample": in_sample.tolist(), "jittered": normal.tolist()}
    sources = {"in_sample": len(views), "jittered": len(views)}
    rule, threshold = "quantile", quantile_threshold(normal, cfg.quantile, cfg.margin)
    if validation is not None:
        queries = [q for q in validation.test if q.w2c is not None]
        if len(queries) < len(validation.test):
            raise ValueError(f"{validation.root}: a validation set needs true poses for every test view")
        val_scores, _ = _score(scorer, scene, torch.stack([q.image for q in queries]), torch.stack([q.w2c for q in queries]),
                               torch.stack([q.K for q in queries]), cfg.batch, bar)
        labels = np.array([q.label != GOOD for q in queries])
        rule, threshold = "f1", f1_threshold(labels, val_scores)
        raw["validation"] = val_scores.tolist()
        raw["validation_labels"] = labels.tolist()
        sources["validation"] = len(queries)
    bar.close()
    # The floor of the normalised score: the lowest normal score, kept below the threshold
    # (a validation set may put the F1-optimal cut under some training views' scores).
    floor = float(min(normal.min(), in_sample.min()))
    floor = floor if floor < threshold else threshold / 2
    quantiles = pixel_quantiles(normal_maps)
    calib = Calibration(rule=rule, threshold=threshold, quantile=cfg.quantile, margin=cfg.margin, score_floor=floor,
                        pixel_floor=min(quantiles["q0.5"], floor * 0.5), normal_scores=ScoreStats.of(normal),
                        normal_pixel_quantiles=quantiles, scorer=scorer.config(), sources=sources)
    return calib, raw


def histogram(calib: Calibration, raw: dict, title: str) -> Figure:
    """Normal (and validation) image scores with the threshold; no pyplot state involved."""
    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    ax = fig.add_subplot()
    everything = np.concatenate([np.asarray(v, dtype=float) for k, v in raw.items() if k != "validation_labels"])
    bins = np.linspace(0, max(everything.max(), calib.threshold) * 1.05, 40)
    ax.hist(raw["in_sample"], bins=bins, alpha=0.5, label="normal, own pose")
    ax.hist(raw["jittered"], bins=bins, alpha=0.5, label="normal, jittered pose")
    if "validation" in raw:
        v, y = np.asarray(raw["validation"]), np.asarray(raw["validation_labels"], dtype=bool)
        ax.hist(v[~y], bins=bins, histtype="step", lw=2, label="validation good")
        ax.hist(v[y], bins=bins, histtype="step", lw=2, label="validation defective")
    ax.axvline(calib.threshold, color="k", ls="--", label=f"threshold {calib.threshold:.1f} ({calib.rule})")
    ax.set_xlabel("image score (max of the anomaly map)")
    ax.set_ylabel("views")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run_calibration_stage(category: Category, cfg: CalibConfig, out_dir: Path, validation: Category | None = None,
                          progress: bool = True) -> dict:
    """Calibrate against the work folder's Gaussian model; skipped when a calibration for
    the same config, scene and validation set exists."""
    start = time.perf_counter()
    scene_path = out_dir / FILES["scene"]
    if not scene_path.is_file():
        raise FileNotFoundError(f"{scene_path} is missing: run the splats stage first")
    calib_path, report_path = out_dir / FILES["calibration"], out_dir / REPORTS["calibration"]
    key = {"config": asdict(cfg), "scene_sha256": sha256_file(scene_path),
           "validation": str(validation.root) if validation is not None else None}
    try:
        previous = json.loads(report_path.read_text())
        Calibration.model_validate_json(calib_path.read_text())
        if previous.get("key") == key:
            return {**previous, "skipped": True}
    except (OSError, ValueError):
        pass
    calib, raw = calibrate(category, GaussianScene.load(scene_path), cfg, validation, progress)
    calib_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    calib_path.write_text(calib.model_dump_json(indent=2) + "\n")
    fig = histogram(calib, raw, f"{category.name}: normal image scores")
    fig.savefig(out_dir / REPORTS["calibration_hist"])
    report = {"category": category.name, "rule": calib.rule, "threshold": round(calib.threshold, 4),
              "normal_scores": calib.normal_scores.model_dump(), "in_sample_max": round(max(raw["in_sample"]), 4),
              "seconds": round(time.perf_counter() - start, 1), "key": key, "scores": raw}
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report
