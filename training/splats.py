"""Stage `splats` of `rpe-pad train`: fit the Gaussian model of a category's normal object.

Recipe (gsplat's simple_trainer, adapted): parameters as means / log-scales / quaternions /
logit-opacities / SH; loss ``(1 - l) L1 + l (1 - SSIM)`` with ``l = 0.2`` against a white
background; Adam per parameter with an exponentially decayed learning rate on the means;
densification by gsplat's ``DefaultStrategy`` (with its opacity reset re-enabled, see
:class:`ResettingStrategy`); SH degree raised every ``sh_degree_interval`` steps.

Initialisation without structure-from-motion: the objects sit on a uniform background, so
the silhouettes carve a visual hull. Random points in the cameras' common view volume are
kept when they project inside the silhouette in (almost) every training view, and take the
mean colour they project to. This starts the Gaussians on and inside the object instead of
in empty space; with too few survivors (no usable silhouettes) it falls back to uniform
random points in the volume, gsplat's own default.

Held-out calibration (``holdout_every = n > 0``, the ``cpu`` and ``paper`` presets): every
n-th training view (``holdout_indices``) is withheld for the first ``fold_in`` share of the
steps. The model at that step is saved as the *calibration model*, whose renders of the
withheld views are what ``training/calibrate.py`` calibrates on (views a model never saw, as
a customer's queries are); the withheld views then join for the remaining steps, so the
shipped model is fitted to every view. One fit gives both models (docs/SCORING.md). With
``folds`` > 1 (the presets: 5), the stage then fits the calibration models of the other folds,
every n-th view from another offset (``fold_offsets``): the same fit, stopped where its snapshot
is saved (``fit_folds``), so that with n folds every training view is held out of one calibration
model, and the calibration stage has n times the views (docs/RESULTS.md, session 36).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import reset_opa
from kornia.metrics import ssim as kornia_ssim
from PIL import Image
from safetensors.torch import load_file, save_file
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from models import camera
from models.bundle import FILES, REPORTS, WORK_FILES
from models.data import Category
from models.splat.scene import SH_C0, GaussianScene, render
from models.viz import Cell, contact_sheet


@dataclass
class SplatConfig:
    """Fitting settings (the resolved config is saved next to the result)."""

    iterations: int = 3000  # optimisation steps (one training view per step)
    image_size: int | None = 200  # width the views are fitted at; None = full resolution
    sh_degree: int = 3  # final SH degree (0 = view-independent colour)
    sh_degree_interval: int = 500  # raise the SH degree every this many steps
    init: str = "hull"  # "hull" (visual hull from silhouettes) or "random"
    init_points: int = 20_000  # initial Gaussians
    init_candidates: int = 400_000  # random points tested against the silhouettes
    hull_min_fraction: float = 0.95  # a point must fall inside this fraction of silhouettes
    ssim_lambda: float = 0.2  # weight of (1 - SSIM) in the loss
    lr_means: float = 1.6e-4  # times the scene scale; decays to 1% over the run
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    refine_start: int = 300  # densification window and cadence (DefaultStrategy)
    refine_stop: int = 2250
    refine_every: int = 100
    reset_every: int = 1000  # opacity reset period
    grow_grad2d: float = 2e-4
    prune_opa: float = 0.005
    max_gaussians: int = 80_000  # stop densifying above this count (CPU time and memory)
    checkpoint_every: int = 500  # steps between checkpoints (resume with the same command)
    fold_in: float = 0.8  # held-out calibration: share of the steps fitted without the held-out views
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.fold_in < 1.0:
            raise ValueError(f"fold_in must lie in (0, 1), got {self.fold_in}")


PRESETS: dict[str, SplatConfig] = {
    # The paper's setting, for a GPU: 30k steps at full resolution, SH degree 3.
    "paper": SplatConfig(
        iterations=30_000, image_size=None, sh_degree=3, sh_degree_interval=1000, init_points=100_000, refine_start=500,
        refine_stop=15_000, reset_every=3000, max_gaussians=1_000_000, checkpoint_every=5000,
    ),
    # A good model within minutes on 2 CPU cores at reduced resolution: 3000 steps and up to
    # 80 000 Gaussians, chosen over 2000 steps and 40 000 by `rpe-pad lab fidelity-study`
    # (docs/RESULTS.md, session 16; Lego reaches 50 000); SH degree 3, raised every 500 steps,
    # chosen over degree 1 by issue 22's rule (docs/RESULTS.md, sessions 38-41).
    "cpu": SplatConfig(),
    # The README's demo: small and quick.
    "demo": SplatConfig(
        iterations=600, image_size=None, sh_degree=0, init_points=8000, refine_start=150,
        refine_stop=500, reset_every=10_000, max_gaussians=20_000, checkpoint_every=300,
    ),
}


class ResettingStrategy(DefaultStrategy):
    """gsplat 1.5.3's DefaultStrategy with the periodic opacity reset working.

    In 1.5.3 the reset condition reads ``step % reset_every == 0 & step > 0``, which Python
    parses as a chained comparison with ``0 & step``, so it is never true. We apply the
    reset it intended, during the densification window as in the original 3DGS.
    """

    def step_post_backward(self, params, optimizers, state, step, info, packed=False):
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        if 0 < step < self.refine_stop_iter and step % self.reset_every == 0:
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)


@dataclass
class FitResult:
    scene: GaussianScene
    report: dict


def holdout_indices(n_views: int, every: int, offset: int | None = None) -> list[int]:
    """The training views a held-out calibration withholds: every ``every``-th from the
    ``offset``-th (default ``every // 2``: the fold the shipped fit folds back in), spread over the
    views' order (which follows the cameras' rings)."""
    own = offset is None or offset == every // 2  # the shipped fit's fold needs two views; another fold adds to it
    offset = every // 2 if offset is None else offset
    if every and not 0 <= offset < every:
        raise ValueError(f"a fold's offset must lie in [0, {every}), got {offset}")
    held = list(range(offset, n_views, every)) if every else []
    if every and (len(held) < (2 if own else 1) or n_views - len(held) < 2):
        raise ValueError(f"{n_views} training views are too few to hold out every {every}-th one for calibration")
    return held


def fold_offsets(every: int, folds: int) -> list[int]:
    """The offsets of the calibration folds (``holdout_indices``): the shipped fit's own,
    ``every // 2``, first, then the others from 0 up; ``folds`` of them (``every`` of them: each
    training view is held out of exactly one calibration model)."""
    if not every:
        return []
    if not 1 <= folds <= every:
        raise ValueError(f"folds must lie in [1, {every}] when every {every}-th view is held out, got {folds}")
    return [every // 2] + [o for o in range(every) if o != every // 2][: folds - 1]


def fold_in_step(cfg: SplatConfig) -> int:
    """The step at which withheld views join the fit (the calibration model's step)."""
    return max(1, min(cfg.iterations - 1, round(cfg.fold_in * cfg.iterations)))


def view_at(step: int, n_views: int, withheld: list[int], fold_step: int, seed: int) -> int:
    """The training view fitted at ``step``: a fresh permutation of the view pool per pass
    over it; before ``fold_step`` the pool lacks the ``withheld`` views."""
    if withheld and step < fold_step:
        held = set(withheld)
        pool = [i for i in range(n_views) if i not in held]
        epoch, pos = divmod(step, len(pool))
        return pool[int(torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))[pos])]
    if withheld:  # the folded-in phase: its own permutations over every view
        epoch, pos = divmod(step - fold_step, n_views)
        epoch += 50_000
    else:
        epoch, pos = divmod(step, n_views)
    return int(torch.randperm(n_views, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))[pos])


