"""Pixel-accurate alignment after IRPRN: gallery PnP, a depth-warp polish, a guarded 2D warp.

The one refinement of pose mode ``rpe+refine`` (docs/REFINE.md; one render per query):

1. ``gallery_pnp_refine``: PnP of the query against its best ``gallery_views`` gallery
   views at once (their images and expected depths are stored in the bundle; SIFT matches
   with Lowe's ratio test, the matches of all views pooled into one RANSAC PnP from the
   IRPRN pose, then Levenberg-Marquardt on the inliers; OpenCV). Then the one render, at
   that pose, with depth: the reference. Then ``rounds`` polishing PnPs of the query
   against the current reference from SIFT matches (robust to a start several pixels off),
   and ``flow_rounds`` more from dense correspondences, run for every query whatever the
   SIFT rounds did: OpenCV's DIS optical flow from the reference to the query and back,
   every ``flow_step``-th pixel on the object whose two flows agree within
   ``flow_consistency_px`` (``flow_matches``; SIFT finds few corners at grazing or plain
   views, the flow a point at every pixel, and sub-pixel ones once the reference is near).
   A polish that moves the object by at most
   ``warp_max_px`` is applied by re-projecting the render with its depth (``warp_to_pose``:
   no new render), a larger one by rendering again; each must match the query better (mean
   absolute difference) than the current reference. A gallery correction is confirmed when
   a polishing PnP (the query against the render, independent of the gallery) finds it
   within ``warp_max_px``; one that no polish confirms is compared with a render at the
   IRPRN pose at the end, and dropped if that matches better. The warp is the rendered
   scene seen from the corrected camera (6 numbers for the whole image, through the
   render's own depth), not a deformation fitted to the query: it cannot bend the
   reference onto a defect.
2. ``ecc_align``: a last 2D registration of the reference onto the query (OpenCV's ECC,
   Euclidean motion: rotation + translation, 3 degrees of freedom) at ``ecc_size``.

Guards (failures keep the input, or the last verified correction, and say why; never a
worse pose silently): every PnP needs ``min_inliers`` inliers and a correction within
``max_rotation_deg`` and ``max_center_rel`` (camera-centre shift over its distance from the
origin); ECC must converge, raise the correlation, and stay within ``ecc_max_shift_px`` and
``ecc_max_rotation_deg``. Pixel convention: our intrinsics put pixel centres at +0.5,
OpenCV's keypoints at +0, so keypoints are shifted by 0.5 before use.

Measured and retired (figures in docs/REFINE.md and docs/RESULTS.md, code in git history):
PnP on renders (``pnp``, ``pnp+ecc``: three renders per query), ECC alone, gallery PnP
without ECC, ORB keypoints, render-and-compare where PnP fails (``photometric``), and a
polish by the flow alone, without the SIFT rounds (session 19: from a start several pixels
off, two flow rounds left some views worse).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from models.camera import camera_center, make_pose, rotation_angle, scale_intrinsics
from models.images import to_uint8
from models.splat.scene import GaussianScene, render

Tensor = torch.Tensor


@dataclass(frozen=True)
class RefineConfig:
    ratio: float = 0.85  # Lowe's ratio test on SIFT matches
    ransac_px: float = 2.0  # the SIFT PnPs' RANSAC inlier distance, pixels at the bundle's size
    min_inliers: int = 8  # RANSAC inliers for a correction (12 refused 2 of 40 correctable synthetic queries; docs/REFINE.md)
    max_rotation_deg: float = 30.0  # largest correction of the IRPRN pose accepted
    max_center_rel: float = 0.5  # largest camera-centre shift accepted, over the camera's distance from the origin
    rounds: int = 2  # polishing PnPs against the reference, from SIFT matches
    flow_rounds: int = 1  # then polishing PnPs from dense flow correspondences
    gallery_views: int = 3  # best gallery views whose matches are pooled into one PnP
    warp_max_px: float = 0.5  # largest polish applied by warping the last render, and confirming the gallery's
    # correction; larger ones re-render (2.0 until session 19: the warp's residue at occlusion edges; docs/REFINE.md)
    polish_stop_px: float = 0.2  # a polish that moved the reference less than this ends the rounds of its kind
    flow_step: int = 2  # the flow polish's correspondences: every flow_step-th pixel of the reference
    flow_consistency_px: float = 0.5  # largest forward-backward disagreement of a flow correspondence
    flow_ransac_px: float = 1.0  # the flow polish's RANSAC inlier distance (dense, sub-pixel)
    ecc_size: int = 224  # ECC works at this square size (the scorer's)
    ecc_iterations: int = 60
    ecc_max_shift_px: float = 12.0  # at ecc_size
    ecc_max_rotation_deg: float = 5.0

    def __post_init__(self) -> None:
        """``ValueError`` naming the field unless each count is an integer at its least (PnP
        needs 4 points; the rounds may be 0) and each bound finite and > 0 (the warp and stop
        bounds may be 0; the ratio at most 1, the angles at most 180 degrees): a bundle's
        manifest carries these."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                least = {"rounds": 0, "flow_rounds": 0, "min_inliers": 4, "ecc_size": 16}.get(f.name, 1)
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
                need = f"an integer >= {least}"
            else:
                zero = f.name in ("warp_max_px", "polish_stop_px")
                ok = (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                      and (value >= 0 if zero else value > 0))
                need = f"a finite number {'>=' if zero else '>'} 0"
            if not ok:
                raise ValueError(f"refine.{f.name} must be {need}, got {value!r}")
        if self.ratio > 1:
            raise ValueError(f"refine.ratio must be at most 1, got {self.ratio!r}")
        for name in ("max_rotation_deg", "ecc_max_rotation_deg"):
            if getattr(self, name) > 180:
                raise ValueError(f"refine.{name} must be at most 180 degrees, got {getattr(self, name)!r}")


