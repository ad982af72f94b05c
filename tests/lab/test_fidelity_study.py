"""`rpe-pad lab fidelity-study`: variants fitted and calibrated by the product's stages, chosen
on the self-check within the CPU budget."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from lab import fidelity_study
from lab.fidelity_study import choose, other_stages_seconds, variant_config
from rpe_pad.cli import main
from tests.conftest import TINY_SPLATS
from training import calibrate
from training.splats import preset


def _variant(recall: float, auroc: float, far: float, seconds_per_query: float, fit_s: float) -> dict:
    return {"fit": {"splats_seconds": fit_s, "calibration_seconds": 30.0},
            "selfcheck": {"decision": {"recall": recall, "false_positive_rate": far}, "image_auroc": auroc},
            "test": {"seconds_per_query_median": seconds_per_query}}


def test_the_rule_weighs_recall_within_the_budget() -> None:
    variants = {"cpu": _variant(0.70, 0.90, 0.02, 0.20, 500),
                "dense": _variant(0.75, 0.88, 0.04, 0.23, 900),  # 1.15 x the cost: eligible
                "px400": _variant(0.90, 0.97, 0.02, 0.60, 2000)}  # best, but 3 x the cost and over 40 min
    result = choose(variants, other_stages_s=600)
    assert result["chosen"] == "dense"
    assert result["verdicts"]["px400"] == {"build_seconds_estimate": 2630.0, "cost_vs_cpu": 3.0, "eligible": False}
    variants["dense"]["selfcheck"]["decision"]["false_positive_rate"] = 0.06  # rejects too many clean views
    assert choose(variants, 600)["chosen"] == "cpu"
    variants["dense"] = _variant(0.70, 0.91, 0.02, 0.21, 900)  # a recall tie goes to the image AUROC
    assert choose(variants, 600)["chosen"] == "dense"


def test_variants_are_the_cpu_preset_changed_or_another_preset() -> None:
    assert variant_config("cpu") == preset("cpu")
    assert variant_config("px400") == preset("cpu", image_size=400)
    assert variant_config("paper") == preset("paper")  # issue 22's GPU measurement: the paper's own fit
    # ... and what a lent GPU's 15 minutes can fit: its schedule scaled to 7000 steps
    assert variant_config("paper7k") == preset("paper", iterations=7000, refine_stop=5250)
    with pytest.raises(ValueError, match="unknown variant"):
        variant_config("px800")


def test_a_variant_can_be_calibrated_on_fewer_folds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    monkeypatch.setattr(fidelity_study, "run_splats_stage", lambda *a, **kw: seen.update(splats=kw) or {})
    monkeypatch.setattr(fidelity_study, "run_calibration_stage",
                        lambda category, cfg, *a, **kw: seen.update(calibration=cfg) or {})
    fidelity_study.fit(None, tmp_path, "cpu", progress=False, folds=1)
    assert seen["splats"]["folds"] == seen["calibration"].folds == 1
    assert seen["calibration"] == replace(fidelity_study.CALIBRATION[fidelity_study.BASE], folds=1)
    fidelity_study.fit(None, tmp_path, "cpu", progress=False)
    assert seen["splats"]["folds"] == seen["calibration"].folds == fidelity_study.CALIBRATION["cpu"].folds == 5


def test_other_stages_come_from_a_full_build(tmp_path: Path) -> None:
    summary = tmp_path / "train_summary.json"
    stages = {"splats": 500.0, "calibration": 40.0, "rvss": 27.0, "irprn": 500.0, "gallery": 50.0, "onnx": 1.5,
              "bundle": 3.0}
    summary.write_text(json.dumps({k: {"stage_seconds": v} for k, v in stages.items()}))
    assert other_stages_seconds(summary) == 581.5
    summary.write_text(json.dumps({"calibration": {"stage_seconds": 40.0}, "bundle": {"stage_seconds": 4.0}}))
    with pytest.raises(ValueError, match="not a full build"):
        other_stages_seconds(summary)


@pytest.mark.slow(seconds=25)
def test_fidelity_study_cli(tiny_heldout_bundles: Path, tiny_synth: Path, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole study on the tiny category, its one variant a 20-step fit (the tiny fixtures'
    settings in place of the cpu preset's), calibrated as the cpu preset is but on one jittered copy
    of each held-out view, not four, and one JPEG setting: fitted, calibrated, self-checked, tested, chosen."""
    tiny = preset("demo", **{**TINY_SPLATS, "iterations": 20})
    monkeypatch.setattr(fidelity_study, "variant_config", lambda name: tiny)
    monkeypatch.setitem(fidelity_study.CALIBRATION, fidelity_study.BASE,
                        replace(fidelity_study.CALIBRATION[fidelity_study.BASE], jitters=1))
    monkeypatch.setattr(calibrate, "JPEG_LADDER", calibrate.JPEG_LADDER[:1])  # the whole ladder: test_calibrate
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({s: {"stage_seconds": 10.0} for s in ("rvss", "irprn", "gallery", "bundle")}))
    root = tmp_path / "root"
    assert main(["lab", "fidelity-study", str(tiny_synth), "--root", str(root), "--build-summary", str(summary),
                 "--variants", "cpu", "--quiet"]) == 0
    report = json.loads((root / "report" / "fidelity_study.json").read_text())
    v = report["variants"]["cpu"]
    assert v["fit"]["num_gaussians"] > 0 and v["threshold"] > 0
    calibration = json.loads((root / "cpu" / "work" / "reports" / "calibration.json").read_text())
    assert calibration["rule"] == "false_alarm" and calibration["heldout_views"] == 8  # five folds: each view once
    assert v["selfcheck"]["defective"] > 0 and v["selfcheck"]["clean"] > 0
    assert v["test"]["poses"] == "true" and 0.0 <= v["test"]["image_auroc"] <= 1.0
    assert report["verdicts"]["cpu"]["cost_vs_cpu"] == 1.0
    # One variant: chosen exactly when the rule's conditions hold for it (cost is 1 against itself).
    far = v["selfcheck"]["decision"]["false_positive_rate"]
    eligible = report["verdicts"]["cpu"]["build_seconds_estimate"] <= fidelity_study.BUILD_BUDGET_S and far <= 0.05
    assert report["verdicts"]["cpu"]["eligible"] == eligible and report["chosen"] == ("cpu" if eligible else None)
    assert "| `cpu` |" in capsys.readouterr().out
    # a second run reuses the fit and the calibration (the product stages' own skip)
    shutil.rmtree(root / "report")
    assert main(["lab", "fidelity-study", str(tiny_synth), "--root", str(root), "--build-summary", str(summary),
                 "--variants", "cpu", "--quiet"]) == 0
    again = json.loads((root / "report" / "fidelity_study.json").read_text())["variants"]["cpu"]
    assert again["fit"]["splats_seconds"] == v["fit"]["splats_seconds"]


def test_unknown_variant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown variant"):
        main(["lab", "fidelity-study", str(tmp_path), "--root", str(tmp_path), "--build-summary",
              str(tmp_path / "s.json"), "--variants", "cpu,px800"])
