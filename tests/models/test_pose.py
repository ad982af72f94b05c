"""Query pose composition and fusion, with stand-in encoder/head so that the expected
pose is known exactly."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.camera import (
    look_at,
    pose_errors,
    pose_to_quat_trans,
    relative_pose,
    roll_pose,
)
from models.gallery import TRAIN, Gallery
from models.pose import PoseEstimator, average_poses

D = torch.float64


def _pose(azimuth_deg: float, elevation_deg: float = 20.0, roll: float = 0.0) -> torch.Tensor:
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    eye = 4 * torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)], dtype=D)
    return look_at(eye, torch.zeros(3, dtype=D), torch.tensor([0.0, 0, 1], dtype=D), roll)


def test_average_of_symmetric_rotations_is_the_middle() -> None:
    poses = torch.stack([_pose(10), _pose(30)])[None]
    mid = average_poses(poses, torch.tensor([0.5, 0.5]))[0]
    err = pose_errors(mid, _pose(20))
    assert err["rot_deg"] < 0.05 and err["center_rel"] < 0.02  # centres average along the chord
    same = average_poses(torch.stack([_pose(5)] * 3)[None], torch.tensor([0.5, 0.3, 0.2]))[0]
    assert torch.allclose(same, _pose(5), atol=1e-9)


def _estimator(true_query: torch.Tensor, fusion: str) -> tuple[PoseEstimator, Gallery]:
    g_poses = torch.stack([_pose(a) for a in (0, 15, 30, 45)])
    desc = F.normalize(torch.eye(4)[:, :4] + 0.1, dim=1)
    gallery = Gallery(g_poses, torch.full((4,), TRAIN, dtype=torch.int8), desc, torch.arange(4.0).view(4, 1, 1, 1),
                      [f"g{i}" for i in range(4)])
    unit = 0.8

    def encode(x: torch.Tensor) -> torch.Tensor:  # the query "looks like" gallery view 1, then 2
        f = torch.zeros(len(x), 4, 2, 2)
        f[:, 1], f[:, 2] = 1.0, 0.5
        return f

    def head(fq: torch.Tensor, fg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # A perfect network: the true relative pose to whichever gallery view it is given.
        ids = fg[:, 0, 0, 0].long()
        q, t = pose_to_quat_trans(relative_pose(true_query.expand(len(ids), 4, 4), g_poses[ids]))
        return q[:, None].float().repeat(1, 2, 1), (t / unit)[:, None].float().repeat(1, 2, 1)

    return PoseEstimator(gallery, encode, head, unit, input_size=32, grid=1, k=3, fusion=fusion), gallery


def test_perfect_relative_poses_give_the_true_pose_for_every_fusion() -> None:
    true = roll_pose(_pose(20, 25), 7.0)
    for fusion in ("top1", "mean"):
        est, _ = _estimator(true, fusion)
        result = est.estimate(torch.rand(2, 32, 32, 3))
        err = pose_errors(result.poses, true.expand(2, 4, 4))
        assert err["rot_deg"].max() < 1e-3 and err["center_dist"].max() < 1e-5, fusion
        assert result.gallery_ids[0, 0] == 1 and result.candidates.shape == (2, 3, 4, 4)
        assert set(result.timings_ms) == {"match", "pose"}


def test_retrieval_mode_returns_the_best_gallery_pose() -> None:
    est, gallery = _estimator(_pose(20), "mean")
    result = est.estimate(torch.rand(1, 32, 32, 3), mode="retrieval")
    assert torch.equal(result.poses[0], gallery.poses[1])
