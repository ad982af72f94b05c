"""`rpe-pad lab verify-sweep`: how the pose check (``models.verify``) behaves, on data held out from the test split.

Two measurements on a bundle and its category, neither of which looks at a test view:

- ``curve``: each training photograph against renders of the bundle's model at its own
  pose carried around the object (``models.camera.orbit_pose``, random axes) by the angle
  that moves the object's points by a chosen mean distance at 224 px (``levels``). For each
  level: the share of queries the check flags, and the misalignment it measures. This is
  where the check's bounds are read from: flagged at 5 px and beyond, let through at 1 px.
- ``pipeline``: ``n`` renders at fresh random poses (``lab.pose_sweep.validation_poses``;
  not in the gallery) through the whole default pipeline, each query's true alignment
  error beside its verdict: how many truly misaligned queries (> 5 px) were flagged, and
  how many aligned ones (<= 1 px) were flagged anyway.

Output: ``verify_sweep.json`` and ``verify_sweep.png`` (measured vs true misalignment,
flagged queries marked) in ``out_dir``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from lab.pose_sweep import render_views, validation_poses
from lab.workdir import open_inspector
from models.camera import orbit_pose, reprojection_error_px, scale_intrinsics
from models.data import load_category
from models.inspector import Inspector
from models.verify import verify
from training.evaluate import ALIGNED_PX, MISALIGNED_PX, image_size, object_points, render_references

Tensor = torch.Tensor
LEVELS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 15.0)  # target alignment errors, pixels at 224


def _errors_at_224(inspector: Inspector, estimated: Tensor, true: Tensor, points: Tensor) -> Tensor:
    K224 = scale_intrinsics(inspector.K, 224 / inspector.width, 224 / inspector.height)
    return reprojection_error_px(estimated.double(), true.double(), K224, points)


def orbit_by(inspector: Inspector, poses: Tensor, target_px: float, points: Tensor, gen: torch.Generator) -> Tensor:
    """``poses`` [V, 4, 4] each carried around the object about a random axis by the angle
    whose mean image displacement of ``points`` is ``target_px`` at 224 (linear in the angle
    for small turns, scaled from a probe of 1 milliradian)."""
    if target_px == 0:
        return poses.clone()
    axis = torch.randn(len(poses), 3, generator=gen, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    probe = 1e-3
    per_rad = _errors_at_224(inspector, orbit_pose(poses, axis * probe), poses, points) / probe
    return orbit_pose(poses, axis * (target_px / per_rad.clamp_min(1e-6))[:, None])


@torch.no_grad()
def curve(inspector: Inspector, category, levels: tuple[float, ...] = LEVELS, seed: int = 0,
          progress: bool = True) -> list[dict]:
    """Per training photograph and level: true error, measured misalignment, IoU, flagged."""
    views = list(category.train)
    images = torch.stack([v.image for v in views])
    poses = torch.stack([v.w2c for v in views]).double()
    points = object_points(inspector.scene.to("cpu"))
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for level in tqdm(levels, desc="verify curve", disable=not progress):
        moved = orbit_by(inspector, poses, level, points, gen)
        true = _errors_at_224(inspector, moved, poses, points)
        refs = render_references(inspector.scene, moved, inspector.K[None].expand(len(moved), 3, 3), inspector.width,
                                 inspector.height).cpu()
        for v, t, check in zip(views, true, verify(images, refs, inspector.scene.background, inspector.config.verify)):
            rows.append({"view": v.name, "level_px": level, "true_px": round(float(t), 3),
                         "measured_px": check.misalignment_px, "iou": check.silhouette_iou, "flagged": not check.verified})
    return rows


@torch.no_grad()
def pipeline(inspector: Inspector, category, n: int = 100, seed: int = 0, batch: int = 8,
             progress: bool = True) -> list[dict]:
    """``n`` held-out renders through the inspector's own pose mode: true error and verdict."""
    poses = validation_poses(category.train_poses(), n, 0.0, seed)
    images = render_views(inspector.scene, poses, inspector.K, inspector.width, inspector.height)
    points = object_points(inspector.scene.to("cpu"))
    rows = []
    for i in tqdm(range(0, n, batch), desc=f"verify {inspector.config.pose}", disable=not progress):
        results = inspector.inspect(images[i : i + batch])
        est = torch.from_numpy(np.stack([r.pose_matrix for r in results]))
        for j, (r, t) in enumerate(zip(results, _errors_at_224(inspector, est, poses[i : i + batch], points))):
            rows.append({"query": i + j, "true_px": round(float(t), 3), "measured_px": r.verification.misalignment_px,
                         "iou": r.verification.silhouette_iou, "flagged": not r.verification.verified})
    return rows


