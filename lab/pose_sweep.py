"""`rpe-pad lab pose-sweep`: choose the query-pose settings on held-out renders, not the test views.

On a bundle or a training work folder, the category's Gaussian model is rendered at ``n``
fresh random poses (``validation_poses``: directions uniform over the band of elevations its
training cameras cover, distances within theirs, looking at the object, rolled uniformly
within +-``max_roll_deg`` about the optical axis). Their poses are then estimated for every retrieval grid (the gallery's
descriptor layout, ``models.gallery``) and every ``k`` (gallery matches fused per query,
``models.pose``), and the median rotation and camera-centre errors are reported, beside
the gallery as built. The renders are not in the gallery, and the test views are never
looked at, so the settings chosen here are not fitted to the figures reported on them.

Renders of our own model are the gallery's kind of image; real photographs may favour other
settings. ``sweep_heldout`` runs the same sweep on a work folder trained with
``rpe-pad lab train --holdout N`` (``training.irprn.holdout_views``): its queries are the N
training photographs that IRPRN never saw (nor the novel views rendered from them), each
matched against the gallery without them (``heldout_gallery_mask``), optionally rolled
within +-``max_roll_deg`` (``copies`` rolls per view; exact for a pinhole camera,
``models.camera.roll_pose``) for categories whose queries roll.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from models.camera import camera_center, look_at, pose_errors, roll_pose
from models.data import load_category
from models.gallery import Gallery
from lab.workdir import open_inspector
from models.inspector import InspectorConfig
from models.irprn import descriptor, load_irprn
from models.pose import PoseEstimator, roll_images
from models.splat.scene import GaussianScene
from training.evaluate import image_size, render_references
from training.gallery import build_gallery
from training.irprn import heldout_gallery_mask, holdout_views, trained_holdout
from training.rvss import load_novel

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
          grids: tuple[int, ...] = GRIDS, ks: tuple[int, ...] = KS,
          device: str = "auto", progress: bool = True) -> dict:
    """Median pose errors of ``n`` held-out renders for every (grid, k); see the module doc."""
    if not grids or min(grids) < 1 or not ks or min(ks) < 1:
        raise ValueError(f"grids and ks must be positive, got {grids}, {ks}")
    category = load_category(category_dir, size=image_size(bundle_dir))
    inspector = open_inspector(bundle_dir, InspectorConfig(pose="rpe"), device=device, camera=(category.width, category.height, category.K))
    poses = validation_poses(category.train_poses(), n, max_roll_deg, seed)
    images = render_views(inspector.scene, poses, category.K, category.width, category.height)
    rows = _sweep_rows(inspector.estimator, images, poses, grids, ks, progress)
    return {"category": category.name, "bundle": str(bundle_dir), "queries": "renders", "n_views": n,
            "max_roll_deg": max_roll_deg, "seed": seed, "gallery_grid": inspector.estimator.gallery.grid,
            "rows": rows, "best": _best(rows)}


def _sweep_rows(est: PoseEstimator, images: Tensor, poses: Tensor, grids: tuple[int, ...], ks: tuple[int, ...],
                progress: bool) -> list[dict]:
    """Median errors of ``est`` on the queries for every (grid, k): the same estimator
    retrieving on each grid (the gallery's features pooled so, once per grid) and fusing k matches."""
    built, k_before = est.gallery, est.k
    galleries = {g: built if g == built.grid else dataclasses.replace(built, descriptors=descriptor(built.features, g))
                 for g in grids}
    rows = []
    try:
        for grid, k in tqdm([(g, k) for g in grids for k in ks], desc="pose sweep", disable=not progress):
            est.gallery, est.grid, est.k = galleries[grid], grid, k
            err = pose_errors(est.estimate(images).poses, poses)
            rows.append({"grid": grid, "k": k, "built": grid == built.grid,
                         "rot_deg_median": round(float(err["rot_deg"].median()), 3),
                         "center_rel_median": round(float(err["center_rel"].median()), 4)})
    finally:
        est.gallery, est.grid, est.k = built, built.grid, k_before
    return rows


def _best(rows: list[dict]) -> dict:
    best = min(rows, key=lambda r: (r["center_rel_median"], r["rot_deg_median"]))
    return {"grid": best["grid"], "k": best["k"]}


def heldout_queries(images: Tensor, poses: Tensor, copies: int, max_roll_deg: float, seed: int) -> tuple[Tensor, Tensor]:
    """``copies`` copies of each view ``[N, H, W, 3]``, each turned by its own uniform roll within
    +-``max_roll_deg`` (image and pose together), view-major; unrolled when ``max_roll_deg`` is 0."""
    if copies < 1 or max_roll_deg < 0 or (copies > 1 and max_roll_deg == 0):
        raise ValueError(f"need copies >= 1, max_roll_deg >= 0, and a roll for more than one copy; got {copies}, "
                         f"{max_roll_deg}")
    if max_roll_deg == 0:
        return images, poses.double()
    gen = torch.Generator().manual_seed(seed)
    angles = (torch.rand(len(images) * copies, generator=gen, dtype=torch.float64) * 2 - 1) * max_roll_deg
    src = torch.arange(len(images)).repeat_interleave(copies)
    return roll_images(images[src], angles.float()).clamp(0, 1), roll_pose(poses[src].double(), angles)


def heldout_gallery(category, novel, net, held: Tensor) -> Gallery:
    """The gallery (``training.irprn.build_gallery``, no depths) without the held-out training
    views and the novel views rendered from them: what a held-out photograph is matched against."""
    full = build_gallery(category, novel, net)
    allowed = heldout_gallery_mask(len(category.train), novel.parents, held)
    return Gallery(full.poses[allowed], full.source[allowed], full.descriptors[allowed], full.features[allowed],
                   [name for name, ok in zip(full.names, allowed.tolist(), strict=True) if ok])


def sweep_heldout(work_dir: Path, category_dir: Path, max_roll_deg: float = 0.0, copies: int = 1, seed: int = 0,
                  grids: tuple[int, ...] = GRIDS, ks: tuple[int, ...] = KS,
                  progress: bool = True) -> dict:
    """Median pose errors of the held-out training photographs for every (grid, k); see the module doc."""
    if not grids or min(grids) < 1 or not ks or min(ks) < 1:
        raise ValueError(f"grids and ks must be positive, got {grids}, {ks}")
    work_dir = Path(work_dir)
    config_path = work_dir / "irprn" / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: a training work folder (BUNDLES_DIR/.work/<category>) "
                                "with its irprn stage run is needed")
    n_held = trained_holdout(work_dir / "irprn")
    if n_held < 1:
        raise ValueError(f"{work_dir}: IRPRN was trained on every training view; retrain with rpe-pad train "
                         "--holdout N to have held-out photographs")
    category = load_category(category_dir, size=image_size(work_dir))
    net, unit = load_irprn(work_dir / "irprn")
    novel = load_novel(work_dir / "rvss" / "novel.safetensors")
    held = holdout_views(len(category.train), n_held)
    names = [category.train[i].name for i in held.tolist()]
    try:
        recorded = json.loads((work_dir / "reports" / "irprn.json").read_text()).get("holdout")
    except (OSError, ValueError):
        recorded = None
    if recorded is not None and recorded != names:
        raise ValueError(f"{category_dir} is not the category {work_dir} was trained on: its held-out views "
                         f"{recorded[:3]}... are not {names[:3]}...")
    gallery = heldout_gallery(category, novel, net, held)
    est = PoseEstimator.from_torch(net, gallery, unit)
    images = torch.stack([category.train[i].image for i in held.tolist()])
    images, poses = heldout_queries(images, category.train_poses()[held], copies, max_roll_deg, seed)
    rows = _sweep_rows(est, images, poses, grids, ks, progress)
    return {"category": category.name, "bundle": str(work_dir), "queries": "held-out photographs",
            "held_out": names, "n_views": len(images), "copies": copies,
            "max_roll_deg": max_roll_deg, "seed": seed, "gallery_grid": gallery.grid,
            "gallery_views": len(gallery), "rows": rows, "best": _best(rows)}


def markdown(result: dict) -> str:
    what = "held-out photographs" if result.get("queries") == "held-out photographs" else "held-out renders"
    lines = [f"Pose sweep, {result['category']}: {result['n_views']} {what} (roll +-{result['max_roll_deg']} deg, "
             f"seed {result['seed']}); gallery built at {result['gallery_grid']} x "
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
