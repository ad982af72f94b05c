"""Pixel-accurate alignment after IRPRN: PnP on rendered depth, and a guarded 2D warp.

Two refiners, composable (``REFINERS``):

- ``pnp``: render the scene at the IRPRN pose (``render_size`` px wide, with expected
  depth), match SIFT (or ORB) keypoints between that render and the query (Lowe's ratio
  test), lift the render's keypoints to 3D with the rendered depth (opaque pixels only),
  and solve PnP with RANSAC from the IRPRN pose (OpenCV), refined by Levenberg-Marquardt on
  the inliers; later ``rounds`` re-render at the corrected pose and polish it. Pixel convention: our intrinsics put pixel centres at +0.5,
  OpenCV's keypoints at +0, so keypoints are shifted by 0.5 before use.
- ``ecc``: a last 2D registration of the rendered reference onto the query (OpenCV's ECC,
  Euclidean motion: rotation + translation, 3 degrees of freedom) at the scoring resolution.

Guards (failures keep the input and say why; never a worse pose silently): PnP needs
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
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.camera import camera_center, make_pose, rotation_angle
from models.images import to_uint8
from models.splat.scene import GaussianScene, render

Tensor = torch.Tensor
REFINERS = ("none", "pnp", "ecc", "pnp+ecc")


@dataclass(frozen=True)
class RefineConfig:
    method: str = "pnp+ecc"
    render_size: int = 200
    detector: str = "sift"
    ratio: float = 0.85
    ransac_px: float = 2.0
    min_inliers: int = 12
    max_rotation_deg: float = 30.0
    max_center_rel: float = 0.5
    rounds: int = 2
    ecc_size: int = 224
    ecc_iterations: int = 60
    ecc_max_shift_px: float = 12.0
    ecc_max_rotation_deg: float = 5.0

    def __post_init__(self) -> None:
        if self.method not in REFINERS:
            raise ValueError(f"refinement must be one of {REFINERS}, got {self.method!r}")
        if self.detector not in ("sift", "orb"):
            raise ValueError(f"detector must be sift or orb, got {self.detector!r}")

    @property
    def uses_pnp(self) -> bool:
        return "pnp" in self.method

    @property
    def uses_ecc(self) -> bool:
        return "ecc" in self.method


@dataclass
class PnPResult:
    poses: Tensor  # [B, 4, 4] refined where accepted, else the input
    accepted: list[bool] = field(default_factory=list)
    inliers: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(to_uint8(image), cv2.COLOR_RGB2GRAY)


def _detector(name: str):
    return cv2.SIFT_create(nfeatures=1500) if name == "sift" else cv2.ORB_create(nfeatures=1500)


def _matches(det, norm: int, gray_a: np.ndarray, gray_b: np.ndarray, ratio: float):
    kp_a, des_a = det.detectAndCompute(gray_a, None)
    kp_b, des_b = det.detectAndCompute(gray_b, None)
    if des_a is None or des_b is None or len(kp_a) < 2 or len(kp_b) < 2:
        return np.zeros((0, 2), np.float64), np.zeros((0, 2), np.float64)
    pairs = cv2.BFMatcher(norm).knnMatch(des_a, des_b, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < ratio * n.distance]
    pa = np.array([kp_a[m.queryIdx].pt for m in good], np.float64).reshape(-1, 2) + 0.5
    pb = np.array([kp_b[m.trainIdx].pt for m in good], np.float64).reshape(-1, 2) + 0.5
    return pa, pb


@torch.no_grad()
def pnp_refine(scene: GaussianScene, images: Tensor, poses: Tensor, Ks: Tensor, cfg: RefineConfig) -> PnPResult:
    """Refine world-to-camera ``poses [B, 4, 4]`` of ``images [B, H, W, 3]`` (intrinsics
    ``Ks [B, 3, 3]`` at the images' size); see the module docstring."""
    b, h, w = images.shape[:3]
    rw, rh = cfg.render_size, max(1, round(cfg.render_size * h / w))
    K_r = Ks.double().clone()
    K_r[:, 0] *= rw / w
    K_r[:, 1] *= rh / h
    small = F.interpolate(images.permute(0, 3, 1, 2).float(), size=(rh, rw), mode="bilinear", antialias=True,
                          align_corners=False).permute(0, 2, 3, 1).numpy()
    det = _detector(cfg.detector)
    norm = cv2.NORM_L2 if cfg.detector == "sift" else cv2.NORM_HAMMING
    current = poses.double().clone()
    result = PnPResult(current.clone(), [False] * b, [0] * b, ["not run"] * b)
    todo = list(range(b))
    photo0 = np.zeros(b)
    # Round r renders the current poses; from round 1 on, that render also verifies the
    # previous correction (it must match the query better than the input pose did) before
    # polishing it. One extra render-only round verifies when ``rounds == 1``.
    for round_ in range(max(cfg.rounds, 2)):
        if not todo:
            break
        out = render(scene, current[todo].float(), K_r[todo].float(), rw, rh, with_depth=True)
        colors = out.colors.clamp(0, 1).numpy()
        depth = out.depths[..., 0].double().numpy()
        alpha = out.alphas[..., 0].numpy()
        accepted_now = []
        for j, i in enumerate(todo):
            colors_i, depth_i, alpha_i = colors[j], depth[j], alpha[j]
            photo = float(np.abs(colors_i - small[i]).mean())
            pose0 = poses[i].double()  # guards measure the total correction from the input
            if round_ == 0:
                photo0[i] = photo
            elif photo >= photo0[i]:
                result.poses[i], result.accepted[i] = pose0.clone(), False
                result.reasons[i] = f"photometric check failed ({photo:.4f} >= {photo0[i]:.4f})"
                continue
            if round_ >= cfg.rounds:
                continue  # verification only
            pq, pr = _matches(det, norm, _gray(small[i]), _gray(colors_i), cfg.ratio)
            cols = np.clip(pr[:, 0].astype(int), 0, rw - 1)
            rows = np.clip(pr[:, 1].astype(int), 0, rh - 1)
            keep = (alpha_i[rows, cols] > 0.95) & (depth_i[rows, cols] > 0)
            pq, pr, d = pq[keep], pr[keep], depth_i[rows[keep], cols[keep]]
            if len(d) < cfg.min_inliers:
                if round_ == 0:
                    result.reasons[i] = f"too few matches on the object ({len(d)})"
                continue
            k = K_r[i].numpy()
            cam = np.stack([(pr[:, 0] - k[0, 2]) * d / k[0, 0], (pr[:, 1] - k[1, 2]) * d / k[1, 1], d], axis=1)
            rot, trans = current[i, :3, :3].numpy(), current[i, :3, 3].numpy()  # the pose rendered
            world = (cam - trans) @ rot  # R^T (x - t), row-wise
            rvec0, _ = cv2.Rodrigues(rot)
            ok, rvec, tvec, inl = cv2.solvePnPRansac(world, pq, k, None, rvec0.copy(), trans.reshape(3, 1).copy(),
                                                     useExtrinsicGuess=True, iterationsCount=200,
                                                     reprojectionError=cfg.ransac_px, confidence=0.999,
                                                     flags=cv2.SOLVEPNP_ITERATIVE)
            n_in = 0 if inl is None else len(inl)
            if not ok or n_in < cfg.min_inliers:
                if round_ == 0:
                    result.inliers[i] = n_in
                    result.reasons[i] = f"PnP failed or too few inliers ({n_in})"
                continue
            idx = inl[:, 0]
            rvec, tvec = cv2.solvePnPRefineLM(world[idx], pq[idx], k, None, rvec, tvec)
            new = make_pose(torch.from_numpy(cv2.Rodrigues(rvec)[0]), torch.from_numpy(tvec[:, 0]))
            turn = math.degrees(float(rotation_angle(new[:3, :3], pose0[:3, :3])))
            c0 = camera_center(pose0)
            moved = float((camera_center(new) - c0).norm() / c0.norm().clamp_min(1e-9))
            if turn > cfg.max_rotation_deg or moved > cfg.max_center_rel:
                if round_ == 0:
                    result.reasons[i] = f"correction too large ({turn:.1f} deg, centre {moved:.2f})"
                continue
            result.poses[i] = new
            result.inliers[i] = n_in
            result.accepted[i] = True
            result.reasons[i] = "ok"
            accepted_now.append(i)
        current = result.poses.clone()
        todo = accepted_now  # later rounds polish the poses that PnP could correct
    return result


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
