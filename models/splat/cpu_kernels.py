"""Compiled CPU kernels of the rasterizer (numba): projection, tile binning, compositing and
its gradient.

gsplat has no CPU kernels, and most machines that develop, test and demo this product have
no GPU, so these kernels compute what ``gsplat.rasterization`` computes (pinhole,
non-packed; the formulas are in ``models.splat.projection``'s docstring), in float64 whatever
the input's precision. They are checked against a literal per-pixel reference, gradcheck and
gsplat itself in ``tests/models/splat/test_rasterizer.py``.

- :func:`project`: every Gaussian into one camera (means2d, conics, depths, opacities, radii),
  for renders without a gradient (``models.splat.projection`` is the differentiable one);
- :func:`bin_tiles`: the Gaussians each 8x8 tile must composite, front to back (a counting
  sort by tile of the depth-sorted ids), listing a Gaussian only in the tiles where its alpha
  can reach 1/255 (:func:`min_exponent`);
- :func:`composite`: front-to-back alpha compositing of a set of tiles, each pixel stopping
  where gsplat stops, and :func:`composite_backward`, its gradient, a back-to-front walk per
  pixel as in gsplat's backward pass. Both release the GIL, so :func:`rasterize` splits the
  tiles over ``torch.get_num_threads()`` Python threads; :class:`_CompositeFunction` makes the
  pair an autograd function, which is how the CPU fits Gaussian models.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import torch

Tensor = torch.Tensor

TILE = 8
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4


def _jit(fn):
    """``numba.njit`` releasing the GIL, with the machine code cached on disk (beside this
    module, in the user's cache when that is read-only, or in ``NUMBA_CACHE_DIR``). Where no
    such place is writable (a read-only install run by a user without a home), numba refuses
    to cache: then each process compiles on its first render instead of failing at import."""
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(fn)


@_jit
def _normalise_quat(q):
    n = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    return q[0] / n, q[1] / n, q[2] / n, q[3] / n


@_jit
def project(means, quats, scales, opacities, viewmat, K, width, height, eps2d, near_plane, far_plane, antialiased,
            means2d, conics, depths, opac_out, radii):
    """EWA projection into one camera, as ``projection.project``: ``means [N, 3]``,
    ``quats [N, 4]`` wxyz, ``scales [N, 3]`` linear, ``opacities [N]``, ``viewmat [4, 4]``
    world-to-camera (OpenCV axes), ``K [3, 3]``. Fills ``means2d [N, 2]``, ``conics [N, 3]``,
    ``depths [N]``, ``opac_out [N]`` (compensated when ``antialiased``) and ``radii [N, 2]``
    (0 = culled)."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    Rv = np.empty((3, 3))
    for i in range(3):
        for j in range(3):
            Rv[i, j] = viewmat[i, j]
    M = np.empty((3, 3))  # Rv @ R diag(s): camera-space covariance = M M^T
    for n in range(means.shape[0]):
        w, x, y, z = _normalise_quat(quats[n])
        R00, R01, R02 = 1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)
        R10, R11, R12 = 2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)
        R20, R21, R22 = 2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)
        s0, s1, s2 = scales[n, 0], scales[n, 1], scales[n, 2]
        for i in range(3):
            M[i, 0] = (Rv[i, 0] * R00 + Rv[i, 1] * R10 + Rv[i, 2] * R20) * s0
            M[i, 1] = (Rv[i, 0] * R01 + Rv[i, 1] * R11 + Rv[i, 2] * R21) * s1
            M[i, 2] = (Rv[i, 0] * R02 + Rv[i, 1] * R12 + Rv[i, 2] * R22) * s2
        tx = Rv[0, 0] * means[n, 0] + Rv[0, 1] * means[n, 1] + Rv[0, 2] * means[n, 2] + viewmat[0, 3]
        ty = Rv[1, 0] * means[n, 0] + Rv[1, 1] * means[n, 1] + Rv[1, 2] * means[n, 2] + viewmat[1, 3]
        tz = Rv[2, 0] * means[n, 0] + Rv[2, 1] * means[n, 1] + Rv[2, 2] * means[n, 2] + viewmat[2, 3]
        z = tz if abs(tz) >= 1e-12 else 1e-12
        txc = z * max(min(tx / z, lim_xp), -lim_xn)
        tyc = z * max(min(ty / z, lim_yp), -lim_yn)
        # J M, rows [2, 3], with J = [[fx/z, 0, -fx txc/z^2], [0, fy/z, -fy tyc/z^2]]
        a0 = fx / z * M[0, 0] - fx * txc / (z * z) * M[2, 0]
        a1 = fx / z * M[0, 1] - fx * txc / (z * z) * M[2, 1]
        a2 = fx / z * M[0, 2] - fx * txc / (z * z) * M[2, 2]
        b0 = fy / z * M[1, 0] - fy * tyc / (z * z) * M[2, 0]
        b1 = fy / z * M[1, 1] - fy * tyc / (z * z) * M[2, 1]
        b2 = fy / z * M[1, 2] - fy * tyc / (z * z) * M[2, 2]
        c00, c01, c11 = a0 * a0 + a1 * a1 + a2 * a2, a0 * b0 + a1 * b1 + a2 * b2, b0 * b0 + b1 * b1 + b2 * b2
        det_orig = c00 * c11 - c01 * c01
        c00 += eps2d
        c11 += eps2d
        det = max(c00 * c11 - c01 * c01, 1e-10)
        o = opacities[n]
        if antialiased:
            o = o * math.sqrt(max(det_orig / det, 0.0))
        conics[n, 0], conics[n, 1], conics[n, 2] = c11 / det, -c01 / det, c00 / det
        mx, my = fx * tx / z + cx, fy * ty / z + cy
        means2d[n, 0], means2d[n, 1] = mx, my
        depths[n] = tz
        opac_out[n] = o
        extent = min(math.sqrt(2.0 * math.log(max(255.0 * o, 1.0))), 3.33)
        rx, ry = math.ceil(extent * math.sqrt(c00)), math.ceil(extent * math.sqrt(c11))
        keep = (near_plane < tz < far_plane and o >= ALPHA_MIN and rx > 0 and ry > 0
                and mx + rx > 0 and mx - rx < width and my + ry > 0 and my - ry < height)
        radii[n, 0], radii[n, 1] = (rx, ry) if keep else (0, 0)


