"""How close `rpe-pad prepare`'s poses come to the true ones, and an evaluation category in
the prepared frame (issue 24's acceptance: docs/DATA.md, "Onboarding from photographs").

``pose_errors`` aligns the prepared cameras to the true ones by the similarity that best
maps the camera centres (Umeyama's least squares), then measures each view's rotation
error (degrees) and camera-centre error (as a fraction of its distance to the object, the
point nearest to the true optical axes).
``mapped_category`` writes a category whose ``test/`` split is the true one with its query
poses mapped into the prepared frame, so a bundle trained on the prepared category is
scored against true query poses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from models import camera
from models.data import find_transforms, read_transforms
from training.prepare.frame import focus_point


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``(s, R, t)`` minimising ``sum |dst - (s R src + t)|^2`` (Umeyama 1991)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    scale = float(np.trace(np.diag(sig) @ d) / (a**2).sum(1).mean())
    return scale, rot, mu_d - scale * rot @ mu_s


def _w2c_by_source(transforms_path: Path, key: str) -> dict[str, np.ndarray]:
    raw = json.loads(transforms_path.read_text())
    read_transforms(transforms_path)  # validates
    out = {}
    for frame in raw["frames"]:
        name = Path(frame[key]).stem if key == "file_path" else Path(frame[key]).stem
        c2w = torch.tensor(frame["transform_matrix"], dtype=torch.float64)
        out[name] = camera.opengl_c2w_to_opencv_w2c(c2w).numpy()
    return out


def pose_errors(prepared: Path, truth: Path) -> dict:
    """Per-view and median errors of the prepared poses against the true ones."""
    mine = _w2c_by_source(find_transforms(prepared), "source")
    true = _w2c_by_source(find_transforms(truth), "file_path")
    names = sorted(set(mine) & set(true))
    if len(names) < 3:
        raise ValueError(f"only {len(names)} prepared views match true ones by file name")
    p = np.stack([mine[n] for n in names])
    q = np.stack([true[n] for n in names])
    centre = lambda w2c: -np.einsum("nji,nj->ni", w2c[:, :3, :3], w2c[:, :3, 3])  # noqa: E731
    scale, rot, trans = umeyama(centre(p), centre(q))  # prepared frame -> true frame
    aligned_c = scale * centre(p) @ rot.T + trans
    target = focus_point(centre(q), q[:, 2, :3])  # the object: where the true optical axes meet
    centre_err = np.linalg.norm(aligned_c - centre(q), axis=1) / np.linalg.norm(centre(q) - target, axis=1)
    # camera rotation in the true frame: R_cam_true = R_cam_prepared R^T
    r_err = p[:, :3, :3] @ rot.T @ np.transpose(q[:, :3, :3], (0, 2, 1))
    angles = np.degrees(np.arccos(np.clip((np.trace(r_err, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    return {
        "views": len(names), "prepared_views": len(mine), "true_views": len(true),
        "rotation_error_deg": {"median": float(np.median(angles)), "max": float(angles.max())},
        "centre_error_fraction": {"median": float(np.median(centre_err)), "max": float(centre_err.max())},
        "similarity_prepared_to_true": {"scale": scale, "rotation": rot.tolist(), "translation": trans.tolist()},
        "per_view": {n: {"rotation_deg": float(a), "centre_fraction": float(c)}
                     for n, a, c in zip(names, angles, centre_err)},
    }


def mapped_category(prepared: Path, truth: Path, out: Path) -> dict:
    """A category at ``out``: the prepared training split (linked) and the true test split
    (linked), with ``test/transforms.json`` in the prepared frame. Returns the pose errors."""
    errors = pose_errors(prepared, truth)
    sim = errors["similarity_prepared_to_true"]
    s, rot, t = sim["scale"], np.array(sim["rotation"]), np.array(sim["translation"])
    # true -> prepared: x_p = R^T (x_t - t) / s; a true w2c [Rc, tc] becomes [Rc R, (tc + Rc t) / s]
    raw = json.loads((truth / "test" / "transforms.json").read_text())
    for frame in raw["frames"]:
        w2c = camera.opengl_c2w_to_opencv_w2c(torch.tensor(frame["transform_matrix"], dtype=torch.float64)).numpy()
        new = np.eye(4)
        new[:3, :3] = w2c[:3, :3] @ rot
        new[:3, 3] = (w2c[:3, 3] + w2c[:3, :3] @ t) / s
        frame["transform_matrix"] = camera.opencv_w2c_to_opengl_c2w(torch.from_numpy(new)).tolist()
    raw["camera_angle_x"] = json.loads(find_transforms(prepared).read_text())["camera_angle_x"]
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: output folder exists and is not empty")
    (out / "test").mkdir(parents=True)
    (out / "train").symlink_to((prepared / "train").resolve())
    (out / "ground_truth").symlink_to((truth / "ground_truth").resolve())
    for child in (truth / "test").iterdir():
        if child.is_dir():
            (out / "test" / child.name).symlink_to(child.resolve())
    (out / "test" / "transforms.json").write_text(json.dumps(raw, indent=1) + "\n")
    return errors


def summary(errors: dict) -> str:
    r, c = errors["rotation_error_deg"], errors["centre_error_fraction"]
    return (f"{errors['views']} views matched ({errors['prepared_views']} prepared, {errors['true_views']} true): "
            f"rotation error median {r['median']:.3f} deg (max {r['max']:.3f}), camera-centre error median "
            f"{100 * c['median']:.3f} % of the camera distance (max {100 * c['max']:.3f} %)")
