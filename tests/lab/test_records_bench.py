"""`rpe-pad lab records-bench`: the interleaved on/off comparison against the real service
(the tiny bundle), the pairs' order and checks with the runs replaced, the history's fill."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from lab import records_bench


@pytest.fixture(scope="module")
def query(tiny_synth: Path) -> Path:
    return min((tiny_synth / "test" / "good").glob("*.png"))


@pytest.mark.slow(seconds=35)
def test_interleaved_runs_both_services_at_once_in_abba_segments(tiny_release: Path, query: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    started = []
    real = records_bench.Service

    def service(*args, **env):
        started.append(env["RPEPAD_RECORDS"])
        return real(*args, **env)

    monkeypatch.setattr(records_bench, "Service", service)
    report = records_bench.interleaved(tiny_release.parent, query, tiny_release.name, seconds=1, segment=0.25,
                                       warmup=0.2)
    assert started == ["true", "false"]
    assert report["order"] == ["on", "off", "off", "on"] * 2 and report["segments"] == 8
    assert report["requests"]["on"] >= 4 and report["requests"]["off"] >= 4  # at least one a segment
    assert report["on_vs_off_pct"] == pytest.approx(100 * (report["on_p50_ms"] / report["off_p50_ms"] - 1), abs=0.06)
    assert report["met"] == (abs(report["on_vs_off_pct"]) <= 10.0)
    with pytest.raises(ValueError, match="segment"):
        records_bench.interleaved(tiny_release.parent, query, tiny_release.name, seconds=1, segment=2)


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


def test_the_history_fill_writes_records_whose_overlay_draws(tmp_path: Path) -> None:
    from service.records import Filters, RecordStore

    records_bench.fill(tmp_path, 30, ("Lego", "other"), side=48, query_bytes=1000)
    store = RecordStore(f"sqlite:///{tmp_path / 'records.sqlite3'}")
    try:
        assert store.count() == 30 and store.count(Filters(category="Lego")) == 15
        newest = store.list(Filters(category="Lego"), limit=1)[0]
        assert newest.has_overlay and newest.has_query
        record = store.get(newest.id)
        assert Image.open(io.BytesIO(record.reference_png)).size == (48, 48)
        assert Image.open(io.BytesIO(record.overlay())).format == "PNG"
    finally:
        store.engine.dispose()
