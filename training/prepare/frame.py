"""The world frame of a prepared category, from structure-from-motion's arbitrary one.

Structure-from-motion fixes poses only up to a similarity (rotation, translation, scale).
The category's frame is chosen so that it looks like MAD-Sim's:

* **origin**: the object's centre, taken as the point nearest to every camera's optical
  axis in the least-squares sense (photos of an object are aimed at it);
* **up axis**: a photographer holds the camera about upright, so each camera's right
  direction (image +x) is about horizontal, whatever its elevation: world **+z** is the
  direction most nearly perpendicular to every right direction (the least eigenvector of
  their scatter), on the side of the cameras' mean up direction (image -y). The mean up
  itself leans with the cameras' elevation, which cancels only when they surround the
  object: on a half circle it tilted +z by 25 degrees. Where the right directions do not
  spread (every camera facing one way), the mean up is kept, made perpendicular to their
  shared right direction. The yaw puts the first photo's camera in the x-z half-plane with
  x > 0;
* **scale**: the median camera distance from the origin is ``CAMERA_DISTANCE`` (4.0 scene
  units, MAD-Sim's 4.03), so the training presets' scene-unit settings mean the same thing.

Poses stay world-to-camera in OpenCV axes (``models/camera.py``). A point ``x`` of the
structure-from-motion frame maps to ``s R x + t`` (:class:`Similarity`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CAMERA_DISTANCE = 4.0


@dataclass(frozen=True)
class Similarity:
    scale: float
    rotation: np.ndarray  # [3, 3]
    translation: np.ndarray  # [3]

    def pose(self, w2c: np.ndarray) -> np.ndarray:
        """A world-to-camera pose in the new frame: ``x_cam`` is scaled with the world, so
        ``[R_c, t_c] -> [R_c R^T, s t_c - R_c R^T t]``."""
        out = np.eye(4)
        rot = w2c[:3, :3] @ self.rotation.T
        out[:3, :3] = rot
        out[:3, 3] = self.scale * w2c[:3, 3] - rot @ self.translation
        return out

    def to_dict(self) -> dict:
        return {"scale": self.scale, "rotation": self.rotation.tolist(), "translation": self.translation.tolist()}


def centres_and_axes(w2c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera centres [N, 3], viewing directions (+z of the camera) and up directions (-y)."""
    rot = w2c[:, :3, :3]
    centres = -np.einsum("nji,nj->ni", rot, w2c[:, :3, 3])
    return centres, rot[:, 2, :], -rot[:, 1, :]


def focus_point(centres: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """The point nearest to every optical axis (least squares over the lines)."""
    projectors = np.eye(3)[None] - directions[:, :, None] * directions[:, None, :]
    lhs = projectors.sum(0)
    rhs = np.einsum("nij,nj->i", projectors, centres)
    if np.linalg.cond(lhs) > 1e8:  # all axes parallel: no point is aimed at; use the cameras' centroid
        return centres.mean(0)
    return np.linalg.solve(lhs, rhs)


RIGHT_SPREAD = 0.05  # share of the right directions' scatter off their main direction that makes a plane


def up_axis(right: np.ndarray, up: np.ndarray) -> np.ndarray:
    """World up from the cameras' right [N, 3] and up [N, 3] directions (module docstring)."""
    mean_up = up.mean(0)
    if np.linalg.norm(mean_up) < 1e-6:  # cameras held every which way: fall back to the first one's up
        mean_up = up[0]
    values, vectors = np.linalg.eigh(right.T @ right)  # ascending
    if values[1] > RIGHT_SPREAD * values.sum():  # the right directions span a plane: up is its normal
        z = vectors[:, 0]
    else:  # all facing one way
        shared = vectors[:, 2]
        z = mean_up - (mean_up @ shared) * shared
    z = z if z @ mean_up >= 0 else -z
    return z / np.linalg.norm(z)


def normalise(w2c: np.ndarray) -> Similarity:
    """The similarity from structure-from-motion's frame to the category's (module docstring)."""
    centres, forward, up = centres_and_axes(w2c)
    origin = focus_point(centres, forward)
    z = up_axis(w2c[:, 0, :3], up)
    first = centres[0] - origin
    x = first - (first @ z) * z  # the first camera sits in the x-z half-plane, x > 0
    if np.linalg.norm(x) < 1e-9 * max(np.linalg.norm(first), 1.0):  # first camera straight above: any x
        x = np.cross(z, [1.0, 0.0, 0.0] if abs(z[0]) < 0.9 else [0.0, 1.0, 0.0])
    x = x / np.linalg.norm(x)
    rotation = np.stack([x, np.cross(z, x), z])  # rows: the new axes in the old frame
    scale = CAMERA_DISTANCE / float(np.median(np.linalg.norm(centres - origin, axis=1)))
    return Similarity(scale, rotation, -scale * rotation @ origin)