@_jit
def min_exponent(mx, my, A, B, C, tx, ty):
    """The least exponent ``sigma(u) = 0.5 A ux^2 + B ux uy + 0.5 C uy^2`` (``u`` = pixel
    centre - mean) over the pixel centres of tile ``(tx, ty)``. It is a convex quadratic,
    so the minimum is 0 when the mean lies inside the box of centres, else on one of the
    box's edges, where it is a 1-D quadratic minimised in closed form. A Gaussian of
    opacity ``o`` reaches the tile iff this is at most ``log(255 o)``."""
    x0, y0 = tx * TILE + 0.5 - mx, ty * TILE + 0.5 - my
    x1, y1 = x0 + (TILE - 1), y0 + (TILE - 1)
    if x0 <= 0.0 <= x1 and y0 <= 0.0 <= y1:
        return 0.0
    best = np.inf
    for edge in range(4):
        if edge < 2:  # a vertical edge: ux fixed, uy free in [y0, y1]
            fixed, lo, hi, a_fixed, a_free = (x0 if edge == 0 else x1), y0, y1, A, C
        else:
            fixed, lo, hi, a_fixed, a_free = (y0 if edge == 2 else y1), x0, x1, C, A
        free = min(max(-B * fixed / a_free, lo), hi)
        best = min(best, 0.5 * a_fixed * fixed * fixed + B * fixed * free + 0.5 * a_free * free * free)
    return best


