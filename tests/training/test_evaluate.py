"""Evaluation of a bundle in its own pose mode: the report, the operating point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.evaluate import decision_metrics, evaluate


def test_bundle_report(tiny_release: Path, tiny_synth: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    metrics = evaluate(tiny_release, tiny_synth, out_dir=report)
    assert json.loads((report / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["pose_mode"] == "rpe+refine" and metrics["n_queries"] == 8 and metrics["bundle"] == "verified bundle"
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= metrics[key] <= 1.0
    d = metrics["decision"]
    assert d["tp"] + d["fn"] == 6 and d["fp"] + d["tn"] == 2  # 6 defective, 2 good views in the tiny category
    assert set(metrics["refine"]) >= {"pnp_accepted_fraction", "ecc_accepted_fraction", "pnp_paths"}
    assert "pose_reproj_err_px_median" in metrics  # the synthetic category has true query poses
    text = (report / "metrics.md").read_text()
    assert "| image_auroc |" in text and "good parts rejected" in text
    assert (report / "overlays.png").stat().st_size > 1000


def test_decision_metrics_count_the_operating_point() -> None:
    labels = np.array([True, True, True, False, False])
    d = decision_metrics(labels, np.array([5.0, 1.0, 3.0, 4.0, 0.5]), threshold=2.0)
    assert (d["tp"], d["fn"], d["fp"], d["tn"]) == (2, 1, 1, 1)
    assert d["recall"] == round(2 / 3, 4) and d["false_positive_rate"] == 0.5 and d["precision"] == round(2 / 3, 4)
