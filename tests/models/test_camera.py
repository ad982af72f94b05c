"""Pose conventions: round trips, composition identities, scipy as the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from models import camera

FLOATS = st.floats(-1.0, 1.0, allow_nan=False)
VEC3 = st.tuples(FLOATS, FLOATS, FLOATS)


def _rot(seed: int) -> np.ndarray:
    return Rotation.random(random_state=seed).as_matrix()


def _pose(seed: int, scale: float = 3.0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    pose = np.eye(4)
    pose[:3, :3] = _rot(seed)
    pose[:3, 3] = rng.normal(size=3) * scale
    return torch.tensor(pose)


@given(st.integers(0, 10_000))
def test_quaternion_matches_scipy_and_is_canonical(seed: int) -> None:
    R = _rot(seed)
    q = camera.rotmat_to_quat(torch.tensor(R))
    x, y, z, w = Rotation.from_matrix(R).as_quat()  # scipy is xyzw
    ref = np.array([w, x, y, z]) * (1 if w >= 0 else -1)
    np.testing.assert_allclose(q.numpy(), ref, atol=1e-9)
    assert q[0] >= 0
    np.testing.assert_allclose(camera.quat_to_rotmat(q).numpy(), R, atol=1e-12)


def test_canonical_sign_at_zero_w() -> None:
    q = torch.tensor([[0.0, -1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [-0.0, 0.0, -0.6, 0.8]], dtype=torch.float64)
    out = camera.canonical_quat(q)
    assert torch.equal(out[0], out[1])
    np.testing.assert_allclose(out[2].numpy(), [0.0, 0.0, 0.6, -0.8])


@given(st.integers(0, 10_000))
def test_quat_of_negated_quat_is_same(seed: int) -> None:
    q = torch.tensor(Rotation.random(random_state=seed).as_quat()[[3, 0, 1, 2]])
    assert torch.allclose(camera.canonical_quat(q), camera.canonical_quat(-q))


@given(st.integers(0, 10_000))
def test_opengl_opencv_round_trip_and_centre(seed: int) -> None:
    c2w = _pose(seed)
    w2c = camera.opengl_c2w_to_opencv_w2c(c2w)
    assert torch.allclose(camera.opencv_w2c_to_opengl_c2w(w2c), c2w, atol=1e-12)
    # The camera centre is the translation of camera-to-world, whatever the axes.
    assert torch.allclose(camera.camera_center(w2c), c2w[:3, 3], atol=1e-12)
    # OpenGL looks down -z: the point one unit along c2w's -z column is in front (+z in OpenCV).
    ahead = c2w[:3, 3] - c2w[:3, 2]
    _, depth = camera.project_points(ahead[None], w2c, torch.eye(3, dtype=torch.float64))
    assert depth.item() == pytest.approx(1.0)


@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_relative_pose_composition(seed_q: int, seed_g: int) -> None:
    pq, pg = _pose(seed_q), _pose(seed_g + 20_000)
    rel = camera.relative_pose(pq, pg)
    assert torch.allclose(camera.compose_pose(rel, pg), pq, atol=1e-12)
    assert torch.allclose(camera.relative_pose(pg, pg), torch.eye(4, dtype=torch.float64), atol=1e-12)
    # inv(P_rel(q, g)) == P_rel(g, q)
    assert torch.allclose(camera.invert_pose(rel), camera.relative_pose(pg, pq), atol=1e-12)
    # Chaining through a third camera: P_rel(q, a) @ P_rel(a, g) == P_rel(q, g)
    pa = _pose(seed_q + seed_g + 40_000)
    assert torch.allclose(camera.relative_pose(pq, pa) @ camera.relative_pose(pa, pg), rel, atol=1e-10)


@given(st.integers(0, 10_000))
def test_quat_trans_round_trip(seed: int) -> None:
    pose = _pose(seed)
    q, t = camera.pose_to_quat_trans(pose)
    assert torch.allclose(camera.quat_trans_to_pose(q, t), pose, atol=1e-12)


@given(VEC3)
def test_so3_exp_matches_scipy(vec: tuple[float, float, float]) -> None:
    omega = np.array(vec)
    ref = Rotation.from_rotvec(omega).as_matrix()
    np.testing.assert_allclose(camera.so3_exp(torch.tensor(omega)).numpy(), ref, atol=1e-9)


@settings(deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_rotation_angle_matches_scipy(seed_a: int, seed_b: int) -> None:
    a, b = _rot(seed_a), _rot(seed_b + 50_000)
    ref = (Rotation.from_matrix(a) * Rotation.from_matrix(b).inv()).magnitude()
    got = camera.rotation_angle(torch.tensor(a), torch.tensor(b)).item()
    assert got == pytest.approx(ref, abs=1e-9)


def test_rotation_angle_is_accurate_for_tiny_angles() -> None:
    R = torch.tensor(Rotation.from_rotvec([1e-7, 0, 0]).as_matrix())
    assert camera.rotation_angle(R, torch.eye(3, dtype=torch.float64)).item() == pytest.approx(1e-7, rel=1e-6)


def test_pose_errors() -> None:
    true = camera.look_at(
        torch.tensor([4.0, 0.0, 0.0], dtype=torch.float64),
        torch.zeros(3, dtype=torch.float64),
        torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),
    )
    moved = true.clone()
    moved[:3, 3] += torch.tensor([0.0, 0.0, 0.2], dtype=torch.float64)  # centre moves 0.2
    rolled = camera.look_at(
        torch.tensor([4.0, 0.0, 0.0], dtype=torch.float64),
        torch.zeros(3, dtype=torch.float64),
        torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),
        roll=math.radians(3.0),
    )
    err = camera.pose_errors(torch.stack([moved, rolled]), torch.stack([true, true]))
    np.testing.assert_allclose(err["rot_deg"].numpy(), [0.0, 3.0], atol=1e-9)
    np.testing.assert_allclose(err["center_dist"].numpy(), [0.2, 0.0], atol=1e-12)
    np.testing.assert_allclose(err["center_rel"].numpy(), [0.05, 0.0], atol=1e-12)


def test_look_at_sees_target_upright_at_centre() -> None:
    eye = torch.tensor([3.0, -2.0, 1.5], dtype=torch.float64)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    w2c = camera.look_at(eye, torch.zeros(3, dtype=torch.float64), up)
    K = camera.intrinsics_from_fov(0.69, 200, 100)
    uv, depth = camera.project_points(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.3]], dtype=torch.float64), w2c, K)
    np.testing.assert_allclose(uv[0].numpy(), [100.0, 50.0], atol=1e-9)
    assert depth[0].item() == pytest.approx(eye.norm().item())
    assert uv[1, 1] < uv[0, 1]  # world up is image up (smaller v)
    # A positive roll turns the image content clockwise: "up" moves towards +u.
    rolled = camera.look_at(eye, torch.zeros(3, dtype=torch.float64), up, roll=0.3)
    uv_r, _ = camera.project_points(torch.tensor([[0.0, 0.0, 0.3]], dtype=torch.float64), rolled, K)
    assert uv_r[0, 0] > 100.0


def test_intrinsics_and_scaling() -> None:
    K = camera.intrinsics_from_fov(0.6911112070083618, 800, 800)
    assert K[0, 0].item() == pytest.approx(1111.11, abs=0.01)  # MAD-Sim's focal length
    half = camera.scale_intrinsics(K, 0.5, 0.5)
    assert torch.allclose(half, camera.intrinsics_from_fov(0.6911112070083618, 400, 400))
    with pytest.raises(ValueError):
        camera.intrinsics_from_fov(0.0, 10, 10)


def test_perturb_pose_statistics_and_determinism() -> None:
    base = _pose(7).expand(4000, 4, 4).clone()
    gen = torch.Generator().manual_seed(0)
    out = camera.perturb_pose(base, sigma_r=0.02, sigma_t=0.1, generator=gen)
    again = camera.perturb_pose(base, sigma_r=0.02, sigma_t=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    delta = camera.relative_pose(out, base)  # = D
    omega = Rotation.from_matrix(delta[:, :3, :3].numpy()).as_rotvec()
    np.testing.assert_allclose(omega.std(axis=0), 0.02, rtol=0.06)
    np.testing.assert_allclose(delta[:, :3, 3].std(dim=0).numpy(), 0.1, rtol=0.06)
    assert abs(omega.mean()) < 0.002
    # Rigid: rotations stay orthonormal.
    R = out[:, :3, :3]
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-12)


def test_orbit_pose_carries_the_camera_around_the_origin() -> None:
    base = camera.look_at(torch.tensor([[0.3, -4.0, 1.2]], dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64),
                          torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), roll=0.2)
    omega = camera.random_orbit(50, 3.0, 9.0, torch.Generator().manual_seed(0))
    out = camera.orbit_pose(base.expand(50, 4, 4), omega)
    G = camera.so3_exp(omega)
    c0, c1 = camera.camera_center(base), camera.camera_center(out)
    assert torch.allclose(c1, (G @ c0[..., None])[..., 0], atol=1e-12)  # C' = G C
    assert torch.allclose(c1.norm(dim=-1), c0.norm(dim=-1), atol=1e-12)
    assert torch.allclose(out[:, :3, 3], base[:, :3, 3].expand(50, 3))  # the origin stays at its pixel
    # The camera turns by the orbit angle, which random_orbit draws within its bounds.
    turned = camera.pose_errors(out, base.expand(50, 4, 4))["rot_deg"]
    assert torch.allclose(turned, torch.rad2deg(omega.norm(dim=-1)), atol=1e-9)
    assert turned.min() >= 3.0 - 1e-9 and turned.max() <= 9.0 + 1e-9 and turned.std() > 1
    # A world point moved with the camera keeps its pixel (a rigid motion of the whole scene).
    x = torch.tensor([0.4, 0.1, -0.3], dtype=torch.float64)
    K = torch.tensor([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]], dtype=torch.float64)
    uv0, _ = camera.project_points(x[None], base[0], K)
    uv1, _ = camera.project_points((G[0] @ x)[None], out[0], K)
    assert torch.allclose(uv0, uv1, atol=1e-9)
    with pytest.raises(ValueError, match="orbit angles"):
        camera.random_orbit(3, 5.0, 2.0)


def test_batched_shapes_and_float32() -> None:
    poses = torch.stack([_pose(s) for s in range(6)]).reshape(2, 3, 4, 4).float()
    q, t = camera.pose_to_quat_trans(poses)
    assert q.shape == (2, 3, 4) and t.shape == (2, 3, 3) and q.dtype == torch.float32
    assert torch.allclose(camera.quat_trans_to_pose(q, t), poses, atol=1e-5)
    assert camera.invert_pose(poses).shape == (2, 3, 4, 4)


def test_roll_pose_is_the_in_plane_image_rotation() -> None:
    """Projecting with roll_pose(P, a) = rotating P's projections by a (counter-clockwise
    on screen, about the principal point): the exact roll augmentation of IRPRN."""
    from models.camera import intrinsics_from_fov, look_at, project_points, roll_pose

    pose = look_at(torch.tensor([3.0, -2.0, 1.5], dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                   torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    K = intrinsics_from_fov(0.7, 100, 100)
    pts = torch.randn(20, 3, dtype=torch.float64) * 0.5
    uv, _ = project_points(pts, pose, K)
    for angle in (-30.0, 12.0, 90.0):
        uv_rolled, _ = project_points(pts, roll_pose(pose, angle), K)
        a = math.radians(angle)
        d = uv - 50.0
        # Counter-clockwise on screen with v pointing down: (du, dv) -> (du cos a + dv sin a, -du sin a + dv cos a).
        expected = torch.stack([d[:, 0] * math.cos(a) + d[:, 1] * math.sin(a),
                                -d[:, 0] * math.sin(a) + d[:, 1] * math.cos(a)], -1) + 50.0
        assert torch.allclose(uv_rolled, expected, atol=1e-9)


def test_reprojection_error_px() -> None:
    from models.camera import (
        intrinsics_from_fov,
        look_at,
        reprojection_error_px,
        roll_pose,
    )

    pose = look_at(torch.tensor([0.0, -4.0, 0.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                   torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    K = intrinsics_from_fov(0.7, 224, 224)
    pts = torch.zeros(1, 3, dtype=torch.float64)  # projects onto the centre: a roll does not move it
    assert reprojection_error_px(roll_pose(pose, 5.0), pose, K, pts) == 0
    moved = pose.clone()
    moved[0, 3] += 0.01  # camera x shift of 0.01 at depth 4: fx * 0.01 / 4 pixels
    assert reprojection_error_px(moved, pose, K, pts).item() == pytest.approx(K[0, 0].item() * 0.01 / 4)


def test_rigid_problem_names_what_breaks_a_pose() -> None:
    good = camera.look_at(torch.tensor([0.0, -3.0, 1.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                          torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    assert camera.rigid_problem(good) is None
    assert camera.rigid_problem(torch.stack([good, good])) is None
    reflected = good.clone()
    reflected[0, :3] = -reflected[0, :3]  # orthonormal, det -1
    scaled = good.clone()
    scaled[:3, :3] *= 1.1
    row = good.clone()
    row[3, 0] = 0.5
    nan = good.clone()
    nan[0, 3] = float("nan")
    for pose, words in ((reflected, "proper rotation"), (scaled, "proper rotation"), (row, "last row"),
                        (nan, "non-finite"), (good[:3], "4x4")):
        assert words in camera.rigid_problem(pose)
    assert "proper rotation" in camera.rigid_problem(torch.stack([good, reflected]))  # one bad view of a batch


def test_opengl_axes_become_opencv_axes() -> None:
    """GL camera axes (right, up, back) seen in the CV camera frame are (+x, -y, -z)."""
    for seed in range(20):
        c2w = _pose(seed)
        w2c = camera.opengl_c2w_to_opencv_w2c(c2w)
        np.testing.assert_allclose((w2c[:3, :3] @ c2w[:3, :3]).numpy(), np.diag([1.0, -1.0, -1.0]), atol=1e-12)
        # A point ahead and slightly "up" (GL +y) projects above the principal point (smaller v), right (+x) to larger u.
        K = torch.tensor([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]], dtype=torch.float64)
        pts = torch.stack([c2w[:3, 3] - c2w[:3, 2] + 0.1 * c2w[:3, 1], c2w[:3, 3] - c2w[:3, 2] + 0.1 * c2w[:3, 0]])
        uv, _ = camera.project_points(pts, w2c, K)
        assert uv[0, 1] < 50 - 5 and abs(uv[0, 0] - 50) < 1e-9
        assert uv[1, 0] > 50 + 5 and abs(uv[1, 1] - 50) < 1e-9


def test_perturbation_turns_the_camera_about_its_own_centre() -> None:
    base = _pose(7).expand(50, 4, 4).clone()
    turned = camera.perturb_pose(base, sigma_r=0.05, sigma_t=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(camera.camera_center(turned), camera.camera_center(base), atol=1e-12)
    moved = camera.perturb_pose(base, sigma_r=0.0, sigma_t=0.1, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(moved[:, :3, :3], base[:, :3, :3])  # dt is in the camera frame: t' = t + dt


def test_scale_intrinsics_scales_each_axis_by_its_own_factor() -> None:
    K = torch.tensor([[100.0, 0.0, 32.0], [0.0, 90.0, 24.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    out = camera.scale_intrinsics(K, 2.0, 0.5)
    assert torch.equal(out, torch.tensor([[200.0, 0.0, 64.0], [0.0, 45.0, 12.0], [0.0, 0.0, 1.0]], dtype=torch.float64))


def test_parse_intrinsics_refuses_a_non_positive_fy() -> None:
    for bad in ("1,0,1,1", "1,-2,1,1", "0,1,1,1"):
        with pytest.raises(ValueError, match="fx, fy > 0"):
            camera.parse_intrinsics(bad)
