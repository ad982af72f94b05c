"""Refinement: gallery PnP recovers a perturbed pose or refuses it, the depth warp matches a
fresh render, and the ECC warp is small, rigid and guarded."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import torch

from models.camera import look_at, perturb_pose, project_points, reprojection_error_px, roll_pose
from models.refine import RefineConfig, _solve, _within_bounds, ecc_align
from models.splat.scene import render

from tests.conftest import POSED_SIZE as SIZE


def _texture(seed: int = 0, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.random((size // 8, size // 8, 3)).astype(np.float32)
    import cv2

    return cv2.GaussianBlur(cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC), (0, 0), 1.5).clip(0, 1)


def test_ecc_undoes_a_small_shift_and_keeps_a_defect() -> None:
    import cv2

    ref = _texture()
    query = cv2.warpAffine(ref, np.float32([[1, 0, 2.5], [0, 1, -1.5]]), (96, 96), borderMode=cv2.BORDER_REPLICATE)
    query[40:50, 40:50] = [1.0, 0.0, 0.0]  # a defect the warp must not explain away
    warped, info = ecc_align(query, ref, RefineConfig(ecc_size=96))
    assert info["accepted"] and 2.0 < info["shift_px"] < 3.5
    inside = np.abs(query - warped)[42:48, 42:48].mean()
    border = np.s_[10:86, 10:86]
    outside = np.abs(query - warped)[border]
    outside_before = np.abs(query - ref)[border]
    assert outside.mean() < 0.5 * outside_before.mean()  # aligned everywhere else
    assert inside > 0.3  # the defect is still there


def test_ecc_refuses_a_large_warp() -> None:
    import cv2

    ref = _texture(1)
    query = cv2.warpAffine(ref, np.float32([[1, 0, 9.0], [0, 1, 0]]), (96, 96), borderMode=cv2.BORDER_REPLICATE)
    warped, info = ecc_align(query, ref, RefineConfig(ecc_size=96, ecc_max_shift_px=4.0))
    assert not info["accepted"] and warped is ref


def _tiny_gallery(scene, images, poses, Ks):
    from models.gallery import TRAIN, Gallery
    from models.images import to_uint8

    out = render(scene, poses.float(), Ks.float(), SIZE, SIZE, with_depth=True)
    depth = torch.where(out.alphas[..., 0] > 0.95, out.depths[..., 0], torch.zeros(()))
    n = len(poses)
    return Gallery(poses, torch.full((n,), TRAIN, dtype=torch.int8), torch.eye(n), torch.zeros(n, 1, 1, 1),
                   [str(i) for i in range(n)], torch.from_numpy(to_uint8(images.numpy())), depth.half(), Ks[0])


def test_warp_to_pose_matches_a_fresh_render(posed_renders) -> None:
    """Re-projecting a render with its depth to a pose a few pixels away (rotation and
    camera translation: parallax) gives nearly the render at that pose."""
    from models.refine import _depths, mean_flow_px, warp_to_pose

    scene, _, poses, Ks = posed_renders
    near = perturb_pose(poses, 0.005, 0.03, torch.Generator().manual_seed(4))
    src = render(scene, poses.float(), Ks.float(), SIZE, SIZE, with_depth=True)
    dst = render(scene, near.float(), Ks.float(), SIZE, SIZE).colors.clamp(0, 1).numpy()
    lift, warp_depth = _depths(src)
    colors, K = src.colors.clamp(0, 1).numpy(), Ks[0].numpy()
    for i in range(len(poses)):
        flow = mean_flow_px(lift[i], K, poses[i].numpy(), near[i].numpy())
        assert 0.3 < flow < 4.0  # past the polish's bound (0.5 px): the warp holds further still
        warped, (sx, sy) = warp_to_pose(colors[i], warp_depth[i], K, poses[i].numpy(), near[i].numpy())
        before, after = np.abs(colors[i] - dst[i]).mean(), np.abs(warped - dst[i]).mean()
        assert after < 0.35 * before, (i, flow, before, after)
        assert warped.min() >= 0 and warped.max() <= 1 and sx.shape == sy.shape == (SIZE, SIZE)
    # The identity motion leaves the render as it is.
    same, _ = warp_to_pose(colors[0], warp_depth[0], K, poses[0].numpy(), poses[0].numpy())
    np.testing.assert_allclose(same, colors[0], atol=1e-5)


def test_flow_matches_follow_the_true_motion(posed_renders) -> None:
    """Dense correspondences between a render and the scene a pixel or two away land where
    the depth says each pixel moves, to a fraction of a pixel, and far outnumber SIFT's."""
    from models.refine import _depths, _detector, _features, _flow, _gray, _match, flow_matches

    scene, _, poses, Ks = posed_renders
    near = perturb_pose(poses, 0.01, 0.02, torch.Generator().manual_seed(5))
    src = render(scene, poses.float(), Ks.float(), SIZE, SIZE, with_depth=True)
    dst = render(scene, near.float(), Ks.float(), SIZE, SIZE).colors.clamp(0, 1).numpy()
    lift, _ = _depths(src)
    colors, K, cfg = src.colors.clamp(0, 1).numpy(), Ks[0].numpy(), RefineConfig()
    for i in range(len(poses)):
        pq, pr = flow_matches(colors[i], dst[i], cfg)
        cols, rows = (pr - 0.5).astype(int).T
        on = lift[i][rows, cols] > 0
        truth = pr[on] + _flow(lift[i], K, poses[i].numpy(), near[i].numpy())[rows[on], cols[on]]
        moved = np.linalg.norm(truth - pr[on], axis=1)
        error = np.linalg.norm(pq[on] - truth, axis=1)
        assert np.median(moved) > 0.5 and np.median(error) < 0.25 * np.median(moved), (i, np.median(moved), np.median(error))
        det = _detector()
        sift, _ = _match(_features(det, _gray(dst[i])), _features(det, _gray(colors[i])), 4, 0.85)
        assert on.sum() > 3 * len(sift)