def scene_scale(poses: torch.Tensor) -> float:
    """gsplat's scene scale: 1.1 x the largest camera distance from the cameras' mean."""
    centres = camera.camera_center(poses)
    return float(1.1 * (centres - centres.mean(0)).norm(dim=-1).max())


def view_volume_half_size(category: Category) -> float:
    """Half-size of the cube every camera sees around the origin (the object's bounds)."""
    dist = camera.camera_center(category.train_poses()).norm(dim=-1).median()
    return float(dist * math.tan(0.5 * category.camera_angle_x))


def silhouettes(images: torch.Tensor, background: tuple[float, float, float], tol: float = 0.03) -> torch.Tensor:
    """Foreground masks [N, H, W] (pixels that differ from the background), dilated by 1 px."""
    bg = torch.tensor(background, dtype=images.dtype)
    fg = (images - bg).abs().amax(-1) > tol
    return F.max_pool2d(fg[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0


def init_points(category: Category, images: torch.Tensor, Ks: torch.Tensor, cfg: SplatConfig) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Initial means [M, 3], colours [M, 3] and the method used ("hull" or "random")."""
    gen = torch.Generator().manual_seed(cfg.seed)
    half = view_volume_half_size(category)
    poses = category.train_poses()
    if cfg.init == "hull":
        cand = (torch.rand(cfg.init_candidates, 3, generator=gen, dtype=torch.float64) * 2 - 1) * half
        masks = silhouettes(images, category.background)
        n_views, height, width = masks.shape
        inside = torch.zeros(len(cand), dtype=torch.int32)
        seen = torch.zeros(len(cand), dtype=torch.int32)
        colour_sum = torch.zeros(len(cand), 3, dtype=torch.float64)
        for v in range(n_views):
            uv, depth = camera.project_points(cand, poses[v], Ks[v])
            u, w = uv[:, 0].floor().long(), uv[:, 1].floor().long()
            ok = (depth > 0) & (u >= 0) & (u < width) & (w >= 0) & (w < height)
            seen += ok.int()
            hit = torch.zeros_like(ok)
            hit[ok] = masks[v, w[ok], u[ok]]
            inside += hit.int()
            colour_sum[hit] += images[v, w[hit], u[hit]].double()
        keep = (seen > 0) & (inside >= torch.ceil(cfg.hull_min_fraction * seen.float()).int())
        if int(keep.sum()) >= min(1000, cfg.init_points):
            idx = torch.nonzero(keep)[:, 0]
            idx = idx[torch.randperm(len(idx), generator=gen)[: cfg.init_points]]
            colours = (colour_sum[idx] / inside[idx, None].double()).float()
            return cand[idx].float(), colours, "hull"
    means = ((torch.rand(cfg.init_points, 3, generator=gen) * 2 - 1) * half).float()
    return means, torch.rand(cfg.init_points, 3, generator=gen), "random"


def init_params(means: torch.Tensor, colours: torch.Tensor, sh_degree: int) -> dict[str, torch.nn.Parameter]:
    """gsplat's trainer initialisation: scales from the mean distance to 3 neighbours,
    random rotations, opacity 0.1, DC colour from the point colours."""
    tree = cKDTree(means.numpy())
    dist, _ = tree.query(means.numpy(), k=4)
    avg = torch.from_numpy(np.sqrt((dist[:, 1:] ** 2).mean(-1))).float().clamp_min(1e-7)
    n = len(means)
    gen = torch.Generator().manual_seed(1)
    params = {
        "means": means.clone(),
        "scales": torch.log(avg)[:, None].repeat(1, 3),
        "quats": torch.rand(n, 4, generator=gen),
        "opacities": torch.logit(torch.full((n,), 0.1)),
        "sh0": ((colours - 0.5) / SH_C0)[:, None, :],
        "shN": torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3),
    }
    return {k: torch.nn.Parameter(v.contiguous()) for k, v in params.items()}


def _optimizers(params: dict, cfg: SplatConfig, scale: float) -> dict[str, torch.optim.Adam]:
    lrs = {
        "means": cfg.lr_means * scale, "scales": cfg.lr_scales, "quats": cfg.lr_quats,
        "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN,
    }
    return {k: torch.optim.Adam([{"params": params[k], "lr": lrs[k], "name": k}], eps=1e-15) for k in params}


def _ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of [C, H, W, 3] images (11x11 Gaussian window, as 3DGS)."""
    return kornia_ssim(a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2), window_size=11).mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def _save_checkpoint(path: Path, step: int, params: dict, optimizers: dict, strategy_state: dict, cfg: SplatConfig,
                     withheld: list[int]) -> None:
    tensors = {f"param.{k}": v.detach().cpu().contiguous() for k, v in params.items()}
    for k, opt in optimizers.items():
        st = opt.state.get(params[k], {})
        for name in ("exp_avg", "exp_avg_sq", "step"):
            if name in st:
                tensors[f"adam.{k}.{name}"] = torch.as_tensor(st[name]).detach().cpu().reshape(-1 if name == "step" else st[name].shape).contiguous()
    for name in ("grad2d", "count"):
        if strategy_state.get(name) is not None:
            tensors[f"strategy.{name}"] = strategy_state[name].cpu().contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"step": str(step), "config": json.dumps(config_record(cfg)),
                                                     "withheld": json.dumps(withheld)})
    tmp.replace(path)


