"""`rpe-pad train` on several categories: one Ray task each (training/fanout.py), on a local Ray."""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from rpe_pad.cli import main
from tests.conftest import TINY_IRPRN, TINY_SPLATS
from training.fanout import Share, available_cpus, connect, share

TINY_SYNTH = dict(size=32, train_views=6, test_views=0)  # with _tiny_worker's presets: a 30-step fit, a 1-epoch IRPRN


def _tiny_worker() -> None:
    """Every Ray worker of these tests (Ray's worker_process_setup_hook): the category task
    applies ``_tiny_presets`` first. Wrapped, not applied here, so that the workers that run no
    task (the progress queue's, spares) skip the training imports."""
    from training import fanout

    task = fanout._train_task

    def tiny_task(*args, **kwargs):
        _tiny_presets()
        return task(*args, **kwargs)

    fanout._train_task = tiny_task


def _tiny_presets() -> None:
    """The demo preset shrunk to test size, and a category named ``flaky`` whose rvss stage
    kills its worker on the first attempt (Ray's max_retries) and raises RuntimeError on the
    second (retry_exceptions)."""
    from models.irprn import IRPRNConfig
    from training import irprn, pipeline, splats
    from training.calibrate import CalibConfig

    splats.PRESETS["demo"] = splats.preset("demo", **{**TINY_SPLATS, "image_size": None, "iterations": 30,
                                                      "refine_start": 10, "refine_stop": 25})
    irprn.PRESETS["demo"] = irprn.preset("demo", **{**TINY_IRPRN, "epochs": 1,
                                                    "model": replace(IRPRNConfig(), input_size=112)})
    pipeline.CALIBRATION["demo"] = CalibConfig(max_views=8)
    rvss = pipeline._BY_NAME["rvss"]
    if rvss.run.__name__ == "flaky_rvss":
        return

    def flaky_rvss(ctx: pipeline.StageContext) -> dict:
        if ctx.category.name == "flaky":
            marks = ctx.work / "attempts"
            seen = len(marks.read_text()) if marks.exists() else 0
            marks.write_text("x" * (seen + 1))
            if seen == 0:
                os._exit(1)  # the worker process dies mid-training
            if seen == 1:
                raise RuntimeError("lost the device (simulated)")
        return rvss.run(ctx)

    pipeline._BY_NAME["rvss"] = pipeline.Stage("rvss", flaky_rvss, rvss.doc)


def test_share_fills_the_cores_without_idle_waves_and_packs_gpus() -> None:
    assert share(1, cpus=2, node_cpus=2) == Share(cpus=2.0, threads=2, gpus=0.0)
    assert share(2, cpus=2, node_cpus=2) == Share(cpus=1.0, threads=1, gpus=0.0)
    assert share(3, cpus=16, node_cpus=16) == Share(cpus=5.0, threads=5, gpus=0.0)
    # More tasks than CPUs: all three at once on one thread each, not two and then one alone.
    three = share(3, cpus=2, node_cpus=2)
    assert three == Share(cpus=0.6666, threads=1, gpus=0.0) and 3 * three.cpus <= 2
    assert share(5, cpus=2, node_cpus=2).cpus == 0.5  # at most two one-thread tasks per CPU: four at a time
    assert share(40, cpus=16, node_cpus=16) == Share(cpus=0.5, threads=1, gpus=0.0)
    assert share(2, cpus=64, node_cpus=8).cpus == 8  # a task runs on one node
    assert share(3, cpus=16, node_cpus=16, gpus=4).gpus == 1.0
    assert share(3, cpus=16, node_cpus=16, gpus=2).gpus == 0.5  # 4 half-GPU slots for 3 tasks
    assert share(3, cpus=16, node_cpus=16, gpus=1).gpus == 0.3333
    with pytest.raises(ValueError):
        share(0, cpus=2, node_cpus=2)


