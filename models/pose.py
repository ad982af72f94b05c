"""Query pose from one forward pass: gallery match -> IRPRN relative poses -> absolute pose.

``PoseEstimator``, in two steps that the Inspector times as its ``match`` and ``pose`` stages:

1. ``match(images)``: encode the queries (IRPRN's encoder, one pass), pool their
   descriptors on the gallery's grid (``Gallery.grid``) and retrieve the top-``k`` gallery
   views by cosine similarity (``models.gallery``);
2. ``relative(matches)``: run the pair head on the ``k`` (query, gallery view) pairs in one
   batch; the last stage's ``(q, t)`` gives the query pose from the gallery pose
   (``P_q = P_rel P_g``, decoded by ``models.irprn.compose_query_poses``); the ``k``
   absolute poses are averaged (rotations by Markley's quaternion average, camera centres
   by their mean), weighted by the MPTS rank weights.

``estimate`` runs both. Backends: ONNX Runtime sessions (a bundle's ``encoder.onnx`` /
``pair_head.onnx``, CUDA when present) or the PyTorch modules (training, tests).
Measured and retired (docs/POSE.md): test-time roll copies, and fusing by the best
candidate (``top1``: the same as ``k = 1``) or by rendering the candidates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import kornia.geometry.transform as KT
import torch
import torch.nn.functional as F

from models.camera import camera_center, make_pose, quat_to_rotmat, rotmat_to_quat
from models.gallery import Gallery
from models.irprn import IRPRN, compose_query_poses, descriptor, mpts_weights, to_input

Tensor = torch.Tensor
DEFAULT_K = 3  # gallery matches fused per query (docs/POSE.md, revision 5)


@dataclass
class Matches:
    """The ``match`` step's output for ``B`` queries."""

    features: Tensor  # [B, ...] the queries' encoder features (the pair head's input)
    gallery_ids: Tensor  # [B, k] best first
    similarities: Tensor  # [B, k] cosine similarities, descending


@dataclass
class PoseResult:
    poses: Tensor  # [B, 4, 4] float64 world-to-camera
    candidates: Tensor  # [B, K, 4, 4] the K absolute poses before fusion (retrieval: gallery poses)
    gallery_ids: Tensor  # [B, K]
    similarities: Tensor  # [B, K]
    timings_ms: dict[str, float] = field(default_factory=dict)


def roll_images(images: Tensor, angle_deg: Tensor | float) -> Tensor:
    """``[B, H, W, 3]`` images turned ``angle_deg`` (one angle, or one per image ``[B]``)
    counter-clockwise about the image centre, borders extended: the image of the camera
    rolled about its optical axis (``models.camera.roll_pose`` gives its pose)."""
    angles = torch.as_tensor(angle_deg, dtype=torch.float32).expand(len(images)).contiguous()
    x = KT.rotate(images.permute(0, 3, 1, 2).float(), angles, padding_mode="border")
    return x.permute(0, 2, 3, 1)


