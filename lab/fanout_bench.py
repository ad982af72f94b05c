"""`rpe-pad lab fanout-bench`: the training fan-out against training one category after another.

Issue 25's bar: three demo-preset synthetic categories on a local Ray, wall time no more than
1.2x the serial time on the 2-core machine, and three verified bundles. The categories are the
demo's (``training.demo.DEMO_SYNTH``: 128 px, 60 training views) with seeds 0, 1, 2, generated
once under ``OUT/categories`` and reused. Each run starts from empty bundles folders:

1. serial: ``run_train`` on each category in turn in this process, torch on every core (what
   `rpe-pad train` one category at a time does), into ``OUT/serial``;
2. Ray: ``training.fanout.train_many`` on a local Ray instance (one task per category with its
   CPU share, as `rpe-pad train A B C` does), into ``OUT/ray``; its wall time includes starting
   and stopping Ray and the workers' imports.

Every bundle of both runs is verified (``models.bundle.open_bundle``). Run it with nothing
else on the machine: anything else on the cores skews both times.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from lab.benchmarks import machine
from models.bundle import BundleError, open_bundle
from training.demo import DEMO_SYNTH
from training.fanout import available_cpus, train_many
from training.pipeline import run_train
from training.synth import generate

BAR = 1.2  # issue 25: Ray's wall time at most this many times the serial one


def categories(out: Path, n: int) -> list[Path]:
    """``n`` demo categories (seeds 0 .. n-1) under ``out``, generated when missing or made
    with other settings."""
    folders = []
    for seed in range(n):
        synth = replace(DEMO_SYNTH, seed=seed)
        folder = out / f"synth_seed{seed}"
        marker = folder / "synth.json"
        wanted = json.loads(json.dumps(asdict(synth)))
        same = marker.is_file() and json.loads(marker.read_text()).get("config") == wanted
        if not same:
            shutil.rmtree(folder, ignore_errors=True)
            generate(folder, synth, progress=False)
        folders.append(folder)
    return folders


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _verified(bundles: Path, folders: list[Path]) -> dict[str, str]:
    """Category -> "verified", or the reason its bundle is refused."""
    result = {}
    for folder in folders:
        try:
            open_bundle(bundles / folder.name)
            result[folder.name] = "verified"
        except BundleError as exc:
            result[folder.name] = str(exc)
    return result


def fanout_bench(out: Path, n: int = 3, preset: str = "demo", echo: Callable[[str], None] = print) -> dict:
    """Both runs, their wall times and ratio, and every bundle's verification."""
    folders = categories(out / "categories", n)
    serial_dir, ray_dir = _fresh(out / "serial"), _fresh(out / "ray")
    serial: dict[str, float] = {}
    start = time.perf_counter()
    for folder in folders:
        t0 = time.perf_counter()
        run_train(folder, serial_dir, preset=preset, progress=False)
        serial[folder.name] = round(time.perf_counter() - t0, 1)
        echo(f"serial: {folder.name} done in {serial[folder.name]:.1f} s")
    serial_s = time.perf_counter() - start
    start = time.perf_counter()
    outcomes = train_many(folders, ray_dir, preset=preset, echo=echo)
    ray_s = time.perf_counter() - start
    ratio = ray_s / serial_s
    bundles = {"serial": _verified(serial_dir, folders), "ray": _verified(ray_dir, folders)}
    return {
        "preset": preset, "categories": [f.name for f in folders], "cpus": available_cpus(), "machine": machine(),
        "serial_s": round(serial_s, 1), "ray_s": round(ray_s, 1), "ratio": round(ratio, 3), "bar": BAR,
        "met": ratio <= BAR and all(v == "verified" for v in bundles["ray"].values()),  # and Ray's bundles verified
        "serial_per_category_s": serial,
        "ray_per_category": {o.category: {"seconds": o.seconds, "attempts": o.attempts, "threads": o.threads,
                                          "reason": o.reason} for o in outcomes},
        "bundles": bundles,
    }


def summary(result: dict) -> str:
    verified = sum(v == "verified" for run in result["bundles"].values() for v in run.values())
    return (f"serial {result['serial_s']:.1f} s, Ray {result['ray_s']:.1f} s: ratio {result['ratio']:.3f} "
            f"(bar <= {result['bar']}: {'met' if result['met'] else 'not met'}); {verified} of "
            f"{2 * len(result['categories'])} bundles verified, on {result['cpus']} CPUs")
