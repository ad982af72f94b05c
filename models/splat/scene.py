"""The Gaussian model of a normal object, saved as safetensors, and the render call on it.

Parameters are stored as gsplat's trainer stores them: ``means`` [N, 3], ``scales`` [N, 3]
(log), ``quats`` [N, 4] (wxyz, unnormalised), ``opacities`` [N] (logit), ``sh0`` [N, 1, 3]
and ``shN`` [N, K-1, 3] (SH coefficients; colour = clamp_min(SH + 0.5, 0)).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.splat.render import rasterization

Tensor = torch.Tensor

# Which rasterizer semantics a scene was fitted under. A scene is only guaranteed to look
# the same when rendered under the same semantics (0.999 alpha clamp of gsplat 1.5.3).
SEMANTICS = "gsplat-1.5.3"
PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")
SH_C0 = 0.28209479177387814
SH_MAX_DEGREE = 4  # gsplat's spherical harmonics go up to degree 4


class SceneError(ValueError):
    """A Gaussian scene file is missing, unreadable or inconsistent."""


@dataclass
class GaussianScene:
    """A Gaussian splatting model and the metadata needed to render it faithfully."""

    means: Tensor  # [N, 3] world
    scales: Tensor  # [N, 3] log scales
    quats: Tensor  # [N, 4] wxyz, unnormalised
    opacities: Tensor  # [N] logits
    sh0: Tensor  # [N, 1, 3]
    shN: Tensor  # [N, (sh_degree+1)^2 - 1, 3]
    sh_degree: int = 0
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    normalization: dict = field(default_factory=dict)  # scene centre/scale used by later stages
    semantics: str = SEMANTICS

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    @property
    def device(self) -> torch.device:
        return self.means.device

    def to(self, device: str | torch.device) -> GaussianScene:
        moved = {name: getattr(self, name).to(device) for name in PARAM_NAMES}
        return GaussianScene(**moved, sh_degree=self.sh_degree, background=self.background,
                             normalization=dict(self.normalization), semantics=self.semantics)

    def params(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in PARAM_NAMES}

    @classmethod
    def from_params(cls, params: dict[str, Tensor], **meta) -> GaussianScene:
        return cls(**{name: params[name].detach().clone() for name in PARAM_NAMES}, **meta)

    def save(self, path: str | Path) -> None:
        """Write the parameters and the metadata to one safetensors file."""
        tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in self.params().items()}
        metadata = {
            "format": "rpe-pad-gaussians",
            "version": "1",
            "sh_degree": str(self.sh_degree),
            "background": json.dumps(list(self.background)),
            "normalization": json.dumps(self.normalization),
            "semantics": self.semantics,
        }
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> GaussianScene:
        """Read and validate a scene written by :meth:`save`."""
        path = Path(path)
        try:
            tensors = load_file(str(path), device=str(device))
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except (OSError, SafetensorError) as exc:
            raise SceneError(f"{path}: cannot read Gaussian scene: {exc}") from exc
        if metadata.get("format") != "rpe-pad-gaussians":
            raise SceneError(f"{path}: not an rpe-pad Gaussian scene (format={metadata.get('format')!r})")
        missing = [name for name in PARAM_NAMES if name not in tensors]
        if missing:
            raise SceneError(f"{path}: missing tensors {missing}")
        for name in PARAM_NAMES:
            if tensors[name].dtype not in (torch.float32, torch.float64):
                raise SceneError(f"{path}: {name} is {tensors[name].dtype}, not float32 or float64")
            tensors[name] = tensors[name].float()  # as save writes them, and as the renderers take them
        try:
            sh_degree = int(metadata["sh_degree"])
            background = tuple(float(v) for v in json.loads(metadata["background"]))
            normalization = json.loads(metadata.get("normalization", "{}"))
        except (KeyError, ValueError, TypeError) as exc:
            raise SceneError(f"{path}: bad metadata: {exc}") from exc
        scene = cls(**{name: tensors[name] for name in PARAM_NAMES}, sh_degree=sh_degree,
                     background=background, normalization=normalization,
                     semantics=metadata.get("semantics", "unknown"))
        scene.validate(str(path))
        return scene

    def validate(self, where: str = "scene") -> None:
        """``SceneError`` unless the scene can be rendered: at least one Gaussian, every
        parameter of its shape and finite (scales too once exponentiated), every quaternion
        of non-zero norm, a known SH degree and a background in [0, 1]."""
        n = self.num_gaussians
        if n < 1 or not 0 <= self.sh_degree <= SH_MAX_DEGREE:
            raise SceneError(f"{where}: {n} Gaussians of SH degree {self.sh_degree}; at least 1 of degree 0 to "
                             f"{SH_MAX_DEGREE} needed")
        expected = {
            "means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,),
            "sh0": (n, 1, 3), "shN": (n, (self.sh_degree + 1) ** 2 - 1, 3),
        }
        for name, shape in expected.items():
            tensor = getattr(self, name)
            if tuple(tensor.shape) != shape:
                raise SceneError(f"{where}: {name} has shape {tuple(tensor.shape)}, expected {shape}")
            if not torch.isfinite(tensor).all():
                raise SceneError(f"{where}: {name} has non-finite values")
        if not torch.isfinite(self.scales.exp()).all():
            raise SceneError(f"{where}: scales (log) too large: their exponential overflows")
        if not (self.quats.norm(dim=-1) > 1e-8).all():
            raise SceneError(f"{where}: quats has a quaternion of zero norm (no rotation)")
        if len(self.background) != 3 or not all(0 <= v <= 1 for v in self.background):
            raise SceneError(f"{where}: background must be 3 values in [0, 1], got {list(self.background)}")


@dataclass
class RenderResult:
    colors: Tensor  # [C, H, W, 3]
    alphas: Tensor  # [C, H, W, 1]
    depths: Tensor | None  # [C, H, W, 1] expected depth, when asked for
    meta: dict


def render(
    scene: GaussianScene | dict[str, Tensor],
    viewmats: Tensor,  # [C, 4, 4] world-to-camera, OpenCV axes
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    background: Tensor | tuple[float, float, float] | None = None,  # [3] or [C, 3]
    sh_degree: int | None = None,
    with_depth: bool = False,
) -> RenderResult:
    """Render a scene (or a dict of its raw parameters while fitting) into C cameras.

    ``background`` defaults to the scene's; ``sh_degree`` defaults to the scene's (pass a
    lower one during SH warm-up). CUDA tensors render with gsplat, CPU tensors with ours;
    the cameras are moved to the scene's device and the result stays there.
    """
    if isinstance(scene, GaussianScene):
        params = scene.params()
        sh_degree = scene.sh_degree if sh_degree is None else sh_degree
        background = scene.background if background is None else background
    else:
        params = scene
        sh_degree = 0 if sh_degree is None else sh_degree
        background = (1.0, 1.0, 1.0) if background is None else background
    means = params["means"]
    n_cams = viewmats.shape[0]
    bg = torch.as_tensor(background, dtype=means.dtype, device=means.device)
    bg = bg.expand(n_cams, 3) if bg.dim() == 1 else bg
    coeffs = torch.cat([params["sh0"], params["shN"]], dim=1)
    colors, alphas, meta = rasterization(
        means,
        params["quats"],
        torch.exp(params["scales"]),
        torch.sigmoid(params["opacities"]),
        coeffs,
        viewmats.to(means.device, means.dtype),
        Ks.to(means.device, means.dtype),
        width,
        height,
        sh_degree=sh_degree,
        backgrounds=bg,
        render_mode="RGB+ED" if with_depth else "RGB",
    )
    depths = None
    if with_depth:
        colors, depths = colors[..., :3], colors[..., 3:4]
    return RenderResult(colors=colors, alphas=alphas, depths=depths, meta=meta)
