"""IRPRN: the iterative relative pose regression network (paper, Method; NOTES section 1).

Split in two so that the gallery side of a pair is computed once, at bundle build time:

- ``PoseEncoder``: a timm backbone (default the offline-pretrained EfficientNet-Lite0) on
  an RGB image in [0, 1] at ``input_size`` (normalisation inside) -> one feature map
  ``[B, C, h, w]`` (default the stride-16 layer: 112 x 14 x 14 at 224 px). The same map,
  pooled and L2-normalised, is the view's retrieval descriptor (``models/gallery.py``).
- ``PairHead``: (query features, gallery features) -> the relative pose at every stage:
  a coarse MLP head, then ``n_refine`` layers of dynamic convolution (``n_kernels``
  candidate kernels mixed by an input-dependent softmax attention, Chen et al. 2020),
  each predicting offsets ``dq, dt`` added to the previous stage's ``q, t``.

Pose convention (``models/camera.py``): the relative pose ``P_rel = P_q inv(P_g)`` of
world-to-camera poses, so ``P_q = P_rel P_g``; ``q`` is its rotation as a unit wxyz
quaternion. ``t`` is the translation of ``P_rel`` divided by the scene unit
(``scene_unit``: the paper's parametrisation), so the camera centre ``C_q = C_g - R_q^T t``
is predicted apart from the viewing direction. ``relative_targets`` and
``compose_query_poses`` are the one place where it is encoded and decoded.

Pair-head inputs: the two maps fused by a 1 x 1 convolution of their concatenation, plus
their correlation volume (cosine similarity of every query cell with every gallery cell,
after a learnt 1 x 1 projection) and the soft-argmax flow it implies (where each query
cell's content sits in the gallery view), the classic input of geometric matching
networks: the head reads the displacement directly instead of having to learn to compare
two feature maps.

Retired after measurement (docs/POSE.md has the figures, git history the code): the
fusion-only ``"concat"`` head, the object-centric translation (``translation="object"``)
and the packed stride-8 map with a local correlation (``fine_layer``). A saved config
still names them with the values every kept network has (``RETIRED``), so the stage keys
of existing work folders stay valid; a config with another value, or one saved before
``head`` existed (a ``"concat"`` network), is refused: retrain it.

Dynamic convolution is written as one static convolution with ``n_kernels * C_out``
output channels whose K outputs are mixed by the attention weights. Convolution is linear
in its kernel, so this equals convolving with the attention-mixed kernel, and it exports
to ONNX with a dynamic batch (a per-sample kernel would need a batch-sized group count).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from models.camera import compose_pose, pose_to_quat_trans, quat_trans_to_pose, relative_pose
from models.features import DEFAULT_BACKBONE, SPECS, _resolve_weights

Tensor = torch.Tensor

# Translation unit: the median camera distance / 4, i.e. the paper's setting (MAD-Sim and
# NeRF-synthetic cameras sit about 4 units from the object), where sigma_t = 0.1 was set.
REFERENCE_CAMERA_DISTANCE = 4.0


def scene_unit(camera_distance_median: float) -> float:
    """World length of one normalised unit for a scene whose cameras sit at that distance."""
    if not camera_distance_median > 0:
        raise ValueError(f"camera distance must be positive, got {camera_distance_median}")
    return float(camera_distance_median) / REFERENCE_CAMERA_DISTANCE


@dataclass(frozen=True)
class IRPRNConfig:
    backbone: str = DEFAULT_BACKBONE
    weights: str = "imagenet"
    layer: int = 3  # timm features_only index: stride 16 for EfficientNets
    input_size: int = 224
    width: int = 64
    hidden: int = 512
    n_refine: int = 3
    n_kernels: int = 4
    descriptor_grid: int = 4  # retrieval descriptor grid of the training pairs (models.gallery: 4 x 4)
    corr_dim: int = 64  # channels of the learnt projection the correlation is taken in

    def __post_init__(self) -> None:
        least = {"layer": 0, "n_refine": 0, "input_size": 1, "width": 1, "hidden": 1, "n_kernels": 1,
                 "descriptor_grid": 1, "corr_dim": 1}
        for name, low in least.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"IRPRN config: {name} must be an integer >= {low}, got {value!r}")

    def to_dict(self) -> dict:
        """The fields, and the retired options at the one value they kept, in the order the
        config was always written (a default config's dict, hence its stage key, is unchanged)."""
        values = {**asdict(self), **RETIRED}
        return {name: values[name] for name in _SAVED_ORDER}

    @classmethod
    def from_dict(cls, values: dict) -> IRPRNConfig:
        """From a saved config: the retired keys must hold the value kept (``RETIRED``);
        a config without ``head`` was saved by a ``"concat"`` network and is refused."""
        if "head" not in values:
            raise ValueError('IRPRN config without "head": a network with the retired "concat" pair head '
                             "(saved before the correlation head); retrain it (rpe-pad train)")
        for name, kept in RETIRED.items():  # (the local correlation's window and width meant nothing without it)
            if name not in ("fine_radius", "fine_dim") and values.get(name, kept) != kept:
                raise ValueError(f"IRPRN config with {name}={values[name]!r}, an option retired after measurement "
                                 f"(docs/POSE.md; only {kept!r} is left); retrain the network (rpe-pad train)")
        return cls(**{k: v for k, v in values.items() if k not in RETIRED})


# Options retired after measurement (docs/POSE.md), at the one value every kept network has:
# written into saved configs and stage keys as before, refused on load with another value.
RETIRED = {"head": "corr", "translation": "relative", "fine_layer": None, "fine_radius": 3, "fine_dim": 16}
_SAVED_ORDER = ("backbone", "weights", "layer", "input_size", "width", "hidden", "n_refine", "n_kernels",
                "descriptor_grid", "head", "translation", "corr_dim", "fine_layer", "fine_radius", "fine_dim")


class PoseEncoder(nn.Module):
    """Backbone features ``[B, C, h, w]`` of images ``[B, 3, S, S]`` in [0, 1]."""

    def __init__(self, cfg: IRPRNConfig):
        super().__init__()
        spec = SPECS.get(cfg.backbone)
        mean, std = (spec.mean, spec.std) if spec else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        self.body = timm.create_model(cfg.backbone, pretrained=False, features_only=True, out_indices=(cfg.layer,))
        if cfg.weights != "random":
            full = timm.create_model(cfg.backbone, pretrained=False)
            full.load_state_dict(_resolve_weights(cfg.backbone, cfg.weights, full))
            self.body.load_state_dict(full.state_dict(), strict=False)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.stride = self.body.feature_info.reduction()[-1]
        self.channels = self.body.feature_info.channels()[-1]

    def forward(self, images: Tensor) -> Tensor:
        return self.body((images - self.mean) / self.std)[-1]


class DynamicConv2d(nn.Module):
    """3x3 dynamic convolution: K kernels, softmax attention from the pooled input."""

    def __init__(self, channels: int, n_kernels: int, temperature: float = 1.0):
        super().__init__()
        self.k = n_kernels
        self.temperature = temperature
        self.conv = nn.Conv2d(channels, channels * n_kernels, 3, padding=1)
        self.attention = nn.Sequential(nn.Linear(channels, max(channels // 4, 8)), nn.ReLU(),
                                       nn.Linear(max(channels // 4, 8), n_kernels))

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        weights = torch.softmax(self.attention(x.mean(dim=(2, 3))) / self.temperature, dim=1)  # [B, K]
        out = self.conv(x).view(b, self.k, -1, h, w)
        return (out * weights.view(b, self.k, 1, 1, 1)).sum(dim=1)


def _normalise_quat(q: Tensor) -> Tensor:
    return q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)


class Correlation(nn.Module):
    """Correlation volume and soft-argmax flow of two feature maps ``[B, C, h, w]``.

    Both maps go through one learnt 1 x 1 projection and are L2-normalised per cell; the
    volume ``[B, h*w, h, w]`` holds at query cell (y, x), channel j, the cosine similarity
    with gallery cell j (row-major). The flow ``[B, 2, h, w]`` is the softmax-weighted
    gallery position of each query cell minus its own (x then y, in [-2, 2]: image width
    = 2), with the softmax's peak probability ``[B, 1, h, w]`` as confidence."""

    def __init__(self, channels: int, dim: int, size: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, 1)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(10.0)))
        coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
        gy, gx = torch.meshgrid(coords, coords, indexing="ij")
        self.register_buffer("grid", torch.stack([gx.flatten(), gy.flatten()]), persistent=False)  # [2, h*w]
        self.size = size

    def forward(self, query: Tensor, gallery: Tensor) -> Tensor:
        fq = F.normalize(self.proj(query), dim=1).flatten(2)  # [B, D, hw]
        fg = F.normalize(self.proj(gallery), dim=1).flatten(2)
        corr = torch.bmm(fg.transpose(1, 2), fq)  # [B, hw gallery, hw query]
        prob = torch.softmax(corr * self.log_temperature.exp(), dim=1)
        expected = torch.einsum("cj,bjq->bcq", self.grid, prob)  # [B, 2, hw query]
        flow = expected - self.grid[None]
        conf = prob.amax(dim=1, keepdim=True)
        # The side is the constant ``size`` (not read off the input), so that the exported
        # graph keeps static spatial dimensions for the pooling after it.
        return torch.cat([corr, flow, conf], dim=1).unflatten(2, (self.size, self.size))


class PairHead(nn.Module):
    """(query, gallery) features -> ``q [B, S, 4]`` (unit wxyz) and ``t [B, S, 3]`` for
    S = 1 + n_refine stages (coarse first, the last refinement last). ``size``: the side
    of the feature maps (input size / encoder stride)."""

    def __init__(self, channels: int, cfg: IRPRNConfig, size: int = 14):
        super().__init__()
        w = cfg.width
        # 1x1 fusion of the two feature maps, then everything at 7 x 7 (cheap on a CPU, and
        # exportable: the 14 x 14 map of a 224 px input pools evenly).
        self.reduce = nn.Sequential(nn.Conv2d(2 * channels, w, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(7),
                                    nn.Conv2d(w, w, 3, padding=1), nn.ReLU())
        self.correlation = Correlation(channels, cfg.corr_dim, size)
        self.corr_reduce = nn.Sequential(nn.Conv2d(size * size + 3, w, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(7),
                                         nn.Conv2d(w, w, 3, padding=1), nn.ReLU())
        self.coarse = nn.Sequential(nn.Flatten(), nn.Linear(w * 49, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 7))
        self.refine_convs = nn.ModuleList([DynamicConv2d(w, cfg.n_kernels) for _ in range(cfg.n_refine)])
        self.refine_squeeze = nn.ModuleList([nn.Conv2d(w, 32, 1) for _ in range(cfg.n_refine)])
        self.refine_mlps = nn.ModuleList([
            nn.Sequential(nn.Linear(32 * 49 + 7, cfg.hidden // 2), nn.ReLU(), nn.Linear(cfg.hidden // 2, 7))
            for _ in range(cfg.n_refine)
        ])
        # Start at the identity rotation and zero translation; offsets start at zero.
        with torch.no_grad():
            self.coarse[-1].weight.mul_(0.01)
            self.coarse[-1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 0, 0, 0]))
            for mlp in self.refine_mlps:
                mlp[-1].weight.mul_(0.01)
                mlp[-1].bias.zero_()

    def forward(self, query: Tensor, gallery: Tensor) -> tuple[Tensor, Tensor]:
        x = self.reduce(torch.cat([query, gallery], dim=1)) + self.corr_reduce(self.correlation(query, gallery))
        out = self.coarse(x)
        q, t = _normalise_quat(out[:, :4]), out[:, 4:]
        qs, ts = [q], [t]
        for conv, squeeze, mlp in zip(self.refine_convs, self.refine_squeeze, self.refine_mlps):
            x = F.relu(conv(x)) + x
            delta = mlp(torch.cat([squeeze(x).flatten(1), q, t], dim=1))
            q, t = _normalise_quat(q + delta[:, :4]), t + delta[:, 4:]
            qs.append(q)
            ts.append(t)
        return torch.stack(qs, dim=1), torch.stack(ts, dim=1)


class IRPRN(nn.Module):
    """Encoder + pair head; ``forward(query_images, gallery_images)`` for training."""

    def __init__(self, cfg: IRPRNConfig | None = None):
        super().__init__()
        self.cfg = cfg or IRPRNConfig()
        self.encoder = PoseEncoder(self.cfg)
        self.head = PairHead(self.encoder.channels, self.cfg, self.cfg.input_size // self.encoder.stride)

    def forward(self, query: Tensor, gallery: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.encoder(query), self.encoder(gallery))


def relative_targets(query_poses: Tensor, gallery_poses: Tensor, unit: float) -> tuple[Tensor, Tensor]:
    """What IRPRN learns for (query, gallery) poses ``[..., 4, 4]``: the canonical wxyz
    quaternion of ``P_rel = P_q inv(P_g)`` ``[..., 4]`` and its translation over the scene
    unit ``[..., 3]``."""
    q, t = pose_to_quat_trans(relative_pose(query_poses, gallery_poses))
    return q, t / unit


def compose_query_poses(q: Tensor, t: Tensor, gallery_poses: Tensor, unit: float) -> Tensor:
    """Inverse of ``relative_targets``: query poses ``[..., 4, 4]`` from IRPRN's ``q``, ``t``
    and the gallery poses (``P_q = P_rel P_g``)."""
    return compose_pose(quat_trans_to_pose(q, t * unit), gallery_poses)


def descriptor(features: Tensor, grid: int) -> Tensor:
    """Retrieval descriptor ``[B, C * grid^2]`` of encoder features: average-pooled to a
    ``grid x grid`` layout (1 = global pooling), flattened, L2-normalised."""
    pooled = F.adaptive_avg_pool2d(features, grid).flatten(1)
    return F.normalize(pooled, dim=1)


# ---- losses -------------------------------------------------------------------------


def quat_distance(q: Tensor, q_gt: Tensor) -> Tensor:
    """``min(||q - q_gt||, ||q + q_gt||)``: q and -q are the same rotation."""
    return torch.minimum((q - q_gt).norm(dim=-1), (q + q_gt).norm(dim=-1))


def mpts_weights(k: int) -> Tensor:
    """MPTS pair weights ``w_i = 2 (K + 1 - i) / (K (K + 1))``, i = 1..K (sum 1)."""
    i = torch.arange(1, k + 1, dtype=torch.float32)
    return 2 * (k + 1 - i) / (k * (k + 1))


class HomoscedasticLoss(nn.Module):
    """``L_t exp(-s_t) + s_t + L_q exp(-s_q) + s_q`` per stage, summed over stages, with
    per-sample weights (MPTS); learnable ``s_t``, ``s_q`` (PoseNet's initial 0 and -3)."""

    def __init__(self, s_t: float = 0.0, s_q: float = -3.0):
        super().__init__()
        self.s_t = nn.Parameter(torch.tensor(float(s_t)))
        self.s_q = nn.Parameter(torch.tensor(float(s_q)))

    def forward(self, q: Tensor, t: Tensor, q_gt: Tensor, t_gt: Tensor, weights: Tensor | None = None) -> tuple[Tensor, dict]:
        """``q [B, S, 4]``, ``t [B, S, 3]``, ``q_gt [B, 4]``, ``t_gt [B, 3]``, ``weights [B]``
        (normalised inside to sum 1)."""
        lq = quat_distance(q, q_gt[:, None])  # [B, S]
        lt = (t - t_gt[:, None]).norm(dim=-1)
        w = torch.full((len(q),), 1.0 / len(q), device=q.device) if weights is None else weights / weights.sum()
        lq_stage = (lq * w[:, None]).sum(0)  # [S]
        lt_stage = (lt * w[:, None]).sum(0)
        per_stage = lt_stage * torch.exp(-self.s_t) + self.s_t + lq_stage * torch.exp(-self.s_q) + self.s_q
        return per_stage.sum(), {"lq_last": float(lq_stage[-1].detach()), "lt_last": float(lt_stage[-1].detach())}


def to_input(images: Tensor, size: int) -> Tensor:
    """``[B, H, W, 3]`` RGB in [0, 1] -> the encoder's input ``[B, 3, size, size]`` (bilinear,
    antialiased: the same resize at training and inference)."""
    x = images.permute(0, 3, 1, 2).float().clamp(0, 1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous()


@torch.no_grad()
def encode(encoder: PoseEncoder, images: Tensor, size: int, batch: int = 32) -> Tensor:
    """Encoder features of ``[N, H, W, 3]`` images, in batches, on the encoder's device (the
    images may be anywhere: each batch moves there)."""
    device = next(encoder.parameters()).device
    out = [encoder(to_input(images[i : i + batch].to(device), size)) for i in range(0, len(images), batch)]
    return torch.cat(out) if out else torch.zeros(0, device=device)


def save_irprn(net: IRPRN, path_dir: Path, unit: float, train_cfg: dict) -> None:
    path_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path_dir / "weights.safetensors"))
    (path_dir / "config.json").write_text(json.dumps({"model": net.cfg.to_dict(), "scene_unit": unit,
                                                       "train": train_cfg}, indent=2) + "\n")


def load_irprn_config(path: Path) -> tuple[IRPRNConfig, float]:
    """The model config of a saved ``config.json`` (``weights="random"``: the trained
    weights come from the file, none are downloaded) and its scene unit."""
    cfg = json.loads(Path(path).read_text())
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise ValueError("no model arguments (model)")
    unit = cfg.get("scene_unit")
    if not (isinstance(unit, int | float) and math.isfinite(unit) and unit > 0):
        raise ValueError(f"scene_unit must be a finite number > 0, got {unit!r}")
    return IRPRNConfig.from_dict({**cfg["model"], "weights": "random"}), float(unit)


def load_irprn(path_dir: Path) -> tuple[IRPRN, float]:
    """The trained network (weights from the file, none downloaded) and its scene unit."""
    cfg, unit = load_irprn_config(path_dir / "config.json")
    net = IRPRN(cfg)
    net.load_state_dict(load_file(str(path_dir / "weights.safetensors")))
    return net.eval(), unit
