"""`rpe-pad lab scorer-study`: variants chosen on held-out painted defects, reported on the test split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lab.scorer_study import VARIANTS
from rpe_pad.cli import main


def test_scorer_study_cli(tiny_bundle: Path, tiny_release: Path, tiny_synth: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    from models.data import load_category
    from tests.conftest import TINY_SPLATS
    from training.calibrate import CalibConfig, run_calibration_stage
    from training.splats import preset

    bundles = tmp_path / "bundles"
    shutil.copytree(tiny_release, bundles / tiny_release.name)
    work = bundles / ".work" / tiny_release.name
    shutil.copytree(tiny_bundle, work)
    run_calibration_stage(load_category(tiny_synth), CalibConfig(holdout_every=4, jitters=2), work, progress=False,
                          splats=preset("demo", **{**TINY_SPLATS, "iterations": 60}))
    out = tmp_path / "study"
    assert main(["lab", "scorer-study", str(tiny_synth), "--bundles", str(bundles), "--test", "--out", str(out),
                 "--quiet"]) == 0
    report = json.loads((out / "scorer_study.json").read_text())
    assert set(report["selection"]) == set(report["test"]) == set(VARIANTS) and report["chosen"] in VARIANTS
    best = report["selection"][report["chosen"]]
    assert all((s["recall"], s["image_auroc"]) <= (best["recall"], best["image_auroc"]) for s in report["selection"].values())
    t = report["test"]["peers"]
    assert t["of"] == report["test_queries"]["defective"] and t["good"] == report["test_queries"]["good"]
    assert "| `peers` |" in capsys.readouterr().out
