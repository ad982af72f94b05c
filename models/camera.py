"""Camera and pose math: the one place where the project's conventions are defined.

Conventions (everything else in the code base follows these):

* **Pose** = world-to-camera rigid transform ``P = [[R, t], [0, 1]]`` (4x4) in **OpenCV
  axes** (x right, y down, z forward), i.e. ``x_cam = R @ x_world + t``. This is what
  gsplat's ``viewmats`` take. The camera centre is ``C = -R^T t``.
* **On disk** (MAD-Sim / NeRF / Blender ``transforms.json``) poses are camera-to-world in
  **OpenGL axes** (x right, y up, z backward). :func:`opengl_c2w_to_opencv_w2c` and
  :func:`opencv_w2c_to_opengl_c2w` are the only conversions between the two.
* **Intrinsics** ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels, pixel ``(i, j)``
  covering ``[i, i+1) x [j, j+1)`` with its centre at ``(i + 0.5, j + 0.5)`` (gsplat's
  convention); the principal point of a MAD camera is the image centre ``(W/2, H/2)``.
* **Quaternions** are unit, ordered **wxyz**, and canonical: ``w >= 0`` (``q`` and ``-q``
  are the same rotation; ties at ``w == 0`` go to the first non-zero component > 0).
* **Relative pose** of a query camera with respect to a gallery camera:
  ``P_rel = P_q @ inv(P_g)`` (maps gallery-camera coordinates to query-camera
  coordinates), hence ``P_q = P_rel @ P_g``.
* **Pose perturbation** (RVSS): ``P' = D @ P`` with ``D = [[exp(omega), dt], [0, 1]]``,
  ``omega ~ N(0, sigma_r^2 I)`` an axis-angle vector in radians and ``dt ~ N(0, sigma_t^2 I)``,
  both in the camera frame: the camera turns about its own centre by ``|omega|`` and
  moves by ``|dt|`` (scene units).
* **Orbit** (RVSS's optional wider views): ``P' = P @ [[G^T, 0], [0, 1]]`` for a world
  rotation ``G`` about the origin (the object centre): the camera centre moves to ``G C`` on
  the sphere of its distance and turns with it, so ``t`` and the object centre's pixel are
  unchanged (:func:`orbit_pose`).

All functions take torch tensors with arbitrary leading batch dimensions (``[..., 4, 4]``)
and keep their dtype; use float64 for geometry that must round-trip exactly.
"""

from __future__ import annotations

import math

import torch
from kornia.geometry import conversions as kc

Tensor = torch.Tensor

# OpenGL <-> OpenCV camera axes: flip y and z.
_GL_TO_CV = (1.0, -1.0, -1.0)


def _axis_flip(like: Tensor) -> Tensor:
    return torch.tensor(_GL_TO_CV, dtype=like.dtype, device=like.device)


def invert_pose(pose: Tensor) -> Tensor:
    """Exact inverse of rigid transforms ``[..., 4, 4]`` (uses R^T, not a general inverse)."""
    rot = pose[..., :3, :3]
    trans = pose[..., :3, 3:]
    rot_t = rot.transpose(-1, -2)
    out = torch.zeros_like(pose)
    out[..., :3, :3] = rot_t
    out[..., :3, 3:] = -rot_t @ trans
    out[..., 3, 3] = 1.0
    return out


def rigid_problem(pose: Tensor, rot_atol: float = 1e-3, row_atol: float = 1e-6) -> str | None:
    """Why ``pose [..., 4, 4]`` is not a rigid transform (any of the batch), or None when every
    one is: finite, a proper rotation (orthonormal within ``rot_atol``, det +1) and the last
    row ``0 0 0 1`` within ``row_atol``. The one rule for poses read from outside (a
    category's ``transforms.json``, a bundle's gallery)."""
    if pose.shape[-2:] != (4, 4):
        return f"must be 4x4, got shape {tuple(pose.shape[-2:])}"
    p = pose.double()
    if not torch.isfinite(p).all():
        return "has non-finite entries"
    bottom = p[..., 3, :] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=p.dtype, device=p.device)
    if not bool((bottom.abs() <= row_atol).all()):
        return "last row must be [0, 0, 0, 1]"
    rot = p[..., :3, :3]
    eye = torch.eye(3, dtype=p.dtype, device=p.device).expand_as(rot)
    if not torch.allclose(rot @ rot.transpose(-1, -2), eye, atol=rot_atol) or not bool((torch.linalg.det(rot) > 0).all()):
        return "rotation is not a proper rotation (orthonormal, det +1)"
    return None


