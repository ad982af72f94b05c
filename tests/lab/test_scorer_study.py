"""`rpe-pad lab scorer-study`: variants chosen on held-out painted defects, reported on the test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.scorer_study import VARIANTS
from rpe_pad.cli import main


def test_scorer_study_cli(tiny_heldout_bundles: Path, tiny_synth: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    assert main(["lab", "scorer-study", str(tiny_synth), "--bundles", str(tiny_heldout_bundles), "--test", "--out",
                 str(out), "--quiet"]) == 0
    report = json.loads((out / "scorer_study.json").read_text())
    assert set(report["selection"]) == set(report["test"]) == set(VARIANTS) and report["chosen"] in VARIANTS
    best = report["selection"][report["chosen"]]
    assert all((s["recall"], s["image_auroc"]) <= (best["recall"], best["image_auroc"]) for s in report["selection"].values())
    t = report["test"]["peers"]
    assert t["of"] == report["test_queries"]["defective"] and t["good"] == report["test_queries"]["good"]
    assert "| `peers` |" in capsys.readouterr().out
