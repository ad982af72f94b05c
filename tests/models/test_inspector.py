"""The one inspection pipeline, on the tiny verified bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.camera import quat_to_rotmat
from models.data import load_category
from models.images import load_rgb
from models.inspector import InspectionError, Inspector, InspectorConfig
from rpe_pad.cli import main


@pytest.fixture(scope="module")
def inspector(tiny_release: Path) -> Inspector:
    return Inspector.load(tiny_release)


@pytest.fixture(scope="module")
def queries(tiny_synth: Path):
    cat = load_category(tiny_synth)
    good = next(q for q in cat.test if q.label == "good")
    bad = next(q for q in cat.test if q.label != "good")
    return good, bad


def test_result_fields(inspector: Inspector, queries) -> None:
    good, bad = queries
    results = inspector.inspect(torch.stack([good.image, bad.image]))
    assert len(results) == 2
    calib = inspector.calibration
    for r in results:
        assert r.anomaly_map.shape == (64, 64) and r.reference.shape == (64, 64, 3)
        # The score is the maximum of the map at the scorer's 224 px; the map is returned at
        # the image's size (bilinear: never above that maximum).
        assert 0.5 * r.score < float(r.anomaly_map.max()) <= r.score * (1 + 1e-6)
        assert r.is_anomalous == (r.score > calib.threshold) and r.threshold == calib.threshold
        assert r.normalised_score == pytest.approx(float(calib.normalise(r.score)))
        assert (r.normalised_score > 0.5) == r.is_anomalous
        # The pose is a rigid world-to-camera transform; the quaternion + translation say the same.
        assert np.allclose(r.pose[:3, :3] @ r.pose[:3, :3].T, np.eye(3), atol=1e-6) and r.pose[3, 3] == 1
        assert np.allclose(quat_to_rotmat(torch.tensor(r.quaternion, dtype=torch.float64)).numpy(), r.pose[:3, :3], atol=1e-6)
        assert r.translation == pytest.approx(list(r.pose[:3, 3]))
        assert len(r.gallery_ids) == 3 and r.gallery_names[0] == inspector.estimator.gallery.names[r.gallery_ids[0]]
        assert r.similarities == sorted(r.similarities, reverse=True)
        assert set(r.timings_ms) == {"match", "pose", "refine", "render", "score", "total"}
        assert r.timings_ms["total"] >= r.timings_ms["render"] + r.timings_ms["score"]
        assert {"pnp_accepted", "ecc_accepted"} <= set(r.refine)
        summary = json.loads(json.dumps(r.summary()))
        assert summary["pose"]["world_to_camera"][3] == [0, 0, 0, 1]


def test_threshold_override_moves_the_decision(inspector: Inspector, queries) -> None:
    good, _ = queries
    base = inspector.inspect(good.image[None])[0]
    low = inspector.inspect(good.image[None], threshold=inspector.calibration.score_floor * 1.001)[0]
    high = inspector.inspect(good.image[None], threshold=base.score * 10)[0]
    assert low.is_anomalous is (base.score > low.threshold) and high.is_anomalous is False
    assert low.score == pytest.approx(base.score) and high.normalised_score < 0.5
    with pytest.raises(InspectionError, match="above"):
        inspector.inspect(good.image[None], threshold=-1.0)


def test_oracle_mode_uses_the_given_pose(tiny_release: Path, queries) -> None:
    good, _ = queries
    oracle = Inspector.load(tiny_release, InspectorConfig(pose="oracle"))
    r = oracle.inspect(good.image[None], true_poses=good.w2c[None])[0]
    assert np.allclose(r.pose, good.w2c.numpy()) and r.gallery_ids == [] and "match" not in r.timings_ms
    with pytest.raises(InspectionError, match="needs the true poses"):
        oracle.inspect(good.image[None])


def test_pose_modes_differ_as_documented(tiny_release: Path, queries) -> None:
    good, _ = queries
    retrieval = Inspector.load(tiny_release, InspectorConfig(pose="retrieval")).inspect(good.image[None])[0]
    rpe = Inspector.load(tiny_release, InspectorConfig(pose="rpe")).inspect(good.image[None])[0]
    gallery = Inspector.load(tiny_release).estimator.gallery
    assert np.allclose(retrieval.pose, gallery.poses[retrieval.gallery_ids[0]].numpy())  # the best view's pose
    assert retrieval.gallery_ids == rpe.gallery_ids and not np.allclose(rpe.pose, retrieval.pose)
    assert "refine" not in rpe.timings_ms and rpe.refine == {}
    with pytest.raises(ValueError, match="not available"):
        InspectorConfig(pose="levitation")


def test_iterative_mode_optimises_from_the_retrieval_pose(tiny_release: Path, queries) -> None:
    """The peers' baseline starts at the best gallery view's pose and moves it; zero
    learning rate leaves it there."""
    from models.refine import IterativeConfig

    good, _ = queries
    retrieval = Inspector.load(tiny_release, InspectorConfig(pose="retrieval")).inspect(good.image[None])[0]
    moved = Inspector.load(tiny_release, InspectorConfig(pose="iterative", iterative=IterativeConfig(steps=3)))
    r = moved.inspect(good.image[None])[0]
    assert r.gallery_ids == retrieval.gallery_ids and not np.allclose(r.pose, retrieval.pose)
    assert {"match", "optimise", "render", "score", "total"} <= set(r.timings_ms) and "pose" not in r.timings_ms
    still = Inspector.load(tiny_release, InspectorConfig(pose="iterative", iterative=IterativeConfig(steps=2, lr=0.0)))
    assert np.allclose(still.inspect(good.image[None])[0].pose, retrieval.pose, atol=1e-6)


def test_bundle_and_work_folder_give_the_same_result(tiny_release: Path, tiny_pose_bundle: Path, queries) -> None:
    """The bundle reproduces the training folder it was assembled from (ONNX on both). In
    the IRPRN pose mode: the refiners' RANSAC can pick another inlier set from a pose that
    differs in the last bits, on this tiny model's few matches."""
    good, bad = queries
    config = InspectorConfig(pose="rpe")
    work = Inspector.from_work_dir(tiny_pose_bundle, config)
    images = torch.stack([good.image, bad.image])
    for a, b in zip(Inspector.load(tiny_release, config).inspect(images), work.inspect(images)):
        assert a.gallery_ids == b.gallery_ids and np.allclose(a.pose, b.pose, atol=1e-9)
        assert a.score == pytest.approx(b.score, rel=1e-6)


