"""Query pose from one forward pass: gallery match -> IRPRN relative poses -> absolute pose.

``PoseEstimator.estimate(images)``:

1. encode the queries (IRPRN's encoder, one pass) and take their descriptors, pooled on
   the gallery's grid (``Gallery.grid``);
2. retrieve the top-K gallery views by cosine similarity (``models.gallery``);
3. run the pair head on the K (query, gallery view) pairs in one batch; the last stage's
   ``(q, t)`` gives the query pose from the gallery pose (``P_q = P_rel P_g``, decoded by
   ``models.irprn.compose_query_poses`` in the network's translation parametrisation);
4. fuse the K absolute poses (``fusion``): ``top1`` keeps the best-matching pair's,
   ``mean`` averages rotations (the principal eigenvector of the weighted quaternion outer
   products, Markley's average) and camera centres, weighted by the MPTS rank weights;
   ``render`` renders the K candidates small (``select_size`` px) and keeps the one whose
   render differs least from the query (mean absolute difference; needs the scene).

Pose mode ``retrieval`` stops after step 2 and returns the best gallery view's pose.
Backends: ONNX Runtime sessions (the bundle's ``encoder.onnx`` / ``pair_head.onnx``, CUDA
when present) or the PyTorch modules (training, tests).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import kornia.geometry.transform as KT
import torch

from models.camera import camera_center, make_pose, quat_to_rotmat, roll_pose, rotmat_to_quat, scale_intrinsics
from models.gallery import Gallery
from models.hashing import sha256_file
from models.irprn import (
    IRPRN,
    LEGACY,
    compose_query_poses,
    descriptor,
    load_irprn,
    load_irprn_config,
    mpts_weights,
    to_input,
)
from models.splat.scene import render

Tensor = torch.Tensor
FUSIONS = ("top1", "mean", "render")
MODES = ("rpe", "retrieval")
DEFAULT_K = 3  # gallery matches fused per query (docs/POSE.md, revision 5)


@dataclass
class PoseResult:
    poses: Tensor  # [B, 4, 4] float64 world-to-camera
    candidates: Tensor  # [B, K, 4, 4] the K absolute poses before fusion (retrieval: gallery poses)
    gallery_ids: Tensor  # [B, K]
    similarities: Tensor  # [B, K]
    timings_ms: dict[str, float] = field(default_factory=dict)


def _onnx_matches_weights(irprn_dir: Path) -> bool:
    """True when ``onnx.json`` says the graphs were exported from the current weights."""
    try:
        manifest = json.loads((irprn_dir / "onnx.json").read_text())
        return manifest["weights_sha256"] == sha256_file(irprn_dir / "weights.safetensors")
    except (OSError, ValueError, KeyError):
        return False


def roll_images(images: Tensor, angle_deg: Tensor | float) -> Tensor:
    """``[B, H, W, 3]`` images turned ``angle_deg`` (one angle, or one per image ``[B]``)
    counter-clockwise about the image centre, borders extended: the image of the camera
    rolled about its optical axis (``models.camera.roll_pose`` gives its pose)."""
    angles = torch.as_tensor(angle_deg, dtype=torch.float32).expand(len(images)).contiguous()
    x = KT.rotate(images.permute(0, 3, 1, 2).float(), angles, padding_mode="border")
    return x.permute(0, 2, 3, 1)


def average_poses(poses: Tensor, weights: Tensor) -> Tensor:
    """Weighted average of world-to-camera poses ``[B, K, 4, 4]`` (weights ``[K]`` or
    ``[B, K]``): Markley's quaternion average and the mean camera centre."""
    w = weights.to(poses.dtype).expand(poses.shape[:2])
    q = rotmat_to_quat(poses[..., :3, :3])  # [B, K, 4]
    m = (w[..., None, None] * q[..., :, None] * q[..., None, :]).sum(1)
    q_mean = torch.linalg.eigh(m).eigenvectors[..., -1]
    rot = quat_to_rotmat(q_mean)
    centre = (w[..., None] * camera_center(poses)).sum(1) / w.sum(1, keepdim=True)
    return make_pose(rot, -(rot @ centre[..., None])[..., 0])


