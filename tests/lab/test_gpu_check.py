"""`rpe-pad lab gpu-check`: it refuses cleanly without CUDA, records failed steps without
stopping, and its report carries every figure it measured."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lab import gpu_check

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_refuses_in_one_line_without_cuda(tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "rpe_pad.cli", "lab", "gpu-check", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == gpu_check.NO_CUDA and proc.stdout.strip() == ""
    assert not out.exists()  # nothing was started


def test_make_target_refuses_without_a_gpu(tmp_path: Path) -> None:
    if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0:
        pytest.skip("this machine has a GPU")
    proc = subprocess.run(["make", "-s", "gpu-check", f"GPU_VENV={tmp_path / 'venv'}"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert proc.returncode != 0 and "no NVIDIA GPU here" in proc.stdout
    assert not (tmp_path / "venv").exists()  # refused before installing anything


def test_failed_steps_are_recorded_and_the_report_has_the_figures(tmp_path: Path) -> None:
    check = gpu_check.Check(tmp_path, "gpu-check")
    check.step("cuda-tests", lambda: {"summary": "3 passed in 20.1s"})
    check.step("bundle", lambda: {"bundle": "b", "category": "c", "train_seconds": 212.0,
                                   "stage_seconds": {"splats": 61.2, "irprn": 90.0}, "num_gaussians": 12345})
    check.step("evaluate", lambda: 1 / 0)
    check.step("bench", lambda: {"per_query_ms": {1: {"total": 14.2}, 64: {"total": 2.5}},
                                  "throughput_qps": {1: 70.4, 64: 400.0}, "iterative_ms": 5321.0,
                                  "speedup_vs_iterative": 374.7, "gpu": "H200"})
    lat = {"p50": 18.0, "p95": 22.0, "p99": 25.0}
    check.step("serve", lambda: {"device": "cuda:0",
                                  "one_client": {"seconds": 15.0, "latency_ms": lat, "throughput_rps": 50.1, "errors_5xx": 0},
                                  "eight_clients": {"seconds": 30.0, "latency_ms": lat, "throughput_rps": 210.5,
                                                    "errors_5xx": 0}})
    assert not check.ok and [s["ok"] for s in check.steps] == [True, True, False, True, True]
    assert check.steps[2]["error"].startswith("ZeroDivisionError")
    report = gpu_check.write_report(check, {"gpu": "NVIDIA H200", "torch": "2.14.1", "cuda": "13.0",
                                            "gsplat": "1.5.3", "onnxruntime": "1.23", "onnxruntime_providers": ["CUDAExecutionProvider"]})
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["ok"] is False and len(saved["steps"]) == 5 and saved["environment"]["gpu"] == "NVIDIA H200"
    md = (tmp_path / "gpu_check.md").read_text()
    assert md == gpu_check.markdown(report)
    for figure in ("FAILED", "3 passed", "12345 Gaussians", "failed: ZeroDivisionError", "| 64 | 2.5 | 400.0 |",
                   "375x faster", "| 8 clients, 30 s | 18.0 | 22.0 | 25.0 | 210.5 | 0 |"):
        assert figure in md, figure


def test_bundle_step_reads_the_summary_where_train_writes_it(tmp_path: Path, tiny_synth: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundle step runs ``rpe-pad train`` in a child, then reads the closing summary where
    ``training.pipeline`` writes it (the first GPU run found it reading a stale path)."""
    from training import pipeline

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "gpucheck").symlink_to(tiny_synth)
    for stage in pipeline.TABLE:
        report = {"num_gaussians": 321} if stage.name == "splats" else {}
        monkeypatch.setitem(pipeline._BY_NAME, stage.name, pipeline.Stage(stage.name, lambda ctx, r=report: dict(r), ""))

    def run_logged(cmd: list[str], log: Path, timeout: float) -> str:
        assert cmd[2:4] == ["rpe_pad.cli", "train"] and cmd[cmd.index("--preset") + 1] == "demo"
        pipeline.run_train(Path(cmd[4]), Path(cmd[cmd.index("--out") + 1]), preset="demo", progress=False)
        return ""

    monkeypatch.setattr(gpu_check, "run_logged", run_logged)
    result = gpu_check.build_bundle(tmp_path)
    assert result["num_gaussians"] == 321
    assert set(result["stage_seconds"]) == {stage.name for stage in pipeline.TABLE}