def _queries_near_the_gallery(posed_renders):
    """A one-view-per-pose gallery of the tiny scene, and queries: the scene seen from poses
    near the gallery's (4-10 px away); each query's start is its gallery pose."""
    scene, images, poses, Ks = posed_renders
    true = perturb_pose(poses, 0.03, 0.0, torch.Generator().manual_seed(2))
    queries = render(scene, true.float(), Ks.float(), SIZE, SIZE).colors.clamp(0, 1)
    points = scene.means[torch.sigmoid(scene.opacities) > 0.5].double()
    return _tiny_gallery(scene, images, poses, Ks), queries, true, points


def test_flow_matches_at_a_full_size_bundle() -> None:
    """At 400 px (the ``paper`` preset's full-resolution bundles) the dense points outnumber
    what OpenCV takes in one map column: a textured image shifted by (1.5, -0.75) px is
    matched everywhere, to that shift; two sizes are refused."""
    import cv2

    from models.refine import _sample, flow_matches

    rng = np.random.default_rng(3)
    ref = cv2.GaussianBlur(cv2.resize(rng.random((50, 50, 3)).astype(np.float32), (400, 400),
                                      interpolation=cv2.INTER_CUBIC), (0, 0), 2.0).clip(0, 1)
    query = cv2.warpAffine(ref, np.float32([[1, 0, 1.5], [0, 1, -0.75]]), (400, 400), borderMode=cv2.BORDER_REPLICATE)
    pq, pr = flow_matches(ref, query, RefineConfig())
    assert len(pr) > 32767
    np.testing.assert_allclose(np.median(pq - pr, axis=0), [1.5, -0.75], atol=0.05)
    ramp = np.tile(np.arange(400, dtype=np.float32), (400, 1))  # x, 0-based
    np.testing.assert_allclose(_sample(ramp, pr), pr[:, 0] - 0.5, atol=1e-3)
    with pytest.raises(ValueError, match="one size"):
        flow_matches(ref, query[:200], RefineConfig())