@dataclass
class PnPResult:
    poses: Tensor  # [B, 4, 4] refined where accepted, else the input
    accepted: list[bool] = field(default_factory=list)
    inliers: list[int] = field(default_factory=list)  # the most of any SIFT PnP (gallery or polish)
    flow_inliers: list[int] = field(default_factory=list)  # the accepted flow polish's inliers (0: none accepted)
    reasons: list[str] = field(default_factory=list)
    renders: np.ndarray | None = None  # [B, H, W, 3] in [0, 1]: each query's reference at its returned pose
    render_ms: float = 0.0  # time of the render the unrefined pipeline would have made too
    paths: list[str] = field(default_factory=list)  # per query, how the pose was reached


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(to_uint8(image), cv2.COLOR_RGB2GRAY)


def _detector():
    return cv2.SIFT_create(nfeatures=1500)


def resize_with_intrinsics(images: Tensor, Ks: Tensor, width: int, height: int) -> tuple[np.ndarray, Tensor]:
    """Images ``[B, H, W, 3]`` resized to ``width x height`` (numpy) and their intrinsics."""
    h, w = images.shape[1:3]
    K = scale_intrinsics(Ks.double(), width / w, height / h)
    small = F.interpolate(images.permute(0, 3, 1, 2).float(), size=(height, width), mode="bilinear", antialias=True,
                          align_corners=False).permute(0, 2, 3, 1)
    return small.numpy(), K


