"""The `rpe-pad` command: subcommands, exit codes, and the demo's honest end."""

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


def test_demo_runs_to_its_honest_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo's flow on a smaller category and fit than `make demo` uses (same code)."""
    from training.demo import run_demo
    from training.splats import preset
    from training.synth import SynthConfig

    synth = SynthConfig(seed=0, size=64, train_views=10, test_views=4)
    splats = preset("demo", iterations=40, init_points=2000, refine_start=10, refine_stop=30, refine_every=10)
    assert run_demo(tmp_path / "demo", synth, splats) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "demo" / "synthetic_lego_sheet.png").is_file()
    assert (tmp_path / "demo" / "bundles" / "synthetic_lego" / "reports" / "splats.json").is_file()
    assert "PSNR" in out and "Not built yet" in out and "image AUROC" in out
    metrics = json.loads((tmp_path / "demo" / "bundles" / "synthetic_lego" / "reports" / "evaluate_oracle" /
                          "metrics.json").read_text())
    assert metrics["n_queries"] == 4 and metrics["decision"] is not None
    # A second run reuses the category and the fitted model instead of redoing them.
    assert run_demo(tmp_path / "demo", synth, splats) == 0
    out = capsys.readouterr().out
    assert "reusing" in out and "reused the model" in out


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
