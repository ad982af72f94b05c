"""`rpe-pad lab fanout-bench`'s bookkeeping, with the two trainings replaced by stand-ins (the
measurement itself is minutes of training: docs/DEPLOY.md, "Training fan-out on Ray")."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from lab import fanout_bench
from models.bundle import BundleError
from training.fanout import Outcome


def test_both_runs_start_empty_and_every_bundle_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout_bench, "DEMO_SYNTH", replace(fanout_bench.DEMO_SYNTH, size=16, train_views=2,
                                                            test_views=0))
    serial, fanned = [], []

    def run_train(folder: Path, bundles: Path, preset: str, progress: bool) -> dict:
        assert not (bundles / "stale").exists() and preset == "demo"
        serial.append(folder.name)
        return {}

    def train_many(folders, bundles: Path, preset: str, echo) -> list[Outcome]:
        assert serial[-3:] == [f.name for f in folders] and list(bundles.iterdir()) == []  # after the serial run, empty
        fanned.extend(f.name for f in folders)
        return [Outcome(f.name, f, reports={}, seconds=1.0, attempts=1, threads=1) for f in folders]

    def open_bundle(path: Path) -> None:
        if path.parent.name == "ray" and path.name == "synth_seed1":
            raise BundleError(f"{path}: no manifest.json")

    monkeypatch.setattr(fanout_bench, "run_train", run_train)
    monkeypatch.setattr(fanout_bench, "train_many", train_many)
    monkeypatch.setattr(fanout_bench, "open_bundle", open_bundle)
    for run in ("serial", "ray"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "stale").write_text("from an earlier run")
    result = fanout_bench.fanout_bench(tmp_path, n=3, echo=lambda line: None)
    assert fanned == serial == ["synth_seed0", "synth_seed1", "synth_seed2"]
    assert result["bar"] == 1.2 and result["ratio"] > 0 and not result["met"]  # a bundle is missing: not met
    assert result["bundles"]["serial"] == dict.fromkeys(serial, "verified")
    assert result["bundles"]["ray"]["synth_seed1"].endswith("no manifest.json")
    assert "5 of 6 bundles verified" in fanout_bench.summary(result)
    # The categories are generated once and reused.
    marker = tmp_path / "categories" / "synth_seed0" / "synth.json"
    before = marker.stat().st_mtime_ns
    fanout_bench.fanout_bench(tmp_path, n=3, echo=lambda line: None)
    assert marker.stat().st_mtime_ns == before