@_jit
def _tile_box(mx, my, rx, ry, n_tx, n_ty):
    """The tiles ``[tx0, tx1) x [ty0, ty1)`` a bounding box of half-sizes ``(rx, ry)`` overlaps."""
    return (min(max(int(math.floor((mx - rx) / TILE)), 0), n_tx), min(max(int(math.ceil((mx + rx) / TILE)), 0), n_tx),
            min(max(int(math.floor((my - ry) / TILE)), 0), n_ty), min(max(int(math.ceil((my + ry) / TILE)), 0), n_ty))


@_jit
def bin_tiles(order, means2d, radii, conics, opacities, n_tx, n_ty, exact):
    """Gaussian ids per tile, front to back: ``order`` holds the visible ids sorted by depth;
    a Gaussian goes to the tiles its bounding box (``radii``) overlaps, and with ``exact`` only
    to those where its alpha can reach 1/255 (the same image, less work; a slack of 1e-3 keeps
    rather than drops on ties). Returns ``ids`` (concatenated per tile) and ``offsets
    [n_tiles + 1]``: tile t's entries are ``ids[offsets[t]:offsets[t + 1]]``. A counting sort
    by tile of the (tile, id) pairs, generated in depth order, so each tile keeps it."""
    boxes = np.empty((len(order), 4), np.int64)
    n_pairs = 0
    for k in range(len(order)):
        g = order[k]
        boxes[k] = _tile_box(np.float64(means2d[g, 0]), np.float64(means2d[g, 1]), np.float64(radii[g, 0]),
                             np.float64(radii[g, 1]), n_tx, n_ty)
        n_pairs += max(boxes[k, 1] - boxes[k, 0], 0) * max(boxes[k, 3] - boxes[k, 2], 0)
    pair_tile, pair_id = np.empty(n_pairs, np.int64), np.empty(n_pairs, np.int64)
    n_tiles = n_tx * n_ty
    offsets = np.zeros(n_tiles + 1, np.int64)
    n_pairs = 0
    for k in range(len(order)):
        g = order[k]
        mx, my = np.float64(means2d[g, 0]), np.float64(means2d[g, 1])
        A, B, C = np.float64(conics[g, 0]), np.float64(conics[g, 1]), np.float64(conics[g, 2])
        limit = math.log(max(255.0 * np.float64(opacities[g]), 1e-30)) + 1e-3
        for ty in range(boxes[k, 2], boxes[k, 3]):
            for tx in range(boxes[k, 0], boxes[k, 1]):
                if exact and min_exponent(mx, my, A, B, C, tx, ty) > limit:
                    continue
                pair_tile[n_pairs], pair_id[n_pairs] = ty * n_tx + tx, g
                offsets[ty * n_tx + tx + 1] += 1
                n_pairs += 1
    for t in range(n_tiles):
        offsets[t + 1] += offsets[t]
    fill = offsets[:n_tiles].copy()
    ids = np.empty(n_pairs, np.int64)
    for j in range(n_pairs):
        ids[fill[pair_tile[j]]] = pair_id[j]
        fill[pair_tile[j]] += 1
    return ids, offsets