def summarise(rows: list[dict]) -> dict:
    """Counts the bars are stated in: misaligned (> 5 px) flagged, aligned (<= 1 px) flagged."""
    true = np.array([r["true_px"] for r in rows])
    flagged = np.array([r["flagged"] for r in rows])
    bad, good = true > MISALIGNED_PX, true <= ALIGNED_PX
    return {"queries": len(rows), "flagged": int(flagged.sum()),
            "misaligned": int(bad.sum()), "misaligned_flagged": int((bad & flagged).sum()),
            "aligned": int(good.sum()), "aligned_flagged": int((good & flagged).sum()),
            "aligned_flag_rate": round(float((good & flagged).sum() / max(1, good.sum())), 4)}


def by_level(rows: list[dict]) -> list[dict]:
    out = []
    for level in sorted({r["level_px"] for r in rows}):
        sel = [r for r in rows if r["level_px"] == level]
        measured = [r["measured_px"] for r in sel if r["measured_px"] is not None]
        out.append({"level_px": level, "n": len(sel),
                    "true_px_median": round(float(np.median([r["true_px"] for r in sel])), 3),
                    "measured_px_median": round(float(np.median(measured)), 3) if measured else None,
                    "iou_median": round(float(np.median([r["iou"] for r in sel])), 4),
                    "flagged_fraction": round(float(np.mean([r["flagged"] for r in sel])), 4)})
    return out


def figure(curve_rows: list[dict], pipeline_rows: list[dict], bound_px: float, title: str) -> Figure:
    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    ax = fig.add_subplot()
    for rows, marker, name in ((curve_rows, "o", "training photo vs moved render"),
                               (pipeline_rows, "^", "held-out render, default pipeline")):
        for flagged, colour in ((False, "tab:green"), (True, "tab:red")):
            sel = [r for r in rows if r["flagged"] == flagged and r["measured_px"] is not None]
            ax.scatter([max(r["true_px"], 0.02) for r in sel], [max(r["measured_px"], 0.02) for r in sel], s=10,
                       marker=marker, c=colour, alpha=0.6, label=f"{name}, {'review' if flagged else 'verified'}")
    ax.axhline(bound_px, color="k", ls="--", lw=1, label=f"bound {bound_px:g} px")
    for x in (ALIGNED_PX, MISALIGNED_PX):
        ax.axvline(x, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("true alignment error (px at 224)")
    ax.set_ylabel("measured misalignment (px at 224)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def sweep(bundle_dir: Path, category_dir: Path, out_dir: Path, n: int = 100, seed: int = 0, device: str = "auto",
          progress: bool = True) -> dict:
    category = load_category(category_dir, size=image_size(bundle_dir))
    inspector = open_inspector(bundle_dir, device=device, camera=(category.width, category.height, category.K))
    curve_rows = curve(inspector, category, seed=seed, progress=progress)
    pipeline_rows = pipeline(inspector, category, n, seed, progress=progress) if n else []
    report = {"category": category.name, "bundle": str(bundle_dir), "verify": inspector.config.verify.__dict__,
              "curve": {"by_level": by_level(curve_rows), "summary": summarise(curve_rows)},
              "pipeline": {"pose_mode": inspector.config.pose, "n": n,
                           "summary": summarise(pipeline_rows) if pipeline_rows else None},
              "rows": {"curve": curve_rows, "pipeline": pipeline_rows}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "verify_sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    figure(curve_rows, pipeline_rows, inspector.config.verify.max_misalignment_px,
           f"{category.name}: pose check").savefig(out_dir / "verify_sweep.png")
    return report
