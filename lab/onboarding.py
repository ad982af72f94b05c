"""How close `rpe-pad prepare`'s poses come to the true ones, and an evaluation category in
the prepared frame (issue 24's acceptance: docs/DATA.md, "Onboarding from photographs").

``pose_errors`` aligns the prepared cameras to the true ones by the similarity that best
maps the camera centres and the points they look at, at the object's distance (Umeyama's
least squares), then measures each view's rotation
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
        name = Path(frame[key]).stem
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
    target = focus_point(centre(q), q[:, 2, :3])  # the object: where the true optical axes meet
    # Each camera gives two points: its centre and the point it looks at, at the object's
    # distance; so the similarity fits where the cameras are and where they look.
    ahead_p = centre(p) + np.linalg.norm(centre(p) - focus_point(centre(p), p[:, 2, :3]), axis=1)[:, None] * p[:, 2, :3]
    ahead_q = centre(q) + np.linalg.norm(centre(q) - target, axis=1)[:, None] * q[:, 2, :3]
    scale, rot, trans = umeyama(np.concatenate([centre(p), ahead_p]), np.concatenate([centre(q), ahead_q]))
    aligned_c = scale * centre(p) @ rot.T + trans
    centre_err = np.linalg.norm(aligned_c - centre(q), axis=1) / np.linalg.norm(centre(q) - target, axis=1)
    # camera rotation in the true frame: R_cam_true = R_cam_prepared R^T
    r_err = p[:, :3, :3] @ rot.T @ np.transpose(q[:, :3, :3], (0, 2, 1))
    angles = np.degrees(np.arccos(np.clip((np.trace(r_err, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    floor = _mapping_floor_px(prepared, p, q, scale, rot, trans)
    return {
        "views": len(names), "prepared_views": len(mine), "true_views": len(true),
        "mapped_true_vs_prepared_px": floor,
        "rotation_error_deg": {"median": float(np.median(angles)), "max": float(angles.max())},
        "centre_error_fraction": {"median": float(np.median(centre_err)), "max": float(centre_err.max())},
        "similarity_prepared_to_true": {"scale": scale, "rotation": rot.tolist(), "translation": trans.tolist()},
        "per_view": {n: {"rotation_deg": float(a), "centre_fraction": float(c)}
                     for n, a, c in zip(names, angles, centre_err)},
    }


def _mapping_floor_px(prepared: Path, p: np.ndarray, q: np.ndarray, scale: float, rot: np.ndarray,
                      trans: np.ndarray) -> dict | None:
    """How far the true poses, mapped into the prepared frame by the one similarity, sit from
    the prepared poses of the same training views: the mean pixel distance of the object's
    sparse points projected both ways (median and max over the views, at the prepared photos'
    size). A query's true pose mapped the same way carries this error too, so it bounds how
    closely any alignment can be measured in the prepared frame."""
    import pycolmap

    sparse = prepared / "prepare" / "sfm" / "sparse"
    report = prepared / "prepare" / "readiness.json"
    if not (sparse / "points3D.txt").is_file() or not report.is_file():
        return None
    sim = json.loads(report.read_text())["frame"]["from_sfm"]
    model = pycolmap.Reconstruction(str(sparse))
    xyz = np.array([pt.xyz for pt in model.points3D.values() if pt.track.length() >= 3])
    points = sim["scale"] * xyz @ np.array(sim["rotation"]).T + np.array(sim["translation"])
    angle_x = json.loads(find_transforms(prepared).read_text())["camera_angle_x"]
    width = json.loads(report.read_text())["camera"]["width"]
    height = json.loads(report.read_text())["camera"]["height"]
    K = camera.intrinsics_from_fov(angle_x, width, height)
    mapped = np.tile(np.eye(4), (len(q), 1, 1))  # true -> prepared, as mapped_category does it
    mapped[:, :3, :3] = q[:, :3, :3] @ rot
    mapped[:, :3, 3] = (q[:, :3, 3] + np.einsum("nij,j->ni", q[:, :3, :3], trans)) / scale
    px = camera.reprojection_error_px(torch.from_numpy(p), torch.from_numpy(mapped), K,
                                      torch.from_numpy(points)).numpy()
    return {"median": float(np.median(px)), "max": float(px.max())}


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
            f"{100 * c['median']:.3f} % of the camera distance (max {100 * c['max']:.3f} %)"
            + (f"; the true poses mapped by one similarity sit {f['median']:.3f} px (median; max {f['max']:.3f}) "
               "from the prepared ones" if (f := errors.get("mapped_true_vs_prepared_px")) else ""))
