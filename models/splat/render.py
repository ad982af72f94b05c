"""One render function for Gaussian scenes, on CUDA (gsplat) and CPU (our rasterizer).

:func:`rasterization` takes gsplat 1.5.3's arguments and returns what it returns
(``colors [C, H, W, X]``, ``alphas [C, H, W, 1]``, ``meta``); the backend follows the
tensors' device: ``gsplat.rasterization`` for CUDA tensors; for CPU tensors, the compiled
kernels of ``models.splat.cpu_kernels``. When a gradient is wanted (fitting, the lab's
per-query optimisation), the projection is ``models.splat.projection``'s tensor operations
and the compositing the kernels' own forward and backward pass; otherwise the projection is
compiled too (every render of the inspection pipeline). Cameras:
world-to-camera ``viewmats`` in OpenCV axes (``models.camera``).
"""

from __future__ import annotations

from typing import Literal

import torch

from models.camera import camera_center
from models.splat import cpu_kernels as kernels
from models.splat import projection

Tensor = torch.Tensor
RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
RasterizeMode = Literal["classic", "antialiased"]


def eval_sh(sh_degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """View-dependent colour ``clamp_min(SH(dirs) + 0.5, 0)`` as gsplat computes it.

    ``dirs`` [..., 3] (normalised here), ``coeffs`` [..., K, 3]. Uses gsplat's own
    pure-PyTorch SH evaluation so the basis constants are the ones its kernels use.
    """
    from gsplat.cuda._torch_impl import _spherical_harmonics

    return torch.clamp_min(_spherical_harmonics(sh_degree, dirs, coeffs) + 0.5, 0.0)


def rasterization(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, normalised inside
    scales: Tensor,  # [N, 3] linear
    opacities: Tensor,  # [N] in [0, 1]
    colors: Tensor,  # [N, D] (sh_degree None) or SH coefficients [N, K, 3]
    viewmats: Tensor,  # [C, 4, 4] world-to-camera, OpenCV axes
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,  # [C, D]
    render_mode: RenderMode = "RGB",
    rasterize_mode: RasterizeMode = "classic",
) -> tuple[Tensor, Tensor, dict]:
    """Render Gaussians into C cameras (see the module docstring for the backend choice)."""
    if render_mode not in ("RGB", "D", "ED", "RGB+D", "RGB+ED"):
        raise ValueError(f"unknown render_mode {render_mode!r}")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"unknown rasterize_mode {rasterize_mode!r}")
    if means.is_cuda:
        import gsplat

        return gsplat.rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree,
            backgrounds=backgrounds, render_mode=render_mode, rasterize_mode=rasterize_mode,
            # Non-packed, as the CPU path reports its meta. gsplat's default (packed) also
            # rejects a per-camera background [C, D]: the first GPU run's fit stopped on it.
            packed=False,
        )
    return _rasterization_cpu(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
        eps2d, sh_degree, backgrounds, render_mode, rasterize_mode,
    )


def _rasterization_cpu(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
    eps2d, sh_degree, backgrounds, render_mode, rasterize_mode,
) -> tuple[Tensor, Tensor, dict]:
    n_cams = viewmats.shape[0]
    antialiased = rasterize_mode == "antialiased"
    differentiable = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means, quats, scales, opacities, colors, viewmats, Ks))
    if differentiable:
        covars = projection.quat_scale_to_covar(quats, scales)
        proj = projection.project(means, covars, opacities, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane,
                          far_plane=far_plane, antialiased=antialiased)
    else:
        proj = kernels.project_cameras(means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane,
                                       far_plane, antialiased)
    if sh_degree is None:
        cols = colors.expand(n_cams, *colors.shape) if colors.dim() == 2 else colors  # [C, N, D]
    else:
        campos = camera_center(viewmats)  # [C, 3]
        dirs = means[None, :, :] - campos[:, None, :]  # [C, N, 3]
        coeffs = colors.expand(n_cams, *colors.shape)
        cols = eval_sh(sh_degree, dirs, coeffs)
    depth = proj["depths"][..., None]
    if render_mode in ("RGB+D", "RGB+ED"):
        cols = torch.cat([cols, depth], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(n_cams, 1)], dim=-1)
    elif render_mode in ("D", "ED"):
        cols = depth
        if backgrounds is not None:
            backgrounds = backgrounds.new_zeros(n_cams, 1)
    # The rasterizer reads means2d through this tensor, so its .grad is the screen-space
    # gradient DefaultStrategy accumulates (after info["means2d"].retain_grad()).
    means2d = proj["means2d"]
    render_colors, render_alphas = kernels.rasterize(proj, cols, width, height, backgrounds)
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1
        )
    meta = {
        "means2d": means2d,
        "radii": proj["radii"],
        "depths": proj["depths"],
        "conics": proj["conics"],
        "opacities": proj["opacities"],
        "width": width,
        "height": height,
        "n_cameras": n_cams,
        "tile_size": kernels.TILE,
        "gaussian_ids": None,  # non-packed, as gsplat reports it
    }
    return render_colors, render_alphas, meta

