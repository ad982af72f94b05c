"""Pixel-accurate alignment after IRPRN: PnP on rendered depth, and a guarded 2D warp.

Refiners, composable (``REFINERS``):

- ``pnp``: render the scene at the IRPRN pose (``render_size`` px wide, with expected
  depth), match SIFT (or ORB) keypoints between that render and the query (Lowe's ratio
  test), lift the render's keypoints to 3D with the rendered depth (opaque pixels only),
  and solve PnP with RANSAC from the IRPRN pose (OpenCV), refined by Levenberg-Marquardt on
  the inliers; ``rounds`` PnP rounds, each later one re-rendering at the corrected pose
  to verify and polish it, and one last render that verifies the final correction. Pixel convention: our intrinsics put pixel centres at +0.5,
  OpenCV's keypoints at +0, so keypoints are shifted by 0.5 before use.
- ``gpnp`` (the default; one render per query, as without refinement): PnP of the
  query against its best ``gallery_views`` gallery views at once (their images and
  expected depths are stored in the bundle; the matches of all views are pooled into one
  RANSAC PnP from the IRPRN pose); then the one render, at that pose, with depth, which is
  the reference; then ``rounds`` polishing PnPs of the query against the current
  reference. A polish that moves the object by at most ``warp_max_px`` is applied by
  re-projecting the render with its depth (``warp_to_pose``: no new render), a larger one
  by rendering again; each must match the query better (mean absolute difference) than the
  current reference. A gallery correction is confirmed when a polishing PnP (the query
  against the render, independent of the gallery) finds it within ``warp_max_px``; one
  that no polish confirms is compared with a render at the IRPRN pose at the end, and
  dropped if that matches better. The warp is the rendered
  scene seen from the corrected camera (6 numbers for the whole image, through the
  render's own depth), not a deformation fitted to the query: it cannot bend the reference
  onto a defect.
- ``ecc``: a last 2D registration of the rendered reference onto the query (OpenCV's ECC,
  Euclidean motion: rotation + translation, 3 degrees of freedom) at the scoring resolution.

Guards (failures keep the input, or the last verified correction, and say why; never a
worse pose silently): every PnP needs
``min_inliers`` inliers and a correction within ``max_rotation_deg`` and
``max_center_rel`` (camera-centre shift over its distance from the origin), and the render
at the corrected pose must match the query better (mean absolute difference at
``render_size``) than the render at the input pose did; ECC must
converge, raise the correlation, and stay within ``ecc_max_shift_px`` and
``ecc_max_rotation_deg``. The ECC warp is global and rigid (3 numbers for the whole image),
so it can move the reference but cannot reshape it locally: a defect cannot be warped away
(measured in docs/REFINE.md: pixel AUROC and AUPRO with and without it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import cv2
import kornia
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from models.camera import (
    camera_center,
    make_pose,
    rotation_angle,
    scale_intrinsics,
    so3_exp,
)
from models.images import to_uint8
from models.splat.scene import GaussianScene, render

Tensor = torch.Tensor
REFINERS = ("none", "pnp", "ecc", "pnp+ecc", "gpnp", "gpnp+ecc")


@dataclass(frozen=True)
class RefineConfig:
    method: str = "gpnp+ecc"  # the default: one render per query (docs/REFINE.md)
    render_size: int = 200
    detector: str = "sift"
    ratio: float = 0.85
    ransac_px: float = 2.0
    min_inliers: int = 8  # RANSAC inliers for a correction (12 refused 2 of 40 correctable synthetic queries; docs/REFINE.md)
    max_rotation_deg: float = 30.0
    max_center_rel: float = 0.5
    rounds: int = 2
    ecc_size: int = 224
    ecc_iterations: int = 60
    ecc_max_shift_px: float = 12.0
    ecc_max_rotation_deg: float = 5.0
    gallery_views: int = 3  # gpnp: best gallery views whose matches are pooled into one PnP
    warp_max_px: float = 2.0  # gpnp: largest polish applied by warping the render (larger ones re-render)
    polish_stop_px: float = 0.2  # gpnp: a polish that moved the reference less than this ends the rounds
    photometric: bool = False  # render-and-compare for the queries PnP could not correct (slow on CPU)
    photo_size: int = 64  # render width for render-and-compare
    photo_steps: int = 30  # Adam steps on the 6-DoF correction
    photo_lr: float = 0.004  # radians, and units of the camera's distance from the origin
    photo_gaussians: int = 6000  # the most opaque Gaussians rendered while optimising

    def __post_init__(self) -> None:
        if self.method not in REFINERS:
            raise ValueError(f"refinement must be one of {REFINERS}, got {self.method!r}")
        if self.detector not in ("sift", "orb"):
            raise ValueError(f"detector must be sift or orb, got {self.detector!r}")

    @property
    def uses_pnp(self) -> bool:
        return self.method.startswith("pnp")

    @property
    def uses_gallery_pnp(self) -> bool:
        return self.method.startswith("gpnp")

    @property
    def uses_ecc(self) -> bool:
        return "ecc" in self.method


@dataclass
class PnPResult:
    poses: Tensor  # [B, 4, 4] refined where accepted, else the input
    accepted: list[bool] = field(default_factory=list)
    inliers: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    # [B, h, w, 3] in [0, 1]: each query's render at its returned pose, at ``render_size``
    # (``pnp_refine`` renders it anyway to verify; the caller can reuse it as the reference)
    renders: np.ndarray | None = None
    render_ms: float = 0.0  # time of the render the unrefined pipeline would have made too (gpnp)
    paths: list[str] = field(default_factory=list)  # per query, how the pose was reached (gpnp)


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(to_uint8(image), cv2.COLOR_RGB2GRAY)


def _detector(name: str):
    return cv2.SIFT_create(nfeatures=1500) if name == "sift" else cv2.ORB_create(nfeatures=1500)


def _resized(images: Tensor, Ks: Tensor, width: int, height: int) -> tuple[np.ndarray, Tensor]:
    """Images ``[B, H, W, 3]`` resized to ``width x height`` (numpy) and their intrinsics."""
    h, w = images.shape[1:3]
    K = scale_intrinsics(Ks.double(), width / w, height / h)
    small = F.interpolate(images.permute(0, 3, 1, 2).float(), size=(height, width), mode="bilinear", antialias=True,
                          align_corners=False).permute(0, 2, 3, 1)
    return small.numpy(), K


@torch.no_grad()
def pnp_refine(scene: GaussianScene, images: Tensor, poses: Tensor, Ks: Tensor, cfg: RefineConfig) -> PnPResult:
    """Refine world-to-camera ``poses [B, 4, 4]`` of ``images [B, H, W, 3]`` (intrinsics
    ``Ks [B, 3, 3]`` at the images' size); see the module docstring."""
    b, h, w = images.shape[:3]
    rw, rh = cfg.render_size, max(1, round(cfg.render_size * h / w))
    small, K_r = _resized(images, Ks, rw, rh)
    det = _detector(cfg.detector)
    norm = cv2.NORM_L2 if cfg.detector == "sift" else cv2.NORM_HAMMING
    current = poses.double().clone()
    result = PnPResult(current.clone(), [False] * b, [0] * b, ["not run"] * b)
    todo = list(range(b))
    best = np.zeros(b)  # photometric error of the best verified pose (round 0: the input pose)
    renders = np.zeros((b, rh, rw, 3), dtype=np.float32)  # the render at each returned pose
    verified = current.clone()  # the last pose that passed verification (at first: the input)
    verified_ok = [False] * b  # whether that pose is a correction
    q_feats: dict[int, tuple] = {}
    # Round r renders the current poses; from round 1 on, that render also verifies the
    # previous correction (it must match the query better than the best verified pose so
    # far, at first the input pose) before polishing it; a correction that fails falls
    # back to the last verified pose; the last round (``rounds``) only verifies, so every
    # returned correction has been checked.
    for round_ in range(cfg.rounds + 1):
        if not todo:
            break
        out = render(scene, current[todo].float(), K_r[todo].float(), rw, rh, with_depth=True)
        colors = out.colors.clamp(0, 1).cpu().numpy()
        depth = out.depths[..., 0].double().cpu().numpy()
        alpha = out.alphas[..., 0].cpu().numpy()
        accepted_now = []
        for j, i in enumerate(todo):
            colors_i, depth_i, alpha_i = colors[j], depth[j], alpha[j]
            photo = float(np.abs(colors_i - small[i]).mean())
            pose0 = poses[i].double()  # guards measure the total correction from the input
            if round_ > 0 and photo >= best[i]:
                result.poses[i], result.accepted[i] = verified[i].clone(), verified_ok[i]
                if not verified_ok[i]:
                    result.reasons[i] = f"photometric check failed ({photo:.4f} >= {best[i]:.4f})"
                continue  # renders[i] is still the verified pose's
            best[i], verified[i], verified_ok[i] = photo, current[i], round_ > 0
            renders[i] = colors_i  # the pose rendered is (so far) the one returned
            if round_ >= cfg.rounds:
                continue  # verification only
            if i not in q_feats:  # the query's keypoints, once
                q_feats[i] = _features(det, _gray(small[i]))
            pq, pr = _match(q_feats[i], _features(det, _gray(colors_i)), norm, cfg.ratio)
            opaque_depth = np.where(alpha_i > 0.95, depth_i, 0.0)
            world, keep = _lift(pr, opaque_depth, K_r[i].numpy(), current[i].numpy())  # from the pose rendered
            if len(world) < cfg.min_inliers:
                if round_ == 0:
                    result.reasons[i] = f"too few matches on the object ({len(world)})"
                continue
            new, n_in = _solve(world, pq[keep], K_r[i].numpy(), current[i].numpy(), cfg)
            if new is None:
                if round_ == 0:
                    result.inliers[i] = n_in
                    result.reasons[i] = f"PnP failed or too few inliers ({n_in})"
                continue
            ok, reason = _within_bounds(new, pose0, cfg)
            if not ok:
                if round_ == 0:
                    result.reasons[i] = reason
                continue
            result.poses[i] = new
            result.inliers[i] = n_in
            result.accepted[i] = True
            result.reasons[i] = "ok"
            accepted_now.append(i)
        current = result.poses.clone()
        todo = accepted_now  # later rounds polish the poses that PnP could correct
    result.renders = renders
    return result


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


def _solve(world: np.ndarray, pts: np.ndarray, K: np.ndarray, pose0: np.ndarray, cfg: RefineConfig):
    """RANSAC PnP from ``pose0`` then LM on the inliers: (pose [4, 4] tensor | None, inliers)."""
    if len(world) < cfg.min_inliers:
        return None, len(world)
    rvec0, _ = cv2.Rodrigues(pose0[:3, :3])
    ok, rvec, tvec, inl = cv2.solvePnPRansac(world, pts, K, None, rvec0.copy(), pose0[:3, 3].reshape(3, 1).copy(),
                                             useExtrinsicGuess=True, iterationsCount=200, reprojectionError=cfg.ransac_px,
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
    ``x_s = x``. Exact for a static scene up to occlusion changes, which a pixel or two of
    motion barely has; meant for the last, small correction (``warp_max_px``). Returns the
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


def gallery_features(gallery, cfg: RefineConfig, cache: dict, ids: list[int] | None = None) -> dict:
    """Fill ``cache[(detector, id)]`` with the keypoints of gallery views ``ids`` (default
    all) that it lacks; the Inspector does all of them once at load, so that no query pays
    for them."""
    missing = [gid for gid in (range(len(gallery)) if ids is None else ids) if (cfg.detector, gid) not in cache]
    if missing:
        det = _detector(cfg.detector)
        for gid in missing:
            cache[(cfg.detector, gid)] = _features(det, cv2.cvtColor(gallery.images[gid].numpy(), cv2.COLOR_RGB2GRAY))
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
    det = _detector(cfg.detector)
    norm = cv2.NORM_L2 if cfg.detector == "sift" else cv2.NORM_HAMMING
    cache = {} if cache is None else cache
    K_g = gallery.K.double().numpy()
    queries = images.float().cpu().numpy()
    small, K_q = (queries, Ks.double()) if (gh, gw) == (h, w) else _resized(images, Ks, gw, gh)
    Ks_np = Ks.double().numpy()
    p0 = poses.double().cpu()
    result = PnPResult(p0.clone(), [False] * b, [0] * b, ["not run"] * b, paths=["none"] * b)

    # 1. PnP of the query against its best gallery views at once (their matches pooled).
    first = p0.clone()
    from_gallery = [False] * b
    q_feats = []
    for i in range(b):
        fq = _features(det, _gray(small[i]))
        world, pts = [np.zeros((0, 3))], [np.zeros((0, 2))]
        views = gallery_ids[i, : cfg.gallery_views].tolist()
        gallery_features(gallery, cfg, cache, views)
        for gid in views:
            pq, pg = _match(fq, cache[(cfg.detector, gid)], norm, cfg.ratio)
            wpts, keep = _lift(pg, gallery.depths[gid].float().numpy(), K_g, gallery.poses[gid].double().numpy())
            world.append(wpts)
            pts.append(pq[keep])
        new, n_in = _solve(np.concatenate(world), np.concatenate(pts), K_q[i].numpy(), p0[i].numpy(), cfg)
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

    # 3. Polish, ``rounds`` times: PnP of the query against the current reference, lifted
    #    with the depth of the last true render (through the warp's sampling maps). A small
    #    correction warps that render (no accumulated resampling), a large one re-renders;
    #    either must match the query better than the current reference.
    base = [(first[i], renders[i], depths[i], warp_depths[i], None) for i in range(b)]  # pose, image, depths, maps
    err = [_photo_error(renders[i], queries[i]) for i in range(b)]
    steps = [["gallery"] if from_gallery[i] else [] for i in range(b)]
    unconfirmed = [i for i in range(b) if from_gallery[i]]  # gallery corrections no polish has checked yet
    active = list(range(b))
    for _ in range(cfg.rounds):
        to_render: list[tuple[int, Tensor]] = []
        for i in list(active):
            pose_b, img_b, depth_b, wdepth_b, maps = base[i]
            pq, pr = _match(q_feats[i], _features(det, _gray(result.renders[i])), norm, cfg.ratio)
            if maps is not None:  # keypoints of the warped reference -> pixels of the render it came from
                pr = np.stack([_sample(maps[0], pr), _sample(maps[1], pr)], axis=1) + 0.5
            wpts, keep = _lift(pr, depth_b, Ks_np[i], pose_b.numpy())
            new, n_in = _solve(wpts, pq[keep], Ks_np[i], result.poses[i].numpy(), cfg)
            ok = new is not None and _within_bounds(new, p0[i], cfg)[0]
            if not ok:
                active.remove(i)
                if not result.accepted[i]:
                    result.reasons[i] += f"; polish: {'too few inliers' if new is None else 'correction too large'} ({n_in})"
                continue
            result.inliers[i] = max(result.inliers[i], n_in)
            moved = mean_flow_px(depth_b, Ks_np[i], result.poses[i].numpy(), new.numpy())
            if i in unconfirmed and moved <= cfg.warp_max_px:
                # An independent PnP (query against the render, not the gallery) puts the
                # object within a pixel or two of the gallery pose: that confirms it.
                unconfirmed.remove(i)
            if mean_flow_px(depth_b, Ks_np[i], pose_b.numpy(), new.numpy()) > cfg.warp_max_px:
                to_render.append((i, new))
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
            steps[i].append("warp")
            if moved < cfg.polish_stop_px:
                active.remove(i)
        if to_render:
            ids = [i for i, _ in to_render]
            out = render(scene, torch.stack([p for _, p in to_render]).float(), torch.from_numpy(Ks_np[ids]).float(),
                         w, h, with_depth=True)
            imgs, (dps, wdps) = out.colors.clamp(0, 1).cpu().numpy(), _depths(out)
            for j, (i, new) in enumerate(to_render):
                e = _photo_error(imgs[j], queries[i])
                if e >= err[i]:
                    active.remove(i)
                    if not result.accepted[i]:
                        result.reasons[i] += "; polish: photometric check failed"
                    continue
                err[i], base[i] = e, (new, imgs[j], dps[j], wdps[j], None)
                result.poses[i], result.renders[i], result.accepted[i], result.reasons[i] = new, imgs[j], True, "ok"
                steps[i].append("render")
    if unconfirmed:  # a gallery correction no polish confirmed: keep the result only if it beats the input pose
        out = render(scene, p0[unconfirmed].float(), Ks[unconfirmed].float(), w, h).colors.clamp(0, 1).cpu().numpy()
        for j, i in enumerate(unconfirmed):
            if _photo_error(out[j], queries[i]) <= err[i]:
                result.poses[i], result.renders[i], result.accepted[i] = p0[i], out[j], False
                result.reasons[i], steps[i] = "unconfirmed gallery correction: the input pose matched better", []
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


def _sample(field_: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``field_ [H, W]`` at pixel positions ``pts [N, 2]`` (+0.5 convention)."""
    if len(pts) == 0:
        return np.zeros(0)
    xy = (pts - 0.5).astype(np.float32).reshape(-1, 1, 2)
    return cv2.remap(field_.astype(np.float32), xy[..., 0], xy[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE).reshape(-1).astype(np.float64)


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of ``[B, H, W, 3]`` (sigma in pixels; 0 = unchanged)."""
    if sigma <= 0:
        return x
    k = 2 * math.ceil(2 * sigma) + 1
    y = kornia.filters.gaussian_blur2d(x.permute(0, 3, 1, 2), (k, k), (sigma, sigma), border_type="replicate")
    return y.permute(0, 2, 3, 1)


@dataclass(frozen=True)
class IterativeConfig:
    """Per-query render-and-compare as the peers do it (SplatPose / iNeRF style), the
    baseline our one-shot pose is measured against (``iterative`` pose mode)."""

    steps: int = 175  # Adam steps
    lr: float = 0.01  # radians, and units of the camera's distance from the origin
    decay: float = 0.8  # learning rate times this ...
    decay_every: int = 100  # ... every this many steps
    ssim_weight: float = 1.0  # loss = L1 + ssim_weight * (1 - SSIM)
    ssim_window: int = 11
    size: int | None = None  # render width while optimising; None = the query's (full resolution)


def _optimise_pose(scene: GaussianScene, target: Tensor, K: Tensor, p0: Tensor, steps: int, lr: float, loss_fn,
                   schedule=None) -> Tensor:
    """Adam on a 6-DoF correction ``D`` of each pose (``P' = D P``: rotation about the camera
    centre in axis-angle radians, translation in units of the camera's distance from the
    origin) to minimise ``loss_fn(render [T, h, w, 3], target, step) -> [T]`` through the
    differentiable renderer. ``target [T, h, w, 3]``, ``K [T, 3, 3]`` at the render size,
    ``p0 [T, 4, 4]`` world-to-camera. ``schedule``: a torch LR scheduler factory. Returns
    the corrected poses ``[T, 4, 4]`` float64 (each query's loss is its own: batching is
    the same as optimising one at a time)."""
    h, w = target.shape[1:3]
    p0 = p0.double()
    dist = camera_center(p0).norm(dim=-1)[:, None]  # [T, 1]
    omega = torch.zeros(len(p0), 3, dtype=torch.float64, device=p0.device, requires_grad=True)
    tau = torch.zeros(len(p0), 3, dtype=torch.float64, device=p0.device, requires_grad=True)
    opt = torch.optim.Adam([omega, tau], lr=lr)
    sched = schedule(opt) if schedule is not None else None

    def corrected() -> Tensor:
        return make_pose(so3_exp(omega), tau * dist) @ p0

    with torch.enable_grad():
        for step in range(steps):
            out = render(scene, corrected().float(), K.float(), w, h).colors
            loss = loss_fn(out, target, step).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
    return corrected().detach()


def photometric_refine(scene: GaussianScene, images: Tensor, poses: Tensor, Ks: Tensor, cfg: RefineConfig,
                       todo: list[int] | None = None) -> PnPResult:
    """Render-and-compare (``_optimise_pose``) of each pose in ``todo`` by Adam on the L1
    difference between the query and the render at ``photo_size`` px, coarse to fine (blur
    2 -> 0 px), with the ``photo_gaussians`` most opaque Gaussians. The correction is kept
    only when the full scene's render at the new pose matches the query better than at the
    input pose, and within the PnP guards."""
    b, h, w = images.shape[:3]
    todo = list(range(b)) if todo is None else todo
    result = PnPResult(poses.double().clone(), [False] * b, [0] * b, ["not run"] * b)
    if not todo:
        return result
    sw, sh = cfg.photo_size, max(1, round(cfg.photo_size * h / w))
    target_np, K_s = _resized(images[todo], Ks[todo], sw, sh)
    target = torch.from_numpy(target_np)
    keep = scene.opacities.topk(min(cfg.photo_gaussians, scene.num_gaussians)).indices
    sub = GaussianScene(**{n: t[keep] for n, t in scene.params().items()}, sh_degree=scene.sh_degree,
                        background=scene.background)

    def blurred_l1(out: Tensor, tgt: Tensor, step: int) -> Tensor:
        sigma = 2.0 * (1 - step / max(1, cfg.photo_steps - 1))
        return (_blur(out.cpu(), sigma) - _blur(tgt, sigma)).abs().mean(dim=(1, 2, 3))

    p0 = poses[todo].double()
    new = _optimise_pose(sub, target, K_s, p0, cfg.photo_steps, cfg.photo_lr, blurred_l1)
    with torch.no_grad():
        both = torch.cat([p0, new]).float()
        out = render(scene, both, torch.cat([K_s, K_s]).float(), sw, sh).colors.clamp(0, 1).cpu()
        err = (out - torch.cat([target, target])).abs().mean(dim=(1, 2, 3))
    n = len(todo)
    for j, i in enumerate(todo):
        ok, reason = _within_bounds(new[j], p0[j], cfg)
        if not ok:
            result.reasons[i] = reason
        elif err[n + j] < err[j]:
            result.poses[i], result.accepted[i], result.reasons[i] = new[j], True, "ok"
        else:
            result.reasons[i] = f"photometric check failed ({float(err[n + j]):.4f} >= {float(err[j]):.4f})"
    return result


def iterative_refine(scene: GaussianScene, images: Tensor, poses: Tensor, Ks: Tensor,
                     cfg: IterativeConfig | None = None) -> Tensor:
    """The peers' per-query pose optimisation: from ``poses`` (the retrieval pose), Adam on
    L1 + (1 - SSIM) between the query and the full scene's render, ``cfg.steps`` steps at
    ``cfg.lr`` decayed by ``cfg.decay`` every ``cfg.decay_every``; the final pose is taken
    as it is (no guard: the peers keep it). ``images [B, H, W, 3]`` in [0, 1]; returns
    ``[B, 4, 4]`` float64 world-to-camera."""
    cfg = cfg or IterativeConfig()
    h, w = images.shape[1:3]
    if cfg.size is None or cfg.size == w:
        target, K_s = images.float(), Ks.double()
    else:
        sh = max(1, round(cfg.size * h / w))
        target_np, K_s = _resized(images, Ks, cfg.size, sh)
        target = torch.from_numpy(target_np)
    device = scene.means.device
    target, K_s = target.to(device), K_s.to(device)

    def l1_ssim(out: Tensor, tgt: Tensor, step: int) -> Tensor:
        x, y = out.permute(0, 3, 1, 2), tgt.permute(0, 3, 1, 2)
        ssim = kornia.metrics.ssim(x, y, cfg.ssim_window).mean(dim=(1, 2, 3))
        return (x - y).abs().mean(dim=(1, 2, 3)) + cfg.ssim_weight * (1 - ssim)

    def schedule(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.decay_every, gamma=cfg.decay)

    return _optimise_pose(scene, target, K_s, poses.double().to(device), cfg.steps, cfg.lr, l1_ssim, schedule).cpu()


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
