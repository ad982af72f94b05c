"""`rpe-pad lab pose-sweep`: held-out poses and the sweep over retrieval grids and k."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from models.camera import camera_center, look_at, pose_errors, project_points, rotation_angle
from models.data import load_category
from lab.workdir import pose_estimator
from models.splat.scene import GaussianScene
from rpe_pad.cli import main
from training.evaluate import image_size
from training.irprn import holdout_views
from lab.pose_sweep import MAX_ELEVATION_DEG, heldout_queries, render_views, validation_poses
from training.rvss import load_novel

D = torch.float64


def _ring(elevations_deg: list[float], radii: list[float]) -> torch.Tensor:
    eyes = []
    for i, (e, r) in enumerate(zip(elevations_deg, radii)):
        a, e = math.radians(40.0 * i), math.radians(e)
        eyes.append([r * math.cos(e) * math.cos(a), r * math.cos(e) * math.sin(a), r * math.sin(e)])
    eye = torch.tensor(eyes, dtype=D)
    return look_at(eye, torch.zeros_like(eye), torch.tensor([0.0, 0, 1], dtype=D))


def test_validation_poses_stay_within_the_training_cameras_band() -> None:
    train = _ring([10.0, 30.0, 50.0, 89.0], [3.5, 4.0, 4.2, 3.8])
    poses = validation_poses(train, 200, max_roll_deg=12.0, seed=3)
    c = camera_center(poses)
    dist = c.norm(dim=-1)
    elev = torch.rad2deg(torch.asin(c[:, 2] / dist))
    assert dist.min() >= 3.5 - 1e-9 and dist.max() <= 4.2 + 1e-9
    assert elev.min() >= 10.0 - 1e-6 and elev.max() <= MAX_ELEVATION_DEG + 1e-6  # capped below the pole
    assert elev.max() > 60 and elev.min() < 20  # the whole band is used
    # Every camera looks at the object: the origin sits on its optical axis.
    origin_cam = poses[:, :3, 3]
    assert torch.allclose(origin_cam[:, :2], torch.zeros(200, 2, dtype=D), atol=1e-9)
    # Rolled within the bound, both ways: the angle to the unrolled camera at the same place.
    unrolled = look_at(c, torch.zeros_like(c), torch.tensor([0.0, 0, 1], dtype=D))
    roll = torch.rad2deg(rotation_angle(poses[:, :3, :3], unrolled[:, :3, :3]))
    assert roll.max() <= 12.0 + 1e-6 and roll.max() > 9.0
    assert torch.equal(validation_poses(train, 200, 12.0, seed=3), poses)  # seeded
    assert not torch.allclose(validation_poses(train, 200, 12.0, seed=4), poses)
    no_roll = validation_poses(train, 20, 0.0, seed=1)
    c0 = camera_center(no_roll)
    again = look_at(c0, torch.zeros_like(c0), torch.tensor([0.0, 0, 1], dtype=D))
    assert torch.allclose(no_roll, again, atol=1e-9)
    with pytest.raises(ValueError, match="n >= 1"):
        validation_poses(train, 0)


def test_sweep_reports_every_grid_and_k(tiny_pose_bundle: Path, tiny_synth: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep.json"
    code = main(["lab", "pose-sweep", str(tiny_pose_bundle), str(tiny_synth), "--views", "4", "--grids", "4", "7",
                 "--k", "1", "3", "--max-roll", "10", "--json", str(out), "--quiet"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["n_views"] == 4 and report["gallery_grid"] == 7
    assert [(r["grid"], r["k"]) for r in report["rows"]] == [(4, 1), (4, 3), (7, 1), (7, 3)]
    assert [r["built"] for r in report["rows"]] == [False, False, True, True]
    for r in report["rows"]:
        assert math.isfinite(r["rot_deg_median"]) and 0 <= r["rot_deg_median"] <= 180 and r["center_rel_median"] >= 0
    # The best row: the least centre error, then the least rotation error.
    best = min(report["rows"], key=lambda r: (r["center_rel_median"], r["rot_deg_median"]))
    assert report["best"] == {"grid": best["grid"], "k": best["k"]}
    assert "| 7 | 3 |" in capsys.readouterr().out
    # The built gallery's row is what a fresh estimator with those settings gives on the same renders
    # (the grid-4 rows before it leave nothing behind).
    cat = load_category(tiny_synth, size=image_size(tiny_pose_bundle))
    poses = validation_poses(cat.train_poses(), 4, 10.0, seed=0)
    images = render_views(GaussianScene.load(tiny_pose_bundle / "splats" / "scene.safetensors"), poses, cat.K,
                          cat.width, cat.height)
    err = pose_errors(pose_estimator(tiny_pose_bundle, k=3).estimate(images).poses, poses)
    assert report["rows"][3]["rot_deg_median"] == pytest.approx(float(err["rot_deg"].median()), abs=2e-3)
    assert report["category"] == cat.name


def test_heldout_queries_roll_image_and_pose_together() -> None:
    poses = _ring([20.0, 40.0], [4.0, 4.0])
    images = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    same, same_poses = heldout_queries(images, poses, 1, 0.0, seed=0)
    assert torch.equal(same, images) and torch.equal(same_poses, poses)
    rolled, rolled_poses = heldout_queries(images, poses, 3, 10.0, seed=1)
    assert rolled.shape == (6, 16, 16, 3) and rolled_poses.shape == (6, 4, 4)
    # View-major copies, each turned about its optical axis only: same centre, a roll within the bound.
    src = torch.tensor([0, 0, 0, 1, 1, 1])
    assert torch.allclose(camera_center(rolled_poses), camera_center(poses[src]), atol=1e-9)
    angle = torch.rad2deg(rotation_angle(rolled_poses[:, :3, :3], poses[src, :3, :3]))
    assert angle.max() <= 10.0 + 1e-6 and angle.min() > 0
    assert torch.equal(heldout_queries(images, poses, 3, 10.0, seed=1)[0], rolled)  # seeded
    with pytest.raises(ValueError, match="roll for more than one copy"):
        heldout_queries(images, poses, 2, 0.0, seed=0)


def test_heldout_queries_turn_the_image_the_way_the_pose_turns() -> None:
    """A bright spot at a world point's projection lands at its projection under the rolled pose."""
    size, f = 33, 20.0
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=D)
    pose = torch.eye(4, dtype=D)[None]  # camera at the origin looking down +z
    point = torch.tensor([[[0.4, -0.2, 1.0]]], dtype=D)  # projects 8 px right, 4 px up of the centre
    (u, v), = project_points(point, pose, K)[0][0]
    image = torch.zeros(1, size, size, 3)
    image[0, int(v) - 1 : int(v) + 2, int(u) - 1 : int(u) + 2] = 1.0  # a 3 x 3 spot on the pixel (pixel centres +0.5)
    for seed in range(3):
        rolled, rolled_pose = heldout_queries(image, pose, 1, 60.0, seed=seed)
        (ru, rv), = project_points(point, rolled_pose, K)[0][0]
        weight = rolled[0, ..., 0]
        ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
        cu, cv = float((weight * xs).sum() / weight.sum()), float((weight * ys).sum() / weight.sum())
        assert abs(cu - float(ru)) < 0.5 and abs(cv - float(rv)) < 0.5, (seed, cu, cv, float(ru), float(rv))
        assert float(rotation_angle(rolled_pose[0, :3, :3], pose[0, :3, :3])) > math.radians(5)


