"""The `rvss` stage of `rpe-pad train`: the novel set (paper: RVSS).

For each training pose, ``m`` perturbed poses ``P' = D P`` (``models.camera.perturb_pose``:
axis-angle noise with std ``sigma_r`` radians, translation noise with std ``sigma_t``
normalised scene units, ``models.irprn.scene_unit``), rendered with the category's
Gaussian model at the category's image size. Output ``rvss/novel.safetensors``: images
uint8 ``[N, H, W, 3]``, poses float64 ``[N, 4, 4]``, the index of the training view each
one perturbs; ``rvss/config.json``; ``reports/rvss_sheet.png``. ``m = 0`` switches RVSS
off (an empty novel set), for the paper's ablation.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from models.camera import perturb_pose
from models.data import Category
from models.hashing import sha256_file
from models.images import to_uint8
from models.irprn import scene_unit
from models.splat.scene import GaussianScene
from models.viz import Cell, contact_sheet
from training.evaluate import render_references


@dataclass(frozen=True)
class RVSSConfig:
    m: int = 3
    sigma_r: float = 0.02
    sigma_t: float = 0.1
    seed: int = 0
    batch: int = 8


@dataclass
class NovelSet:
    images: torch.Tensor  # [N, H, W, 3] float32 in [0, 1]
    poses: torch.Tensor  # [N, 4, 4] float64
    parents: torch.Tensor  # [N] int64: index of the perturbed training view


def novel_poses(train_poses: torch.Tensor, cfg: RVSSConfig, unit: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` perturbed poses per training pose (repeated in order) and their parents."""
    gen = torch.Generator().manual_seed(cfg.seed)
    parents = torch.arange(len(train_poses)).repeat_interleave(cfg.m)
    poses = perturb_pose(train_poses[parents].double(), cfg.sigma_r, cfg.sigma_t * unit, gen)
    return poses, parents


def load_novel(path: Path) -> NovelSet:
    t = load_file(str(path))
    return NovelSet(t["images"].float() / 255.0, t["poses"], t["parents"])


def run_rvss_stage(category: Category, cfg: RVSSConfig, out_dir: Path, progress: bool = True) -> dict:
    start = time.perf_counter()
    scene_path = out_dir / "splats" / "scene.safetensors"
    if not scene_path.is_file():
        raise FileNotFoundError(f"{scene_path} is missing: run the splats stage first")
    rvss_dir, report_path = out_dir / "rvss", out_dir / "reports" / "rvss.json"
    key = {"config": asdict(cfg), "scene_sha256": sha256_file(scene_path),
           "image_size": [category.width, category.height]}
    try:
        previous = json.loads(report_path.read_text())
        load_novel(rvss_dir / "novel.safetensors")
        if previous.get("key") == key:
            return {**previous, "skipped": True}
    except (OSError, ValueError, KeyError):
        pass
    scene = GaussianScene.load(scene_path)
    unit = scene_unit(scene.normalization.get("camera_distance_median", 4.0))
    poses, parents = novel_poses(category.train_poses(), cfg, unit)
    K = category.K.float()
    images = []
    for i in tqdm(range(0, len(poses), cfg.batch), desc="rvss", unit="batch", disable=not progress):
        p = poses[i : i + cfg.batch]
        images.append(render_references(scene, p, K.expand(len(p), 3, 3), category.width, category.height, cfg.batch))
    rgb = torch.cat(images) if images else torch.zeros(0, category.height, category.width, 3)
    rvss_dir.mkdir(parents=True, exist_ok=True)
    save_file({"images": torch.from_numpy(to_uint8(rgb.numpy())).contiguous(), "poses": poses.contiguous(),
               "parents": parents.contiguous()}, str(rvss_dir / "novel.safetensors"))
    (rvss_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    if len(rgb):
        rows = []
        for j in range(min(4, len(category.train))):
            kids = (parents == j).nonzero().flatten().tolist()
            cells = [Cell(category.train[j].image.numpy(), "training view")]
            cells += [Cell(rgb[k].numpy(), f"novel {n + 1}") for n, k in enumerate(kids)]
            rows.append((category.train[j].name.split("/")[-1], cells))
        contact_sheet(rows, cell=128, title="RVSS: training view | novel views at perturbed poses").save(
            out_dir / "reports" / "rvss_sheet.png")
    report = {"category": category.name, "n_novel": len(poses), "scene_unit": unit,
              "seconds": round(time.perf_counter() - start, 1), "key": key}
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report