def test_tasks_are_sized_by_the_nodes_that_have_gpus() -> None:
    """A 32-core CPU-only node beside an 8-core node with one GPU: sized by the larger node, two
    tasks asked 16 CPUs and half a GPU each, which no node has, and Ray waited for ever."""
    from training.fanout import task_pool

    nodes = [{"Alive": True, "Resources": {"CPU": 32.0}}, {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]
    cpus, node_cpus, gpus = task_pool(nodes)
    assert (cpus, node_cpus, gpus) == (8.0, 8.0, 1.0)
    assert share(2, cpus, node_cpus, gpus) == Share(cpus=4.0, threads=4, gpus=0.5)  # both fit on the GPU node
    assert task_pool(nodes[:1]) == (32.0, 32.0, 0.0)  # no GPU: every node counts
    assert task_pool([{"Alive": True, "Resources": {"CPU": 4.0}}, *nodes[:1]]) == (36.0, 32.0, 0.0)


def test_without_ray_several_categories_name_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ModuleNotFoundError, as where it is not installed
    assert main(["train", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "B")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rpe-pad train: error: ") and 'pip install "rpe-pad[cluster]"' in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert main(["train", str(tmp_path / "a"), "--out", str(tmp_path / "B"), "--ray", "auto"]) == 2
    assert "[cluster]" in capsys.readouterr().err


def test_one_category_trains_here_without_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training import pipeline

    monkeypatch.setitem(sys.modules, "ray", None)
    calls = []
    monkeypatch.setattr(pipeline, "run_train", lambda *args, **kwargs: calls.append((args, kwargs)) or {})
    assert main(["train", str(tmp_path / "cat"), "--out", str(tmp_path / "B"), "--stages", "splats", "--quiet"]) == 0
    assert calls == [((tmp_path / "cat", tmp_path / "B"), {"preset": "cpu", "stages": ["splats"], "progress": False,
                                                          "validation_dir": None, "device": "auto",
                                                          "false_alarm_rate": None})]


def test_several_categories_are_refused_before_ray_when_the_arguments_are_wrong(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # refused before Ray is needed
    out = ["--out", str(tmp_path / "B")]
    assert main(["train", str(tmp_path / "x" / "cat"), str(tmp_path / "y" / "cat"), *out]) == 2
    assert "'cat' is given 2 times" in capsys.readouterr().err  # both would write B/cat
    assert main(["train", str(tmp_path / "a"), str(tmp_path / "b"), *out, "--stages", "splats,fit"]) == 2
    assert "unknown stage(s) ['fit']" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "a"), str(tmp_path / "b"), *out, "--validation", str(tmp_path)]) == 2
    assert "train that category alone" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "a"), str(tmp_path / "b"), *out, "--false-alarm-rate", "0.5"]) == 2
    assert "--false-alarm-rate 0.5: give the share" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "a"), str(tmp_path / "b"), *out, "--preset", "demo",
                 "--false-alarm-rate", "0.05"]) == 2
    assert "use the cpu or paper preset" in capsys.readouterr().err
    assert not (tmp_path / "B").exists()


def test_an_unreachable_or_malformed_ray_address_is_refused_before_ray_init() -> None:
    """Ray would retry a dead address for minutes with only its own C++ warnings."""
    class NoRay:
        def init(self, **kwargs):
            raise AssertionError("ray.init reached")

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ValueError, match="nothing answers there"):
            connect(NoRay(), address)
    for address in ("bogus", "host:port", "bogus:0", ":6379"):
        with pytest.raises(ValueError, match="give auto, HOST:PORT"):
            connect(NoRay(), address)
    with socket.socket() as listening:  # an address that answers goes on to ray.init
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        with pytest.raises(AssertionError, match="ray.init reached"):
            connect(NoRay(), f"127.0.0.1:{listening.getsockname()[1]}")


