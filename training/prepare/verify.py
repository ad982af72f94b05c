"""Checking structure-from-motion's poses against the object's silhouettes, and placing again
the views that fail.

An object with repeated or symmetric parts (a grid of studs, a row of holes) can let a
photo register at a pose on the wrong side with a small reprojection error: its features
match look-alikes. Every point of the object projects inside the object's silhouette in
every photo, whatever hides it, so a right pose puts nearly all the reconstructed points
inside the photo's mask and a wrong one does not. A view whose share falls under
``SILHOUETTE_RATIO`` x the median share is placed again: its 2D-3D correspondences (from
its verified matches to the other photos' reconstructed points) go through RANSAC
(COLMAP's absolute pose solver); a pose the silhouette refutes has its inliers removed and
the next best is tried, up to ``MAX_TRIES`` times. A view that finds no pose the silhouette
accepts is taken out of the model and reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pycolmap
from scipy import ndimage

SILHOUETTE_RATIO = 0.85  # a view's share of points inside its mask, relative to the median view's
MASK_MARGIN = 0.01  # the mask is grown by this fraction of the image's long side (mask and point noise)
MIN_INLIERS = 30  # a re-placed pose needs this many 2D-3D inliers (COLMAP's abs_pose_min_num_inliers)
MAX_TRIES = 5


@dataclass(frozen=True)
class Verdict:
    file: str  # the image's name in the model
    share: float  # of the model's points projecting inside the mask, at the final pose
    replaced: bool  # the mapper's pose was refuted and another one found
    removed: str | None  # why the view was taken out of the model
    reprojection_px: float | None = None  # of a re-placed view: mean error of its RANSAC inliers


def grown(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=max(1, round(MASK_MARGIN * max(mask.shape))))


def share_inside(points: np.ndarray, w2c: np.ndarray, camera: pycolmap.Camera, mask: np.ndarray) -> float:
    """Fraction of ``points`` [P, 3] that project inside ``mask`` (already grown)."""
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    front = cam[:, 2] > 1e-6
    uv = np.full((len(points), 2), -1.0)
    if front.any():
        uv[front] = np.asarray(camera.img_from_cam(cam[front]), dtype=np.float64).reshape(-1, 2)
    u, v = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    ok = front & (u >= 0) & (v >= 0) & (u < mask.shape[1]) & (v < mask.shape[0])
    hit = np.zeros(len(points), bool)
    hit[ok] = mask[v[ok], u[ok]]
    return float(hit.mean()) if len(points) else 0.0


def _pose(image: pycolmap.Image) -> np.ndarray:
    pose = np.eye(4)
    pose[:3] = image.cam_from_world().matrix()
    return pose


def verify(model: pycolmap.Reconstruction, database: str, masks: dict[str, np.ndarray]) -> list[Verdict]:
    """Check every registered view of ``model`` (masks by image name), place the refuted ones
    again, and deregister those that find no accepted pose. ``model`` is changed in place."""
    points = np.array([p.xyz for p in model.points3D.values() if p.track.length() >= 3]).reshape(-1, 3)
    (camera,) = model.cameras.values()
    masks = {name: grown(m) for name, m in masks.items()}
    shares = {image_id: share_inside(points, _pose(model.images[image_id]), camera, masks[model.images[image_id].name])
              for image_id in model.reg_image_ids()}
    floor = SILHOUETTE_RATIO * float(np.median(list(shares.values())))
    verdicts = []
    with pycolmap.Database.open(database) as db:
        for image_id, share in sorted(shares.items()):
            image = model.images[image_id]
            if share >= floor:
                verdicts.append(Verdict(image.name, share, False, None))
                continue
            found = _place_again(model, db, image_id, camera, points, masks[image.name], floor)
            for index, point in enumerate(image.points2D):  # its tracks were made at the refuted pose
                if point.has_point3D():
                    model.delete_observation(image_id, index)
            if found is None:
                model.deregister_frame(image.frame_id)
                verdicts.append(Verdict(image.name, share, False,
                                        f"structure-from-motion placed it where its silhouette holds only {share:.0%} "
                                        "of the object's points, and no other pose fits: the object looks alike from "
                                        "elsewhere (repeated or symmetric parts); add photos between this view and "
                                        "its neighbours"))
                continue
            pose, error = found
            model.frames[image.frame_id].set_cam_from_world(image.camera_id, pose)
            verdicts.append(Verdict(image.name, share_inside(points, _pose(model.images[image_id]), camera,
                                                             masks[image.name]), True, None, error))
    return verdicts


def _place_again(model: pycolmap.Reconstruction, db: pycolmap.Database, image_id: int, camera: pycolmap.Camera,
                 points: np.ndarray, mask: np.ndarray, floor: float) -> tuple[pycolmap.Rigid3d, float] | None:
    xy, xyz = _correspondences(model, db, image_id)
    for _ in range(MAX_TRIES):
        if len(xy) < MIN_INLIERS:
            return None
        found = pycolmap.estimate_and_refine_absolute_pose(xy, xyz, camera)
        if found is None or found["num_inliers"] < MIN_INLIERS:
            return None
        pose = np.eye(4)
        pose[:3] = found["cam_from_world"].matrix()
        inliers = np.asarray(found["inlier_mask"], bool)
        if share_inside(points, pose, camera, mask) >= floor:
            cam = xyz[inliers] @ pose[:3, :3].T + pose[:3, 3]
            uv = np.asarray(camera.img_from_cam(cam), dtype=np.float64).reshape(-1, 2)
            return found["cam_from_world"], float(np.linalg.norm(uv - xy[inliers], axis=1).mean())
        keep = ~inliers
        xy, xyz = xy[keep], xyz[keep]
    return None


def _correspondences(model: pycolmap.Reconstruction, db: pycolmap.Database,
                     image_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The image's keypoints matched (verified) to reconstructed points of the other views."""
    keypoints = db.read_keypoints(image_id)[:, :2].astype(np.float64)
    pairs: dict[tuple[int, int], np.ndarray] = {}
    for other_id in model.reg_image_ids():
        if other_id == image_id:
            continue
        matches = db.read_two_view_geometry(image_id, other_id).inlier_matches
        other = model.images[other_id]
        for mine, theirs in np.asarray(matches).reshape(-1, 2):
            point = other.points2D[int(theirs)]
            if point.has_point3D():
                pairs[(int(mine), int(point.point3D_id))] = keypoints[int(mine)]
    if not pairs:
        return np.zeros((0, 2)), np.zeros((0, 3))
    xy = np.array(list(pairs.values()))
    xyz = np.array([model.points3D[p].xyz for _, p in pairs])
    return xy, xyz
