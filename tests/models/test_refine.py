"""Refinement: PnP on rendered depth recovers a perturbed pose or refuses it; the ECC warp
is small, rigid and guarded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.camera import perturb_pose, pose_errors, reprojection_error_px
from models.data import load_category
from models.refine import (
    IterativeConfig,
    RefineConfig,
    ecc_align,
    iterative_refine,
    photometric_refine,
    pnp_refine,
)
from models.splat.scene import GaussianScene, render

SIZE = 128


@pytest.fixture(scope="module")
def posed_renders(tiny_bundle: Path, tiny_synth: Path):
    """Renders of the tiny scene at six training poses (queries whose true pose is exact)."""
    scene = GaussianScene.load(tiny_bundle / "splats" / "scene.safetensors")
    cat = load_category(tiny_synth)
    poses = torch.stack([v.w2c for v in cat.train[:6]]).double()
    K = cat.K.double().clone()
    K[:2] *= SIZE / cat.width
    Ks = K.expand(6, 3, 3).clone()
    images = render(scene, poses.float(), Ks.float(), SIZE, SIZE).colors.clamp(0, 1)
    return scene, images, poses, Ks


def test_pnp_recovers_or_refuses(posed_renders) -> None:
    scene, images, poses, Ks = posed_renders
    start = perturb_pose(poses, 0.02, 0.0, torch.Generator().manual_seed(0))
    points = scene.means[torch.sigmoid(scene.opacities) > 0.5].double()
    before = reprojection_error_px(start, poses, Ks, points)  # what the scorer sees, in pixels
    cfg = RefineConfig(render_size=SIZE)
    result = pnp_refine(scene, images, start, Ks, cfg)
    after = reprojection_error_px(result.poses, poses, Ks, points)
    assert any(result.accepted)
    for i, ok in enumerate(result.accepted):
        if ok:
            assert after[i] < 0.5 * before[i] and result.inliers[i] >= cfg.min_inliers and result.reasons[i] == "ok"
        else:  # never a worse pose silently: refused means unchanged, with a reason
            assert torch.equal(result.poses[i], start[i]) and result.reasons[i] != "ok"
    # Its renders are at the returned poses (the Inspector reuses them as references).
    fresh = render(scene, result.poses.float(), Ks.float(), SIZE, SIZE).colors.clamp(0, 1).numpy()
    np.testing.assert_allclose(result.renders, fresh, atol=1e-5)


def test_pnp_refuses_a_far_start(posed_renders) -> None:
    scene, images, poses, Ks = posed_renders
    start = perturb_pose(poses, 0.6, 0.0, torch.Generator().manual_seed(1))  # tens of degrees off
    result = pnp_refine(scene, images, start, Ks, RefineConfig(render_size=SIZE, max_rotation_deg=5.0))
    assert not all(result.accepted)
    for i, ok in enumerate(result.accepted):
        if not ok:
            assert torch.equal(result.poses[i], start[i]) and result.reasons[i] not in ("ok", "not run")
        else:
            assert pose_errors(result.poses[i], start[i])["rot_deg"] <= 5.0


def test_every_returned_correction_is_verified(posed_renders, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PnP that returns a plausible but wrong pose (within the bounds) is caught by the
    photometric check of the final render: the input pose is kept."""
    from models import refine
    from models.camera import roll_pose

    scene, images, poses, Ks = posed_renders
    monkeypatch.setattr(refine, "_solve", lambda world, pts, K, pose0, cfg: (roll_pose(torch.from_numpy(pose0), 8.0), 99))
    result = refine.pnp_refine(scene, images, poses, Ks, RefineConfig(render_size=SIZE))
    assert not any(result.accepted)
    assert all(r.startswith(("photometric check failed", "too few")) for r in result.reasons)
    assert any(r.startswith("photometric check failed") for r in result.reasons)
    assert torch.equal(result.poses, poses)
    # Refused after a wrong correction: the render handed back is the one at the input pose.
    fresh = render(scene, poses.float(), Ks.float(), SIZE, SIZE).colors.clamp(0, 1).numpy()
    np.testing.assert_allclose(result.renders, fresh, atol=1e-5)


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


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="refinement must be one of"):
        RefineConfig(method="magic")
    with pytest.raises(ValueError, match="detector"):
        RefineConfig(detector="surf")
    assert RefineConfig(method="pnp").uses_pnp and not RefineConfig(method="pnp").uses_ecc


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
        assert 0.3 < flow < 4.0  # the motion the polish warps
        warped, (sx, sy) = warp_to_pose(colors[i], warp_depth[i], K, poses[i].numpy(), near[i].numpy())
        before, after = np.abs(colors[i] - dst[i]).mean(), np.abs(warped - dst[i]).mean()
        assert after < 0.35 * before, (i, flow, before, after)
        assert warped.min() >= 0 and warped.max() <= 1 and sx.shape == sy.shape == (SIZE, SIZE)
    # The identity motion leaves the render as it is.
    same, _ = warp_to_pose(colors[0], warp_depth[0], K, poses[0].numpy(), poses[0].numpy())
    np.testing.assert_allclose(same, colors[0], atol=1e-5)