def make_pose(rot: Tensor, trans: Tensor) -> Tensor:
    """Assemble ``[..., 4, 4]`` from rotation ``[..., 3, 3]`` and translation ``[..., 3]``."""
    shape = rot.shape[:-2]
    out = torch.zeros(*shape, 4, 4, dtype=rot.dtype, device=rot.device)
    out[..., :3, :3] = rot
    out[..., :3, 3] = trans
    out[..., 3, 3] = 1.0
    return out


def opengl_c2w_to_opencv_w2c(c2w: Tensor) -> Tensor:
    """Camera-to-world in OpenGL/Blender axes ``[..., 4, 4]`` -> world-to-camera, OpenCV axes."""
    c2w_cv = c2w.clone()
    c2w_cv[..., :3, :3] = c2w[..., :3, :3] * _axis_flip(c2w)
    return invert_pose(c2w_cv)


def opencv_w2c_to_opengl_c2w(w2c: Tensor) -> Tensor:
    """World-to-camera in OpenCV axes ``[..., 4, 4]`` -> camera-to-world, OpenGL/Blender axes."""
    c2w = invert_pose(w2c)
    c2w[..., :3, :3] = c2w[..., :3, :3] * _axis_flip(w2c)
    return c2w


def camera_center(w2c: Tensor) -> Tensor:
    """Camera centres ``[..., 3]`` in world coordinates: ``C = -R^T t``."""
    rot = w2c[..., :3, :3]
    return -(rot.transpose(-1, -2) @ w2c[..., :3, 3:])[..., 0]


