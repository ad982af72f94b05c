"""The `irprn` stage of `rpe-pad train`: train IRPRN (the gallery stage: ``training/gallery.py``).

Training pairs (query, gallery view): every query is paired with its top-K training views
by descriptor similarity (``models.irprn.descriptor`` of the pretrained encoder; the paper
uses LoFTR), rank i = 1..K; a query is never paired with itself (the paper's pairing;
keeping relatives apart, or drawing the gallery side from the novel views too, measured
worse: docs/POSE.md, revision 2).

- queries: the RVSS novel views (``use_novel``, the paper's design) and, with
  ``train_queries``, the training views themselves (real photographs on the query side,
  as at inference; the only queries when RVSS is off);
- augmentation, on the query side only: ``augment_copies`` extra copies of each query,
  turned in-plane by a uniform angle within +-``max_roll_deg`` (exact: rotating a pinhole
  image about its principal point IS a camera roll, ``models.camera.roll_pose``, so the
  target moves with it; the synthetic and real query sets hold rolls the training poses
  lack), with brightness/contrast jitter (+-``color_jitter``: real queries are not lit like
  renders);
- loss: ``models.irprn.HomoscedasticLoss`` over the coarse and every refinement stage,
  each pair weighted by its MPTS weight (``mpts``; uniform otherwise);
- with a frozen backbone (``freeze_backbone``, the CPU presets) the encoder features of
  every query copy and training view are computed once and the pair head trains on them;
  otherwise (the paper preset) the whole network trains on images;
- device: CUDA when present (``training.splats.default_device``, as the stages that render),
  else the CPU. The images stay on the CPU and move there a batch at a time; the trained
  network comes back on the CPU (the ONNX export and the bundle are made there), and a
  checkpoint holds CPU tensors, so a build resumes on either device.

Targets: ``P_rel = P_q inv(P_g)`` as a canonical wxyz quaternion and its translation in
scene units (``models.irprn.relative_targets``).
Outputs (paths in ``models.bundle``): the weights, the network's config, the report and
its training curve.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from models.bundle import FILES, REPORTS, WORK_FILES
from models.camera import roll_pose
from models.data import Category
from models.hashing import sha256_file
from models.irprn import (
    IRPRN,
    HomoscedasticLoss,
    IRPRNConfig,
    descriptor,
    encode,
    load_irprn,
    mpts_weights,
    relative_targets,
    save_irprn,
    scene_unit,
)
from models.pose import roll_images
from models.splat.scene import GaussianScene
from training.rvss import NovelSet, load_novel
from training.splats import default_device


@dataclass(frozen=True)
class IRPRNTrainConfig:
    model: IRPRNConfig = field(default_factory=IRPRNConfig)
    k: int = 3
    mpts: bool = True
    use_novel: bool = True
    train_queries: bool = True
    augment_copies: int = 2
    max_roll_deg: float = 20.0
    color_jitter: float = 0.1
    freeze_backbone: bool = True
    epochs: int = 40
    batch: int = 32
    lr: float = 1e-3
    lr_drop_epoch: int = 25  # lr x 0.1 from this epoch on (paper: 1e-3 -> 1e-4 after 20 of 35)
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    checkpoint_every: int = 10
    seed: int = 0
    holdout: int = 0  # training views held out of training (and their novel views): a validation set (holdout_views)

    def __post_init__(self) -> None:
        if self.holdout < 0:
            raise ValueError(f"holdout must be >= 0, got {self.holdout}")

    def to_dict(self) -> dict:
        """The fields, the model's as ``IRPRNConfig.to_dict``, and the retired pairing options
        at the value they kept, in the order they were always written (without ``holdout``
        while it is off): a default config's dict, hence its stage key, is unchanged, so
        earlier work folders stay valid."""
        values = {**asdict(self), "model": self.model.to_dict(), **RETIRED_PAIRING}
        out = {name: values[name] for name in _SAVED_ORDER}
        if self.holdout:
            out["holdout"] = self.holdout
        return out


# The pairing options retired after measurement (docs/POSE.md, revision 2), at the value kept.
RETIRED_PAIRING = {"pair_pool": "train", "pair_exclude": "self"}
_SAVED_ORDER = ("model", "k", "mpts", "use_novel", "train_queries", "augment_copies", "max_roll_deg", "color_jitter",
                "freeze_backbone", "epochs", "batch", "lr", "lr_drop_epoch", "weight_decay", "val_fraction",
                "pair_pool", "pair_exclude", "checkpoint_every", "seed")
PRESETS = {
    "demo": IRPRNTrainConfig(epochs=12, augment_copies=1, lr_drop_epoch=8),
    "cpu": IRPRNTrainConfig(epochs=25, lr_drop_epoch=18),
    "paper": IRPRNTrainConfig(epochs=35, lr_drop_epoch=20, freeze_backbone=False),
}


def preset(name: str, **overrides) -> IRPRNTrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def holdout_views(n_train: int, n: int) -> torch.Tensor:
    """Indices of the ``n`` training views held out for validation: spread evenly through the
    capture order (MAD: rings of azimuths), so they sample every part of the view sphere.
    Neither they nor the novel views rendered from their poses enter IRPRN's training pairs,
    and a validation query is matched against a gallery without them
    (``heldout_gallery_mask``): real photographs the network never saw, posed like queries."""
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    if not 0 < n <= n_train - 2:
        raise ValueError(f"can hold out 1..{n_train - 2} of {n_train} training views, not {n}")
    return torch.linspace(0, n_train - 1, n, dtype=torch.float64).round().long()


def trained_holdout(irprn_dir: Path) -> int:
    """How many training views the network in ``irprn_dir`` was trained without
    (``IRPRNTrainConfig.holdout`` in its ``config.json``; 0 when none or no network yet)."""
    path = Path(irprn_dir) / PurePosixPath(FILES["irprn_config"]).name
    return int(json.loads(path.read_text()).get("train", {}).get("holdout", 0)) if path.is_file() else 0


def heldout_gallery_mask(n_train: int, parents: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
    """Bool ``[n_train + N]`` over a gallery of training views then novel views (``build_gallery``
    order): True for the views a held-out query may be matched with, i.e. neither a held-out
    training view nor a novel view rendered from one."""
    is_held = torch.zeros(n_train, dtype=torch.bool)
    is_held[held] = True
    return ~torch.cat([is_held, is_held[parents.long()]])


@dataclass
class QuerySet:
    """Query copies: images [Q, H, W, 3], poses [Q, 4, 4], the source image index [Q]."""

    images: torch.Tensor
    poses: torch.Tensor
    origin: torch.Tensor


def augment(images: torch.Tensor, poses: torch.Tensor, cfg: IRPRNTrainConfig, gen: torch.Generator) -> QuerySet:
    """The originals plus ``augment_copies`` rolled, colour-jittered copies of each."""
    n = len(images)
    out_img, out_pose, origin = [images], [poses], [torch.arange(n)]
    for _ in range(cfg.augment_copies):
        angles = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * cfg.max_roll_deg
        x = roll_images(images, angles.float()).permute(0, 3, 1, 2)
        gain = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * cfg.color_jitter
        contrast = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * cfg.color_jitter
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean) * gain
        out_img.append(x.clamp(0, 1).permute(0, 2, 3, 1))
        out_pose.append(roll_pose(poses, angles))
        origin.append(torch.arange(n))
    return QuerySet(torch.cat(out_img), torch.cat(out_pose), torch.cat(origin))


def pair_targets(query_poses: torch.Tensor, gallery_poses: torch.Tensor, unit: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative pose targets: canonical wxyz quaternion [P, 4] and t [P, 3] in scene units
    (``models.irprn.relative_targets``)."""
    q, t = relative_targets(query_poses, gallery_poses, unit)
    return q.float(), t.float()