@_jit
def composite(tiles, ids, offsets, means2d, conics, opacities, colors, background, n_tx, out, out_alpha, last):
    """Composite ``tiles`` front to back into ``out [H, W, D]`` and ``out_alpha [H, W]``
    (pixels of other tiles are left as they are). Per pixel centre: ``sigma = 0.5 (A dx^2 +
    C dy^2) + B dx dy``, ``alpha = min(0.999, o exp(-sigma))``; Gaussians with ``sigma < 0``
    or ``alpha < 1/255`` are skipped, and the pixel stops before the Gaussian that would
    bring its transmittance to ``<= 1e-4``; then ``colour += T * background`` (``background``
    empty: none). A tile stops when all its pixels have. ``last [H, W]`` receives, per pixel,
    one past the position in ``ids`` of the last Gaussian composited there (the tile's offset
    when none): :func:`composite_backward` walks back from it."""
    height, width, D = out.shape
    T = np.empty(TILE * TILE)
    acc = np.empty((TILE * TILE, D))
    live = np.empty(TILE * TILE, np.bool_)
    end = np.empty(TILE * TILE, np.int64)
    for t in tiles:
        ty, tx = t // n_tx, t % n_tx
        T[:] = 1.0
        acc[:] = 0.0
        live[:] = True
        end[:] = offsets[t]
        n_live = TILE * TILE
        for k in range(offsets[t], offsets[t + 1]):
            g = ids[k]
            o = np.float64(opacities[g])
            if o < ALPHA_MIN:
                continue
            limit = math.log(255.0 * o)  # alpha >= 1/255 needs sigma <= this: no exp for the rest
            mx, my = means2d[g, 0] - (tx * TILE + 0.5), means2d[g, 1] - (ty * TILE + 0.5)
            a, b, c = 0.5 * np.float64(conics[g, 0]), np.float64(conics[g, 1]), 0.5 * np.float64(conics[g, 2])
            for r in range(TILE):
                dy = my - r
                row, cross = c * dy * dy, b * dy
                for q in range(TILE):
                    i = r * TILE + q
                    if not live[i]:
                        continue
                    dx = mx - q
                    sigma = a * dx * dx + row + cross * dx
                    if sigma < 0.0 or sigma > limit:
                        continue
                    alpha = min(ALPHA_MAX, o * math.exp(-sigma))
                    if alpha < ALPHA_MIN:
                        continue
                    t_next = T[i] * (1.0 - alpha)
                    if t_next <= T_MIN:
                        live[i] = False
                        n_live -= 1
                        continue
                    w = alpha * T[i]
                    for d in range(D):
                        acc[i, d] += w * colors[g, d]
                    T[i] = t_next
                    end[i] = k + 1
            if n_live == 0:
                break
        for r in range(min(TILE, height - ty * TILE)):
            for q in range(min(TILE, width - tx * TILE)):
                i = r * TILE + q
                for d in range(D):
                    bg = T[i] * background[d] if len(background) else 0.0
                    out[ty * TILE + r, tx * TILE + q, d] = acc[i, d] + bg
                out_alpha[ty * TILE + r, tx * TILE + q] = 1.0 - T[i]
                last[ty * TILE + r, tx * TILE + q] = end[i]


