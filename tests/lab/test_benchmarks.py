"""`rpe-pad lab bench`: per-stage times, throughput by batch size, the speed-up over iterative."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rpe_pad.cli import main


@pytest.mark.slow(seconds=6)
def test_bench_reports_stages_throughput_and_ratios(tiny_release: Path, tiny_synth: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    assert main(["lab", "bench", str(tiny_release), str(tiny_synth), "--batch-sizes", "1", "3", "--iterative-queries", "1",
                 "--iterative-steps", "2", "--single-queries", "8", "--device", "cpu", "--k", "2", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert result["k"] == 2
    cpu = result["devices"]["cpu"]
    assert set(cpu["modes"]) == {"rpe", "rpe+refine"} and result["machine"]["cpu_count"] >= 1
    for mode, rows in cpu["modes"].items():
        assert [r["batch"] for r in rows] == [1, 3]
        for r in rows:
            t = r["per_query_ms"]
            assert {"match", "pose", "render", "score", "total"} <= set(t)
            assert ("refine" in t) == (mode == "rpe+refine")
            assert t["total"] >= t["render"] + t["score"] and r["throughput_qps"] > 0
    iterative = cpu["iterative"]["per_query_ms"]
    assert "optimise" in iterative and cpu["iterative"]["steps"] == 2
    for mode, ratio in cpu["speedup_vs_iterative"].items():
        assert ratio == pytest.approx(iterative["total"] / cpu["modes"][mode][0]["per_query_ms"]["total"], rel=0.01, abs=0.006)
    ones = {mode: rows[0] for mode, rows in cpu["modes"].items()}
    assert all(r["queries"] == 8 and r["wall_s"] > 0 for r in ones.values())
    assert set(ones["rpe+refine"]["stage_medians_ms"]) == set(ones["rpe+refine"]["per_query_ms"])
    assert cpu["refine_added_ms"] == pytest.approx(
        ones["rpe+refine"]["per_query_ms"]["total"] - ones["rpe"]["per_query_ms"]["total"], abs=0.06)
    # The queries timed one at a time carry their scores and labels, and their image AUROC.
    from models.data import load_category
    from models.metrics import auroc

    labels = [q.is_anomalous for q in load_category(tiny_synth).test]
    assert len(labels) == 8 and len(set(labels)) == 2
    for one in ones.values():
        assert one["defective"] == labels and len(one["scores"]) == 8
        assert one["image_auroc"] == pytest.approx(auroc(np.array(labels, dtype=float), np.array(one["scores"])), abs=1e-4)
    # Beside the AUROC, the same queries at the bundle's calibrated threshold, with the verdicts.
    from models.bundle import FILES
    from models.calibration import Calibration

    threshold = Calibration.model_validate_json((tiny_release / FILES["calibration"]).read_text()).threshold
    for one in ones.values():
        at = one["at_threshold"]
        flagged = np.array(one["scores"]) > threshold
        assert at["tp"] == int((flagged & np.array(labels)).sum()) and at["fp"] == int((flagged & ~np.array(labels)).sum())
        assert at["recall"] == pytest.approx(at["tp"] / sum(labels), abs=1e-4) and at["threshold"] == round(threshold, 4)
        assert sum(sum(v.values()) for v in at["verdicts"].values()) == 8
        assert sum(at["verdicts"]["defective"].values()) == sum(labels)
    assert cpu["iterative"]["image_auroc"] is None  # one query: no AUROC
    assert cpu["iterative"]["at_threshold"]["tp"] + cpu["iterative"]["at_threshold"]["fn"] + \
        cpu["iterative"]["at_threshold"]["fp"] + cpu["iterative"]["at_threshold"]["tn"] == 1
    md = (out / "bench.md").read_text()
    assert "at the calibrated threshold" in md and "false-alarm rate" in md and "recall" in md
    assert "faster" in (out / "bench.md").read_text() and (out / "bench.png").stat().st_size > 10_000
    assert "rpe+refine" in capsys.readouterr().out