def intrinsics_from_fov(
    camera_angle_x: float, width: int, height: int, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Pinhole ``K`` [3, 3] from the horizontal field of view (radians), square pixels,
    principal point at the image centre (MAD / NeRF synthetic convention)."""
    if not 0.0 < camera_angle_x < math.pi:
        raise ValueError(f"camera_angle_x must be in (0, pi) radians, got {camera_angle_x}")
    focal = 0.5 * width / math.tan(0.5 * camera_angle_x)
    return torch.tensor(
        [[focal, 0.0, 0.5 * width], [0.0, focal, 0.5 * height], [0.0, 0.0, 1.0]], dtype=dtype
    )


def scale_intrinsics(K: Tensor, scale_x: float, scale_y: float) -> Tensor:
    """``K`` for an image resized by (scale_x, scale_y) (new size / old size).

    With pixel centres at ``+0.5`` a resize maps the image rectangle onto itself, so the
    focal lengths and the principal point scale alike.
    """
    out = K.clone()
    out[..., 0, :] = K[..., 0, :] * scale_x
    out[..., 1, :] = K[..., 1, :] * scale_y
    return out


def canonical_quat(quat: Tensor) -> Tensor:
    """Normalise wxyz quaternions ``[..., 4]`` and pick the sign with ``w >= 0``.

    At ``w == 0`` the first non-zero component decides, so that q and -q always map to the
    same representative.
    """
    quat = quat / quat.norm(dim=-1, keepdim=True)
    # Index of the first component whose magnitude is not (numerically) zero.
    nonzero = quat.abs() > 1e-12
    first = torch.argmax(nonzero.to(torch.int8), dim=-1, keepdim=True)
    sign = torch.sign(torch.gather(quat, -1, first))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return quat * sign


def rotmat_to_quat(rot: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` -> canonical unit quaternions wxyz ``[..., 4]``."""
    shape = rot.shape[:-2]
    quat = kc.rotation_matrix_to_quaternion(rot.reshape(-1, 3, 3), eps=0.0)
    return canonical_quat(quat.reshape(*shape, 4))


def quat_to_rotmat(quat: Tensor) -> Tensor:
    """Quaternions wxyz ``[..., 4]`` (normalised here) -> rotation matrices ``[..., 3, 3]``."""
    shape = quat.shape[:-1]
    quat = quat / quat.norm(dim=-1, keepdim=True)
    return kc.quaternion_to_rotation_matrix(quat.reshape(-1, 4)).reshape(*shape, 3, 3)


def so3_exp(axis_angle: Tensor) -> Tensor:
    """Axis-angle vectors ``[..., 3]`` (radians) -> rotation matrices ``[..., 3, 3]``."""
    shape = axis_angle.shape[:-1]
    return kc.axis_angle_to_rotation_matrix(axis_angle.reshape(-1, 3)).reshape(*shape, 3, 3)


def pose_to_quat_trans(pose: Tensor) -> tuple[Tensor, Tensor]:
    """``[..., 4, 4]`` -> (canonical quaternion wxyz ``[..., 4]``, translation ``[..., 3]``)."""
    return rotmat_to_quat(pose[..., :3, :3]), pose[..., :3, 3].clone()


def quat_trans_to_pose(quat: Tensor, trans: Tensor) -> Tensor:
    """(quaternion wxyz ``[..., 4]``, translation ``[..., 3]``) -> ``[..., 4, 4]``."""
    return make_pose(quat_to_rotmat(quat), trans)


def relative_pose(pose_query: Tensor, pose_gallery: Tensor) -> Tensor:
    """``P_rel = P_q @ inv(P_g)``: gallery-camera coordinates -> query-camera coordinates."""
    return pose_query @ invert_pose(pose_gallery)


def compose_pose(pose_rel: Tensor, pose_gallery: Tensor) -> Tensor:
    """Absolute query pose from a relative pose and its gallery pose: ``P_q = P_rel @ P_g``."""
    return pose_rel @ pose_gallery


def perturb_pose(
    pose: Tensor, sigma_r: float, sigma_t: float, generator: torch.Generator | None = None
) -> Tensor:
    """RVSS perturbation ``P' = D @ P`` (see the module docstring), for ``[..., 4, 4]`` poses.

    ``sigma_r`` is the std of each axis-angle component (radians), ``sigma_t`` the std of
    each translation component (scene units). Draws on the CPU from ``generator``, so the
    result is reproducible for a seeded generator whatever the device of ``pose``.
    """
    shape = pose.shape[:-2]
    omega = torch.randn(*shape, 3, generator=generator, dtype=torch.float64) * sigma_r
    dt = torch.randn(*shape, 3, generator=generator, dtype=torch.float64) * sigma_t
    delta = make_pose(so3_exp(omega), dt).to(dtype=pose.dtype, device=pose.device)
    return delta @ pose


def orbit_pose(pose: Tensor, axis_angle: Tensor) -> Tensor:
    """The camera of ``pose`` [..., 4, 4] carried around the world origin by the world
    rotation ``G = exp(axis_angle)`` [..., 3] (radians): ``C' = G C``, ``R' = R G^T``,
    ``t' = t`` (module docstring)."""
    rot = so3_exp(axis_angle.to(pose.dtype))
    return make_pose(pose[..., :3, :3] @ rot.transpose(-1, -2), pose[..., :3, 3])


def random_orbit(n: int, min_deg: float, max_deg: float, generator: torch.Generator | None = None) -> Tensor:
    """``n`` axis-angle vectors [n, 3] (float64): axes uniform on the sphere, angles uniform
    in ``[min_deg, max_deg]`` degrees."""
    if not 0 <= min_deg <= max_deg:
        raise ValueError(f"orbit angles need 0 <= min_deg <= max_deg, got {min_deg}, {max_deg}")
    axis = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    angle = min_deg + (max_deg - min_deg) * torch.rand(n, 1, generator=generator, dtype=torch.float64)
    return axis * torch.deg2rad(angle)


def look_at(eye: Tensor, target: Tensor, up: Tensor, roll: Tensor | float = 0.0) -> Tensor:
    """World-to-camera pose (OpenCV axes) of a camera at ``eye`` [..., 3] looking at
    ``target`` [..., 3] with the world ``up`` direction appearing up in the image, then
    rolled by ``roll`` radians about the optical axis: ``R' = Rz(roll) @ R``, so with a
    positive roll the image content turns clockwise on screen (from +x towards +y, y down)."""
    forward = target - eye
    forward = forward / forward.norm(dim=-1, keepdim=True)
    right = torch.linalg.cross(forward, up.expand_as(forward), dim=-1)
    right_norm = right.norm(dim=-1, keepdim=True)
    if bool((right_norm < 1e-9).any()):
        raise ValueError("look_at: viewing direction is parallel to the up vector")
    right = right / right_norm
    down = torch.linalg.cross(forward, right, dim=-1)
    rot = torch.stack([right, down, forward], dim=-2)  # rows: camera axes in world coords
    roll = torch.as_tensor(roll, dtype=eye.dtype, device=eye.device)
    rot = _rot_z(roll).expand(*rot.shape[:-2], 3, 3) @ rot
    trans = -(rot @ eye[..., None])[..., 0]
    return make_pose(rot, trans)


def _rot_z(angle: Tensor) -> Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack(
        [torch.stack([c, -s, zero], -1), torch.stack([s, c, zero], -1), torch.stack([zero, zero, one], -1)],
        dim=-2,
    )


def rotation_angle(rot_a: Tensor, rot_b: Tensor) -> Tensor:
    """Geodesic angle (radians) between rotations ``[..., 3, 3]``; accurate near 0 and pi."""
    rel = rot_a @ rot_b.transpose(-1, -2)
    cos = (rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0
    skew = rel - rel.transpose(-1, -2)
    sin = torch.stack([skew[..., 2, 1], skew[..., 0, 2], skew[..., 1, 0]], -1).norm(dim=-1) / 2.0
    return torch.atan2(sin, cos)


def pose_errors(pose_est: Tensor, pose_true: Tensor) -> dict[str, Tensor]:
    """Errors of estimated world-to-camera poses against true ones ``[..., 4, 4]``.

    Returns ``rot_deg`` (geodesic rotation error, degrees), ``center_dist`` (distance between
    camera centres, scene units) and ``center_rel`` (that distance divided by the true
    camera's distance from the world origin).
    """
    c_est, c_true = camera_center(pose_est), camera_center(pose_true)
    dist = (c_est - c_true).norm(dim=-1)
    return {
        "rot_deg": torch.rad2deg(rotation_angle(pose_est[..., :3, :3], pose_true[..., :3, :3])),
        "center_dist": dist,
        "center_rel": dist / c_true.norm(dim=-1),
    }


def project_points(points: Tensor, w2c: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points ``[..., N, 3]`` with pose ``[..., 4, 4]`` and ``K`` ``[..., 3, 3]``.

    Returns pixel coordinates ``[..., N, 2]`` (continuous, pixel centres at +0.5) and
    camera-space depths ``[..., N]``.
    """
    cam = points @ w2c[..., :3, :3].transpose(-1, -2) + w2c[..., None, :3, 3]
    depth = cam[..., 2]
    uvw = cam @ K.transpose(-1, -2)
    return uvw[..., :2] / uvw[..., 2:3], depth


def roll_pose(pose: Tensor, image_rotation_deg: Tensor | float) -> Tensor:
    """The pose whose image is this pose's image rotated by ``image_rotation_deg``
    counter-clockwise on screen about the principal point (kornia's ``rotate`` sign):
    a turn of the camera about its optical axis, ``P' = Rz(-a) P``. Exact for a pinhole
    camera whose principal point is the rotation centre (MAD: the image centre)."""
    angle = torch.as_tensor(image_rotation_deg, dtype=pose.dtype, device=pose.device)
    rz = _rot_z(-torch.deg2rad(angle)).expand(*pose.shape[:-2], 3, 3)
    return make_pose(rz, torch.zeros(*pose.shape[:-2], 3, dtype=pose.dtype, device=pose.device)) @ pose


def reprojection_error_px(pose_est: Tensor, pose_true: Tensor, K: Tensor, points: Tensor) -> Tensor:
    """Mean pixel distance ``[...]`` between world ``points [N, 3]`` projected with the
    estimated and the true pose (same ``K``): how far a render at the estimate sits from
    the query, in pixels of the image ``K`` describes."""
    uv_est, _ = project_points(points, pose_est, K)
    uv_true, _ = project_points(points, pose_true, K)
    return (uv_est - uv_true).norm(dim=-1).mean(dim=-1)


def parse_intrinsics(text: str) -> tuple[float, float, float, float]:
    """``"fx,fy,cx,cy"`` (a camera's intrinsics in its own pixels) -> four floats;
    ``ValueError`` saying what is expected otherwise."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(f"intrinsics must be 'fx,fy,cx,cy' (four numbers), got {text!r}")
    if not all(math.isfinite(v) for v in values) or values[0] <= 0 or values[1] <= 0:
        raise ValueError(f"intrinsics must be finite with fx, fy > 0, got {text!r}")
    return values
