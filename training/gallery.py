"""The `gallery` stage of `rpe-pad train`: every posed view encoded by the trained IRPRN.

The gallery holds the training views then the RVSS novel views (``models.gallery``): their
poses, retrieval descriptors on the ``RETRIEVAL_GRID`` layout, encoder features, and, for
refinement by PnP, the views themselves and their expected depths rendered with the
Gaussian model. Skipped when a gallery of the same weights, novel views and scene exists.
Output paths come from ``models.bundle``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from models.bundle import FILES, REPORTS, WORK_FILES
from models.camera import rotation_angle
from models.data import Category
from models.gallery import NOVEL, RETRIEVAL_GRID, TRAIN, Gallery
from models.hashing import sha256_file
from models.images import to_uint8
from models.irprn import IRPRN, descriptor, encode, load_irprn
from models.splat.scene import GaussianScene, render
from training.rvss import NovelSet, load_novel
from training.splats import default_device


def build_gallery(category: Category, novel: NovelSet, net: IRPRN, scene: GaussianScene | None = None,
                  progress: bool = False, grid: int = RETRIEVAL_GRID) -> Gallery:
    """Training views then novel views, encoded by the trained encoder (on its device) and
    described on a ``grid x grid`` layout (``models.gallery``); with ``scene``, also each
    view's expected depth (rendered at its pose) for refinement by PnP."""
    size = net.cfg.input_size
    images = torch.cat([torch.stack([v.image for v in category.train]), novel.images])
    feats = encode(net.encoder.eval(), images, size).cpu()  # on the encoder's device; kept on the CPU
    poses = torch.cat([category.train_poses().double(), novel.poses.double()])
    source = torch.cat([torch.full((len(category.train),), TRAIN), torch.full((len(novel.poses),), NOVEL)]).to(torch.int8)
    names = [v.name for v in category.train] + [f"novel/{i:04d}_of_{int(p)}" for i, p in enumerate(novel.parents)]
    gallery = Gallery(poses, source, descriptor(feats, grid), feats, names)
    if scene is not None:
        K = category.K.float()
        depths = []
        for i in tqdm(range(0, len(poses), 8), desc="gallery: depth", unit="batch", disable=not progress):
            p = poses[i : i + 8].float()
            out = render(scene, p, K.expand(len(p), 3, 3), category.width, category.height, with_depth=True)
            depths.append(torch.where(out.alphas[..., 0] > 0.95, out.depths[..., 0], 0.0).half().cpu())
        gallery.images = torch.from_numpy(to_uint8(images.numpy()))
        gallery.depths = torch.cat(depths)
        gallery.K = category.K.double()
    return gallery


def run_gallery_stage(category: Category, out_dir: Path, progress: bool = True, device: torch.device | None = None) -> dict:
    """Build the gallery; its views encode and its depths render on ``device`` (default: CUDA
    when present)."""
    start = time.perf_counter()
    weights, novel_path = out_dir / WORK_FILES["irprn_weights"], out_dir / WORK_FILES["novel"]
    for needed, stage in ((weights, "irprn"), (novel_path, "rvss")):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing: run the {stage} stage first")
    path, report_path, scene_path = out_dir / FILES["gallery"], out_dir / REPORTS["gallery"], out_dir / FILES["scene"]
    key = {"weights_sha256": sha256_file(weights), "novel_sha256": sha256_file(novel_path), "n_train": len(category.train),
           "scene_sha256": sha256_file(scene_path), "with_depth": True,
           "descriptor_grid": RETRIEVAL_GRID}
    try:
        previous = json.loads(report_path.read_text())
        Gallery.load(path)
        if previous.get("key") == key:
            return {**previous, "skipped": True}
    except (OSError, ValueError, KeyError):
        pass
    net, _ = load_irprn(weights.parent)
    device = device or default_device()
    net.to(device)
    scene = GaussianScene.load(scene_path, device=device)
    gallery = build_gallery(category, load_novel(novel_path), net, scene, progress)
    gallery.save(path)
    # Retrieval sanity: each novel view's best training match vs the view it perturbs.
    novel = load_novel(novel_path)
    report = {"category": category.name, "n_views": len(gallery), "n_train": int((gallery.source == TRAIN).sum()),
              "n_novel": int((gallery.source == NOVEL).sum()), "descriptor_grid": gallery.grid,
              "descriptor_dim": int(gallery.descriptors.shape[1]),
              "feature_shape": list(gallery.features.shape[1:]), "bytes": path.stat().st_size}
    if len(novel.poses):
        _, ids = gallery.top_k(gallery.descriptors[gallery.source == NOVEL], 1, allowed=gallery.source == TRAIN)
        err = torch.rad2deg(rotation_angle(gallery.poses[ids[:, 0], :3, :3], novel.poses[:, :3, :3]))
        report["novel_top1_is_parent"] = round(float((ids[:, 0] == novel.parents).float().mean()), 4)
        report["novel_top1_rot_deg_median"] = round(float(err.median()), 3)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["device"] = str(device)
    report["key"] = key
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report