def build_pairs(query_desc: torch.Tensor, cand_desc: torch.Tensor, k: int, query_family: torch.Tensor,
                cand_family: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k candidate views per query (cosine), never one of the query's own family
    (``query_family[i] == cand_family[j]`` excludes candidate j for query i; -1 matches
    nothing). Returns candidate ids [Q, k] and ranks 0..k-1."""
    sims = query_desc @ cand_desc.T
    sims = sims.masked_fill((query_family[:, None] == cand_family[None, :]) & (query_family[:, None] >= 0),
                            float("-inf"))
    allowed = torch.isfinite(sims).sum(dim=1).min().item() if len(sims) else 0
    ids = sims.topk(min(k, int(allowed)), dim=1).indices
    return ids, torch.arange(ids.shape[1]).expand_as(ids)


def pair_families(n_train: int, n_novel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Family ids of the novel views ``[n_novel]`` and of the training views ``[n_train]`` for
    ``build_pairs``: every view is its own family, so a training view is never paired with
    itself (a novel view may be paired with the training view it perturbs, a near copy:
    the paper's pairing, docs/POSE.md revision 2)."""
    return n_train + torch.arange(n_novel), torch.arange(n_train)


def _flat_state(prefix: str, state: dict) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            out.update(_flat_state(name, value))
        elif isinstance(value, torch.Tensor):
            out[name] = value.detach().cpu().clone().contiguous()
        elif isinstance(value, int | float):
            out[name] = torch.tensor(value, dtype=torch.float64)
    return out


def _curve(history: list[dict]) -> Figure:
    fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")  # the labels are never cut
    ax = fig.add_subplot()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["val_rot_deg_coarse"] for h in history], label="coarse stage")
    ax.plot(epochs, [h["val_rot_deg"] for h in history], label="last stage")
    ax.set_xlabel("epoch")
    ax.set_ylabel("relative rotation error\n(degrees, median)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())  # 2, 5, 10 rather than 2x10^0
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_title("IRPRN on its held-out queries (novel renders and augmented training views)", fontsize=10)
    ax.legend()
    return fig


def train_irprn(category: Category, novel: NovelSet, unit: float, cfg: IRPRNTrainConfig, work_dir: Path,
                progress: bool = True, device: torch.device | None = None) -> tuple[IRPRN, dict]:
    """Train IRPRN on the category's pairs on ``device`` (default: CUDA when present); resumable
    from ``work_dir/checkpoint.safetensors``. The network comes back on the CPU."""
    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # the pairs' order: drawn on the CPU whatever the device
    model_cfg = cfg.model
    net = IRPRN(model_cfg).to(device)  # initialised on the CPU, so the same start on either device
    size = model_cfg.input_size
    train_images = torch.stack([v.image for v in category.train])
    train_poses = category.train_poses().double()
    n_all = len(train_images)
    held = holdout_views(n_all, cfg.holdout)
    keep = heldout_gallery_mask(n_all, novel.parents, held)
    kept_novel = keep[n_all:].nonzero().flatten()
    train_images, train_poses = train_images[keep[:n_all]], train_poses[keep[:n_all]]
    n_train = len(train_images)

    # Query images: novel views and/or training views, each with its family id (pair_families),
    # less the held-out views and the novel views rendered from them. The gallery side of
    # the pairs: the kept training views.
    use_novel = cfg.use_novel and len(kept_novel) > 0
    n_novel = len(kept_novel) if use_novel else 0
    novel_images, novel_poses = novel.images, novel.poses.double()
    if len(held):  # (indexing copies the images: only when something is held out)
        novel_images, novel_poses = novel_images[kept_novel], novel_poses[kept_novel]
    novel_family, train_family = pair_families(n_train, n_novel)
    q_images, q_poses, q_family = [], [], []
    if use_novel:
        q_images.append(novel_images)
        q_poses.append(novel_poses)
        q_family.append(novel_family)
    if cfg.train_queries or not use_novel:
        q_images.append(train_images)
        q_poses.append(train_poses)
        q_family.append(train_family)
    base_images, base_poses, base_family = torch.cat(q_images), torch.cat(q_poses), torch.cat(q_family)
    queries = augment(base_images, base_poses, cfg, gen)

    # Held-out query images (all their copies): the validation pairs.
    n_base = len(base_images)
    perm = torch.randperm(n_base, generator=gen)
    val_base = set(perm[: max(1, round(cfg.val_fraction * n_base))].tolist())
    is_val = torch.tensor([int(o) in val_base for o in queries.origin])

    bar = tqdm(total=len(queries.images) + n_train, desc="irprn: encode", unit="img", disable=not progress)
    encoder = net.encoder.eval()
    train_feats = encode(encoder, train_images, size)
    bar.update(n_train)
    query_feats = []
    for i in range(0, len(queries.images), 64):
        query_feats.append(encode(encoder, queries.images[i : i + 64], size))
        bar.update(len(query_feats[-1]))
    query_feats = torch.cat(query_feats)
    bar.close()
    grid = model_cfg.descriptor_grid
    base_desc = descriptor(query_feats[: n_base], grid)  # the un-augmented originals come first
    # The pairs are drawn on the CPU whatever the device: the families and poses they index live there.
    gal_ids, ranks = build_pairs(base_desc.cpu(), descriptor(train_feats, grid).cpu(), cfg.k, base_family,
                                 train_family)
    k = gal_ids.shape[1]
    # Pairs for every copy: (query copy j, candidate gal_ids[origin j, r], rank r).
    pair_q = torch.arange(len(queries.images)).repeat_interleave(k)
    pair_g = gal_ids[queries.origin].flatten()
    pair_r = ranks[queries.origin].flatten()
    q_gt, t_gt = pair_targets(queries.poses[pair_q], train_poses[pair_g], unit)
    weights = mpts_weights(k)[pair_r] if cfg.mpts else torch.ones(len(pair_q))
    q_gt, t_gt, weights = q_gt.to(device), t_gt.to(device), weights.to(device)  # indexed by CPU ids below
    val_pair = is_val[pair_q]
    train_idx, val_idx = (~val_pair).nonzero().flatten(), val_pair.nonzero().flatten()

    criterion = HomoscedasticLoss().to(device)
    trainable = list(net.head.parameters()) + list(criterion.parameters())
    if not cfg.freeze_backbone:
        trainable += list(net.encoder.parameters())
    else:
        net.encoder.requires_grad_(False)
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[cfg.lr_drop_epoch], gamma=0.1)
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt = work_dir / PurePosixPath(WORK_FILES["irprn_checkpoint"]).name
    # What the pairs were built from: a checkpoint of other data is not resumed.
    data_key = hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in
                                       (novel.poses.double(), train_poses, torch.tensor(train_images.shape)))).hexdigest()
    start_epoch, history = 0, []
    if ckpt.is_file():
        start_epoch, history = _resume(ckpt, net, criterion, opt, sched, cfg, data_key)

    def head_inputs(idx: torch.Tensor, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if cfg.freeze_backbone or not training:
            return query_feats[pair_q[idx]], train_feats[pair_g[idx]]
        from models.irprn import to_input

        return (net.encoder(to_input(queries.images[pair_q[idx]].to(device), size)),
                net.encoder(to_input(train_images[pair_g[idx]].to(device), size)))

    bar = tqdm(range(start_epoch, cfg.epochs), desc="irprn: train", unit="epoch", disable=not progress,
               initial=start_epoch, total=cfg.epochs)
    for epoch in bar:
        net.head.train()
        if not cfg.freeze_backbone:
            net.encoder.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        losses = []
        for b in range(0, len(order), cfg.batch):
            idx = order[b : b + cfg.batch]
            fq, fg = head_inputs(idx, True)
            q, t = net.head(fq, fg)
            loss, _ = criterion(q, t, q_gt[idx], t_gt[idx], weights[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        vq_feats, vg_feats = query_feats, train_feats
        if not cfg.freeze_backbone and len(val_idx):  # the cached features are the pretrained encoder's
            net.encoder.eval()
            vq_feats, vg_feats = query_feats.clone(), train_feats.clone()
            uq, ug = pair_q[val_idx].unique(), pair_g[val_idx].unique()
            vq_feats[uq] = encode(net.encoder, queries.images[uq], size)
            vg_feats[ug] = encode(net.encoder, train_images[ug], size)
        val = _validate(net, vq_feats, vg_feats, pair_q, pair_g, q_gt, t_gt, val_idx)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), **val})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", val_rot=f"{val['val_rot_deg']:.2f}deg")
        if cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0 and epoch + 1 < cfg.epochs:
            _checkpoint(ckpt, epoch + 1, net, criterion, opt, sched, history, cfg, data_key)
    bar.close()
    ckpt.unlink(missing_ok=True)
    net.eval().cpu()
    pair_rot = torch.rad2deg(2 * torch.acos(q_gt[:, 0].abs().clamp(max=1))).cpu()
    report = {
        "device": str(device),
        "n_queries": n_base, "n_query_copies": len(queries.images), "n_pairs": len(pair_q), "k": k,
        "n_train_pairs": len(train_idx), "n_val_pairs": len(val_idx), "resumed_from_epoch": start_epoch,
        "final": history[-1] if history else {}, "history": history,
        "s_t": criterion.s_t.item(), "s_q": criterion.s_q.item(),
        "median_pair_rotation_deg": float(pair_rot.median()),
        "min_pair_rotation_deg": float(pair_rot.min()),
    }
    if len(held):
        report["holdout"] = [category.train[i].name for i in held.tolist()]
    return net, report


