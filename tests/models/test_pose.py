"""Query pose composition and fusion, with stand-in encoder/head so that the expected
pose is known exactly."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.bundle import FILES
from models.camera import (
    look_at,
    pose_errors,
    pose_to_quat_trans,
    relative_pose,
    roll_pose,
)
from models.gallery import TRAIN, Gallery
from models.irprn import load_irprn_config
from models.pose import PoseEstimator, average_poses, roll_images

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


def _estimator(true_query: torch.Tensor, k: int = 3) -> tuple[PoseEstimator, Gallery]:
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

    return PoseEstimator(gallery, encode, head, unit, input_size=32, grid=1, k=k), gallery


@pytest.mark.parametrize("k", [1, 3])
def test_perfect_relative_poses_give_the_true_pose(k: int) -> None:
    true = roll_pose(_pose(20, 25), 7.0)
    est, _ = _estimator(true, k)
    result = est.estimate(torch.rand(2, 32, 32, 3))
    err = pose_errors(result.poses, true.expand(2, 4, 4))
    assert err["rot_deg"].max() < 1e-3 and err["center_dist"].max() < 1e-5
    assert result.gallery_ids[0, 0] == 1 and result.candidates.shape == (2, k, 4, 4)
    assert set(result.timings_ms) == {"match", "pose"}


def test_match_then_relative_is_estimate() -> None:
    """The two steps the Inspector times separately give what ``estimate`` gives."""
    est, _ = _estimator(_pose(20, 25))
    images = torch.rand(2, 32, 32, 3)
    m = est.match(images)
    assert m.gallery_ids.tolist() == [[1, 2, 0]] * 2 and (m.similarities[:, :-1] >= m.similarities[:, 1:]).all()
    fused, cands = est.relative(m)
    assert torch.equal(fused, est.estimate(images).poses) and cands.shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match="k"):
        _estimator(_pose(0), k=0)


def _blob_image(angle_deg: float, size: int = 65) -> torch.Tensor:
    """A dark image with one bright Gaussian blob 20 px from the centre at ``angle_deg``
    (counter-clockwise on screen, image y down)."""
    a = math.radians(angle_deg)
    c = (size - 1) / 2
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    bx, by = c + 20 * math.cos(a), c - 20 * math.sin(a)
    blob = torch.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * 2.0**2))
    return blob[..., None].expand(size, size, 3)[None]


def test_roll_images_turns_counter_clockwise() -> None:
    """The image side of ``camera.roll_pose``: a blob at 0 degrees rolled by 30 lands at 30."""
    rolled = roll_images(_blob_image(0.0), 30.0)
    assert float((rolled - _blob_image(30.0)).abs().max()) < 0.1
    assert float((rolled - _blob_image(-30.0)).abs().max()) > 0.5


def test_onnx_graphs_that_disagree_with_the_bundle_are_refused(tiny_pose_bundle: Path) -> None:
    """The ONNX graphs are checked against the IRPRN config and the gallery when they are
    loaded: a graph for another input size, swapped graphs, or an encoder that did not build
    the gallery ran (or failed) only at the first inspection before."""
    gallery = Gallery.load(tiny_pose_bundle / FILES["gallery"])
    enc, head = tiny_pose_bundle / FILES["encoder"], tiny_pose_bundle / FILES["pair_head"]
    cfg, unit = load_irprn_config(tiny_pose_bundle / FILES["irprn_config"])
    assert PoseEstimator.from_onnx(enc, head, gallery, unit, cfg.input_size, device="cpu").providers == [
        "CPUExecutionProvider"]
    with pytest.raises(ValueError, match=r"encoder\.onnx: input images has shape \['batch', 3, 112, 112\]"):
        PoseEstimator.from_onnx(enc, head, gallery, unit, 2 * cfg.input_size)
    with pytest.raises(ValueError, match=r"pair_head\.onnx takes \['gallery', 'query'\] and gives \['q', 't'\]"):
        PoseEstimator.from_onnx(head, enc, gallery, unit, cfg.input_size)
    half = replace(gallery, features=gallery.features[:, : gallery.features.shape[1] // 2])
    with pytest.raises(ValueError, match=r"pair_head\.onnx: input (query|gallery) has shape"):
        PoseEstimator.from_onnx(enc, head, half, unit, cfg.input_size)
    other = replace(gallery, features=torch.randn_like(gallery.features))
    with pytest.raises(ValueError, match="does not reproduce the gallery's features"):
        PoseEstimator.from_onnx(enc, head, other, unit, cfg.input_size)
