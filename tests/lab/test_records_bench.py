"""`rpe-pad lab records-bench`'s on/off pairs against the real service (the tiny bundle)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import records_bench


@pytest.fixture(scope="module")
def query(tiny_synth: Path) -> Path:
    return min((tiny_synth / "test" / "good").glob("*.png"))


def test_overhead_pairs_alternate_and_each_run_is_its_own_service(
        tiny_release: Path, query: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = []
    real = records_bench.Service

    def service(*args, **env):
        started.append(env["RPEPAD_RECORDS"])
        return real(*args, **env)

    monkeypatch.setattr(records_bench, "Service", service)
    report = records_bench.overhead(tiny_release.parent, query, tiny_release.name, pairs=2, seconds=1, warmup=0.3)
    assert started == ["true", "false", "false", "true"]  # on/off, then off/on
    assert [r["order"] for r in report["pairs"]] == [["on", "off"], ["off", "on"]]
    for row in report["pairs"]:
        assert row["on_p50_ms"] > 0 and row["off_p50_ms"] > 0 and row["requests"]["on"] >= 1
        assert row["on_vs_off_pct"] == pytest.approx(100 * (row["on_p50_ms"] / row["off_p50_ms"] - 1), abs=0.06)
    assert report["met"] == all(abs(r["on_vs_off_pct"]) <= 10 for r in report["pairs"])


def test_a_run_with_failed_requests_is_not_a_figure(tiny_release: Path, query: Path) -> None:
    with pytest.raises(RuntimeError, match="not every request answered 200"):
        records_bench.overhead(tiny_release.parent, query, "no-such-category", pairs=1, seconds=0.5, warmup=0)