@torch.no_grad()
def _validate(net: IRPRN, query_feats, train_feats, pair_q, pair_g, q_gt, t_gt, idx) -> dict:
    net.head.eval()
    if len(idx) == 0:
        return {"val_rot_deg": float("nan"), "val_rot_deg_coarse": float("nan"), "val_trans": float("nan")}
    qs, ts = [], []
    for b in range(0, len(idx), 256):
        q, t = net.head(query_feats[pair_q[idx[b : b + 256]]], train_feats[pair_g[idx[b : b + 256]]])
        qs.append(q)
        ts.append(t)
    q, t = torch.cat(qs), torch.cat(ts)
    dot = (q * q_gt[idx][:, None]).sum(-1).abs().clamp(max=1)
    rot = torch.rad2deg(2 * torch.acos(dot))  # [P, S]
    return {"val_rot_deg": float(rot[:, -1].median()), "val_rot_deg_coarse": float(rot[:, 0].median()),
            "val_trans": float((t[:, -1] - t_gt[idx]).norm(dim=-1).median())}


def _checkpoint(path: Path, epoch: int, net, criterion, opt, sched, history, cfg, data_key: str) -> None:
    tensors = {**_flat_state("net", net.state_dict()), **_flat_state("loss", criterion.state_dict()),
               **_flat_state("opt", opt.state_dict()["state"])}
    meta = {"epoch": str(epoch), "history": json.dumps(history), "config": json.dumps(cfg.to_dict()),
            "sched": json.dumps(sched.state_dict()), "data": data_key}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def _resume(path: Path, net, criterion, opt, sched, cfg, data_key: str) -> tuple[int, list]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    if json.loads(meta["config"]) != json.loads(json.dumps(cfg.to_dict())) or meta.get("data") != data_key:
        return 0, []  # a checkpoint of another configuration or other data: start over
    tensors = load_file(str(path))
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    criterion.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("loss.")})
    state = opt.state_dict()
    restored: dict = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            restored.setdefault(int(pid), {})[name] = value.float() if name == "step" else value
    state["state"] = restored
    opt.load_state_dict(state)
    sched.load_state_dict(json.loads(meta["sched"]))
    return int(meta["epoch"]), json.loads(meta["history"])




