"""A differentiable, tile-based PyTorch rasterizer with gsplat 1.5.3's forward semantics.

gsplat has no CPU kernels, and most machines that develop, test and demo this product have
no GPU, so this module reproduces what ``gsplat.rasterization`` computes (pinhole camera,
non-packed) with plain tensor operations:

* projection: ``Sigma = R diag(s^2) R^T`` (quaternions wxyz, normalised), camera-space
  mean, cull ``z <= near_plane``; EWA Jacobian with the camera-space tangent clamped to
  1.3x the half field of view; ``Sigma2d += eps2d I``; in ``antialiased`` mode the opacity
  is scaled by ``sqrt(det(Sigma2d_before) / det(Sigma2d_after))``;
* per pixel centre ``(x + 0.5, y + 0.5)``: ``sigma = 0.5 (A dx^2 + C dy^2) + B dx dy``
  with the conic ``(A, B, C)``; ``alpha = min(0.999, o exp(-sigma))``; Gaussians with
  ``sigma < 0`` or ``alpha < 1/255`` are skipped; front-to-back compositing by depth,
  stopping before the Gaussian that would bring the transmittance to ``<= 1e-4``;
  ``colour += T * background``.

Compositing is vectorised per 8x8 tile: the Gaussians a tile must composite
(``models.splat.cpu_kernels.tile_lists``) are gathered in depth order, transmittance is an
exclusive cumulative sum of ``log1p(-alpha)``, and tiles are processed in chunks whose size
bounds memory. Everything is differentiable, and the returned ``means2d`` can retain its
gradient for gsplat's ``DefaultStrategy``. This is the path that fits models; renders
without autograd take the compiled kernels of ``models.splat.cpu_kernels``
(``models.splat.render`` chooses).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.splat.cpu_kernels import ALPHA_MAX, ALPHA_MIN, T_MIN, TILE, tile_lists

Tensor = torch.Tensor

# Upper bound on (pixels x Gaussians) evaluated at once while compositing: with autograd,
# large chunks amortise the per-chunk graph overhead (measured on 2 cores, 20k Gaussians).
CHUNK_ELEMENTS = 1 << 19


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


def _composite_tiles(
    tile_ids: Tensor,  # [B] tiles of this chunk
    lanes: Tensor,  # [B, L] indices into the per-tile entry list (-1 = padding)
    gauss_ids: Tensor,
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D]
    n_tx: int,
) -> tuple[Tensor, Tensor]:
    """Colours [B, TILE*TILE, D] (without background) and final transmittance [B, TILE*TILE].

    The Gaussian's exponent is separable over the tile's rows and columns:
    ``sigma = 0.5 A dx^2 + 0.5 C dy^2 + B dx dy`` with ``dx`` depending on the column
    only and ``dy`` on the row only, so the per-pixel work is three broadcast operations.
    The conic is positive definite by construction (``Sigma2d + eps2d I``), so gsplat's
    ``sigma < 0`` guard can only fire through rounding at a Gaussian's exact centre.
    """
    valid_lane = lanes >= 0
    gid = gauss_ids[lanes.clamp_min(0)]  # [B, L]
    ty, tx = tile_ids // n_tx, tile_ids % n_tx
    offs = torch.arange(TILE, device=means2d.device, dtype=means2d.dtype) + 0.5
    dx = means2d[gid, 0][:, None, :] - (tx[:, None, None] * TILE + offs[None, :, None])  # [B, TILE(col), L]
    dy = means2d[gid, 1][:, None, :] - (ty[:, None, None] * TILE + offs[None, :, None])  # [B, TILE(row), L]
    A, Bc, Cc = conics[gid, 0][:, None, :], conics[gid, 1][:, None, :], conics[gid, 2][:, None, :]
    # Fold log(opacity) into the column term: alpha = exp(log(o) - sigma). Padding lanes get
    # a huge exponent so their alpha is 0 without a separate mask.
    log_o = torch.where(valid_lane, torch.log(opacities[gid].clamp_min(1e-30)), torch.full_like(gid, -1e4, dtype=means2d.dtype))
    col_term = 0.5 * A * dx * dx - log_o[:, None, :]  # [B, TILE, L]
    row_term = 0.5 * Cc * dy * dy  # [B, TILE, L]
    neg_log_alpha = (row_term[:, :, None, :] + col_term[:, None, :, :]) + (Bc * dy)[:, :, None, :] * dx[:, None, :, :]
    neg_log_alpha = neg_log_alpha.reshape(len(tile_ids), TILE * TILE, -1)  # [B, P, L], P row-major
    alpha = torch.exp(-neg_log_alpha.clamp_max(60.0)).clamp_max(ALPHA_MAX)
    alpha = alpha * (alpha >= ALPHA_MIN)  # skip alpha < 1/255 (a mask multiply is cheaper than where)
    log_keep = torch.log1p(-alpha)
    log_t_incl = torch.cumsum(log_keep, dim=-1)
    # Stop before the Gaussian that would bring the transmittance to <= T_MIN. T is
    # non-increasing, so "inclusive T > T_MIN" marks exactly the Gaussians composited.
    composited = (log_t_incl > math.log(T_MIN)).to(alpha.dtype)
    trans_incl = torch.exp(log_t_incl)
    weights = alpha * trans_incl / (1.0 - alpha) * composited  # alpha_i * T_i (exclusive T)
    out = torch.einsum("bpl,bld->bpd", weights, colors[gid])
    final_t = torch.exp((log_keep * composited).sum(dim=-1))
    return out, final_t


def rasterize(
    proj: dict[str, Tensor],
    colors: Tensor,  # [C, N, D]
    width: int,
    height: int,
    backgrounds: Tensor | None = None,  # [C, D]
    chunk_elements: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Composite projected Gaussians: colours [C, H, W, D] and alphas [C, H, W, 1]."""
    chunk_elements = chunk_elements or CHUNK_ELEMENTS
    n_cams, _, dim = colors.shape
    n_tx, n_ty = math.ceil(width / TILE), math.ceil(height / TILE)
    out_colors, out_alphas = [], []
    for c in range(n_cams):
        means2d, conics = proj["means2d"][c], proj["conics"][c]
        opac, depths, radii = proj["opacities"][c], proj["depths"][c], proj["radii"][c]
        gauss_ids, bounds = tile_lists(means2d, radii, depths, conics, opac, n_tx, n_ty)
        offsets, counts = bounds[:-1], bounds[1:] - bounds[:-1]
        image = colors.new_zeros(n_tx * n_ty, TILE * TILE, dim)
        trans = colors.new_ones(n_tx * n_ty, TILE * TILE)
        busy = torch.nonzero(counts > 0)[:, 0]
        busy = busy[torch.argsort(counts[busy])]  # similar lengths share a chunk: less padding
        pieces_c, pieces_t, pieces_id = [], [], []
        start = 0
        while start < len(busy):
            # Tiles are sorted by count, so grow the chunk while the padded size fits.
            stop = start + 1
            while stop < len(busy) and (stop + 1 - start) * int(counts[busy[stop]]) * TILE * TILE <= chunk_elements:
                stop += 1
            tiles = busy[start:stop]
            longest = int(counts[tiles].max())
            lane = torch.arange(longest, device=colors.device)
            lanes = torch.where(lane[None, :] < counts[tiles, None], offsets[tiles, None] + lane[None, :], -1)
            col, tr = _composite_tiles(tiles, lanes, gauss_ids, means2d, conics, opac, colors[c], n_tx)
            pieces_c.append(col)
            pieces_t.append(tr)
            pieces_id.append(tiles)
            start = stop
        if pieces_id:
            ids = torch.cat(pieces_id)
            image = image.index_put((ids,), torch.cat(pieces_c))
            trans = trans.index_put((ids,), torch.cat(pieces_t))
        if backgrounds is not None:
            image = image + trans[..., None] * backgrounds[c]
        image = image.reshape(n_ty, n_tx, TILE, TILE, dim).permute(0, 2, 1, 3, 4).reshape(n_ty * TILE, n_tx * TILE, dim)
        alpha = (1.0 - trans).reshape(n_ty, n_tx, TILE, TILE).permute(0, 2, 1, 3).reshape(n_ty * TILE, n_tx * TILE)
        out_colors.append(image[:height, :width])
        out_alphas.append(alpha[:height, :width, None])
    return torch.stack(out_colors), torch.stack(out_alphas)
