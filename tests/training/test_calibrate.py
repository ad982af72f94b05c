"""The calibration stage on the tiny bundle, and what evaluate does with its output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.calibration import Calibration
from models.data import load_category
from models.metrics import f1_max
from rpe_pad.cli import main
from training.calibrate import CalibConfig, run_calibration_stage


@pytest.fixture()
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A copy of the tiny work folder where `rpe-pad train --out tmp_path` keeps it."""
    out = tmp_path / ".work" / tiny_bundle.name
    shutil.copytree(tiny_bundle, out)
    return out


def test_quantile_calibration_and_skip(bundle: Path, tiny_synth: Path) -> None:
    cat = load_category(tiny_synth)
    report = run_calibration_stage(cat, CalibConfig(), bundle, progress=False)
    calib = Calibration.model_validate_json((bundle / "calibration" / "calibration.json").read_text())
    jittered = np.array(report["scores"]["jittered"])
    assert len(jittered) == len(cat.train) == calib.sources["jittered"]
    assert calib.rule == "quantile"
    assert calib.threshold == pytest.approx(np.quantile(jittered, 0.99) * 1.1)
    assert calib.threshold > jittered.max()  # the margin clears every normal view here
    assert calib.score_floor == pytest.approx(min(jittered.min(), min(report["scores"]["in_sample"])))
    assert calib.scorer["tolerance"] == CalibConfig().tolerance
    assert (bundle / "reports" / "calibration_hist.png").stat().st_size > 1000
    again = run_calibration_stage(cat, CalibConfig(), bundle, progress=False)
    assert again["skipped"] and again["threshold"] == report["threshold"]
    changed = run_calibration_stage(cat, CalibConfig(margin=0.2), bundle, progress=False)
    assert "skipped" not in changed and changed["threshold"] > report["threshold"]


def test_pose_jitter_raises_normal_scores(bundle: Path, tiny_synth: Path) -> None:
    cat = load_category(tiny_synth)
    big = run_calibration_stage(cat, CalibConfig(jitter_px=6.0), bundle, progress=False)
    assert np.median(big["scores"]["jittered"]) > np.median(big["scores"]["in_sample"])


def test_labelled_validation_gives_the_f1_rule(bundle: Path, tiny_synth: Path) -> None:
    cat = load_category(tiny_synth)
    report = run_calibration_stage(cat, CalibConfig(), bundle, validation=cat, progress=False)
    assert report["rule"] == "f1"
    calib = Calibration.model_validate_json((bundle / "calibration" / "calibration.json").read_text())
    val = np.array(report["scores"]["validation"])
    assert calib.sources["validation"] == len(cat.test) == len(val)
    labels = np.array(report["scores"]["validation_labels"])
    flagged = val > calib.threshold
    tp = np.sum(flagged & labels)
    assert 2 * tp / (flagged.sum() + labels.sum()) == pytest.approx(f1_max(labels, val))


def test_train_stage_then_evaluate_reports_the_decision(bundle: Path, tiny_synth: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # The splats stage is skipped (its output exists for the same config? no: the tiny
    # config differs from the demo preset), so run calibration only, then evaluate.
    assert main(["train", str(tiny_synth), "--out", str(bundle.parent.parent), "--preset", "demo",
                 "--stages", "calibration", "--quiet"]) == 0
    assert "| calibration |" in capsys.readouterr().out
    calib = Calibration.model_validate_json((bundle / "calibration" / "calibration.json").read_text())
    assert calib.sources["jittered"] == 8  # demo preset: at most 24 views, the category has 8
    report = tmp_path / "report"
    assert main(["lab", "evaluate", str(bundle), str(tiny_synth), "--pose", "oracle", "--out", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    d = metrics["decision"]
    assert d["threshold"] == round(calib.threshold, 4)
    assert d["tp"] + d["fp"] + d["fn"] + d["tn"] == metrics["n_queries"]
    assert "threshold (calibrated)" in (report / "metrics.md").read_text()


def test_calibration_needs_the_splats(tmp_path: Path, tiny_synth: Path) -> None:
    with pytest.raises(FileNotFoundError, match="splats stage first"):
        run_calibration_stage(load_category(tiny_synth), CalibConfig(), tmp_path / "none", progress=False)
