"""`rpe-pad lab evaluate`: every pose mode through the one pipeline, the 2D baseline, subsets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lab.workdir import open_inspector
from models.data import load_category
from models.inspector import Inspector, InspectorConfig
from rpe_pad.cli import main
from training.evaluate import subset


@pytest.fixture(scope="module")
def queries(tiny_synth: Path):
    cat = load_category(tiny_synth)
    return next(q for q in cat.test if q.label == "good"), next(q for q in cat.test if q.label != "good")


def test_oracle_report(tiny_pose_bundle: Path, tiny_synth: Path, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report"
    assert main(["lab", "evaluate", str(tiny_pose_bundle), str(tiny_synth), "--pose", "oracle", "--out",
                 str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["pose_mode"] == "oracle" and metrics["n_queries"] == 8 and metrics["eval_size"] == 224
    assert set(metrics["image_auroc_per_defect"]) == {"Burrs", "Missing", "Stains"}
    # Even a 150-step model at 64 px localises most defect pixels at the true pose.
    assert metrics["pixel_auroc"] > 0.8 and metrics["decision"]["tp"] + metrics["decision"]["fn"] == 6
    assert "pose_reproj_err_px_median" not in metrics and metrics["bundle"].startswith("training folder")
    assert (report / "overlays.png").stat().st_size > 1000


def test_unknown_pose_mode_is_refused(tiny_pose_bundle: Path, tiny_synth: Path) -> None:
    with pytest.raises(SystemExit):
        main(["lab", "evaluate", str(tiny_pose_bundle), str(tiny_synth), "--pose", "levitation"])
    from lab.evaluate import evaluate

    with pytest.raises(ValueError, match="not available"):
        evaluate(tiny_pose_bundle, tiny_synth, pose="levitation")


def test_pose_modes_need_the_pose_stages(tiny_bundle: Path, tiny_synth: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "evaluate", str(tiny_bundle), str(tiny_synth), "--pose", "rpe"]) == 2
    assert "run the calibration stage first" in capsys.readouterr().err


def test_oracle_uses_the_given_pose(tiny_release: Path, queries) -> None:
    good, _ = queries
    oracle = open_inspector(tiny_release, InspectorConfig(pose="oracle"))
    batch = oracle.start(good.image[None])
    with pytest.raises(ValueError, match="needs the true poses"):
        oracle.run(batch)
    batch.given_poses = good.w2c[None]
    r = oracle.run(batch)[0]
    assert np.allclose(r.pose_matrix, good.w2c.numpy()) and r.gallery_matches == [] and "match" not in r.timings_ms


def test_retrieval_and_iterative_modes(tiny_release: Path, queries) -> None:
    """Retrieval scores at the best gallery view's pose; the peers' iterative mode starts
    there and moves it (zero learning rate leaves it there)."""
    good, _ = queries
    retrieval = open_inspector(tiny_release, InspectorConfig(pose="retrieval")).inspect(good.image[None])[0]
    gallery = Inspector.load(tiny_release).estimator.gallery
    best = retrieval.gallery_matches[0].id
    assert np.allclose(retrieval.pose_matrix, gallery.poses[best].numpy())
    moved = open_inspector(tiny_release, InspectorConfig(pose="iterative", pose_options={"steps": 3}))
    r = moved.inspect(good.image[None])[0]
    assert r.gallery_matches[0].id == best and not np.allclose(r.pose_matrix, retrieval.pose_matrix)
    assert {"match", "optimise", "render", "score", "total"} <= set(r.timings_ms) and "pose" not in r.timings_ms
    still = open_inspector(tiny_release, InspectorConfig(pose="iterative", pose_options={"steps": 2, "lr": 0.0}))
    assert np.allclose(still.inspect(good.image[None])[0].pose_matrix, retrieval.pose_matrix, atol=1e-6)


def test_bundle_and_work_folder_give_the_same_result(tiny_release: Path, tiny_pose_bundle: Path, queries) -> None:
    """The bundle reproduces the training folder it was assembled from (ONNX on both), in
    pose mode rpe (the refinement's RANSAC could pick another inlier set from a pose that
    differs in the last bits, on this tiny model's few matches)."""
    good, bad = queries
    config = InspectorConfig(pose="rpe")
    images = torch.stack([good.image, bad.image])
    pairs = zip(open_inspector(tiny_release, config).inspect(images), open_inspector(tiny_pose_bundle, config).inspect(images))
    for a, b in pairs:
        assert a.gallery_matches == b.gallery_matches and np.allclose(a.pose_matrix, b.pose_matrix, atol=1e-9)
        assert a.score == pytest.approx(b.score, rel=1e-6)


def test_patchcore_baseline_report(tiny_pose_bundle: Path, tiny_synth: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The 2D baseline runs through the same metrics and report; no pose, no decision."""
    import lab.evaluate as ev
    from lab.patchcore import PatchCoreConfig

    monkeypatch.setattr(ev, "PatchCoreConfig", lambda: PatchCoreConfig(weights="random", size=64, coreset=0.5))
    report = tmp_path / "pc"
    assert main(["lab", "evaluate", str(tiny_pose_bundle), str(tiny_synth), "--pose", "patchcore", "--out",
                 str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["pose_mode"] == "patchcore" and metrics["n_queries"] == 8 and metrics["decision"] is None
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and metrics["pixel_auroc"] > 0.5
    assert metrics["patchcore"]["size"] == 64 and metrics["patchcore"]["bank_patches"] == round(0.5 * 8 * 8 * 8)
    assert "pose_reproj_err_px_median" not in metrics and (report / "overlays.png").is_file()


def test_limit_takes_an_evenly_spaced_subset(tiny_pose_bundle: Path, tiny_synth: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    views = [SimpleNamespace(label=label) for label in ["Burrs"] * 5 + ["Missing"] * 3 + ["Stains"] * 4 + ["good"] * 20]
    picked = subset(views, 8)
    assert {v.label for v in picked} == {"Burrs", "Missing", "Stains", "good"} and 7 <= len(picked) <= 9
    assert [v.label for v in picked] == sorted(v.label for v in picked)  # the original order
    assert subset(views, None) == views and subset(views, 100) == views
    report = tmp_path / "r"
    assert main(["lab", "evaluate", str(tiny_pose_bundle), str(tiny_synth), "--pose", "oracle", "--limit", "4",
                 "--out", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert (metrics["n_queries"], metrics["n_test_views"]) == (4, 8)


def test_k_defaults_to_the_bundles_own(tiny_release: Path, tmp_path: Path) -> None:
    """`lab evaluate`'s loader without ``k`` runs the k the bundle's manifest names, not the
    code's default (`lab bench` passes its ``k`` to ``Inspector.load`` the same way)."""
    copy = tmp_path / tiny_release.name
    shutil.copytree(tiny_release, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["inference"]["k"] != 2
    manifest["inference"]["k"] = 2
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert open_inspector(copy, InspectorConfig(pose="rpe")).config.k == 2
    assert open_inspector(copy, InspectorConfig(pose="rpe"), k=4).config.k == 4
