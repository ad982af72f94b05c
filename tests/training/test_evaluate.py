"""`rpe-pad evaluate --pose oracle` on a tiny fitted bundle: the report and its numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rpe_pad.cli import main


def test_oracle_report(tiny_bundle: Path, tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report"
    assert main(["evaluate", str(tiny_bundle), str(tiny_synth), "--pose", "oracle", "--out", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["pose_mode"] == "oracle" and metrics["n_queries"] == 8 and metrics["eval_size"] == 224
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= metrics[key] <= 1.0
    assert set(metrics["image_auroc_per_defect"]) == {"Burrs", "Missing", "Stains"}
    # Even a 150-step model at 64 px localises most defect pixels at the true pose.
    assert metrics["pixel_auroc"] > 0.8
    assert (report / "overlays.png").stat().st_size > 1000
    assert "| image_auroc |" in (report / "metrics.md").read_text()


def test_unknown_pose_mode_is_refused(tiny_bundle: Path, tiny_synth: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", str(tiny_bundle), str(tiny_synth), "--pose", "levitation"])
    from training.evaluate import evaluate

    with pytest.raises(ValueError, match="not available"):
        evaluate(tiny_bundle, tiny_synth, pose="levitation")


def test_pose_modes_need_the_pose_stages(tiny_bundle: Path, tiny_synth: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tiny_bundle), str(tiny_synth), "--pose", "rpe"]) == 2
    assert "build the pose stages first" in capsys.readouterr().err


def test_patchcore_baseline_report(tiny_bundle: Path, tiny_synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The 2D baseline runs through the same metrics and report; no pose, no decision."""
    import training.evaluate as ev
    from models.patchcore import PatchCoreConfig

    monkeypatch.setattr(ev, "PatchCoreConfig", lambda: PatchCoreConfig(weights="random", size=64, coreset=0.5))
    report = tmp_path / "pc"
    assert main(["evaluate", str(tiny_bundle), str(tiny_synth), "--pose", "patchcore", "--out", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["pose_mode"] == "patchcore" and metrics["n_queries"] == 8 and metrics["decision"] is None
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and metrics["pixel_auroc"] > 0.5
    assert metrics["patchcore"]["size"] == 64 and metrics["patchcore"]["bank_patches"] == round(0.5 * 8 * 8 * 8)
    assert "pose_reproj_err_px_median" not in metrics and (report / "overlays.png").is_file()


def test_limit_takes_an_evenly_spaced_subset(tiny_bundle: Path, tiny_synth: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from training.evaluate import subset

    from types import SimpleNamespace

    views = [SimpleNamespace(label=label) for label in ["Burrs"] * 5 + ["Missing"] * 3 + ["Stains"] * 4 + ["good"] * 20]
    picked = subset(views, 8)
    assert {v.label for v in picked} == {"Burrs", "Missing", "Stains", "good"} and 7 <= len(picked) <= 9
    assert [v.label for v in picked] == sorted(v.label for v in picked)  # the original order
    assert subset(views, None) == views and subset(views, 100) == views
    report = tmp_path / "r"
    assert main(["evaluate", str(tiny_bundle), str(tiny_synth), "--pose", "oracle", "--limit", "4", "--out", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert (metrics["n_queries"], metrics["n_test_views"]) == (4, 8)