def _lift(pts: np.ndarray, depth: np.ndarray, K: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points of pixel positions ``pts [N, 2]`` (+0.5 convention) with a depth map
    (0 = not on the object) seen from world-to-camera ``pose``; and which were kept."""
    h, w = depth.shape
    cols = np.clip(pts[:, 0].astype(int), 0, w - 1)
    rows = np.clip(pts[:, 1].astype(int), 0, h - 1)
    d = depth[rows, cols].astype(np.float64)
    keep = d > 0
    d, p = d[keep], pts[keep]
    cam = np.stack([(p[:, 0] - K[0, 2]) * d / K[0, 0], (p[:, 1] - K[1, 2]) * d / K[1, 1], d], axis=1)
    return (cam - pose[:3, 3]) @ pose[:3, :3], keep


def _solve(world: np.ndarray, pts: np.ndarray, K: np.ndarray, pose0: np.ndarray, cfg: RefineConfig,
           ransac_px: float):
    """RANSAC PnP from ``pose0`` (inliers within ``ransac_px``) then LM on the inliers:
    (pose [4, 4] tensor | None, inliers)."""
    if len(world) < cfg.min_inliers:
        return None, len(world)
    rvec0, _ = cv2.Rodrigues(pose0[:3, :3])
    ok, rvec, tvec, inl = cv2.solvePnPRansac(world, pts, K, None, rvec0.copy(), pose0[:3, 3].reshape(3, 1).copy(),
                                             useExtrinsicGuess=True, iterationsCount=200, reprojectionError=ransac_px,
                                             confidence=0.999, flags=cv2.SOLVEPNP_ITERATIVE)
    n_in = 0 if inl is None else len(inl)
    if not ok or n_in < cfg.min_inliers:
        return None, n_in
    rvec, tvec = cv2.solvePnPRefineLM(world[inl[:, 0]], pts[inl[:, 0]], K, None, rvec, tvec)
    return make_pose(torch.from_numpy(cv2.Rodrigues(rvec)[0]), torch.from_numpy(tvec[:, 0])), n_in


def _within_bounds(new: Tensor, pose0: Tensor, cfg: RefineConfig) -> tuple[bool, str]:
    turn = math.degrees(float(rotation_angle(new[:3, :3], pose0[:3, :3])))
    c0 = camera_center(pose0)
    moved = float((camera_center(new) - c0).norm() / c0.norm().clamp_min(1e-9))
    if turn > cfg.max_rotation_deg or moved > cfg.max_center_rel:
        return False, f"correction too large ({turn:.1f} deg, centre {moved:.2f})"
    return True, "ok"


def _features(det, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Keypoint positions ``[N, 2]`` (pixel centres at +0.5, our convention) and descriptors."""
    kps, des = det.detectAndCompute(gray, None)
    return np.array([k.pt for k in kps], np.float64).reshape(-1, 2) + 0.5, des


def _match(fa: tuple, fb: tuple, norm: int, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Ratio-test matches between two ``_features``: matched positions in a and in b."""
    (pa, da), (pb, db) = fa, fb
    if da is None or db is None or len(pa) < 2 or len(pb) < 2:
        return np.zeros((0, 2)), np.zeros((0, 2))
    pairs = cv2.BFMatcher(norm).knnMatch(da, db, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < ratio * n.distance]
    return pa[[m.queryIdx for m in good]].reshape(-1, 2), pb[[m.trainIdx for m in good]].reshape(-1, 2)


def flow_matches(reference: np.ndarray, query: np.ndarray, cfg: RefineConfig) -> tuple[np.ndarray, np.ndarray]:
    """Dense correspondences between two views a few pixels apart (``[H, W, 3]`` in [0, 1],
    the same size): OpenCV's DIS optical flow from ``reference`` to ``query`` and back, on
    every ``cfg.flow_step``-th pixel of ``reference``, kept where the backward flow returns
    within ``cfg.flow_consistency_px`` (occlusions and patches the flow cannot pin fail it).
    Returns matched positions in the query and in the reference (``[N, 2]``, pixel centres
    at +0.5), like ``_match``."""
    if reference.shape != query.shape:
        raise ValueError(f"flow_matches needs two images of one size, got {reference.shape} and {query.shape}")
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    r, q = _gray(reference), _gray(query)
    fwd, bwd = dis.calc(r, q, None), dis.calc(q, r, None)
    h, w = r.shape
    ys, xs = np.mgrid[0:h:cfg.flow_step, 0:w:cfg.flow_step].reshape(2, -1)
    f = fwd[ys, xs]
    tx, ty = (xs + f[:, 0]).astype(np.float32), (ys + f[:, 1]).astype(np.float32)
    back = _remap_points(bwd, tx, ty)
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    ok = inside & (np.linalg.norm(f + back, axis=1) < cfg.flow_consistency_px)
    ref_pts = np.stack([xs, ys], axis=1)[ok].astype(np.float64) + 0.5
    return np.stack([tx, ty], axis=1)[ok].astype(np.float64) + 0.5, ref_pts


def _filled_depth(depth: np.ndarray) -> np.ndarray | None:
    """A depth map with the pixels off the object (0) given the depth of the nearest object
    pixel, so that a small camera motion moves the (uniform) background near the silhouette
    with the object's edge instead of tearing it (None: no object in view)."""
    off = depth <= 0
    if off.all():
        return None
    if not off.any():
        return depth
    idx = ndimage.distance_transform_edt(off, return_distances=False, return_indices=True)
    return depth[tuple(idx)]


def _flow(depth: np.ndarray, K: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Where each pixel of a view at ``src`` (world-to-camera) with ``depth [H, W]`` lands
    in the view at ``dst``, minus where it is: ``[H, W, 2]`` pixels."""
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    cam = np.stack([(u - K[0, 2]) * depth / K[0, 0], (v - K[1, 2]) * depth / K[1, 1], depth], axis=-1)
    rel = dst @ np.linalg.inv(src)  # src camera -> dst camera
    moved = cam @ rel[:3, :3].T + rel[:3, 3]
    z = np.maximum(moved[..., 2], 1e-9)
    return np.stack([K[0, 0] * moved[..., 0] / z + K[0, 2] - u, K[1, 1] * moved[..., 1] / z + K[1, 2] - v], axis=-1)


def mean_flow_px(depth: np.ndarray, K: np.ndarray, src: np.ndarray, dst: np.ndarray) -> float:
    """Mean image motion, in pixels, of the object's pixels (``depth > 0``) from ``src`` to ``dst``."""
    on = depth > 0
    if not on.any():
        return float("inf")
    return float(np.linalg.norm(_flow(depth, K, src, dst)[on], axis=-1).mean())


def warp_to_pose(colors: np.ndarray, depth: np.ndarray, K: np.ndarray, src: np.ndarray, dst: np.ndarray,
                 iterations: int = 3) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The render ``colors [H, W, 3]`` at world-to-camera ``src`` (expected ``depth``, 0 off
    the object) re-projected to the nearby pose ``dst``: each output pixel ``x`` samples the
    render at ``x - f(x_s)``, ``f`` the forward flow, by fixed-point iteration from
    ``x_s = x``. Exact for a static scene up to occlusion changes, which grow with the
    motion (at 2 px they left residue at occlusion edges that the scorer saw): meant for
    sub-pixel corrections (``warp_max_px``, 0.5 px). Returns the
    warped image and its sampling maps (x, y: where each output pixel was read, 0-based)."""
    h, w = depth.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    filled = _filled_depth(depth)
    if filled is None:
        return colors, (gx, gy)
    flow = _flow(filled, K, src, dst).astype(np.float32)
    sx, sy = gx - flow[..., 0], gy - flow[..., 1]
    for _ in range(iterations - 1):
        f = cv2.remap(flow, sx, sy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        sx, sy = gx - f[..., 0], gy - f[..., 1]
    warped = cv2.remap(np.ascontiguousarray(colors, dtype=np.float32), sx, sy, cv2.INTER_CUBIC,
                       borderMode=cv2.BORDER_REPLICATE)  # cubic: sharper than linear (a third less error)
    return np.clip(warped, 0.0, 1.0), (sx, sy)


def _photo_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def gallery_features(gallery, cache: dict, ids: list[int] | None = None) -> dict:
    """Fill ``cache[id]`` with the keypoints of gallery views ``ids`` (default
    all) that it lacks; the Inspector does all of them once at load, so that no query pays
    for them."""
    missing = [gid for gid in (range(len(gallery)) if ids is None else ids) if gid not in cache]
    if missing:
        det = _detector()
        for gid in missing:
            cache[gid] = _features(det, cv2.cvtColor(gallery.images[gid].numpy(), cv2.COLOR_RGB2GRAY))
    return cache


@torch.no_grad()
def gallery_pnp_refine(scene: GaussianScene, gallery, images: Tensor, poses: Tensor, Ks: Tensor, gallery_ids: Tensor,
                       cfg: RefineConfig, cache: dict | None = None) -> PnPResult:
    """``gpnp``: one render per query, at the corrected pose; see the module docstring.

    ``images [B, H, W, 3]`` at the bundle's size (``Ks`` there), ``poses`` the IRPRN poses,
    ``gallery_ids [B, k]`` the retrieval's best views. ``cache``: a dict kept by the caller
    for the gallery views' keypoints (computed on first use). The returned ``renders`` are
    the references at the returned poses (``H x W``); ``render_ms`` is the time of the one
    render the unrefined pipeline would have made too."""
    if gallery.images is None:
        raise ValueError("this gallery has no stored views and depths: rebuild it (rpe-pad train ... --stages gallery)")
    b, h, w = images.shape[:3]
    gh, gw = gallery.images.shape[1:3]
    det = _detector()
    norm = cv2.NORM_L2
    cache = {} if cache is None else cache
    K_g = gallery.K.double().numpy()
    queries = images.float().cpu().numpy()
    small, K_q = (queries, Ks.double()) if (gh, gw) == (h, w) else resize_with_intrinsics(images, Ks, gw, gh)
    Ks_np = Ks.double().numpy()
    p0 = poses.double().cpu()
    result = PnPResult(p0.clone(), [False] * b, [0] * b, [0] * b, ["not run"] * b, paths=["none"] * b)

    # 1. PnP of the query against its best gallery views at once (their matches pooled).
    first = p0.clone()
    from_gallery = [False] * b
    q_feats = []
    for i in range(b):
        fq = _features(det, _gray(small[i]))
        world, pts = [np.zeros((0, 3))], [np.zeros((0, 2))]
        views = gallery_ids[i, : cfg.gallery_views].tolist()
        gallery_features(gallery, cache, views)
        for gid in views:
            pq, pg = _match(fq, cache[gid], norm, cfg.ratio)
            wpts, keep = _lift(pg, gallery.depths[gid].float().numpy(), K_g, gallery.poses[gid].double().numpy())
            world.append(wpts)
            pts.append(pq[keep])
        new, n_in = _solve(np.concatenate(world), np.concatenate(pts), K_q[i].numpy(), p0[i].numpy(), cfg, cfg.ransac_px)
        result.inliers[i] = n_in
        ok, reason = (False, f"gallery PnP: too few inliers ({n_in})") if new is None else _within_bounds(new, p0[i], cfg)
        if ok:
            first[i], from_gallery[i] = new, True
            result.accepted[i], result.reasons[i] = True, "ok"
        else:
            result.reasons[i] = reason if reason.startswith("gallery") else f"gallery PnP: {reason}"
        q_feats.append(fq if small is queries else _features(det, _gray(queries[i])))

    # 2. The one render, at those poses: the reference (and the depth for the polish).
    t0 = time.perf_counter()
    out = render(scene, first.float(), Ks.float(), w, h, with_depth=True)
    renders = out.colors.clamp(0, 1).cpu().numpy()  # on CUDA this waits for the render: timed with it
    depths, warp_depths = _depths(out)
    result.render_ms = 1000 * (time.perf_counter() - t0)
    result.poses, result.renders = first.clone(), renders.copy()

    # 3. Polish, ``rounds`` times from SIFT matches, then ``flow_rounds`` times from dense
    #    flow (every query again): PnP of the query against the current reference, lifted
    #    with the depth of the last true render (through the warp's sampling maps). A small
    #    correction warps that render (no accumulated resampling), a large one re-renders;
    #    either must match the query better than the current reference.
    base = [(first[i], renders[i], depths[i], warp_depths[i], None) for i in range(b)]  # pose, image, depths, maps
    err = [_photo_error(renders[i], queries[i]) for i in range(b)]
    steps = [["gallery"] if from_gallery[i] else [] for i in range(b)]
    unconfirmed = [i for i in range(b) if from_gallery[i]]  # gallery corrections no polish has checked yet
    kinds = ["sift"] * cfg.rounds + ["flow"] * cfg.flow_rounds
    for r, kind in enumerate(kinds):
        if r == 0 or kind != kinds[r - 1]:
            active = list(range(b))  # the flow polishes every query, wherever the SIFT rounds stopped
        to_render: list[tuple[int, Tensor, int]] = []  # query, pose, inliers
        tag = "flow-" if kind == "flow" else ""
        for i in list(active):
            pose_b, img_b, depth_b, wdepth_b, maps = base[i]
            if kind == "flow":
                pq, pr = flow_matches(result.renders[i], queries[i], cfg)
            else:
                pq, pr = _match(q_feats[i], _features(det, _gray(result.renders[i])), norm, cfg.ratio)
            if maps is not None:  # points of the warped reference -> pixels of the render it came from
                pr = np.stack([_sample(maps[0], pr), _sample(maps[1], pr)], axis=1) + 0.5
            wpts, keep = _lift(pr, depth_b, Ks_np[i], pose_b.numpy())
            new, n_in = _solve(wpts, pq[keep], Ks_np[i], result.poses[i].numpy(), cfg,
                               cfg.flow_ransac_px if kind == "flow" else cfg.ransac_px)
            ok = new is not None and _within_bounds(new, p0[i], cfg)[0]
            if not ok:
                active.remove(i)
                if not result.accepted[i]:
                    result.reasons[i] += f"; polish: {'too few inliers' if new is None else 'correction too large'} ({n_in})"
                continue
            if kind == "sift":
                result.inliers[i] = max(result.inliers[i], n_in)
            moved = mean_flow_px(depth_b, Ks_np[i], result.poses[i].numpy(), new.numpy())
            if i in unconfirmed and moved <= cfg.warp_max_px:
                # An independent PnP (query against the render, not the gallery) puts the
                # object within warp_max_px of the gallery pose: that confirms it.
                unconfirmed.remove(i)
            if mean_flow_px(depth_b, Ks_np[i], pose_b.numpy(), new.numpy()) > cfg.warp_max_px:
                to_render.append((i, new, n_in))
                continue
            warped, new_maps = warp_to_pose(img_b, wdepth_b, Ks_np[i], pose_b.numpy(), new.numpy())
            e = _photo_error(warped, queries[i])
            if e >= err[i]:
                active.remove(i)  # no better: the current pose stands
                if not result.accepted[i]:
                    result.reasons[i] += "; polish: photometric check failed"
                continue
            err[i], base[i] = e, (pose_b, img_b, depth_b, wdepth_b, new_maps)
            result.poses[i], result.renders[i], result.accepted[i], result.reasons[i] = new, warped, True, "ok"
            steps[i].append(tag + "warp")
            if kind == "flow":
                result.flow_inliers[i] = n_in
            if moved < cfg.polish_stop_px:
                active.remove(i)
        if to_render:
            ids = [i for i, _, _ in to_render]
            out = render(scene, torch.stack([p for _, p, _ in to_render]).float(), torch.from_numpy(Ks_np[ids]).float(),
                         w, h, with_depth=True)
            imgs, (dps, wdps) = out.colors.clamp(0, 1).cpu().numpy(), _depths(out)
            for j, (i, new, n_in) in enumerate(to_render):
                e = _photo_error(imgs[j], queries[i])
                if e >= err[i]:
                    active.remove(i)
                    if not result.accepted[i]:
                        result.reasons[i] += "; polish: photometric check failed"
                    continue
                err[i], base[i] = e, (new, imgs[j], dps[j], wdps[j], None)
                result.poses[i], result.renders[i], result.accepted[i], result.reasons[i] = new, imgs[j], True, "ok"
                steps[i].append(tag + "render")
                if kind == "flow":
                    result.flow_inliers[i] = n_in
    if unconfirmed:  # a gallery correction no polish confirmed: keep the result only if it beats the input pose
        out = render(scene, p0[unconfirmed].float(), Ks[unconfirmed].float(), w, h).colors.clamp(0, 1).cpu().numpy()
        for j, i in enumerate(unconfirmed):
            if _photo_error(out[j], queries[i]) <= err[i]:
                result.poses[i], result.renders[i], result.accepted[i] = p0[i], out[j], False
                result.reasons[i], steps[i] = "unconfirmed gallery correction: the input pose matched better", []
                result.flow_inliers[i] = 0
    result.paths = ["+".join(st) if st else "none" for st in steps]
    return result


def _depths(out) -> tuple[np.ndarray, np.ndarray]:
    """Of a render made ``with_depth``: the expected depth ``[C, H, W]`` where the render is
    opaque (alpha > 0.95, for lifting keypoints; else 0), and where the object covers the
    pixel at all (alpha > 0.05, for warping: the silhouette's edge pixels move with it)."""
    alpha, depth = out.alphas[..., 0], out.depths[..., 0]
    zero = torch.zeros(())
    lift = torch.where(alpha > 0.95, depth, zero).double().cpu().numpy()
    warp = torch.where(alpha > 0.05, depth, zero).double().cpu().numpy()
    return lift, warp


def _remap_points(field_: np.ndarray, x: np.ndarray, y: np.ndarray, row: int = 1024) -> np.ndarray:
    """Bilinear samples of ``field_ [H, W(, C)]`` at 0-based positions ``x, y [N]``: ``[N(, C)]``.
    The points go to OpenCV as rows of ``row`` (its maps must stay under 32767 on a side;
    a dense flow at a 400 px bundle has more points than that)."""
    n = len(x)
    pad = -n % row
    mx = np.pad(np.asarray(x, np.float32), (0, pad)).reshape(-1, row)
    my = np.pad(np.asarray(y, np.float32), (0, pad)).reshape(-1, row)
    out = cv2.remap(np.ascontiguousarray(field_, dtype=np.float32), mx, my, cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, *field_.shape[2:])[:n]


def _sample(field_: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``field_ [H, W]`` at pixel positions ``pts [N, 2]`` (+0.5 convention)."""
    if len(pts) == 0:
        return np.zeros(0)
    return _remap_points(field_, pts[:, 0] - 0.5, pts[:, 1] - 0.5).astype(np.float64)


def ecc_align(query: np.ndarray, reference: np.ndarray, cfg: RefineConfig) -> tuple[np.ndarray, dict]:
    """Warp ``reference [H, W, 3]`` onto ``query`` with a guarded Euclidean ECC estimated
    at ``cfg.ecc_size``; returns the (possibly unchanged) reference and what happened."""
    h, w = query.shape[:2]
    s = cfg.ecc_size
    q = cv2.resize(_gray(query), (s, s), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    r = cv2.resize(_gray(reference), (s, s), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    warp = np.eye(2, 3, dtype=np.float32)
    info = {"accepted": False, "shift_px": 0.0, "rotation_deg": 0.0}
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, cfg.ecc_iterations, 1e-5)
    try:
        cc, warp = cv2.findTransformECC(q, r, warp, cv2.MOTION_EUCLIDEAN, criteria, None, 5)
    except cv2.error:
        info["reason"] = "did not converge"
        return reference, info
    angle = math.degrees(math.atan2(float(warp[1, 0]), float(warp[0, 0])))
    # Displacement of the image centre under the warp, at the ECC resolution.
    centre = np.array([s / 2, s / 2, 1.0], np.float32)
    shift = float(np.linalg.norm(warp @ centre - centre[:2]))
    info.update(shift_px=round(shift, 3), rotation_deg=round(angle, 3), cc=round(float(cc), 4))
    before = float(np.corrcoef(q.ravel(), r.ravel())[0, 1])
    info["cc_before"] = round(before, 4)
    if shift > cfg.ecc_max_shift_px or abs(angle) > cfg.ecc_max_rotation_deg:
        info["reason"] = "warp too large"
        return reference, info
    if not cc > before:
        info["reason"] = "no gain in correlation"
        return reference, info
    # The same warp at the reference's own resolution: M_full = S M S^-1.
    scale = np.diag([w / s, h / s, 1.0])
    full = (scale @ np.vstack([warp, [0, 0, 1]]) @ np.linalg.inv(scale))[:2].astype(np.float32)
    warped = cv2.warpAffine(np.ascontiguousarray(reference, dtype=np.float32), full, (w, h),
                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    info["accepted"] = True
    info["reason"] = "ok"
    return warped, info