class PoseEstimator:
    def __init__(self, gallery: Gallery, encode: Callable[[Tensor], Tensor], head: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
                 unit: float, input_size: int, grid: int, k: int = DEFAULT_K, fusion: str = "mean", scene=None,
                 select_size: int = 64, translation: str = LEGACY["translation"], rolls: tuple[float, ...] = (0.0,)):
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if fusion == "render" and scene is None:
            raise ValueError("fusion 'render' needs the Gaussian scene")
        self.scene, self.select_size = scene, select_size
        self.gallery, self._encode, self._head = gallery, encode, head
        self.unit, self.input_size, self.grid, self.k, self.fusion = unit, input_size, grid, k, fusion
        self.translation = translation  # IRPRN's t parametrisation (models.irprn.IRPRNConfig)
        rolls = tuple(float(a) for a in rolls)
        if not rolls or rolls[0] != 0.0:
            raise ValueError(f"rolls must start with 0 (the query as taken), got {rolls}")
        self.rolls = rolls

    @classmethod
    def from_torch(cls, net: IRPRN, gallery: Gallery, unit: float, **kw) -> PoseEstimator:
        net = net.eval()

        @torch.no_grad()
        def head(fq: Tensor, fg: Tensor) -> tuple[Tensor, Tensor]:
            return net.head(fq, fg)

        return cls(gallery, torch.no_grad()(net.encoder), head, unit, net.cfg.input_size, gallery.grid,
                   translation=net.cfg.translation, **kw)

    @classmethod
    def from_onnx(cls, encoder_path: Path, head_path: Path, gallery: Gallery, unit: float, input_size: int,
                  device: str = "auto", **kw) -> PoseEstimator:
        from models import onnx_runtime as rt

        enc, hd = rt.session(encoder_path, device), rt.session(head_path, device)

        def encode(x: Tensor) -> Tensor:
            return torch.from_numpy(rt.run(enc, images=x.cpu().numpy())[0])

        def head(fq: Tensor, fg: Tensor) -> tuple[Tensor, Tensor]:
            q, t = rt.run(hd, query=fq.cpu().numpy(), gallery=fg.cpu().numpy())
            return torch.from_numpy(q), torch.from_numpy(t)

        est = cls(gallery, encode, head, unit, input_size, gallery.grid, **kw)
        est.providers = enc.get_providers()
        return est

    @classmethod
    def from_bundle(cls, bundle_dir: Path, backend: str = "auto", device: str = "auto", **kw) -> PoseEstimator:
        """From ``irprn/`` and ``gallery/`` of a bundle: ONNX Runtime when the exported
        graphs are there (``backend="auto"`` or ``"onnx"``), else the PyTorch weights."""
        irprn_dir = bundle_dir / "irprn"
        for needed in (bundle_dir / "gallery" / "gallery.safetensors", irprn_dir / "config.json"):
            if not needed.is_file():
                raise FileNotFoundError(f"{needed} is missing: build the pose stages first "
                                        "(rpe-pad train ... --stages rvss,irprn,gallery,onnx)")
        gallery = Gallery.load(bundle_dir / "gallery" / "gallery.safetensors")
        enc, head = irprn_dir / "encoder.onnx", irprn_dir / "pair_head.onnx"
        onnx_ok = enc.is_file() and head.is_file() and _onnx_matches_weights(irprn_dir)
        if backend == "onnx" and not onnx_ok:
            raise FileNotFoundError(f"{irprn_dir}: no ONNX graphs exported from the current weights: run the onnx stage "
                                    "(rpe-pad train ... --stages onnx)")
        if backend == "onnx" or (backend == "auto" and onnx_ok):
            cfg, unit = load_irprn_config(irprn_dir / "config.json")
            return cls.from_onnx(enc, head, gallery, unit, cfg.input_size, device=device,
                                 translation=cfg.translation, **kw)
        if backend not in ("auto", "torch"):
            raise ValueError(f"backend must be auto, onnx or torch, got {backend!r}")
        net, unit = load_irprn(irprn_dir)
        return cls.from_torch(net, gallery, unit, **kw)

    def estimate(self, images: Tensor, mode: str = "rpe", Ks: Tensor | None = None) -> PoseResult:
        """Poses of ``[B, H, W, 3]`` query images in [0, 1] (``Ks [B, 3, 3]``, the queries'
        intrinsics, only for ``fusion="render"``)."""
        if mode not in MODES:
            raise ValueError(f"pose mode must be one of {MODES}, got {mode!r}")
        t0 = time.perf_counter()
        b, r = len(images), (1 if mode == "retrieval" else len(self.rolls))
        views = images if r == 1 else torch.cat([images] + [roll_images(images, a) for a in self.rolls[1:]])
        feats = self._encode(to_input(views, self.input_size))  # [R * B, ...], roll-major
        sims, ids = self.gallery.top_k(descriptor(feats, self.grid), self.k)
        t2 = time.perf_counter()
        # "match": encoder pass + retrieval; "pose": pair heads + composition + fusion.
        timings = {"match": 1000 * (t2 - t0)}
        k = ids.shape[1]
        g_poses = self.gallery.poses[ids]  # [R * B, K, 4, 4]
        if mode == "retrieval":
            return PoseResult(g_poses[:, 0].clone(), g_poses, ids, sims, timings)
        fq = feats[:, None].expand(r * b, k, *feats.shape[1:]).reshape(r * b * k, *feats.shape[1:])
        q, t = self._head(fq, self.gallery.features[ids.flatten()])
        cands = compose_query_poses(q[:, -1].double(), t[:, -1].double(), g_poses.flatten(0, 1), self.unit,
                                    self.translation).view(r, b, k, 4, 4)
        if r > 1:  # the poses of the rolled copies, turned back: candidates of the query itself
            angles = torch.tensor(self.rolls, dtype=cands.dtype).view(r, 1, 1)
            cands = roll_pose(cands, -angles.expand(r, b, k))
        cands = cands.permute(1, 0, 2, 3, 4).reshape(b, r * k, 4, 4)  # [B, R * K], the query as taken first
        ids, sims = ids[:b], sims[:b]
        if self.fusion == "top1" or k * r == 1:
            fused = cands[:, 0].clone()
        elif self.fusion == "mean":
            fused = average_poses(cands, mpts_weights(k).repeat(r))
        else:
            if Ks is None:
                raise ValueError("fusion 'render' needs the queries' intrinsics (Ks)")
            best = self._render_select(images, cands, Ks)
            fused = cands[torch.arange(b), best]
        timings["pose"] = 1000 * (time.perf_counter() - t2)
        return PoseResult(fused, cands, ids, sims, timings)

    @torch.no_grad()
    def _render_select(self, images: Tensor, cands: Tensor, Ks: Tensor) -> Tensor:
        """Index [B] of the candidate whose small render is closest to the query (L1)."""
        b, k = cands.shape[:2]
        h, w = images.shape[1:3]
        sw, sh = self.select_size, max(1, round(self.select_size * h / w))
        K_small = scale_intrinsics(Ks.double(), sw / w, sh / h)
        out = render(self.scene, cands.flatten(0, 1).float(), K_small.repeat_interleave(k, 0).float(), sw, sh).colors.cpu()
        small = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2).float(), size=(sh, sw), mode="bilinear",
                                                antialias=True, align_corners=False).permute(0, 2, 3, 1)
        err = (out.clamp(0, 1).view(b, k, sh, sw, 3) - small[:, None]).abs().mean(dim=(2, 3, 4))
        return err.argmin(dim=1)