@_jit
def composite_backward(tiles, ids, offsets, means2d, conics, opacities, colors, background, n_tx, out_alpha, last,
                       v_out, v_alpha_out, v_means2d, v_conics, v_opacities, v_colors):
    """The gradient of :func:`composite` over ``tiles``, given the forward's ``out_alpha`` and
    ``last`` and the loss's gradients ``v_out [H, W, D]`` and ``v_alpha_out [H, W]``; adds into
    ``v_means2d [N, 2]``, ``v_conics [N, 3]``, ``v_opacities [N]`` and ``v_colors [N, D]``.

    Each pixel walks its Gaussians back to front from ``last``, recovering the transmittance in
    front of each (``T_i = T_(i+1) / (1 - alpha_i)``) and the colour composited behind it (``S``),
    as gsplat's backward pass does. With ``C = sum_i c_i alpha_i T_i + T_end bg``:
    ``dC/dalpha_i = c_i T_i - (S_i + T_end bg) / (1 - alpha_i)`` and ``d(1 - T_end)/dalpha_i =
    T_end / (1 - alpha_i)``. A clamped alpha (0.999) passes no gradient; the rest follows
    ``alpha = o exp(-sigma)``, ``sigma = 0.5 A dx^2 + B dx dy + 0.5 C dy^2``, ``d = mean - pixel``.
    The forward's skips are repeated exactly (the same float64 formulas)."""
    height, width, D = v_out.shape
    T = np.empty(TILE * TILE)
    t_end = np.empty(TILE * TILE)
    behind = np.empty((TILE * TILE, D))
    v_bg = np.empty(TILE * TILE)
    stop = np.zeros(TILE * TILE, np.int64)
    for t in tiles:
        ty, tx = t // n_tx, t % n_tx
        behind[:] = 0.0
        stop[:] = offsets[t]
        top = offsets[t]
        for r in range(min(TILE, height - ty * TILE)):
            for q in range(min(TILE, width - tx * TILE)):
                i = r * TILE + q
                y, x = ty * TILE + r, tx * TILE + q
                T[i] = 1.0 - out_alpha[y, x]
                t_end[i] = T[i]
                stop[i] = last[y, x]
                top = max(top, stop[i])
                s = 0.0
                for d in range(len(background)):
                    s += background[d] * v_out[y, x, d]
                v_bg[i] = s
        for k in range(top - 1, offsets[t] - 1, -1):
            g = ids[k]
            o = np.float64(opacities[g])
            if o < ALPHA_MIN:
                continue
            limit = math.log(255.0 * o)
            mx, my = means2d[g, 0] - (tx * TILE + 0.5), means2d[g, 1] - (ty * TILE + 0.5)
            a, b, c = 0.5 * np.float64(conics[g, 0]), np.float64(conics[g, 1]), 0.5 * np.float64(conics[g, 2])
            for r in range(min(TILE, height - ty * TILE)):
                dy = my - r
                row, cross = c * dy * dy, b * dy
                for q in range(min(TILE, width - tx * TILE)):
                    i = r * TILE + q
                    if k >= stop[i]:
                        continue
                    dx = mx - q
                    sigma = a * dx * dx + row + cross * dx
                    if sigma < 0.0 or sigma > limit:
                        continue
                    vis = math.exp(-sigma)
                    alpha = min(ALPHA_MAX, o * vis)
                    if alpha < ALPHA_MIN:
                        continue
                    y, x = ty * TILE + r, tx * TILE + q
                    ra = 1.0 / (1.0 - alpha)
                    T[i] *= ra  # the transmittance in front of this Gaussian
                    w = alpha * T[i]
                    v_alpha = (t_end[i] * ra) * (v_alpha_out[y, x] - v_bg[i])
                    for d in range(D):
                        v_colors[g, d] += w * v_out[y, x, d]
                        v_alpha += (colors[g, d] * T[i] - behind[i, d] * ra) * v_out[y, x, d]
                        behind[i, d] += colors[g, d] * w
                    if o * vis <= ALPHA_MAX:
                        v_sigma = -o * vis * v_alpha
                        v_opacities[g] += vis * v_alpha
                        v_conics[g, 0] += 0.5 * dx * dx * v_sigma
                        v_conics[g, 1] += dx * dy * v_sigma
                        v_conics[g, 2] += 0.5 * dy * dy * v_sigma
                        v_means2d[g, 0] += (2.0 * a * dx + b * dy) * v_sigma
                        v_means2d[g, 1] += (2.0 * c * dy + b * dx) * v_sigma


# --- drivers: torch tensors in and out ------------------------------------------------------------------------------

_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}  # by (process id, workers): a pool does not survive a fork


def _pool(workers: int) -> ThreadPoolExecutor:
    key = (os.getpid(), workers)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="rasterize")
    return _POOLS[key]


def project_cameras(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmats: Tensor, Ks: Tensor,
                    width: int, height: int, eps2d: float, near_plane: float, far_plane: float,
                    antialiased: bool) -> dict[str, Tensor]:
    """:func:`project` into each of C cameras; the same dict as ``projection.project``
    (``means2d [C, N, 2]``, ``conics [C, N, 3]``, ``depths [C, N]``, ``opacities [C, N]``,
    ``radii [C, N, 2]`` int32), in the inputs' dtype."""
    n_cams, n = viewmats.shape[0], means.shape[0]
    arrays = [a.detach().contiguous().numpy() for a in (means, quats, scales, opacities)]
    out = {"means2d": np.empty((n_cams, n, 2)), "conics": np.empty((n_cams, n, 3)), "depths": np.empty((n_cams, n)),
           "opacities": np.empty((n_cams, n)), "radii": np.empty((n_cams, n, 2), np.int32)}
    for c in range(n_cams):
        project(*arrays, viewmats[c].detach().double().numpy(), Ks[c].detach().double().numpy(), width, height,
                eps2d, near_plane, far_plane, antialiased, out["means2d"][c], out["conics"][c], out["depths"][c],
                out["opacities"][c], out["radii"][c])
    return {k: torch.from_numpy(v) if k == "radii" else torch.from_numpy(v).to(means.dtype) for k, v in out.items()}


