"""The `rvss` stage of `rpe-pad train`: the novel set (paper: RVSS).

For each training pose, ``m`` perturbed poses ``P' = D P`` (``models.camera.perturb_pose``:
axis-angle noise with std ``sigma_r`` radians, translation noise with std ``sigma_t``
normalised scene units, ``models.irprn.scene_unit``), rendered with the category's
Gaussian model at the category's image size. Output ``rvss/novel.safetensors``: images
uint8 ``[N, H, W, 3]``, poses float64 ``[N, 4, 4]``, the index of the training view each
one perturbs; ``rvss/config.json``; ``reports/rvss_sheet.png``. ``m = 0`` switches RVSS
off (an empty novel set), for the paper's ablation.

``orbit_m > 0`` adds, per training view, that many wider views beyond the paper's: the
camera carried around the object (``models.camera.orbit_pose``) by a random angle in
``[orbit_min_deg, orbit_max_deg]`` about a random axis, its distance scaled by a factor
within ``1 +- orbit_radius``, then perturbed as above. The paper's perturbations move a
view by a degree or two, so its training pairs are either near copies or two training
poses; the orbit views fill the offsets in between, in every direction, and make the
gallery denser (docs/POSE.md, revision 3). ``training.pipeline.RVSS_ORBIT`` sets them per
preset.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from models.bundle import FILES, REPORTS, WORK_FILES
from models.camera import orbit_pose, perturb_pose, random_orbit
from models.data import Category
from models.hashing import sha256_file
from models.images import to_uint8
from models.irprn import scene_unit
from models.splat.scene import GaussianScene
from models.viz import Cell, contact_sheet
from training.evaluate import render_references
from training.splats import default_device


@dataclass(frozen=True)
class RVSSConfig:
    m: int = 3
    sigma_r: float = 0.02
    sigma_t: float = 0.1
    seed: int = 0
    batch: int = 8
    orbit_m: int = 0
    orbit_min_deg: float = 2.0
    orbit_max_deg: float = 12.0
    orbit_radius: float = 0.08  # and the camera distance scaled by a factor uniform in 1 +- this

    def __post_init__(self) -> None:
        if self.m < 0 or self.orbit_m < 0:
            raise ValueError(f"m and orbit_m must be >= 0, got {self.m}, {self.orbit_m}")
        if not 0 <= self.orbit_radius < 1:
            raise ValueError(f"orbit_radius must be in [0, 1), got {self.orbit_radius}")
        if not 0 <= self.orbit_min_deg <= self.orbit_max_deg:
            raise ValueError(f"orbit angles need 0 <= orbit_min_deg <= orbit_max_deg, got "
                             f"{self.orbit_min_deg}, {self.orbit_max_deg}")

    def key(self) -> dict:
        """What the novel set depends on (without the orbit fields while they are off, so
        earlier work folders stay valid)."""
        out = asdict(self)
        if not self.orbit_m:
            for name in ("orbit_m", "orbit_min_deg", "orbit_max_deg", "orbit_radius"):
                out.pop(name)
        return out


@dataclass
class NovelSet:
    images: torch.Tensor  # [N, H, W, 3] float32 in [0, 1]
    poses: torch.Tensor  # [N, 4, 4] float64
    parents: torch.Tensor  # [N] int64: index of the perturbed training view


def novel_poses(train_poses: torch.Tensor, cfg: RVSSConfig, unit: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` perturbed poses per training pose (repeated in order), then ``orbit_m`` orbit
    views per training pose (module docstring), and the training view each one comes from."""
    gen = torch.Generator().manual_seed(cfg.seed)
    parents = torch.arange(len(train_poses)).repeat_interleave(cfg.m)
    poses = perturb_pose(train_poses[parents].double(), cfg.sigma_r, cfg.sigma_t * unit, gen)
    if cfg.orbit_m:
        orbit_parents = torch.arange(len(train_poses)).repeat_interleave(cfg.orbit_m)
        moved = orbit_pose(train_poses[orbit_parents].double(),
                           random_orbit(len(orbit_parents), cfg.orbit_min_deg, cfg.orbit_max_deg, gen))
        scale = 1 + (2 * torch.rand(len(moved), 1, generator=gen, dtype=torch.float64) - 1) * cfg.orbit_radius
        moved[:, :3, 3] *= scale  # C' = s C with the same orientation: t' = s t
        poses = torch.cat([poses, perturb_pose(moved, cfg.sigma_r, cfg.sigma_t * unit, gen)])
        parents = torch.cat([parents, orbit_parents])
    return poses, parents


def load_novel(path: Path) -> NovelSet:
    t = load_file(str(path))
    return NovelSet(t["images"].float() / 255.0, t["poses"], t["parents"])


def run_rvss_stage(category: Category, cfg: RVSSConfig, out_dir: Path, progress: bool = True,
                   device: torch.device | None = None) -> dict:
    """Render the novel views; the scene renders on ``device`` (default: CUDA when present)."""
    start = time.perf_counter()
    scene_path = out_dir / FILES["scene"]
    if not scene_path.is_file():
        raise FileNotFoundError(f"{scene_path} is missing: run the splats stage first")
    novel_path, report_path = out_dir / WORK_FILES["novel"], out_dir / REPORTS["rvss"]
    key = {"config": cfg.key(), "scene_sha256": sha256_file(scene_path),
           "image_size": [category.width, category.height]}
    try:
        previous = json.loads(report_path.read_text())
        load_novel(novel_path)
        if previous.get("key") == key:
            return {**previous, "skipped": True}
    except (OSError, ValueError, KeyError):
        pass
    device = device or default_device()
    scene = GaussianScene.load(scene_path, device=device)
    unit = scene_unit(scene.normalization.get("camera_distance_median", 4.0))
    poses, parents = novel_poses(category.train_poses(), cfg, unit)
    K = category.K.float()
    images = []
    for i in tqdm(range(0, len(poses), cfg.batch), desc="rvss", unit="batch", disable=not progress):
        p = poses[i : i + cfg.batch]
        images.append(render_references(scene, p, K.expand(len(p), 3, 3), category.width, category.height, cfg.batch))
    rgb = torch.cat(images) if images else torch.zeros(0, category.height, category.width, 3)
    novel_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"images": torch.from_numpy(to_uint8(rgb.numpy())).contiguous(), "poses": poses.contiguous(),
               "parents": parents.contiguous()}, str(novel_path))
    (out_dir / WORK_FILES["rvss_config"]).write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    if len(rgb):
        rows = []
        for j in range(min(4, len(category.train))):
            kids = (parents == j).nonzero().flatten().tolist()
            cells = [Cell(category.train[j].image.numpy(), "training view")]
            cells += [Cell(rgb[k].numpy(), f"novel {n + 1}") for n, k in enumerate(kids[: cfg.m])]
            cells += [Cell(rgb[k].numpy(), f"orbit {n + 1}") for n, k in enumerate(kids[cfg.m : cfg.m + 3])]
            rows.append((category.train[j].name.split("/")[-1], cells))
        contact_sheet(rows, cell=128, title="RVSS: training view | novel views at perturbed poses").save(
            out_dir / REPORTS["rvss_sheet"])
    report = {"category": category.name, "n_novel": len(poses), "scene_unit": unit,
              "seconds": round(time.perf_counter() - start, 1), "device": str(device), "key": key}
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report