def test_prepare_resizes_and_refuses(inspector: Inspector, tiny_synth: Path) -> None:
    image = load_rgb(next((tiny_synth / "test" / "good").glob("*.png")))
    big = np.kron(image, np.ones((2, 2, 1), np.float32))  # 128 x 128
    out = inspector.prepare(big)
    assert out.shape == (64, 64, 3) and float((out - torch.from_numpy(image)).abs().mean()) < 0.01
    with pytest.raises(InspectionError, match="aspect"):
        inspector.prepare(np.zeros((64, 100, 3), np.float32))
    with pytest.raises(InspectionError, match="RGB"):
        inspector.prepare(np.zeros((64, 64), np.float32))
    with pytest.raises(InspectionError, match="expected images"):
        inspector.inspect(torch.zeros(1, 32, 32, 3))


def test_inspect_cli_prints_and_draws(tiny_release: Path, tiny_synth: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    good = min((tiny_synth / "test" / "good").glob("*.png"))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    out = tmp_path / "overlays"
    code = main(["inspect", str(tiny_release), str(good), str(text), "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 1  # one image failed; the other was still inspected
    assert f"{text}: error" in captured.err
    line = next(line for line in captured.out.splitlines() if line.startswith("{"))
    result = json.loads(line)
    assert result["image"] == str(good) and result["is_anomalous"] in (True, False)
    assert (out / f"{good.stem}_overlay.png").stat().st_size > 1000


def test_gallery_refinement_needs_the_stored_views(inspector: Inspector) -> None:
    """A bundle whose gallery lacks the stored views and depths is refused at load under
    the default refiner (gpnp), with what to do; pnp+ecc still works with it."""
    import copy
    import dataclasses

    from models.refine import RefineConfig

    estimator = copy.copy(inspector.estimator)
    estimator.gallery = dataclasses.replace(estimator.gallery, images=None, depths=None, K=None)
    parts = (inspector.scene, inspector.scorer, inspector.calibration, estimator, inspector.width, inspector.height,
             inspector.K)
    with pytest.raises(ValueError, match="stored views and depths.*pnp\\+ecc"):
        Inspector(*parts, InspectorConfig(), inspector.device, "old")
    older = Inspector(*parts, InspectorConfig(refine=RefineConfig(method="pnp+ecc")), inspector.device, "old")
    assert older.config.refine.method == "pnp+ecc"
