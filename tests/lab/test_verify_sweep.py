"""`rpe-pad lab verify-sweep`: the pose check against known misalignments, on held-out data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rpe_pad.cli import main


def test_verify_sweep_measures_what_it_imposes(tiny_release: Path, tiny_synth: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vs"
    assert main(["lab", "verify-sweep", str(tiny_release), str(tiny_synth), "--views", "4", "--out", str(out),
                 "--quiet"]) == 0
    report = json.loads((out / "verify_sweep.json").read_text())
    assert (out / "verify_sweep.png").stat().st_size > 0 and "verify_sweep.png" in capsys.readouterr().out
    levels = report["curve"]["by_level"]
    assert [row["level_px"] for row in levels] == [0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 15.0]
    # The imposed error is the one asked for (linear scaling of a small turn), and the check
    # measures more misalignment, and flags more queries, the further the render is moved.
    for row in levels[1:6]:
        assert row["true_px_median"] == pytest.approx(row["level_px"], rel=0.15)
    assert levels[-1]["measured_px_median"] > levels[0]["measured_px_median"] + 5
    assert levels[-1]["flagged_fraction"] == 1.0 and levels[-1]["flagged_fraction"] >= levels[0]["flagged_fraction"]
    summary = report["curve"]["summary"]
    assert summary["queries"] == len(report["rows"]["curve"]) and summary["misaligned_flagged"] <= summary["misaligned"]
    pipeline = report["pipeline"]
    assert pipeline["n"] == 4 and pipeline["summary"]["queries"] == 4 and len(report["rows"]["pipeline"]) == 4