def test_gallery_pnp_recovers_or_refuses(posed_renders) -> None:
    from models.gallery import Gallery
    from models.refine import gallery_pnp_refine

    scene, _, poses, Ks = posed_renders
    gallery, queries, true, points = _queries_near_the_gallery(posed_renders)
    n = len(poses)
    cache: dict = {}
    result = gallery_pnp_refine(scene, gallery, queries, poses, Ks, torch.arange(n)[:, None], RefineConfig(gallery_views=1),
                                cache=cache)
    before = reprojection_error_px(poses, true, Ks, points)
    after = reprojection_error_px(result.poses, true, Ks, points)
    assert any(result.accepted) and len(cache) == n  # each gallery view's keypoints computed once
    assert result.render_ms > 0 and len(result.paths) == n
    fresh = render(scene, result.poses.float(), Ks.float(), SIZE, SIZE).colors.clamp(0, 1).numpy()
    for i, ok in enumerate(result.accepted):
        if ok:
            assert after[i] < 0.5 * before[i] and result.reasons[i] == "ok" and result.paths[i] != "none"
        else:
            assert torch.equal(result.poses[i], poses[i]) and result.reasons[i] != "ok"
        # The reference handed back is the scene at the returned pose (rendered, or warped to it).
        assert np.abs(result.renders[i] - fresh[i]).mean() < 0.25 * np.abs(fresh[i] - queries[i].numpy()).mean() + 2e-3
    with pytest.raises(ValueError, match="no stored views"):
        gallery_pnp_refine(scene, Gallery(poses, gallery.source, gallery.descriptors, gallery.features, gallery.names),
                           queries, poses, Ks, torch.arange(n)[:, None], RefineConfig())


