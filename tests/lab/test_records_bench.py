"""`rpe-pad lab records-bench`'s on/off pairs: one pair against the real service (the tiny
bundle), the order and the checks with the runs replaced."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import records_bench


@pytest.fixture(scope="module")
def query(tiny_synth: Path) -> Path:
    return min((tiny_synth / "test" / "good").glob("*.png"))


def test_a_pair_runs_each_side_on_its_own_service(tiny_release: Path, query: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    started = []
    real = records_bench.Service

    def service(*args, **env):
        started.append(env["RPEPAD_RECORDS"])
        return real(*args, **env)

    monkeypatch.setattr(records_bench, "Service", service)
    report = records_bench.overhead(tiny_release.parent, query, tiny_release.name, pairs=1, seconds=1, warmup=0.3)
    assert started == ["true", "false"]
    (row,) = report["pairs"]
    assert row["order"] == ["on", "off"] and row["requests"]["on"] >= 1 and row["requests"]["off"] >= 1
    assert row["on_p50_ms"] > 0 and row["off_p50_ms"] > 0
    assert row["on_vs_off_pct"] == pytest.approx(100 * (row["on_p50_ms"] / row["off_p50_ms"] - 1), abs=0.06)


def test_pairs_alternate_and_the_bar_is_every_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    p50 = iter([110.0, 100.0, 100.0, 105.0, 120.0, 100.0])  # in the order the runs happen

    def run(bundles, query, category, records, seconds, warmup):
        return {"p50_ms": next(p50), "requests": 9, "records": records}

    monkeypatch.setattr(records_bench, "_p50", run)
    report = records_bench.overhead(Path("b"), Path("q.png"), "c", pairs=3)
    assert [r["order"] for r in report["pairs"]] == [["on", "off"], ["off", "on"], ["on", "off"]]
    assert [r["on_vs_off_pct"] for r in report["pairs"]] == [10.0, 5.0, 20.0]
    assert report["met"] is False  # the third pair is 20 % over
    p50 = iter([110.0, 100.0, 100.0, 105.0])
    assert records_bench.overhead(Path("b"), Path("q.png"), "c", pairs=2)["met"] is True


def test_a_run_with_failed_requests_is_not_a_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    class Up:
        url = "http://127.0.0.1:1"

        def __init__(self, *args, **env):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    async def load(url, category, image, clients, seconds):
        return {"errors_5xx": 0, "requests": 4, "status": {"200": 3, "404": 1}, "latency_ms": {"p50": 1.0}}

    monkeypatch.setattr(records_bench, "Service", Up)
    monkeypatch.setattr(records_bench, "run_load", load)
    with pytest.raises(RuntimeError, match="not every request answered 200"):
        records_bench.overhead(Path("b"), Path("q.png"), "c", pairs=1, seconds=1, warmup=0)
