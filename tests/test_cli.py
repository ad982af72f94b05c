"""The `rpe-pad` command: subcommands, exit codes, and the demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rpe_pad.cli import main


def test_synth_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cat"
    assert main(["synth", str(out), "--seed", "5", "--size", "32", "--train-views", "3", "--test-views", "4", "--quiet"]) == 0
    assert (out / "train" / "transforms.json").is_file() and (out / "synth.json").is_file()
    capsys.readouterr()
    sheet = tmp_path / "sheet.png"
    assert main(["show", str(out), "--sheet", str(sheet)]) == 0
    summary = json.loads(capsys.readouterr().out.split("contact sheet")[0])
    assert summary["train_views"] == 3 and summary["image_size"] == [32, 32]
    assert sum(summary["test_views"].values()) == 4
    assert sheet.stat().st_size > 1000


def test_user_errors_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "x").write_text("x")
    assert main(["synth", str(tmp_path / "occupied"), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["synth", str(tmp_path / "y"), "--size", "0"])
    assert exc.value.code == 2


def test_console_script_help() -> None:
    result = subprocess.run([sys.executable, "-m", "rpe_pad.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("synth", "show", "demo"):
        assert command in result.stdout


def test_demo_runs_the_whole_product(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's flow (same code as `make demo`) with the demo preset shrunk to test size."""
    from tests.conftest import TINY_IRPRN, TINY_SPLATS
    from training import irprn, pipeline, splats
    from training.calibrate import CalibConfig
    from training.demo import run_demo
    from training.synth import SynthConfig

    monkeypatch.setitem(splats.PRESETS, "demo", splats.preset("demo", **{**TINY_SPLATS, "image_size": None}))
    monkeypatch.setitem(irprn.PRESETS, "demo", irprn.preset("demo", **TINY_IRPRN))
    monkeypatch.setitem(pipeline.CALIBRATION, "demo", CalibConfig(max_views=8))
    synth = SynthConfig(seed=0, size=64, train_views=8, test_views=4)
    assert run_demo(tmp_path / "demo", synth) == 0
    out = capsys.readouterr().out
    bundle = tmp_path / "demo" / "bundles" / "synthetic_lego"
    assert (bundle / "manifest.json").is_file() and "| bundle |" in out
    # Two queries inspected through the loaded bundle, each with a verdict and an overlay.
    verdicts = [line for line in out.splitlines() if "score" in line and "overlay:" in line]
    assert len(verdicts) == 2 and all(("ANOMALOUS" in v) != ("normal," in v) for v in verdicts)
    assert len(list((tmp_path / "demo" / "inspections").glob("*.png"))) == 2
    metrics = json.loads((tmp_path / "demo" / "evaluation" / "metrics.json").read_text())
    assert metrics["n_queries"] == 4 and metrics["pose_mode"] == "rpe+refine" and metrics["bundle"] == "verified bundle"
    # A second run reuses the category and every stage instead of redoing them.
    assert run_demo(tmp_path / "demo", synth) == 0
    out = capsys.readouterr().out
    assert "reusing" in out and out.count("skipped (valid output reused)") == 7


def test_bench_render_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench-render", "--gaussians", "500", "--size", "32", "--repeats", "2", "--device", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["num_gaussians"] == 500 and result["size"] == 32
    assert 0 < result["cpu"]["forward_s_median"] < 10 and result["cpu"]["forward_backward_s_median"] > 0
    assert result["machine"]["cpu_count"] >= 1


def test_train_rejects_unknown_stage(tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tiny_synth), "--out", str(tmp_path), "--stages", "splats,warp", "--quiet"]) == 2
    assert "unknown stage" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_parser_constants_agree_with_the_models() -> None:
    """The CLI and the service spell out the refiners (no torch import to build a parser)."""
    import typing

    from models.refine import REFINERS, RefineConfig
    from rpe_pad import cli
    from service.settings import Settings

    assert set(cli.REFINERS) == set(REFINERS) and cli.DEFAULT_REFINE == RefineConfig().method
    field = Settings.model_fields["refine"]
    assert set(typing.get_args(field.annotation)) == set(REFINERS) and field.default == RefineConfig().method
    from models.inspector import InspectorConfig
    from models.pose import DEFAULT_K

    assert cli.DEFAULT_K == DEFAULT_K == InspectorConfig().k