def test_gallery_pnp_never_returns_a_worse_pose(posed_renders, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gallery PnP that returns a plausible but wrong pose, and a polish that finds
    nothing or moves it further: the render at the input pose is compared and the input
    pose kept."""
    from models import refine
    from models.camera import roll_pose

    scene, images, poses, Ks = posed_renders
    gallery = _tiny_gallery(scene, images, poses, Ks)
    n = len(poses)
    calls = []

    def wrong_then_nothing(world, pts, K, pose0, cfg, ransac_px):
        calls.append(1)
        return (roll_pose(torch.from_numpy(pose0), 6.0), 99) if len(calls) <= n else (None, 0)

    def wrong_then_worse(world, pts, K, pose0, cfg, ransac_px):  # a polish that moves far cannot confirm the gallery pose
        calls.append(1)
        return roll_pose(torch.from_numpy(pose0), 6.0 if len(calls) <= n else 20.0), 99

    fresh = render(scene, poses.float(), Ks.float(), SIZE, SIZE).colors.clamp(0, 1).numpy()
    for solver in (wrong_then_nothing, wrong_then_worse):
        calls.clear()
        monkeypatch.setattr(refine, "_solve", solver)
        result = refine.gallery_pnp_refine(scene, gallery, images, poses, Ks, torch.arange(n)[:, None], RefineConfig())
        assert not any(result.accepted) and torch.equal(result.poses, poses), solver.__name__
        assert all(r.startswith("unconfirmed gallery correction") for r in result.reasons)
        np.testing.assert_allclose(result.renders, fresh, atol=1e-5)


def test_flow_round_polishes_where_sift_stops(posed_renders) -> None:
    """Starts 4-10 px off, a single gallery view each: SIFT alone leaves some queries where
    they started (too few matches); the flow round brings every query within a fraction of
    a pixel, and says so in its path."""
    from models.refine import gallery_pnp_refine

    scene, _, poses, Ks = posed_renders
    gallery, queries, true, points = _queries_near_the_gallery(posed_renders)
    n = len(poses)
    ids = torch.arange(n)[:, None]
    sift = gallery_pnp_refine(scene, gallery, queries, poses, Ks, ids, RefineConfig(gallery_views=1, flow_rounds=0))
    both = gallery_pnp_refine(scene, gallery, queries, poses, Ks, ids, RefineConfig(gallery_views=1))
    sift_err = reprojection_error_px(sift.poses, true, Ks, points)
    both_err = reprojection_error_px(both.poses, true, Ks, points)
    assert (sift_err > 1.0).any() and sift.flow_inliers == [0] * n
    assert (both_err < 0.3).all(), both_err
    assert all("flow-" in p for p in both.paths) and min(both.flow_inliers) > 100 and all(both.accepted)


@pytest.mark.parametrize("changes, problem", [
    ({"ecc_size": 0}, "refine.ecc_size must be an integer >= 16"),
    ({"ratio": float("nan")}, "refine.ratio must be a finite number > 0"),
    ({"ratio": 1.5}, "refine.ratio must be at most 1"),
    ({"ecc_max_rotation_deg": 270.0}, "refine.ecc_max_rotation_deg must be at most 180 degrees"),
    ({"gallery_views": 0}, "refine.gallery_views must be an integer >= 1"),
    ({"min_inliers": -5}, "refine.min_inliers must be an integer >= 4"),
    ({"rounds": 2.5}, "refine.rounds must be an integer >= 0"),
    ({"ecc_max_shift_px": float("inf")}, "refine.ecc_max_shift_px must be a finite number > 0"),
    ({"warp_max_px": -1.0}, "refine.warp_max_px must be a finite number >= 0"),
    ({"max_rotation_deg": 720.0}, "refine.max_rotation_deg must be at most 180 degrees"),
])
def test_refine_settings_out_of_range_are_refused(changes: dict, problem: str) -> None:
    """A bundle's manifest carries these settings: a count of 0 or a NaN bound made every
    refinement fail, or raise, at inspection."""
    assert RefineConfig(rounds=0, flow_rounds=0, warp_max_px=0.0).rounds == 0  # no polish at all is a setting
    with pytest.raises(ValueError, match=re.escape(problem)):
        RefineConfig(**changes)


def _guard_pose() -> torch.Tensor:
    return look_at(torch.tensor([0.0, -4.0, 1.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                   torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))


def test_corrections_past_either_bound_are_refused() -> None:
    p0, cfg = _guard_pose(), RefineConfig()  # 30 degrees, centre 0.5
    assert _within_bounds(roll_pose(p0, 29.0), p0, cfg)[0]
    ok, why = _within_bounds(roll_pose(p0, 31.0), p0, cfg)
    assert not ok and "31.0 deg" in why
    moved = p0.clone()
    dist = float(p0[:3, 3].norm())  # the camera's distance from the origin (|C| = |t|)
    moved[0, 3] += 0.45 * dist  # centre moves 0.45 of its distance: taken
    assert _within_bounds(moved, p0, cfg)[0]
    moved[0, 3] += 0.1 * dist  # 0.55: refused
    ok, why = _within_bounds(moved, p0, cfg)
    assert not ok and "centre 0.55" in why


def test_a_pnp_with_fewer_inliers_than_the_minimum_is_refused() -> None:
    rng = np.random.default_rng(0)
    pose = _guard_pose()
    K = torch.tensor([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]], dtype=torch.float64)
    world = rng.normal(size=(10, 3)) * 0.5
    uv, _ = project_points(torch.from_numpy(world), pose, K)
    pts = uv.numpy().copy()
    pts[7:] = rng.uniform(0, 100, size=(3, 2))  # 7 true correspondences, 3 wrong ones
    new, n_in = _solve(world, pts, K.numpy(), pose.numpy(), RefineConfig(min_inliers=8), 2.0)
    assert new is None and n_in == 7  # RANSAC found the 7; under min_inliers
    assert _solve(world, pts, K.numpy(), pose.numpy(), RefineConfig(min_inliers=7), 2.0)[0] is not None


def test_ecc_bounds_rotations_of_either_sign() -> None:
    ref = _texture(2)
    for angle in (6.0, -6.0):
        m = cv2.getRotationMatrix2D((48, 48), angle, 1.0)
        query = cv2.warpAffine(ref, m, (96, 96), borderMode=cv2.BORDER_REPLICATE)
        warped, info = ecc_align(query, ref, RefineConfig(ecc_size=96, ecc_max_rotation_deg=3.0))
        assert not info["accepted"] and info["reason"] == "warp too large" and warped is ref, (angle, info)
        assert abs(abs(info["rotation_deg"]) - 6.0) < 1.0


def test_ecc_without_gain_keeps_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """ECC converging to a small warp that lowers the correlation: the reference is kept."""
    ref = _texture(3)
    monkeypatch.setattr(cv2, "findTransformECC", lambda *a: (0.1, np.float32([[1, 0, 0.5], [0, 1, 0]])))
    warped, info = ecc_align(ref, ref, RefineConfig(ecc_size=96))
    assert not info["accepted"] and info["reason"] == "no gain in correlation" and warped is ref, info