def run_irprn_stage(category: Category, cfg: IRPRNTrainConfig, out_dir: Path, progress: bool = True,
                    device: torch.device | None = None) -> dict:
    """Train IRPRN into ``out_dir`` on ``device`` (default: CUDA when present), unless the same
    configuration was already trained on the same novel views (the device is not in the key:
    a network trained on either serves the same)."""
    start = time.perf_counter()
    novel_path, scene_path = out_dir / WORK_FILES["novel"], out_dir / FILES["scene"]
    for needed, stage in ((scene_path, "splats"), (novel_path, "rvss")):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing: run the {stage} stage first")
    irprn_dir, report_path = (out_dir / FILES["irprn_config"]).parent, out_dir / REPORTS["irprn"]
    key = {"config": json.loads(json.dumps(cfg.to_dict())), "novel_sha256": sha256_file(novel_path),
           "image_size": [category.width, category.height]}
    try:
        previous = json.loads(report_path.read_text())
        load_irprn(irprn_dir)
        if previous.get("key") == key:
            return {**previous, "skipped": True}
    except (OSError, ValueError, KeyError, RuntimeError):
        pass
    unit = scene_unit(GaussianScene.load(scene_path).normalization.get("camera_distance_median", 4.0))
    net, report = train_irprn(category, load_novel(novel_path), unit, cfg, irprn_dir, progress, device)
    save_irprn(net, irprn_dir, unit, cfg.to_dict())
    report_path.parent.mkdir(parents=True, exist_ok=True)
    if report["history"]:
        _curve(report["history"]).savefig(out_dir / REPORTS["irprn_curve"])
    report = {"category": category.name, **report, "seconds": round(time.perf_counter() - start, 1), "key": key}
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report