def test_heldout_gallery_leaves_out_the_held_views_and_their_renders(tiny_pose_bundle: Path, tiny_synth: Path) -> None:
    from models.irprn import load_irprn
    from lab.pose_sweep import heldout_gallery

    cat = load_category(tiny_synth)
    novel = load_novel(tiny_pose_bundle / "rvss" / "novel.safetensors")
    net, _ = load_irprn(tiny_pose_bundle / "irprn")
    held = holdout_views(len(cat.train), 2)
    gallery = heldout_gallery(cat, novel, net, held)
    banned = {cat.train[i].name for i in held.tolist()}
    banned |= {f"novel/{j:04d}_of_{int(p)}" for j, p in enumerate(novel.parents) if int(p) in held.tolist()}
    assert banned and not banned & set(gallery.names)
    assert len(gallery) == len(cat.train) + len(novel.poses) - len(banned)
    kept = [i for i in range(len(cat.train)) if i not in held.tolist()]
    assert torch.equal(gallery.poses[: len(kept)], cat.train_poses()[kept].double())  # rows stay with their views


@pytest.mark.slow(seconds=16)
def test_sweep_on_held_out_photographs(tiny_pose_bundle: Path, tiny_synth: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import TINY_IRPRN
    from training.irprn import preset, run_irprn_stage

    # A bundle trained on every view has no held-out photographs: a clear refusal.
    assert main(["lab", "pose-sweep", str(tiny_pose_bundle), str(tiny_synth), "--held-out", "--quiet"]) != 0
    assert "--holdout" in capsys.readouterr().err
    assert main(["lab", "pose-sweep", str(tiny_pose_bundle), str(tiny_synth), "--copies", "2", "--quiet"]) != 0
    assert "--copies goes with --held-out" in capsys.readouterr().err
    work = tmp_path / "tiny"
    for part in ("splats", "rvss"):
        shutil.copytree(tiny_pose_bundle / part, work / part)
    cat = load_category(tiny_synth)
    run_irprn_stage(cat, preset("demo", **TINY_IRPRN, holdout=2), work, progress=False)
    out = tmp_path / "heldout.json"
    code = main(["lab", "pose-sweep", str(work), str(tiny_synth), "--held-out", "--max-roll", "10", "--copies", "2",
                 "--grids", "4", "7", "--k", "1", "3", "--json", str(out), "--quiet"])
    assert code == 0
    report = json.loads(out.read_text())
    held = holdout_views(len(cat.train), 2).tolist()
    assert report["queries"] == "held-out photographs" and report["n_views"] == 4
    assert report["held_out"] == [cat.train[i].name for i in held]
    n_novel = len(load_novel(work / "rvss" / "novel.safetensors").poses)
    assert report["gallery_views"] == len(cat.train) - 2 + n_novel - 2 * 3  # without them and their RVSS views
    assert [(r["grid"], r["k"]) for r in report["rows"]] == [(4, 1), (4, 3), (7, 1), (7, 3)]
    for r in report["rows"]:
        assert math.isfinite(r["rot_deg_median"]) and 0 <= r["rot_deg_median"] <= 180 and r["center_rel_median"] >= 0
    assert "held-out photographs" in capsys.readouterr().out
