"""`rpe-pad pose-sweep`: choose the query-pose settings on held-out renders, not the test views.

On a bundle or a training work folder, the category's Gaussian model is rendered at ``n``
fresh random poses (``validation_poses``: directions uniform over the band of elevations its
training cameras cover, distances within theirs, looking at the object, rolled uniformly
within +-``max_roll_deg`` about the optical axis). Their poses are then estimated for every retrieval grid (the gallery's
descriptor layout, ``models.gallery``) and every ``k`` (gallery matches fused per query,
``models.pose``), and the median rotation and camera-centre errors are reported, beside
the gallery as built. The renders are not in the gallery, and the test views are never
looked at, so the settings chosen here are not fitted to the figures reported on them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from models.camera import camera_center, look_at, pose_errors
from models.data import load_category
from models.inspector import Inspector, InspectorConfig
from models.irprn import descriptor
from models.splat.scene import GaussianScene
from training.evaluate import image_size, render_references

Tensor = torch.Tensor
GRIDS = (4, 7)
KS = (1, 3, 5, 8, 10)
MAX_ELEVATION_DEG = 85.0  # look_at needs the view off the up axis


def validation_poses(train_poses: Tensor, n: int, max_roll_deg: float = 0.0, seed: int = 0) -> Tensor:
    """``n`` world-to-camera poses ``[n, 4, 4]`` (float64) looking at the origin, world z up:
    directions uniform on the sphere within the training cameras' elevation band (at most
    ``MAX_ELEVATION_DEG``), distances uniform within theirs, rolls uniform within
    +-``max_roll_deg``."""
    if n < 1 or max_roll_deg < 0:
        raise ValueError(f"validation_poses needs n >= 1 and max_roll_deg >= 0, got {n}, {max_roll_deg}")
    centres = camera_center(train_poses.double())
    dist = centres.norm(dim=-1)
    sin_elev = (centres[:, 2] / dist).clamp(-1, 1)
    cap = math.sin(math.radians(MAX_ELEVATION_DEG))
    lo, hi = float(sin_elev.min().clamp(-cap, cap)), float(sin_elev.max().clamp(-cap, cap))
    rng = np.random.default_rng(seed)
    azimuth = rng.uniform(0, 2 * math.pi, n)
    elevation = np.arcsin(rng.uniform(lo, hi, n))
    radius = rng.uniform(float(dist.min()), float(dist.max()), n)
    roll = np.radians(rng.uniform(-max_roll_deg, max_roll_deg, n))
    eye = torch.from_numpy(np.stack([radius * np.cos(elevation) * np.cos(azimuth),
                                     radius * np.cos(elevation) * np.sin(azimuth), radius * np.sin(elevation)], 1))
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    return look_at(eye, torch.zeros_like(eye), up, torch.from_numpy(roll))


@torch.no_grad()
def render_views(scene: GaussianScene, poses: Tensor, K: Tensor, width: int, height: int) -> Tensor:
    """``[n, H, W, 3]`` renders in [0, 1], quantised to 8 bits like a photograph on disk."""
    colors = render_references(scene, poses, K.expand(len(poses), 3, 3), width, height).cpu()
    return (colors * 255).round() / 255


def sweep(bundle_dir: Path, category_dir: Path, n: int = 100, max_roll_deg: float = 0.0, seed: int = 0,
          grids: tuple[int, ...] = GRIDS, ks: tuple[int, ...] = KS, fusion: str = "mean", backend: str = "auto",
          device: str = "auto", progress: bool = True) -> dict:
    """Median pose errors of ``n`` held-out renders for every (grid, k); see the module doc."""
    if not grids or min(grids) < 1 or not ks or min(ks) < 1:
        raise ValueError(f"grids and ks must be positive, got {grids}, {ks}")
    category = load_category(category_dir, size=image_size(bundle_dir))
    inspector = Inspector.open(bundle_dir, InspectorConfig(pose="rpe", fusion=fusion, backend=backend), device=device,
                               camera=(category.width, category.height, category.K))
    poses = validation_poses(category.train_poses(), n, max_roll_deg, seed)
    images = render_views(inspector.scene, poses, category.K, category.width, category.height)
    est = inspector.estimator
    built = est.gallery
    # The same estimator retrieving on each grid (the gallery's features pooled so, once per grid) and fusing k matches.
    galleries = {g: built if g == built.grid else dataclasses.replace(built, descriptors=descriptor(built.features, g))
                 for g in grids}
    rows = []
    combos = [(g, k) for g in grids for k in ks]
    for grid, k in tqdm(combos, desc="pose sweep", disable=not progress):
        est.gallery, est.grid, est.k = galleries[grid], grid, k
        err = pose_errors(est.estimate(images, "rpe").poses, poses)
        rows.append({"grid": grid, "k": k, "built": grid == built.grid,
                     "rot_deg_median": round(float(err["rot_deg"].median()), 3),
                     "center_rel_median": round(float(err["center_rel"].median()), 4)})
    best = min(rows, key=lambda r: (r["center_rel_median"], r["rot_deg_median"]))
    return {"category": category.name, "bundle": str(bundle_dir), "n_views": n, "max_roll_deg": max_roll_deg,
            "seed": seed, "fusion": fusion, "gallery_grid": built.grid, "rows": rows,
            "best": {"grid": best["grid"], "k": best["k"]}}


def markdown(result: dict) -> str:
    lines = [f"Pose sweep, {result['category']}: {result['n_views']} held-out renders (roll +-{result['max_roll_deg']} deg, "
             f"seed {result['seed']}), fusion {result['fusion']}; gallery built at {result['gallery_grid']} x "
             f"{result['gallery_grid']}", "", "| grid | k | rotation deg (median) | centre rel (median) |",
             "|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['grid']} | {r['k']} | {r['rot_deg_median']:.2f} | {r['center_rel_median']:.4f} |")
    lines.append("")
    lines.append(f"lowest camera-centre error: grid {result['best']['grid']}, k {result['best']['k']}")
    return "\n".join(lines)


def write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