def test_gallery_pnp_recovers_or_refuses(posed_renders) -> None:
    from models.gallery import Gallery
    from models.refine import gallery_pnp_refine

    scene, images, poses, Ks = posed_renders
    gallery = _tiny_gallery(scene, images, poses, Ks)
    n = len(poses)
    # Queries: the scene seen from poses near the gallery's; the start is the gallery pose.
    true = perturb_pose(poses, 0.03, 0.0, torch.Generator().manual_seed(2))
    queries = render(scene, true.float(), Ks.float(), SIZE, SIZE).colors.clamp(0, 1)
    points = scene.means[torch.sigmoid(scene.opacities) > 0.5].double()
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

    def wrong_then_nothing(world, pts, K, pose0, cfg):
        calls.append(1)
        return (roll_pose(torch.from_numpy(pose0), 6.0), 99) if len(calls) <= n else (None, 0)

    def wrong_then_worse(world, pts, K, pose0, cfg):  # a polish that moves far cannot confirm the gallery pose
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


def test_render_and_compare_reduces_the_error(posed_renders) -> None:
    """Photometric refinement through the differentiable renderer moves a pose a few
    pixels off towards the truth, only for the queries asked, and verifies the result."""
    scene, images, poses, Ks = posed_renders
    start = perturb_pose(poses[:3], 0.02, 0.0, torch.Generator().manual_seed(2))
    points = scene.means[torch.sigmoid(scene.opacities) > 0.5].double()
    before = reprojection_error_px(start, poses[:3], Ks[:3], points)
    cfg = RefineConfig(photo_size=64, photo_steps=25, photo_lr=0.004)
    result = photometric_refine(scene, images[:3], start, Ks[:3], cfg, todo=[0, 2])
    after = reprojection_error_px(result.poses, poses[:3], Ks[:3], points)
    assert torch.equal(result.poses[1], start[1]) and result.reasons[1] == "not run"
    for i in (0, 2):
        if result.accepted[i]:
            assert after[i] < before[i]
        else:
            assert torch.equal(result.poses[i], start[i]) and result.reasons[i] != "ok"
    assert result.accepted[0] or result.accepted[2]
    assert float(after[[0, 2]].mean()) < 0.7 * float(before[[0, 2]].mean())


def test_iterative_refine_follows_the_peers_schedule_and_converges(posed_renders) -> None:
    """The peers' render-and-compare (L1 + SSIM, Adam, step decay) pulls a pose a degree
    off towards the truth; with zero steps it returns the start unchanged."""
    scene, images, poses, Ks = posed_renders
    start = perturb_pose(poses[:2], 0.02, 0.0, torch.Generator().manual_seed(4))
    points = scene.means[torch.sigmoid(scene.opacities) > 0.5].double()
    small = IterativeConfig(steps=40, lr=0.004, size=64)
    out = iterative_refine(scene, images[:2], start, Ks[:2], small)
    before = reprojection_error_px(start, poses[:2], Ks[:2], points)
    after = reprojection_error_px(out, poses[:2], Ks[:2], points)
    assert out.shape == (2, 4, 4) and out.dtype == torch.float64
    assert float(after.mean()) < 0.6 * float(before.mean())
    frozen = iterative_refine(scene, images[:2], start, Ks[:2], IterativeConfig(steps=1, lr=0.0))
    torch.testing.assert_close(frozen, start, atol=1e-6, rtol=0)
    assert IterativeConfig() == IterativeConfig(steps=175, lr=0.01, decay=0.8, decay_every=100)