def _load_checkpoint(path: Path, params: dict, optimizers: dict, strategy_state: dict, cfg: SplatConfig,
                     withheld: list[int], max_step: int) -> int:
    """Resume from ``path``: its step, or 0 (start over) when it was written for another
    config or view schedule, or lies beyond ``max_step``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    if (json.loads(meta.get("config", "{}")) != config_record(cfg) or json.loads(meta.get("withheld", "[]")) != withheld
            or int(meta.get("step", 0)) > max_step):
        return 0  # a different run (or one past a calibration model that is lost): start over rather than mix runs
    device = params["means"].device
    tensors = {k: v.to(device) for k, v in load_file(str(path)).items()}
    for k in list(params):
        params[k] = torch.nn.Parameter(tensors[f"param.{k}"])
        group = optimizers[k].param_groups[0]
        group["params"] = [params[k]]
        optimizers[k].state.clear()
        if f"adam.{k}.exp_avg" in tensors:
            optimizers[k].state[params[k]] = {
                # on the CPU, as Adam keeps it outside capturable or fused mode (on CUDA each step synced)
                "step": tensors[f"adam.{k}.step"].reshape(()).cpu(),
                "exp_avg": tensors[f"adam.{k}.exp_avg"],
                "exp_avg_sq": tensors[f"adam.{k}.exp_avg_sq"],
            }
    for name in ("grad2d", "count"):
        if f"strategy.{name}" in tensors:
            strategy_state[name] = tensors[f"strategy.{name}"]
    return int(meta["step"])


def default_device() -> torch.device:
    """CUDA (gsplat kernels) when present, else CPU (our rasterizer)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _scene(params: dict, cfg: SplatConfig, category: Category, scale: float) -> GaussianScene:
    normalization = {
        "scene_scale": scale,
        "camera_distance_median": float(camera.camera_center(category.train_poses()).norm(dim=-1).median()),
        "view_volume_half_size": view_volume_half_size(category),
    }
    scene = GaussianScene.from_params(
        {k: v.detach().cpu() for k, v in params.items()}, sh_degree=cfg.sh_degree,
        background=tuple(category.background), normalization=normalization,
    )
    scene.validate("fitted scene")
    return scene


