"""The peers' per-query pose optimisation (the ``iterative`` baseline)."""

from __future__ import annotations

import torch

from lab.iterative import IterativeConfig, iterative_refine
from models.camera import perturb_pose, reprojection_error_px


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
