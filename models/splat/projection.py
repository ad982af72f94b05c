"""The differentiable EWA projection of Gaussians into pinhole cameras (gsplat 1.5.3's semantics).

The CPU path that fits Gaussian models projects with these tensor operations, so autograd
carries the gradient from the screen-space quantities back to the means, quaternions, scales
and opacities; the compositing and its gradient are the compiled kernels of
``models.splat.cpu_kernels``. Renders without a gradient project with the compiled
``cpu_kernels.project`` instead (``models.splat.render`` chooses). What it computes:

* ``Sigma = R diag(s^2) R^T`` (quaternions wxyz, normalised), camera-space mean, cull
  ``z <= near_plane``; EWA Jacobian with the camera-space tangent clamped to 1.3x the half
  field of view; ``Sigma2d += eps2d I``; in ``antialiased`` mode the opacity is scaled by
  ``sqrt(det(Sigma2d_before) / det(Sigma2d_after))``;
* compositing (``cpu_kernels.composite``), per pixel centre ``(x + 0.5, y + 0.5)``:
  ``sigma = 0.5 (A dx^2 + C dy^2) + B dx dy`` with the conic ``(A, B, C)``;
  ``alpha = min(0.999, o exp(-sigma))``; Gaussians with ``sigma < 0`` or ``alpha < 1/255``
  are skipped; front-to-back compositing by depth, stopping before the Gaussian that would
  bring the transmittance to ``<= 1e-4``; ``colour += T * background``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.splat.cpu_kernels import ALPHA_MIN

Tensor = torch.Tensor


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariances ``[N, 3, 3]`` from quaternions wxyz ``[N, 4]`` and scales ``[N, 3]``."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)
    m = rot * scales[:, None, :]
    return m @ m.transpose(-1, -2)


def project(
    means: Tensor,  # [N, 3]
    covars: Tensor,  # [N, 3, 3]
    opacities: Tensor,  # [N]
    viewmats: Tensor,  # [C, 4, 4] world-to-camera, OpenCV axes
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    antialiased: bool = False,
) -> dict[str, Tensor]:
    """EWA projection of every Gaussian into every camera (gsplat's fully fused projection).

    Returns ``means2d`` [C, N, 2], ``conics`` [C, N, 3], ``depths`` [C, N], ``opacities``
    [C, N] (compensated in antialiased mode), ``radii`` [C, N, 2] int32 (0 = culled).
    """
    rot, trans = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", rot, means) + trans[:, None, :]  # [C, N, 3]
    covars_c = torch.einsum("cij,njk,clk->cnil", rot, covars, rot)  # [C, N, 3, 3]
    tx, ty, tz = means_c.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    safe_z = torch.where(tz.abs() < 1e-12, torch.full_like(tz, 1e-12), tz)
    txc = safe_z * torch.maximum(torch.minimum(tx / safe_z, lim_x_pos), -lim_x_neg)
    tyc = safe_z * torch.maximum(torch.minimum(ty / safe_z, lim_y_pos), -lim_y_neg)
    zero = torch.zeros_like(tz)
    J = torch.stack(
        [fx / safe_z, zero, -fx * txc / safe_z**2, zero, fy / safe_z, -fy * tyc / safe_z**2], dim=-1
    ).reshape(*tz.shape, 2, 3)
    cov2d = J @ covars_c @ J.transpose(-1, -2)
    det_orig = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    det = (cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]).clamp_min(1e-10)
    conics = torch.stack(
        [cov2d[..., 1, 1] / det, -0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]) / det, cov2d[..., 0, 0] / det], dim=-1
    )
    means2d = torch.stack([fx * tx / safe_z + cx, fy * ty / safe_z + cy], dim=-1)
    opac = opacities.expand_as(tz)
    if antialiased:
        opac = opac * torch.sqrt((det_orig / det).clamp_min(0.0))
    with torch.no_grad():
        # Extent where alpha can still reach 1/255 (gsplat 1.5.3's opacity-aware radius).
        extent = torch.sqrt(2.0 * torch.log((255.0 * opac.detach()).clamp_min(1.0))).clamp_max(3.33)
        radius = torch.stack(
            [torch.ceil(extent * torch.sqrt(cov2d[..., 0, 0])), torch.ceil(extent * torch.sqrt(cov2d[..., 1, 1]))], -1
        )
        valid = (det > 0) & (tz > near_plane) & (tz < far_plane) & (opac >= ALPHA_MIN)
        inside = (
            (means2d[..., 0] + radius[..., 0] > 0)
            & (means2d[..., 0] - radius[..., 0] < width)
            & (means2d[..., 1] + radius[..., 1] > 0)
            & (means2d[..., 1] - radius[..., 1] < height)
        )
        radius = torch.where((valid & inside & (radius > 0).all(-1))[..., None], radius, torch.zeros_like(radius))
    return {"means2d": means2d, "conics": conics, "depths": tz, "opacities": opac, "radii": radius.to(torch.int32)}