def fit_splats(
    category: Category, cfg: SplatConfig, work_dir: Path, progress: bool = True, device: torch.device | None = None,
    desc: str | None = None, withheld: list[int] | None = None, snapshot: Path | None = None,
    until_snapshot: bool = False,
) -> FitResult:
    """Fit the Gaussian model to ``category``'s training views (already at ``cfg.image_size``).

    With ``withheld`` view indices, those views are left out until ``fold_in_step(cfg)``,
    where the model is saved to ``snapshot`` (the calibration model) before they join;
    ``until_snapshot`` stops the fit there (a calibration model of another fold, nothing more).
    Writes ``work_dir/checkpoint.safetensors`` every ``cfg.checkpoint_every`` steps and
    resumes from it when it matches ``cfg`` (and, past the fold-in, the snapshot exists).
    """
    withheld = sorted(withheld or [])
    if withheld and snapshot is None:
        raise ValueError("withholding views needs a snapshot path for the calibration model")
    if until_snapshot and not withheld:
        raise ValueError("stopping at the snapshot needs withheld views")
    device = device or default_device()
    torch.manual_seed(cfg.seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    start_time = time.perf_counter()
    images_cpu = category.train_images()  # [V, H, W, 3]
    Ks_cpu = torch.stack([v.K for v in category.train])
    n_views, height, width = images_cpu.shape[:3]
    scale = scene_scale(category.train_poses())

    means, colours, init_method = init_points(category, images_cpu, Ks_cpu, cfg)
    params = {k: torch.nn.Parameter(v.detach().to(device)) for k, v in init_params(means, colours, cfg.sh_degree).items()}
    images = images_cpu.to(device)
    poses = category.train_poses().float().to(device)
    Ks = Ks_cpu.float().to(device)
    optimizers = _optimizers(params, cfg, scale)
    strategy = ResettingStrategy(
        prune_opa=cfg.prune_opa, grow_grad2d=cfg.grow_grad2d, refine_start_iter=cfg.refine_start,
        refine_stop_iter=cfg.refine_stop, refine_every=cfg.refine_every, reset_every=cfg.reset_every,
    )
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=scale)

    ckpt = work_dir / PurePosixPath(WORK_FILES["splats_checkpoint"]).name
    fold_step = fold_in_step(cfg)
    max_step = fold_step if withheld and not snapshot.is_file() else cfg.iterations  # past the fold-in needs its snapshot
    step0 = _load_checkpoint(ckpt, params, optimizers, state, cfg, withheld, max_step) if ckpt.is_file() else 0
    gamma = 0.01 ** (1.0 / max(cfg.iterations, 1))
    for group in optimizers["means"].param_groups:
        group["lr"] = cfg.lr_means * scale * gamma**step0

    bg = torch.tensor(category.background, dtype=torch.float32, device=device)
    bar = tqdm(range(step0, cfg.iterations), desc=desc or f"splats {category.name}", disable=not progress,
               initial=step0, total=cfg.iterations)
    last = {"loss": float("nan"), "psnr": float("nan")}
    snapshot_gaussians = None
    for step in bar:
        if withheld and step == fold_step:
            snapshot.parent.mkdir(parents=True, exist_ok=True)
            _scene(params, cfg, category, scale).save(snapshot)
            snapshot_gaussians = len(params["means"])
            if until_snapshot:
                break
        view = view_at(step, n_views, withheld, fold_step, cfg.seed)
        sh_now = min(step // cfg.sh_degree_interval, cfg.sh_degree)
        out = render(params, poses[view : view + 1], Ks[view : view + 1], width, height,
                     background=bg, sh_degree=sh_now)
        strategy.step_pre_backward(params, optimizers, state, step, out.meta)
        target = images[view : view + 1]
        l1 = (out.colors - target).abs().mean()
        loss = (1.0 - cfg.ssim_lambda) * l1 + cfg.ssim_lambda * (1.0 - _ssim(out.colors, target))
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        for group in optimizers["means"].param_groups:
            group["lr"] *= gamma
        if len(params["means"]) > cfg.max_gaussians and strategy.refine_stop_iter > step:
            strategy.refine_stop_iter = step  # enough Gaussians: stop growing from here on
        strategy.step_post_backward(params, optimizers, state, step, out.meta)
        if step % 10 == 0:
            last = {"loss": float(loss.detach()), "psnr": psnr(out.colors.detach().clamp(0, 1), target)}
            bar.set_postfix(loss=f"{last['loss']:.4f}", psnr=f"{last['psnr']:.2f}", gaussians=str(len(params["means"])))
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.iterations:
            _save_checkpoint(ckpt, step + 1, params, optimizers, state, cfg, withheld)
    bar.close()

    scene = _scene(params, cfg, category, scale)
    report = {
        "num_gaussians": scene.num_gaussians,
        "init": init_method,
        "iterations": cfg.iterations,
        "train_size": [width, height],
        "seconds_fit": round(time.perf_counter() - start_time, 1),
        "train_psnr_last": round(last["psnr"], 3),
        "resumed_from_step": step0,
        "device": str(device),
    }
    if withheld:
        report["calibration_model"] = {"fold_in_step": fold_step, "withheld_views": len(withheld),
                                       "num_gaussians": snapshot_gaussians}
    return FitResult(scene, report)


@torch.no_grad()
def evaluate_views(scene: GaussianScene, images: torch.Tensor, poses: torch.Tensor, Ks: torch.Tensor) -> dict:
    """PSNR / SSIM of renders at the given poses against the images [V, H, W, 3] (on the CPU);
    the renders run on the scene's device and come back on the CPU."""
    height, width = images.shape[1:3]
    psnrs, ssims, renders = [], [], []
    for i in range(len(images)):
        out = render(scene, poses[i : i + 1].float(), Ks[i : i + 1].float(), width, height).colors.clamp(0, 1).cpu()
        renders.append(out[0])
        psnrs.append(psnr(out, images[i : i + 1]))
        ssims.append(float(_ssim(out, images[i : i + 1])))
    return {"psnr": psnrs, "ssim": ssims, "renders": renders}


def comparison_sheet(names: list[str], truths: list[torch.Tensor], renders: list[torch.Tensor], psnrs: list[float]) -> Image.Image:
    """Contact sheet: truth | render | error (x4, clipped) per row."""
    rows = []
    for name, truth, rend, value in zip(names, truths, renders, psnrs):
        err = ((truth - rend).abs().amax(-1) * 4).clamp(0, 1).numpy()
        rows.append((name.split("/", 1)[-1], [Cell(truth.numpy(), "photo"), Cell(rend.numpy(), f"render, PSNR {value:.2f} dB"),
                                               Cell(err, "|error| x4 (white: 0.25+)")]))
    return contact_sheet(rows, cell=160, title="Gaussian model at the photos' true poses: photo | render | error")


def calibration_key(category: Category, cfg: SplatConfig, holdout_every: int, offset: int | None = None) -> dict:
    """What a calibration model was fitted with: the settings and the views it saw
    (``WORK_FILES["calibration_scene_key"]`` for the shipped fit's own fold, ``fold_paths``' key for
    another fold, which also names its ``offset``; the calibration stage and the self-check read them)."""
    held = set(holdout_indices(len(category.train), holdout_every, offset))
    key = {"splats": config_record(cfg), "holdout_every": holdout_every, "fold_in_step": fold_in_step(cfg),
           "views": [v.name for i, v in enumerate(category.train) if i not in held]}
    return key if offset is None or offset == holdout_every // 2 else {**key, "offset": offset}


def fold_paths(work: Path, holdout_every: int, offset: int) -> tuple[Path, Path]:
    """The calibration model of the fold from ``offset`` and its key, in the work folder: the shipped
    fit's snapshot for its own fold, ``calibration/fold<offset>.safetensors`` for another."""
    if offset == holdout_every // 2:
        return work / WORK_FILES["calibration_scene"], work / WORK_FILES["calibration_scene_key"]
    folder = work / WORK_FILES["calibration_folds"]
    return folder / f"fold{offset}.safetensors", folder / f"fold{offset}.json"


def _fold_ready(work: Path, category: Category, cfg: SplatConfig, holdout_every: int, offset: int) -> bool:
    path, key_path = fold_paths(work, holdout_every, offset)
    try:
        if json.loads(key_path.read_text()) != calibration_key(category, cfg, holdout_every, offset):
            return False
        GaussianScene.load(path)
        return True
    except (OSError, ValueError):
        return False


def fit_folds(category: Category, cfg: SplatConfig, out_dir: Path, holdout_every: int, folds: int,
              progress: bool = True, device: torch.device | None = None) -> dict:
    """The calibration models of the folds other than the shipped fit's own (``fold_offsets``): the
    same fit withholding another fold, stopped at the fold-in step where its snapshot is saved. A
    fold whose model and key are in place is kept. Returns each fold's report, by offset (none
    without held-out views or with one fold)."""
    reports = {}
    for offset in fold_offsets(holdout_every, folds)[1:]:
        path, key_path = fold_paths(out_dir, holdout_every, offset)
        if _fold_ready(out_dir, category, cfg, holdout_every, offset):
            reports[str(offset)] = {"skipped": True}
            continue
        key_path.unlink(missing_ok=True)
        start = time.perf_counter()
        work = out_dir / WORK_FILES["calibration_folds"] / f"fold{offset}_work"
        result = fit_splats(category, cfg, work, progress=progress, device=device,
                            desc=f"calibration fold {offset} {category.name}",
                            withheld=holdout_indices(len(category.train), holdout_every, offset),
                            snapshot=path, until_snapshot=True)
        shutil.rmtree(work, ignore_errors=True)
        key_path.write_text(json.dumps(calibration_key(category, cfg, holdout_every, offset), indent=2) + "\n")
        reports[str(offset)] = {"num_gaussians": result.scene.num_gaussians,
                                "seconds": round(time.perf_counter() - start, 1)}
    return reports


def run_splats_stage(category: Category, cfg: SplatConfig, out_dir: Path, progress: bool = True,
                     holdout_every: int = 0, device: torch.device | None = None, folds: int = 1) -> dict:
    """Fit, save the scene and its resolved config, and write the report and its contact
    sheet (paths in ``models.bundle``), measured on ``test/good`` views rendered at their
    true poses (held-out training views when there are none). With ``holdout_every`` (the
    calibration stage's), the fit also leaves the calibration model and its key, and with
    ``folds`` > 1 the calibration models of as many folds in all (``fit_folds``). A valid fit
    is kept, and only the folds it lacks are fitted."""
    start = time.perf_counter()
    previous = _previous_report(out_dir, cfg, category, holdout_every)
    if previous is not None:
        fits = fit_folds(category, cfg, out_dir, holdout_every, folds, progress, device)
        if all(r.get("skipped") for r in fits.values()):
            return {**previous, "skipped": True}
        kept = previous.get("calibration_folds", {})
        report = {**previous, "calibration_folds": {o: kept.get(o, r) if r.get("skipped") else r for o, r in fits.items()},
                  "seconds": round(previous["seconds"] + sum(r.get("seconds", 0.0) for r in fits.values()), 1)}
        (out_dir / REPORTS["splats"]).write_text(json.dumps(report, indent=2) + "\n")
        return report
    (out_dir / REPORTS["splats"]).parent.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / WORK_FILES["splats_checkpoint"]
    snapshot, key_path = out_dir / WORK_FILES["calibration_scene"], out_dir / WORK_FILES["calibration_scene_key"]
    key_path.unlink(missing_ok=True)  # valid again only once this fit has written its snapshot
    result = fit_splats(category, cfg, checkpoint.parent, progress=progress, device=device,
                        withheld=holdout_indices(len(category.train), holdout_every), snapshot=snapshot)
    result.scene.save(out_dir / FILES["scene"])
    (out_dir / WORK_FILES["splats_config"]).write_text(json.dumps(config_record(cfg), indent=2) + "\n")
    if holdout_every:
        key_path.write_text(json.dumps(calibration_key(category, cfg, holdout_every), indent=2) + "\n")
        if result.report["calibration_model"]["num_gaussians"] is None:  # resumed past the fold-in
            result.report["calibration_model"]["num_gaussians"] = GaussianScene.load(snapshot).num_gaussians
    else:
        snapshot.unlink(missing_ok=True)
    checkpoint.unlink(missing_ok=True)
    fits = fit_folds(category, cfg, out_dir, holdout_every, folds, progress, device)

    good = [q for q in category.test if q.label == "good" and q.w2c is not None]
    if good:
        names = [q.name for q in good]
        images = torch.stack([q.image for q in good])
        poses = torch.stack([q.w2c for q in good])
        Ks = torch.stack([q.K for q in good])
        source = "test/good at true poses"
    else:
        sel = category.train[:: max(1, len(category.train) // 8)]
        names, images = [v.name for v in sel], torch.stack([v.image for v in sel])
        poses, Ks = torch.stack([v.w2c for v in sel]), torch.stack([v.K for v in sel])
        source = "training views (no test/good poses in this category)"
    # On the fit's device: gsplat on CUDA, the renders the service will make (the scene comes back on the CPU).
    ev = evaluate_views(result.scene.to(device or default_device()), images, poses, Ks)
    report = {
        "category": category.name,
        "psnr_test_mean": round(float(np.mean(ev["psnr"])), 3),
        "ssim_test_mean": round(float(np.mean(ev["ssim"])), 4),
        "psnr_test": [round(v, 3) for v in ev["psnr"]],
        "eval_views": source,
        **result.report,
        **({"calibration_folds": fits} if fits else {}),
        "seconds": round(time.perf_counter() - start, 1),
        "config": config_record(cfg),
    }
    (out_dir / REPORTS["splats"]).write_text(json.dumps(report, indent=2) + "\n")
    comparison_sheet(names, list(images), ev["renders"], ev["psnr"]).save(out_dir / REPORTS["splats_sheet"])
    return report


def _previous_report(out_dir: Path, cfg: SplatConfig, category: Category, holdout_every: int) -> dict | None:
    """The stage's report when its valid output exists for the same config (and, with a
    held-out calibration, its calibration model for the same views), else None."""
    try:
        if json.loads((out_dir / WORK_FILES["splats_config"]).read_text()) != config_record(cfg):
            return None
        GaussianScene.load(out_dir / FILES["scene"])
        key_path = out_dir / WORK_FILES["calibration_scene_key"]
        if not holdout_every:  # a fit that withheld views is another fit
            return None if key_path.exists() else json.loads((out_dir / REPORTS["splats"]).read_text())
        if json.loads(key_path.read_text()) != calibration_key(category, cfg, holdout_every):
            return None
        GaussianScene.load(out_dir / WORK_FILES["calibration_scene"])
        return json.loads((out_dir / REPORTS["splats"]).read_text())
    except (OSError, ValueError):
        return None


def config_record(cfg: SplatConfig) -> dict:
    """``cfg`` as work folders record it (checkpoints, the stage's config, calibration keys). The
    retired ``rasterize_mode`` (session 46: every fit is ``classic``) stays in the record, as every
    fit before had it, so work folders made before its retirement are still reused."""
    return {**asdict(cfg), "rasterize_mode": "classic"}


def preset(name: str, **overrides) -> SplatConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