def _check_graph(session, path: Path, inputs: dict[str, tuple], outputs: tuple[str, ...]) -> None:
    """``ValueError`` naming ``path`` unless the ONNX ``session`` takes ``inputs`` (name -> shape,
    None for a free dimension; a graph's own free dimensions match any) and gives ``outputs``."""
    got = {i.name: i.shape for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    if sorted(got) != sorted(inputs) or names != list(outputs):
        raise ValueError(f"{path.name} takes {sorted(got)} and gives {names}; expected {sorted(inputs)} and "
                         f"{list(outputs)}")
    for name, want in inputs.items():
        have = got[name]
        if len(have) != len(want) or any(isinstance(h, int) and w is not None and h != w for h, w in zip(have, want)):
            raise ValueError(f"{path.name}: input {name} has shape {have}, this bundle needs {list(want)}")


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
    def __init__(self, gallery: Gallery, encode: Callable[[Tensor], Tensor],
                 head: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], unit: float, input_size: int, grid: int,
                 k: int = DEFAULT_K):
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(gallery):
            raise ValueError(f"k (gallery matches per query) must be an integer from 1 to the gallery's {len(gallery)} "
                             f"views, got {k!r}")
        self.gallery, self._encode, self._head = gallery, encode, head
        self.unit, self.input_size, self.grid, self.k = unit, input_size, grid, k
        self.providers = ["torch"]  # where the network runs (ONNX Runtime's providers when exported)

    @classmethod
    def from_torch(cls, net: IRPRN, gallery: Gallery, unit: float, **kw) -> PoseEstimator:
        net = net.eval()

        @torch.no_grad()
        def head(fq: Tensor, fg: Tensor) -> tuple[Tensor, Tensor]:
            return net.head(fq, fg)

        return cls(gallery, torch.no_grad()(net.encoder), head, unit, net.cfg.input_size, gallery.grid, **kw)

    @classmethod
    def from_onnx(cls, encoder_path: Path, head_path: Path, gallery: Gallery, unit: float, input_size: int,
                  device: str = "auto", **kw) -> PoseEstimator:
        from models import onnx_runtime as rt

        enc, hd = rt.session(encoder_path, device), rt.session(head_path, device)
        _check_graph(enc, encoder_path, {"images": (None, 3, input_size, input_size)}, ("features",))
        _check_graph(hd, head_path, {"query": (None, *gallery.features.shape[1:]),
                                     "gallery": (None, *gallery.features.shape[1:])}, ("q", "t"))

        def encode(x: Tensor) -> Tensor:
            return torch.from_numpy(rt.run(enc, images=x.cpu().numpy())[0])

        def head(fq: Tensor, fg: Tensor) -> tuple[Tensor, Tensor]:
            q, t = rt.run(hd, query=fq.cpu().numpy(), gallery=fg.cpu().numpy())
            return torch.from_numpy(q), torch.from_numpy(t)

        est = cls(gallery, encode, head, unit, input_size, gallery.grid, **kw)
        est.providers = enc.get_providers()
        est._check_with_gallery(encoder_path.name, head_path.name)
        return est

    def _check_with_gallery(self, encoder: str, head: str) -> None:
        """``ValueError`` unless the networks run on the gallery's first view and agree with it:
        the encoder gives the features stored for it (the same network built the gallery), and
        the pair head finite ``q [1, S, 4]`` and ``t [1, S, 3]``."""
        g = self.gallery
        size = self.input_size
        view = g.images[:1].float() / 255.0 if g.images is not None else torch.zeros(1, size, size, 3)
        feats = self._encode(to_input(view, self.input_size))
        if feats.shape[1:] != g.features.shape[1:]:
            raise ValueError(f"{encoder} gives features {tuple(feats.shape[1:])}, the gallery holds "
                             f"{tuple(g.features.shape[1:])}: they come from different networks")
        if g.images is not None and F.cosine_similarity(feats.flatten(), g.features[0].flatten(), dim=0) < 0.99:
            raise ValueError(f"{encoder} does not reproduce the gallery's features of its first view: the encoder "
                             "and the gallery come from different networks")
        q, t = self._head(feats, g.features[:1])
        shaped = q.dim() == 3 and q.shape[0] == 1 and q.shape[2] == 4 and t.shape == (1, q.shape[1], 3)
        if not (shaped and q.isfinite().all() and t.isfinite().all()):
            raise ValueError(f"{head} gives q {tuple(q.shape)} and t {tuple(t.shape)}; finite [1, S, 4] and "
                             "[1, S, 3] expected")

    def match(self, images: Tensor) -> Matches:
        """The top-``k`` gallery views of ``[B, H, W, 3]`` query images in [0, 1]."""
        feats = self._encode(to_input(images.cpu(), self.input_size))
        sims, ids = self.gallery.top_k(descriptor(feats, self.grid), self.k)
        return Matches(feats, ids, sims)

    def relative(self, matches: Matches) -> tuple[Tensor, Tensor]:
        """Query poses ``[B, 4, 4]`` float64 from the pair head on every match, fused, and the
        candidates before fusion ``[B, k, 4, 4]``."""
        feats, ids = matches.features, matches.gallery_ids
        b, k = ids.shape
        fq = feats[:, None].expand(b, k, *feats.shape[1:]).reshape(b * k, *feats.shape[1:])
        q, t = self._head(fq, self.gallery.features[ids.flatten()])
        cands = compose_query_poses(q[:, -1].double(), t[:, -1].double(), self.gallery.poses[ids].flatten(0, 1),
                                    self.unit).view(b, k, 4, 4)
        fused = cands[:, 0].clone() if k == 1 else average_poses(cands, mpts_weights(k))
        return fused, cands

    def estimate(self, images: Tensor) -> PoseResult:
        """``match`` then ``relative``, timed as the Inspector's ``match`` and ``pose`` stages."""
        t0 = time.perf_counter()
        m = self.match(images)
        t1 = time.perf_counter()
        fused, cands = self.relative(m)
        timings = {"match": 1000 * (t1 - t0), "pose": 1000 * (time.perf_counter() - t1)}
        return PoseResult(fused, cands, m.gallery_ids, m.similarities, timings)