def tile_lists(means2d: Tensor, radii: Tensor, depths: Tensor, conics: Tensor, opacities: Tensor, n_tx: int, n_ty: int,
               exact: bool = True) -> tuple[Tensor, Tensor]:
    """:func:`bin_tiles` for one camera's projection: ``ids`` and ``offsets [n_tiles + 1]``
    (int64 tensors). Visible Gaussians are ordered by depth, ties by id."""
    with torch.no_grad():
        vis = torch.nonzero((radii > 0).all(-1))[:, 0]
        order = vis[torch.argsort(depths[vis], stable=True)]
        ids, offsets = bin_tiles(order.numpy(), *(t.detach().numpy() for t in (means2d, radii, conics, opacities)),
                                 n_tx, n_ty, exact)
    return torch.from_numpy(ids), torch.from_numpy(offsets)


def _deal(busy: np.ndarray, workers: int) -> list[np.ndarray]:
    """The busy tiles (longest first) dealt round-robin to ``workers`` threads."""
    return [busy] if workers == 1 or len(busy) < 2 * workers else [busy[k::workers] for k in range(workers)]


def _run(kernel, shares: list[np.ndarray], args: tuple, own: list[tuple] | None = None) -> None:
    """``kernel(share, *args, *own[k])`` for each thread's share of tiles, on the pool when
    there are several (``own``: per-thread arguments, such as gradient buffers)."""
    own = own or [()] * len(shares)
    if len(shares) == 1:
        kernel(shares[0], *args, *own[0])
        return
    for done in [_pool(len(shares)).submit(kernel, share, *args, *mine) for share, mine in zip(shares, own)]:
        done.result()


@dataclass
class _Composited:
    """One camera's forward pass, kept for its backward pass (float64 numpy arrays)."""

    ids: np.ndarray
    offsets: np.ndarray
    shares: list[np.ndarray]  # the busy tiles per thread
    means2d: np.ndarray
    conics: np.ndarray
    opacities: np.ndarray
    colors: np.ndarray
    background: np.ndarray  # [D], or empty: none
    n_tx: int
    image: np.ndarray  # [H, W, D]
    alpha: np.ndarray  # [H, W]
    last: np.ndarray  # [H, W] int64


def _composite_camera(means2d: Tensor, conics: Tensor, opacities: Tensor, radii: Tensor, depths: Tensor, colors: Tensor,
                      background: Tensor | None, width: int, height: int) -> _Composited:
    n_tx, n_ty = math.ceil(width / TILE), math.ceil(height / TILE)
    ids, offsets = (t.numpy() for t in tile_lists(means2d, radii, depths, conics, opacities, n_tx, n_ty))
    counts = np.diff(offsets)
    busy = np.nonzero(counts)[0]
    busy = busy[np.argsort(-counts[busy], kind="stable")]
    bg = background.detach().double().numpy() if background is not None else np.empty(0)
    done = _Composited(ids, offsets, _deal(busy, max(1, torch.get_num_threads())),
                       *(t.detach().double().contiguous().numpy() for t in (means2d, conics, opacities, colors)), bg, n_tx,
                       np.empty((height, width, colors.shape[-1])), np.zeros((height, width)),
                       np.empty((height, width), np.int64))
    done.image[:] = bg if len(bg) else 0.0  # tiles no Gaussian reaches
    done.last[:] = 0
    _run(composite, done.shares, (ids, offsets, done.means2d, done.conics, done.opacities, done.colors, bg, n_tx,
                                  done.image, done.alpha, done.last))
    return done


