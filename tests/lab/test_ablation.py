"""`rpe-pad lab ablation`: each variant trains with its switches in its own folder, shares the
fitted model, leaves the source untouched, and is evaluated by the one pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models.hashing import sha256_file
from rpe_pad.cli import main
from lab.ablation import VARIANTS


def test_variants_are_the_papers_rows() -> None:
    assert list(VARIANTS) == ["none", "rvss", "rvss_irprn", "rvss_mpts", "all"]
    assert VARIANTS["none"].switches() == {"rvss_m": 0, "n_refine": 0, "mpts": False}
    assert VARIANTS["all"].switches() == {"rvss_m": None, "n_refine": None, "mpts": None}


@pytest.mark.slow(seconds=55)
def test_ablation_runs_two_variants(tiny_pose_bundle: Path, tiny_synth: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from models.irprn import IRPRNConfig
    from training import irprn

    # The network at the tiny bundle's input size (112 px): the switches, not the size, are tested.
    monkeypatch.setitem(irprn.PRESETS, "demo", irprn.preset("demo", model=IRPRNConfig(input_size=112)))
    bundles = tmp_path / "bundles"
    source = bundles / ".work" / tiny_synth.name
    shutil.copytree(tiny_pose_bundle, source)
    weights_before = sha256_file(source / "irprn" / "weights.safetensors")
    out = tmp_path / "ablation"
    assert main(["lab", "ablation", str(tiny_synth), str(bundles), "--preset", "demo", "--variants", "none", "rvss_mpts",
                 "--irprn-epochs", "1", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "ablation.json").read_text())
    assert [(r["variant"], r["pose_mode"]) for r in result["rows"]] == [("none", "rpe"), ("rvss_mpts", "rpe")]
    for row in result["rows"]:
        assert 0 <= row["image_auroc"] <= 1 and row["pose_rot_err_deg_median"] >= 0
        assert 0 <= row["recall"] <= 1 and 0 <= row["false_alarm_rate"] <= 1  # the operating point beside AUROC
    reports = {name: bundles / ".ablation" / name / ".work" / tiny_synth.name / "reports" for name in ("none", "rvss_mpts")}
    none_gallery = json.loads((reports["none"] / "gallery.json").read_text())
    mpts_gallery = json.loads((reports["rvss_mpts"] / "gallery.json").read_text())
    assert none_gallery["n_novel"] == 0 and mpts_gallery["n_novel"] == 3 * 8
    none_cfg = json.loads((reports["none"] / "irprn.json").read_text())["key"]["config"]
    mpts_cfg = json.loads((reports["rvss_mpts"] / "irprn.json").read_text())["key"]["config"]
    assert (none_cfg["mpts"], none_cfg["model"]["n_refine"]) == (False, 0)
    assert (mpts_cfg["mpts"], mpts_cfg["model"]["n_refine"]) == (True, 0)
    # The shared model is linked in, the source's own IRPRN is untouched.
    assert sha256_file(source / "irprn" / "weights.safetensors") == weights_before
    assert "| none |" in (out / "ablation.md").read_text() and "62.5" in capsys.readouterr().out


def test_ablation_needs_a_trained_category(tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "ablation", str(tiny_synth), str(tmp_path), "--variants", "none", "--quiet"]) == 2
    assert "run `rpe-pad train`" in capsys.readouterr().err