@pytest.mark.slow(seconds=70)
def test_fan_out_on_a_local_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """Two tiny categories from a list file, at once on a local Ray with 2 CPUs: one verified
    bundle after a lost worker and an exception (resumed), one malformed category reported and
    not retried, progress as it happens, exit 1. (A plain first-attempt success is the
    one-category path's; ``share`` for three and more tasks is tested above.)"""
    ray = pytest.importorskip("ray")
    from models.bundle import open_bundle
    from training.synth import SynthConfig, generate

    cats = tmp_path / "categories"
    generate(cats / "flaky", SynthConfig(seed=4, **TINY_SYNTH), progress=False)
    shutil.copytree(cats / "flaky", cats / "broken")
    (cats / "broken" / "train" / "transforms.json").write_text('{"camera_angle_x": 0.69, "frames": [')
    listed = tmp_path / "categories.txt"
    listed.write_text(f"# this week's parts\n{cats / 'flaky'}\n\n  {cats / 'broken'}  \n")

    real_init, seen = ray.init, {}

    def init(**kwargs):  # the CLI's own local instance, on 2 CPUs whatever this machine has, with the tiny presets
        seen.update(kwargs)
        # The hook lives in this test module: the workers import it from the checkout's root
        # (an installed package needs no path; the tests are not one).
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        return real_init(**{**kwargs, "num_cpus": 2}, runtime_env={"worker_process_setup_hook": _tiny_worker,
                                                                     "env_vars": {"PYTHONPATH": path}})

    monkeypatch.setattr(ray, "init", init)
    bundles = tmp_path / "bundles"
    assert main(["train", f"@{listed}", "--out", str(bundles), "--preset", "demo"]) == 1
    out, err = capsys.readouterr()
    assert seen == {"num_cpus": available_cpus(), "include_dashboard": False, "logging_level": 40,
                    "log_to_driver": False}
    assert not ray.is_initialized()  # the CLI shut down the instance it started

    assert "2 categories on a local Ray instance (2 CPUs): 1 CPU(s) and 1 torch thread(s) per category; " \
           "2 at a time; up to 2 retries each" in out
    lines = [line.split("] ", 1)[1] for line in out.splitlines() if re.match(r"\[ *\d+\.\d s\] ", line)]
    # flaky: its worker died, the retry raised, the third attempt resumed and finished.
    flaky = [line for line in lines if line.startswith("flaky: ")]
    assert len(flaky) == 5, flaky
    assert flaky[0].startswith("flaky: started (on ")
    assert flaky[1].startswith("flaky: started (attempt 2 of 3, on ")
    assert flaky[2] == "flaky: attempt 2 failed: RuntimeError: lost the device (simulated); retrying"
    assert flaky[3].startswith("flaky: started (attempt 3 of 3, on ")
    assert re.fullmatch(rf"flaky: done in \d+\.\d s \(3 attempts, the last \d+\.\d s\) on 1 torch thread\(s\) "
                        rf"-> {re.escape(str(bundles / 'flaky'))}", flaky[4]), flaky[4]  # its share: 1 of 2 CPUs
    # broken: the user's mistake, one attempt, the reason named.
    broken = [line for line in lines if line.startswith("broken: ")]
    assert len(broken) == 2 and broken[0].startswith("broken: started (")
    assert re.fullmatch(r"broken: failed: DataError: .*transforms\.json.* \(not retried: fix the category or the "
                        r"arguments\)", broken[1]), broken[1]
    ours = [line for line in err.splitlines() if line.startswith("rpe-pad train:")]  # Ray may add its own
    assert len(ours) == 1 and ours[0].startswith(f"rpe-pad train: broken ({cats / 'broken'}) failed: DataError: ")

    # The summaries: each category's stages (flaky resumed: its first stages reused), then one row per category.
    sections = dict(re.findall(r"\n(\w+):\n(\| stage \|.*?\| total \|[^\n]*)", out, flags=re.S))
    assert set(sections) == {"flaky"}
    assert "| splats | skipped (valid output reused) |" in sections["flaky"]
    assert "| rvss | skipped" not in sections["flaky"]  # the stage that failed runs again
    assert re.search(r"\| flaky \| done \| \d+\.\d \| 3 \| ", out)
    assert "| broken | failed | | 1 | DataError: " in out

    # A verified bundle, assembled in place, nothing half-written.
    manifest = open_bundle(bundles / "flaky")  # hashes and sizes of every file
    assert manifest.category == "flaky" and manifest.training["preset"] == "demo"
    assert sorted(p.name for p in bundles.iterdir()) == [".work", "flaky"]
    assert not (bundles / ".work" / "broken").exists()