def rasterize(proj: dict[str, Tensor], colors: Tensor, width: int, height: int,
              backgrounds: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Composite projected Gaussians: colours ``[C, H, W, D]`` and alphas ``[C, H, W, 1]`` in
    ``colors``' dtype. Each camera's busy tiles are dealt, longest first, to
    ``torch.get_num_threads()`` threads. Differentiable in ``means2d``, ``conics``,
    ``opacities``, ``colors`` and ``backgrounds`` (:class:`_CompositeFunction`) when any of
    them wants a gradient; ``means2d``'s gradient is the screen-space one gsplat's
    densification reads."""
    images, alphas = [], []
    for c in range(colors.shape[0]):
        bg = backgrounds[c] if backgrounds is not None else None
        args = (proj["means2d"][c], proj["conics"][c], proj["opacities"][c], colors[c], bg)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
            image, alpha = _CompositeFunction.apply(*args, proj["radii"][c], proj["depths"][c], width, height)
        else:
            done = _composite_camera(*args[:3], proj["radii"][c], proj["depths"][c], colors[c], bg, width, height)
            image, alpha = (torch.from_numpy(a).to(colors.dtype) for a in (done.image, done.alpha))
        images.append(image)
        alphas.append(alpha)
    return torch.stack(images), torch.stack(alphas)[..., None]


class _CompositeFunction(torch.autograd.Function):
    """One camera's compositing with :func:`composite_backward` as its gradient."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, background, radii, depths, width, height):
        done = _composite_camera(means2d, conics, opacities, radii, depths, colors, background, width, height)
        ctx.done, ctx.dtype = done, colors.dtype
        return torch.from_numpy(done.image).to(colors.dtype), torch.from_numpy(done.alpha).to(colors.dtype)

    @staticmethod
    def backward(ctx, v_image, v_alpha):
        done: _Composited = ctx.done
        n, dim = done.colors.shape
        v_image = np.zeros(done.image.shape) if v_image is None else v_image.detach().double().contiguous().numpy()
        v_alpha = np.zeros(done.alpha.shape) if v_alpha is None else v_alpha.detach().double().contiguous().numpy()
        # One gradient buffer per thread: their tiles share Gaussians.
        grads = [(np.zeros((n, 2)), np.zeros((n, 3)), np.zeros(n), np.zeros((n, dim))) for _ in done.shares]
        args = (done.ids, done.offsets, done.means2d, done.conics, done.opacities, done.colors, done.background,
                done.n_tx, done.alpha, done.last, v_image, v_alpha)
        _run(composite_backward, done.shares, args, grads)
        v_means2d, v_conics, v_opacities, v_colors = (torch.from_numpy(sum(parts)).to(ctx.dtype) for parts in zip(*grads))
        v_background = None
        if ctx.needs_input_grad[4]:
            v_background = torch.from_numpy((v_image * (1.0 - done.alpha)[..., None]).sum((0, 1))).to(ctx.dtype)
        return v_means2d, v_conics, v_opacities, v_colors, v_background, None, None, None, None


def warm(dtype: torch.dtype = torch.float32) -> None:
    """Compile (or load from the cache) every kernel for ``dtype`` inputs by rendering two
    Gaussians: the images run this at build time, so a service's warm-up finds them cached."""
    means = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.2]], dtype=dtype)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype).expand(2, 4)
    scales, opacities = torch.full((2, 3), 0.2, dtype=dtype), torch.full((2,), 0.9, dtype=dtype)
    viewmat = torch.eye(4, dtype=dtype)
    viewmat[2, 3] = 3.0
    K = torch.tensor([[20.0, 0.0, 8.0], [0.0, 20.0, 8.0], [0.0, 0.0, 1.0]], dtype=dtype)
    proj = project_cameras(means, quats, scales, opacities, viewmat[None], K[None], 16, 16, 0.3, 0.01, 1e10, False)
    rasterize(proj, torch.ones(1, 2, 3, dtype=dtype), 16, 16, torch.ones(1, 3, dtype=dtype))
