"""Inspection records through the real app and the tiny bundle: stored, read back, filtered,
exported, given feedback, limited, kept across restarts, and never in the inspection's way."""

from __future__ import annotations

import base64
import csv
import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings

PROBLEM = "application/problem+json"


@contextmanager
def _served(bundles: Path, data_dir: Path, **overrides) -> Iterator[TestClient]:
    """The app started (lifespan) and ready."""
    settings = Settings(bundles=bundles, device="cpu", max_wait_ms=20, data_dir=data_dir, **overrides)
    with TestClient(create_app(settings)) as client:
        end = time.time() + 120
        while client.get("/readyz").status_code != 200:
            assert time.time() < end, client.get("/readyz").json()
            time.sleep(0.2)
        yield client


def _flush(client: TestClient) -> None:
    assert client.app.state.svc.records.flush(timeout=60)


def _inspect(client: TestClient, category: str, data: bytes, name: str = "q.png", **form):
    r = client.post("/inspect", files={"file": (name, data, "image/png")}, data={"category": category, **form})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def images(tiny_synth: Path) -> dict[str, bytes]:
    good = min((tiny_synth / "test" / "good").glob("*.png"))
    bad = min(p for p in (tiny_synth / "test").glob("*/*.png") if p.parent.name != "good")
    return {"good": good.read_bytes(), "bad": bad.read_bytes()}


def test_every_inspection_is_stored_and_read_back(tiny_release: Path, tmp_path: Path, images) -> None:
    category = tiny_release.name
    with _served(tiny_release.parent, tmp_path) as c:
        out = _inspect(c, category, images["good"], name="part-17.png", include_overlay="true", include_reference="true")
        assert out["reference_png"]  # answered, and not stored: a record's result holds no images
        batch = c.post("/inspect/batch", data={"category": category},
                       files=[("files", ("a.png", images["good"], "image/png")), ("files", ("b.png", images["bad"], "image/png"))])
        assert batch.status_code == 200
        _flush(c)
        page = c.get("/inspections").json()
        assert page["total"] == 3 and len(page["items"]) == 3
        assert page["items"][-1]["id"] == out["record_id"]  # newest first
        detail = c.get(f"/inspections/{out['record_id']}").json()
        info = c.get("/categories").json()["categories"][0]
        assert detail["request_id"] == out["request_id"] and detail["filename"] == "part-17.png"
        assert detail["verdict"] == out["verdict"] and detail["score"] == pytest.approx(out["score"])
        assert detail["bundle_id"] == info["bundle_id"] and len(detail["bundle_sha256"]) == 64
        assert detail["bundle_sha256"] == info["bundle_sha256"]
        assert detail["result"]["pose"] == out["pose"]
        assert not {"overlay_png", "reference_png", "anomaly_map_png"} & set(detail["result"])
        from sqlalchemy import text
        with c.app.state.svc.records.engine.begin() as conn:  # stored so (the route also strips older records')
            stored = conn.execute(text("SELECT result_json FROM inspections WHERE id = :i"),
                                  {"i": out["record_id"]}).scalar_one()
        assert "reference_png" not in stored and "overlay_png" not in stored and '"verdict"' in stored
        # Times are UTC and say so (a browser would read a naive time as local).
        created = datetime.fromisoformat(detail["created"])
        assert created.tzinfo is not None and created.utcoffset() == timedelta(0)
        assert abs(created - datetime.now(UTC)) < timedelta(minutes=5)
        overlay = c.get(detail["overlay_url"])
        assert overlay.headers["content-type"] == "image/png"
        # Drawn from the record's evidence, it is the figure the answer had (8-bit images
        # and a 16-bit map: at most a level's rounding here and there).
        stored = np.asarray(Image.open(io.BytesIO(overlay.content)).convert("RGB"), dtype=np.int16)
        live = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["overlay_png"]))).convert("RGB"), dtype=np.int16)
        assert stored.shape == live.shape and stored.shape[1] > 2 * Image.open(io.BytesIO(images["good"])).size[0]
        assert np.abs(stored - live).mean() < 0.1 and np.quantile(np.abs(stored - live), 0.999) <= 2
        query = c.get(detail["query_url"])
        assert query.content == images["good"] and query.headers["content-type"] == "image/png"
        batch_ids = [r["record_id"] for r in batch.json()["results"]]
        assert {i["id"] for i in page["items"]} == {out["record_id"], *batch_ids}
        # A stored image that no longer decodes: a problem naming the record, counted; the rest reads on.
        with c.app.state.svc.records.engine.begin() as conn:
            conn.execute(text("UPDATE inspections SET map_png = :b WHERE id = :i"),
                         {"b": b"\x89PNG cut", "i": batch_ids[0]})
        broken = c.get(f"/inspections/{batch_ids[0]}/overlay.png")
        assert broken.status_code == 500 and broken.headers["content-type"] == PROBLEM
        assert f"inspection {batch_ids[0]}: its stored images cannot be drawn" in broken.json()["detail"]
        assert 'rpepad_records_failed_total{reason="overlay"} 1.0' in c.get("/metrics").text
        assert c.get(f"/inspections/{batch_ids[0]}").json()["verdict"] == batch.json()["results"][0]["verdict"]


def test_feedback_filters_pagination_and_csv(tiny_release: Path, tmp_path: Path, images, records_url: str) -> None:
    category = tiny_release.name
    with _served(tiny_release.parent, tmp_path, database_url=records_url) as c:
        ids = [_inspect(c, category, images[k])["record_id"] for k in ("good", "bad", "good", "bad")]
        _flush(c)
        r = c.post(f"/inspections/{ids[1]}/feedback", json={"label": "false_alarm", "note": "dust on the lens"})
        assert r.status_code == 200 and r.json()["feedback"] == "false_alarm"
        assert r.json()["feedback_note"] == "dust on the lens"
        assert datetime.fromisoformat(r.json()["feedback_at"]).utcoffset() == timedelta(0)
        c.post(f"/inspections/{ids[2]}/feedback", json={"label": "confirmed_defect"})
        assert [i["id"] for i in c.get("/inspections?feedback=false_alarm").json()["items"]] == [ids[1]]
        assert c.get("/inspections?feedback=any").json()["total"] == 2
        assert c.get("/inspections?feedback=none").json()["total"] == 2
        assert c.get("/inspections", params={"category": "other"}).json()["total"] == 0
        verdicts = [i["verdict"] for i in c.get("/inspections").json()["items"]]
        for v in set(verdicts):
            assert c.get("/inspections", params={"verdict": v}).json()["total"] == verdicts.count(v)
        later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
        earlier = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        assert c.get("/inspections", params={"since": later}).json()["total"] == 0
        assert c.get("/inspections", params={"since": earlier, "until": later}).json()["total"] == 4
        first, second = (c.get("/inspections", params={"limit": 3, "offset": o}).json() for o in (0, 3))
        assert len(first["items"]) == 3 and len(second["items"]) == 1 and first["total"] == 4
        assert [i["id"] for i in first["items"] + second["items"]] == ids[::-1]
        rows = list(csv.DictReader(io.StringIO(c.get("/inspections.csv").text)))
        assert [row["id"] for row in rows] == ids[::-1] and rows[2]["feedback"] == "false_alarm"
        for row in rows:  # the pose check, as the record's result holds it
            check = c.get(f"/inspections/{row['id']}").json()["result"]["verification"]
            assert row["pose_verified"] == str(check["verified"]).lower()
            assert row["pose_check_reason"] == check["reason"]
            assert float(row["silhouette_iou"]) == pytest.approx(check["silhouette_iou"])
        assert rows[2]["feedback_note"] == "dust on the lens"
        # A note a spreadsheet would run as a formula is exported as text.
        c.post(f"/inspections/{ids[3]}/feedback", json={"label": "false_alarm", "note": "=HYPERLINK(\"x\")"})
        rows = list(csv.DictReader(io.StringIO(c.get("/inspections.csv").text)))
        assert rows[0]["feedback_note"] == "'=HYPERLINK(\"x\")" and rows[2]["feedback_note"] == "dust on the lens"
        # The operator's mistakes get problems, not 500s.
        for bad in ({"label": "maybe"}, {"note": "no label"}, {"label": "false_alarm", "note": "x" * 3000},
                    {"label": "false_alarm", "lable": "x"}):  # a misspelt field is refused, not dropped
            r = c.post(f"/inspections/{ids[0]}/feedback", json=bad)
            assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
        assert c.get(f"/inspections/{ids[0]}").json()["feedback"] is None
        # So is a misspelt or repeated filter: it would list every record without a word.
        for path, params in (("/inspections", {"verdcit": "normal"}), ("/inspections.csv", {"limit": 1}),
                             (f"/inspections/{ids[0]}", {"x": 1}), ("/inspections", [("verdict", "normal")] * 2)):
            r = c.get(path, params=params)
            assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, path
            assert ("not read by" in r.json()["detail"]) != ("more than once" in r.json()["detail"])
        assert c.post(f"/inspections/{'0' * 32}/feedback", json={"label": "false_alarm"}).status_code == 404
        assert c.get("/inspections/not-an-id").status_code == 404
        assert c.get("/inspections", params={"verdict": "broken"}).status_code == 422
        empty = c.get("/inspections", params={"since": later, "until": earlier})  # an empty range, not an error
        assert empty.status_code == 200 and empty.json()["total"] == 0
        # Times at the ends of the calendar (found by schemathesis): clamped, not a 500.
        ends = c.get("/inspections", params={"since": "0001-01-01T00:00:00+01:00", "until": "9999-12-31T23:59:59-01:00"})
        assert ends.status_code == 200 and ends.json()["total"] == len(ids)
        assert c.get("/inspections", params={"limit": 0}).status_code == 422
        # A correction, then a clear: the record says what it is now, and keeps what was said before.
        corrected = c.post(f"/inspections/{ids[1]}/feedback", json={"label": "confirmed_defect", "note": "a real burr",
                                                                     "by": "Ana (QA, badge 417)"})
        assert corrected.json()["feedback"] == "confirmed_defect" and corrected.json()["feedback_by"] == "Ana (QA, badge 417)"
        assert [(h["label"], h["note"], h["by"]) for h in corrected.json()["feedback_history"]] == [
            ("false_alarm", "dust on the lens", None)]
        row = next(r for r in csv.DictReader(io.StringIO(c.get("/inspections.csv").text)) if r["id"] == ids[1])
        assert row["feedback_by"] == "Ana (QA, badge 417)"
        listed = c.get("/inspections", params={"feedback": "confirmed_defect"}).json()["items"]
        assert {i["id"]: i["feedback_by"] for i in listed} == {ids[1]: "Ana (QA, badge 417)", ids[2]: None}
        for bad in ("", "x" * 101, "two\nlines"):  # who said it: one line, named
            r = c.post(f"/inspections/{ids[1]}/feedback", json={"label": "false_alarm", "by": bad})
            assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, bad
        cleared = c.post(f"/inspections/{ids[1]}/feedback", json={"label": None}).json()
        assert cleared["feedback"] is None and cleared["feedback_note"] is None and cleared["feedback_by"] is None
        assert [h["label"] for h in cleared["feedback_history"]] == ["false_alarm", "confirmed_defect"]
        assert cleared["feedback_history"][-1]["by"] == "Ana (QA, badge 417)"  # the word keeps who said it
        assert all(datetime.fromisoformat(h["at"]).utcoffset() == timedelta(0) for h in cleared["feedback_history"])
        assert ids[1] in [i["id"] for i in c.get("/inspections", params={"feedback": "none"}).json()["items"]]
        # A clear with its reason: the reason is kept (it was dropped without a word), and goes
        # to the history with the next word.
        why = c.post(f"/inspections/{ids[1]}/feedback", json={"label": None, "note": "mis-click"}).json()
        assert why["feedback"] is None and why["feedback_note"] == "mis-click"
        again = c.post(f"/inspections/{ids[1]}/feedback", json={"label": "false_alarm"}).json()
        assert [(h["label"], h["note"]) for h in again["feedback_history"]][-1] == (None, "mis-click")
        # Pages by cursor: a record that arrives between two pages neither repeats a row (as an
        # offset did) nor hides one; a cursor whose record is gone says so.
        first = c.get("/inspections", params={"limit": 3}).json()
        assert [i["id"] for i in first["items"]] == ids[:0:-1] and first["next_before"] == ids[1]
        full = c.get("/inspections", params={"limit": 4}).json()  # a last page that is exactly full
        assert len(full["items"]) == 4 and full["next_before"] is None
        newer = _inspect(c, category, images["good"])["record_id"]
        _flush(c)
        second = c.get("/inspections", params={"limit": 3, "before": first["next_before"]}).json()
        assert [i["id"] for i in second["items"]] == [ids[0]] and second["next_before"] is None
        assert second["total"] == 5 and newer not in [i["id"] for i in first["items"] + second["items"]]
        assert c.get("/inspections", params={"before": "0" * 32}).status_code == 404
        assert c.get("/inspections", params={"before": "nope"}).status_code == 422


@pytest.mark.slow(seconds=6)
def test_retention_and_restart(tiny_release: Path, tmp_path: Path, images) -> None:
    category = tiny_release.name
    with _served(tiny_release.parent, tmp_path, records_max_count=3) as c:
        ids = [_inspect(c, category, images["good"])["record_id"] for _ in range(5)]
        _flush(c)
        assert [i["id"] for i in c.get("/inspections").json()["items"]] == ids[:1:-1]  # the newest 3
        assert c.get(f"/inspections/{ids[0]}").status_code == 404
        c.post(f"/inspections/{ids[4]}/feedback", json={"label": "confirmed_defect"})
    with _served(tiny_release.parent, tmp_path, records_max_count=3) as c:  # a restart
        page = c.get("/inspections").json()
        assert [i["id"] for i in page["items"]] == ids[:1:-1] and page["items"][0]["feedback"] == "confirmed_defect"
        store = c.app.state.svc.records
        store.max_age_days = 1.0
        assert store.enforce_retention(now=datetime.now(UTC) + timedelta(days=2)) == 3  # age limit
        assert c.get("/inspections").json()["total"] == 0


def test_the_count_limit_holds_when_the_age_step_fails(tmp_path: Path) -> None:
    """An age limit whose cutoff is no date (``RPEPAD_RECORDS_MAX_AGE_DAYS`` is now bounded at
    start) made every retention run fail, and the count limit with it."""
    from service.records import RecordStore, new_id

    store = RecordStore(f"sqlite:///{tmp_path / 'records.sqlite3'}", max_count=2, max_age_days=1e300)
    store.start()
    try:
        for _ in range(4):
            store.submit(_pending(new_id()))
        assert store.flush(timeout=30)
        with pytest.raises(OverflowError):
            store.enforce_retention()
        assert store.count() == 2  # the newest 2, kept
    finally:
        store.stop()


def test_concurrent_requests_lose_nothing(tiny_release: Path, tmp_path: Path, images) -> None:
    category = tiny_release.name
    with _served(tiny_release.parent, tmp_path) as c:
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda i: _inspect(c, category, images["good" if i % 2 else "bad"]), range(12)))
        _flush(c)
        stored = {i["id"] for i in c.get("/inspections", params={"limit": 100}).json()["items"]}
        assert stored == {o["record_id"] for o in outs} and len(stored) == 12


def test_failed_and_blocked_writes_never_fail_an_inspection_nor_lose_its_record(tiny_release: Path, tmp_path: Path,
                                                                               images) -> None:
    category = tiny_release.name
    with _served(tiny_release.parent, tmp_path, records_queue=1) as c:
        store = c.app.state.svc.records
        gate = threading.Event()
        real_insert = store._insert
        store._insert = lambda items: (gate.wait(30), real_insert(items))[1]  # a writer stuck on a slow database
        outs = [_inspect(c, category, images["good"]) for _ in range(4)]  # answered while the writer is stuck
        assert all(o["verdict"] in ("normal", "anomalous", "review") for o in outs)
        assert 'rpepad_records_failed_total{reason="queue_full"}' in c.get("/metrics").text
        gate.set()
        _flush(c)
        store._insert = real_insert
        # Every answered inspection has its record; those that found the queue full lack their images.
        details = [c.get(f"/inspections/{o['record_id']}").json() for o in outs]
        assert [d["id"] for d in details] == [o["record_id"] for o in outs]
        assert any(d["overlay_url"] for d in details) and not all(d["overlay_url"] for d in details)

        with store.engine.begin() as conn:  # the database breaks under the service
            conn.exec_driver_sql("ALTER TABLE inspections RENAME TO moved_away")
        rid = _inspect(c, category, images["bad"])["record_id"]
        end = time.time() + 30
        while 'rpepad_records_failed_total{reason="write"}' not in c.get("/metrics").text:
            assert time.time() < end
            time.sleep(0.05)
        r = c.get("/inspections")  # the records say why they cannot answer; inspections go on
        assert r.status_code == 503 and r.headers["content-type"] == PROBLEM and "database failed" in r.json()["detail"]
        ready = c.get("/readyz")
        assert ready.status_code == 200 and "1 inspection record(s) waiting to be written" in ready.json()["detail"]
        assert (tmp_path / "records.journal").read_bytes()  # kept while the record waits
        with store.engine.begin() as conn:  # the database is back: the retry lands, images and all
            conn.exec_driver_sql("ALTER TABLE moved_away RENAME TO inspections")
        _flush(c)
        detail = c.get(f"/inspections/{rid}").json()
        assert detail["id"] == rid and detail["overlay_url"] and detail["query_url"]
        assert c.get("/readyz").json()["detail"] is None and (tmp_path / "records.journal").read_bytes() == b""


def test_records_need_the_key_and_can_be_off(tiny_release: Path, tmp_path: Path, images) -> None:
    category = tiny_release.name
    with _served(tiny_release.parent, tmp_path, api_key="s3cret") as c:
        r = c.post("/inspect", files={"file": ("q.png", images["good"], "image/png")}, data={"category": category},
                   headers={"X-API-Key": "s3cret"})
        record = r.json()["record_id"]
        _flush(c)
        for path in ("/inspections", f"/inspections/{record}", f"/inspections/{record}/overlay.png",
                     f"/inspections/{record}/query", "/inspections.csv"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"X-API-Key": "s3cret"}).status_code == 200, path
        assert c.post(f"/inspections/{record}/feedback", json={"label": "false_alarm"}).status_code == 401
    with _served(tiny_release.parent, tmp_path / "off", records=False) as c:
        assert _inspect(c, category, images["good"])["record_id"] is None
        r = c.get("/inspections")
        assert r.status_code == 503 and r.headers["content-type"] == PROBLEM and "off" in r.json()["detail"]
    with _served(tiny_release.parent, tmp_path, store_queries=False) as c:
        record = _inspect(c, category, images["good"])["record_id"]
        _flush(c)
        assert c.get(f"/inspections/{record}").json()["query_url"] is None
        assert c.get(f"/inspections/{record}/query").status_code == 404


def test_a_killed_service_keeps_every_answered_record(tmp_path: Path) -> None:
    """The journal line is written before the answer: records the writer never reached
    (a SIGKILL) are in the database after the next start, without their images."""
    import os

    from service.records import Pending, RecordStore, new_id, utc_now

    url, journal = f"sqlite:///{tmp_path / 'records.sqlite3'}", tmp_path / "records.journal"
    killed = RecordStore(url, journal=journal)
    killed.engine.dispose()
    killed._journal = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # as start() does, but no writer runs
    result = {"verdict": "anomalous", "score": 12.0, "threshold": 8.0, "normalised_score": 0.9}
    ids = [new_id() for _ in range(3)]
    for i in ids:
        assert killed.submit(Pending(id=i, created=utc_now(), request_id="r", category="Lego", filename="p.png",
                                     bundle_id="Lego@x", bundle_sha256="0" * 64, result=result,
                                     evidence=None, query_bytes=b"q", query_media_type="image/png"))
    os.write(killed._journal, b'{"id": "cut sho')  # the kill came mid-line
    os.close(killed._journal)

    store = RecordStore(url, journal=journal)
    store.start()
    try:
        for i in ids:
            record = store.get(i)
            assert record is not None and record.verdict == "anomalous" and record.score == 12.0
            assert not record.has_overlay and not record.has_query
        assert store.count() == 3 and journal.read_bytes() == b""
        # Written normally, the journal empties once the writer has caught up.
        store.submit(Pending(id=new_id(), created=utc_now(), request_id="r", category="Lego", filename=None,
                             bundle_id="Lego@x", bundle_sha256="0" * 64, result=result, evidence=None,
                             query_bytes=None, query_media_type=None))
        assert store.flush(timeout=30) and store.count() == 4 and journal.read_bytes() == b""
    finally:
        store.stop()


def test_failed_evidence_leaves_a_record_without_overlay_and_feedback_at_once_keeps_every_word(
        records_url: str) -> None:
    """A record whose evidence failed is kept without its overlay. Words on it from 16 threads
    at once: each is either current or in the history, in the order they landed (a
    read-append-write dropped the words of overlapping writes)."""
    from service.records import Pending, RecordStore, new_id, utc_now

    failures = []
    store = RecordStore(records_url, on_failure=failures.append)
    store.start()
    try:
        rid = new_id()
        store.submit(Pending(id=rid, created=utc_now(), request_id="r", category="Lego", filename=None,
                             bundle_id="Lego@x", bundle_sha256="0" * 64,
                             result={"verdict": "normal", "score": 3.0, "threshold": 8.0, "normalised_score": 0.2},
                             evidence=lambda: 1 / 0, query_bytes=None, query_media_type=None))
        assert store.flush(timeout=30)
        record = store.get(rid)
        assert record.verdict == "normal" and not record.has_overlay and record.overlay() is None
        assert failures == ["overlay"]
        labels = ("false_alarm", "confirmed_defect")
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: store.set_feedback(rid, labels[i % 2], f"n{i}"), range(48)))
        record = store.get(rid)
        history = json.loads(record.feedback_history)
        notes = [h["note"] for h in history] + [record.feedback_note]
        assert sorted(notes) == sorted(f"n{i}" for i in range(48))
        moments = [h["at"] for h in history]
        assert moments == sorted(moments) and len(set(moments)) == len(moments)
        assert moments[-1] < record.feedback_at.isoformat() + "Z"
    finally:
        store.stop()


def test_replicas_upgrading_one_table_together_both_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second replica read the columns before the first added them: its ALTER fails,
    the column is there, and it goes on."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from service import records
    from service.records import RecordStore, upgrade

    store = RecordStore(f"sqlite:///{tmp_path / 'records.sqlite3'}")
    store.start()
    store.stop()
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE inspections DROP COLUMN map_png"))
    assert upgrade(store.engine) == ["map_png"]  # the first replica
    real, calls = records._columns, []

    def stale(engine):  # the second replica's first look is from before the first one's ALTER
        calls.append(1)
        return real(engine) - {"map_png"} if len(calls) == 1 else real(engine)

    monkeypatch.setattr(records, "_columns", stale)
    assert upgrade(store.engine) == [] and len(calls) == 2
    monkeypatch.setattr(records, "_columns", lambda engine: real(engine) - {"map_png", "query_png"})
    with pytest.raises(OperationalError):  # a failed ALTER whose column is still missing is raised
        upgrade(store.engine)
    store.engine.dispose()


def test_a_table_of_an_earlier_version_is_upgraded_and_keeps_its_overlays(tmp_path: Path) -> None:
    """A table made before the overlay's evidence existed gets its columns at start; its
    rows keep the overlay drawn then, and new rows store evidence drawn on read."""
    from sqlalchemy import text

    from service.records import Evidence, Pending, RecordStore, new_id, upgrade, utc_now

    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    old = RecordStore(url)
    old.start()
    result = {"verdict": "normal", "score": 3.0, "threshold": 8.0, "normalised_score": 0.2}
    first = new_id()
    old.submit(Pending(id=first, created=utc_now(), request_id="r", category="Lego", filename=None, bundle_id="Lego@x",
                       bundle_sha256="0" * 64, result=result, evidence=None, query_bytes=None, query_media_type=None))
    assert old.flush(timeout=30)
    old.stop()
    with old.engine.begin() as conn:  # back to the earlier version's table, a drawn overlay in the row
        for column in ("query_png", "reference_png", "map_png"):
            conn.execute(text(f"ALTER TABLE inspections DROP COLUMN {column}"))
        conn.execute(text("UPDATE inspections SET overlay_png = :png"), {"png": b"drawn then"})
    old.engine.dispose()

    store = RecordStore(url)
    store.start()
    try:
        assert upgrade(store.engine) == []  # start() added them: nothing left to add
        assert store.get(first).has_overlay and store.get(first).overlay() == b"drawn then"
        rng = np.random.default_rng(0)
        second = new_id()
        store.submit(Pending(id=second, created=utc_now(), request_id="r", category="Lego", filename=None,
                             bundle_id="Lego@x", bundle_sha256="0" * 64, result=result,
                             evidence=lambda: Evidence.encode(rng.random((32, 40, 3)), rng.random((32, 40, 3)),
                                                              rng.random((32, 40))),
                             query_bytes=None, query_media_type=None))
        assert store.flush(timeout=30)
        record = store.get(second)
        assert record.overlay_png is None and record.has_overlay
        assert Image.open(io.BytesIO(record.overlay())).size[0] > 3 * 40
        assert [r.has_overlay for r in store.list()] == [True, True]
    finally:
        store.stop()


def test_the_evidence_map_keeps_the_decision_contour(tmp_path: Path) -> None:
    """The map is stored in 16 bits: every pixel keeps its side of the threshold (0.5) unless
    it lies within a step of it."""
    from service.records import MAP_SCALE, Evidence, _unit_map

    rng = np.random.default_rng(1)
    norm = rng.random((64, 64)).astype(np.float32)
    norm[0, :4] = [0.5, np.nextafter(np.float32(0.5), np.float32(1)), 0.49999, 0.500001]  # at and around the threshold
    back = _unit_map(Evidence.encode(np.zeros((64, 64, 3)), np.zeros((64, 64, 3)), norm).map_png)
    assert np.abs(back - norm).max() <= 1 / MAP_SCALE
    assert ((back > 0.5) == (norm > 0.5)).all()


def _pending(rid: str, filename: str | None = "p.png", **result):
    from service.records import Pending, utc_now

    return Pending(id=rid, created=utc_now(), request_id="r", category="Lego", filename=filename,
                   bundle_id="Lego@x", bundle_sha256="0" * 64,
                   result={"verdict": "normal", "score": 3.0, "threshold": 8.0, "normalised_score": 0.2, **result},
                   evidence=None, query_bytes=None, query_media_type=None)


def _refuse_poison(store) -> None:
    """The database refuses a row for what it holds, as PostgreSQL refuses a NUL or an over-long
    value: a trigger aborts any row whose file name is 'poison'."""
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TRIGGER poison BEFORE INSERT ON inspections WHEN NEW.filename = 'poison' "
                             "BEGIN SELECT RAISE(ABORT, 'value refused'); END")


def test_one_refused_row_never_sinks_the_others_and_is_kept_with_its_reason(tmp_path: Path) -> None:
    import json

    from service.records import RecordStore, new_id

    failures: list[str] = []
    store = RecordStore(f"sqlite:///{tmp_path / 'records.sqlite3'}", on_failure=failures.append,
                        journal=tmp_path / "records.journal")
    store.start()
    try:
        _refuse_poison(store)
        gate = threading.Event()
        real_insert = store._insert
        store._insert = lambda items: (gate.wait(30), real_insert(items))[1]
        ids = [new_id() for _ in range(5)]
        for i, rid in enumerate(ids):  # queued together, so written in one transaction first
            store.submit(_pending(rid, "poison" if i == 2 else f"{i}.png"))
        gate.set()
        assert store.flush(timeout=30)
        assert [store.get(rid) is not None for rid in ids] == [True, True, False, True, True]
        assert failures == ["rejected"]
        kept = [json.loads(line) for line in (tmp_path / "records.journal.rejected").read_text().splitlines()]
        assert [k["record"]["id"] for k in kept] == [ids[2]] and "value refused" in kept[0]["error"]
        state, why = store.wait_written(ids[2], timeout=0)
        assert state == "rejected" and "refused" in why and "records.journal.rejected" in why
        assert (tmp_path / "records.journal").read_bytes() == b""  # nothing is left to recover
    finally:
        store.stop()


def test_a_refused_journal_line_does_not_stop_the_next_start(tmp_path: Path) -> None:
    import os

    from service.records import RecordStore, new_id

    url, journal = f"sqlite:///{tmp_path / 'records.sqlite3'}", tmp_path / "records.journal"
    first = RecordStore(url)
    first.start()
    _refuse_poison(first)
    first.stop()
    killed = RecordStore(url, journal=journal)
    killed.engine.dispose()
    killed._journal = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # journaled, never written
    ids = [new_id() for _ in range(3)]
    for rid, name in zip(ids, ("a.png", "poison", "b.png")):
        killed._append(_pending(rid, name))
    os.close(killed._journal)

    store = RecordStore(url, journal=journal)
    store.start()  # it used to raise here, at every start, until the journal was deleted by hand
    try:
        assert [store.get(rid) is not None for rid in ids] == [True, False, True]
        assert ids[1] in (tmp_path / "records.journal.rejected").read_text()
        assert journal.read_bytes() == b""
    finally:
        store.stop()


def test_a_short_journal_append_is_cut_back_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import json
    import os

    from service.records import RecordStore, new_id

    failures: list[str] = []
    store = RecordStore(f"sqlite:///{tmp_path / 'records.sqlite3'}", on_failure=failures.append,
                        journal=tmp_path / "records.journal")
    store.engine.dispose()
    store._journal = os.open(store.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        store._append(_pending(new_id()))
        whole = store.journal_path.read_bytes()
        real_write = os.write

        def disk_full(fd, data):  # writes half the line, then the disk is full
            if len(data) > 20:
                return real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "write", disk_full)
        store._append(_pending(new_id()))
        monkeypatch.setattr(os, "write", real_write)
        assert failures == ["journal"] and store.journal_path.read_bytes() == whole
        store._append(_pending(new_id()))  # the next line is whole, not glued onto a half one
        lines = store.journal_path.read_bytes().splitlines()
        assert len(lines) == 2 and all(json.loads(line)["category"] == "Lego" for line in lines)
    finally:
        os.close(store._journal)


def test_file_names_are_cleaned_for_the_answer_and_the_record(tiny_release: Path, tmp_path: Path, images) -> None:
    from service.records import MAX_FILENAME, clean_filename

    assert clean_filename(None) is None and clean_filename("\x00\x01") is None
    assert clean_filename("part\x00 7\t.png") == "part 7.png"
    long = clean_filename("x" * 400 + ".png")
    assert len(long) == MAX_FILENAME and long.endswith("xxx.png") and "\u2026" in long
    assert clean_filename("bad\udcff.png") == "bad?.png"  # not valid UTF-8: replaced, not refused later
    with _served(tiny_release.parent, tmp_path) as c:
        name = "a\x00b" + "y" * 300 + ".png"  # sent raw, as a hand-made client can (httpx escapes a NUL)
        body = (b'--B\r\nContent-Disposition: form-data; name="category"\r\n\r\n' + tiny_release.name.encode()
                + b'\r\n--B\r\nContent-Disposition: form-data; name="file"; filename="' + name.encode()
                + b'"\r\nContent-Type: image/png\r\n\r\n' + images["good"] + b"\r\n--B--\r\n")
        r = c.post("/inspect", content=body, headers={"content-type": "multipart/form-data; boundary=B"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["filename"] == clean_filename(name) and out["filename"].startswith("ab")
        _flush(c)
        assert c.get(f"/inspections/{out['record_id']}").json()["filename"] == out["filename"]
        r = c.post(f"/inspections/{out['record_id']}/feedback", json={"label": "false_alarm", "note": "a\x00b"})
        assert r.status_code == 422  # a NUL no database keeps is the caller's mistake, not a 503


def test_a_record_can_be_opened_and_given_feedback_as_soon_as_it_is_answered(tiny_release: Path, tmp_path: Path,
                                                                             images) -> None:
    with _served(tiny_release.parent, tmp_path) as c:
        store = c.app.state.svc.records
        real_insert = store._insert
        store._insert = lambda items: (time.sleep(0.5), real_insert(items))[1]  # a slow database
        rid = _inspect(c, tiny_release.name, images["bad"])["record_id"]
        r = c.post(f"/inspections/{rid}/feedback", json={"label": "confirmed_defect"})  # before the writer is done
        assert r.status_code == 200 and r.json()["feedback"] == "confirmed_defect"
        store._insert = lambda items: (time.sleep(30), real_insert(items))[1]  # one that takes too long
        rid = _inspect(c, tiny_release.name, images["bad"])["record_id"]
        r = c.get(f"/inspections/{rid}")
        assert r.status_code == 503 and "queued" in r.json()["detail"] and r.headers["retry-after"] == "5"
        store._insert = real_insert


def test_the_csv_export_neither_repeats_nor_skips_when_records_arrive(records_url: str) -> None:
    from service.records import RecordStore, new_id

    store = RecordStore(records_url)
    store.start()
    try:
        before = [new_id() for _ in range(7)]
        for rid in before:
            store.submit(_pending(rid))
        assert store.flush(timeout=30)
        chunks = store.csv_rows(chunk=2)
        text = next(chunks) + next(chunks)  # the header and the newest two
        for _ in range(3):  # newer records arrive during the export
            store.submit(_pending(new_id()))
        assert store.flush(timeout=30)
        text += "".join(chunks)
        exported = [row["id"] for row in csv.DictReader(io.StringIO(text))]
        assert sorted(exported) == sorted(before) and len(exported) == len(set(exported))
    finally:
        store.stop()


def test_readyz_names_the_records_problem(tiny_release: Path, tmp_path: Path) -> None:
    (tmp_path / "data").write_text("a file where the data folder goes")
    with _served(tiny_release.parent, tmp_path / "data") as c:
        detail = c.get("/readyz").json()["detail"]
        assert detail.startswith("records: inspection records unavailable")


def _until(condition, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _database_down(calls: list[int], message: str = "database is locked"):
    from sqlalchemy.exc import OperationalError

    def insert(items):
        calls.append(len(items))
        raise OperationalError("INSERT", {}, Exception(message))
    return insert


def test_a_database_that_is_down_is_tried_once_a_round_with_a_growing_pause(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from service import records
    from service.records import RETRY_MAX_S, RecordStore, new_id

    monkeypatch.setattr(records, "WAITING_MAX", 6)
    failures: list[str] = []
    journal = tmp_path / "records.journal"
    store = RecordStore(f"sqlite:///{tmp_path / 'records.sqlite3'}", queue_size=3, on_failure=failures.append,
                        journal=journal)
    real_insert, calls = store._insert, []
    down = store._insert = _database_down(calls)
    for _ in range(3):  # queued before the writer starts, so that it takes them as one batch
        store.submit(_pending(new_id()))
    store.start()
    try:
        _until(lambda: store.health() is not None)
        assert calls == [3]  # a locked database: one try for the batch, not one a row (each waits its timeout)
        old = _pending(new_id())
        old.attempts = 1024  # after hours of outage: the pause is capped, never an overflow
        store._retry[0].attempts = 1024
        store.submit(old)  # a newcomer waits with the others, untried, and leaves the long pause alone
        _until(lambda: len(store._retry) == 4)
        assert calls == [3] and store._retry_at - time.monotonic() > RETRY_MAX_S - 5  # the longest pause
        assert store._thread.is_alive() and "4 inspection record(s) waiting" in store.health()
        for _ in range(5):  # past WAITING_MAX: left to the journal alone, not held in memory
            store.submit(_pending(new_id()))
        _until(lambda: store.pending.empty() and not store._overflow)
        assert len(store._retry) == 6 and failures.count("dropped") == 3 and "journal alone" in store.health()
        # The database is back: the retry writes what waited, then what the journal alone holds.
        store._insert = real_insert
        store._retry_at = 0.0
        store.submit(_pending(new_id()))
        assert store.flush(timeout=30) and store.count() == 3 + 1 + 5 + 1
        assert journal.read_bytes() == b"" and store.health() is None
    finally:
        store.stop()


def test_the_pause_grows_with_the_most_tried_record_and_a_newcomer_never_shortens_it(tmp_path: Path) -> None:
    from service.records import RETRY_MAX_S, RecordStore, new_id

    store = RecordStore(f"sqlite:///{tmp_path / 'records.sqlite3'}")
    store.start()
    try:
        calls: list[int] = []
        store._insert = _database_down(calls)
        tried = _pending(new_id())
        tried.attempts = 9  # failed nine times: the next pause is the longest
        store.submit(tried)
        _until(lambda: len(store._retry) == 1)
        assert store._retry_at - time.monotonic() > RETRY_MAX_S - 5
        store.submit(_pending(new_id()))
        _until(lambda: len(store._retry) == 2)
        assert calls == [1] and store._retry_at - time.monotonic() > RETRY_MAX_S - 5
    finally:
        store.stop(timeout=2)


def test_the_writer_outlives_an_unexpected_failure_and_stops_on_time(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    from service.records import RecordStore, new_id

    failures: list[str] = []
    journal = tmp_path / "records.journal"
    store = RecordStore(f"sqlite:///{tmp_path / 'records.sqlite3'}", queue_size=2, on_failure=failures.append,
                        journal=journal)
    store.start()
    real_truncate = os.ftruncate

    def read_only(fd, size):  # the data volume went read-only
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "ftruncate", read_only)
    store.submit(_pending(new_id()))
    assert store.flush(timeout=10) and "journal" in failures  # written; the journal could not be emptied
    monkeypatch.setattr(os, "ftruncate", real_truncate)
    real_empty, broken = store._empty_journal, [True]

    def fails_once():  # a failure the writer's code did not foresee
        if broken.pop() if broken else False:
            raise RuntimeError("something unforeseen")
        real_empty()

    store._empty_journal = fails_once
    for _ in range(5):
        store.submit(_pending(new_id()))
    assert store.flush(timeout=30) and store.count() == 6 and store._thread.is_alive()
    assert "writer" in failures and "recovered from an error in the last 10 min: RuntimeError" in store.health()
    _until(lambda: journal.read_bytes() == b"")  # the round after the failure empties it
    store._insert = _database_down([])  # a database down at shutdown: stop still returns
    store.submit(_pending(new_id()))
    started = time.monotonic()
    store.stop(timeout=5)
    assert time.monotonic() - started < 6 and len(journal.read_bytes().splitlines()) == 1  # kept for the next start


def test_a_record_waiting_for_a_retry_is_a_503_whatever_its_error_says(tiny_release: Path, tmp_path: Path,
                                                                      images) -> None:
    with _served(tiny_release.parent, tmp_path) as c:
        store = c.app.state.svc.records
        real_insert = store._insert
        store._insert = _database_down([], 'connection to server at "db", port 5432 failed: Connection refused')
        rid = _inspect(c, tiny_release.name, images["good"])["record_id"]
        _until(lambda: store.wait_written(rid, 0) and store.wait_written(rid, 0)[0] == "retrying")
        r = c.get(f"/inspections/{rid}")
        assert r.status_code == 503 and "retrying" in r.json()["detail"] and r.headers["retry-after"] == "5"
        store._insert, store._retry_at = real_insert, 0.0
        _inspect(c, tiny_release.name, images["good"])  # wakes the writer
        _flush(c)
        assert c.get(f"/inspections/{rid}").status_code == 200


def test_a_big_journal_is_recovered_a_chunk_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from sqlalchemy import event

    from service import records
    from service.records import RecordStore, _journal_line, new_id

    journal = tmp_path / "records.journal"
    ids = [new_id() for _ in range(300)]
    journal.write_bytes(b"".join(_journal_line(_pending(i)) for i in ids))
    monkeypatch.setattr(records, "CHECK_IDS", 7)
    store = RecordStore(f"sqlite:///{tmp_path / 'records.sqlite3'}", journal=journal)

    @event.listens_for(store.engine, "connect")
    def _few_variables(conn, _record):  # a backend's parameter limit, far below the journal's length
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 200)

    store.start()
    try:
        assert store.count() == 300 and journal.read_bytes() == b""
    finally:
        store.stop()


def test_health_holds_while_a_retry_round_runs_and_flush_waits_for_the_write(tmp_path: Path) -> None:
    import queue as queues

    from service.records import RecordStore, new_id

    class SlowGet(queues.Queue):
        def get(self, block=True, timeout=None):
            item = super().get(block, timeout)
            time.sleep(0.3)  # the writer descheduled between taking a record and writing it
            return item

    store = RecordStore(f"sqlite:///{tmp_path / 'records.sqlite3'}")
    store.pending = SlowGet(maxsize=256)
    store.start()
    try:
        rid = new_id()
        store.submit(_pending(rid))
        time.sleep(0.05)
        assert store.flush(timeout=10) and store.get(rid) is not None  # never True before the write
        calls: list[int] = []
        down = _database_down(calls, "could not connect")
        store._insert = lambda items: (time.sleep(1.0), down(items))  # a connect timeout
        store.submit(_pending(new_id()))
        _until(lambda: len(store._retry) == 1)
        store._retry_at = 0.0
        store.submit(_pending(new_id()))  # starts a retry round
        _until(lambda: len(calls) == 2, timeout=10)
        assert store.health() is not None and "waiting to be written" in store.health()
    finally:
        store.stop(timeout=3)


def test_a_record_says_what_decided_it_and_a_batch_is_recorded_only_when_answered(
        tiny_release: Path, tmp_path: Path, images, monkeypatch: pytest.MonkeyPatch) -> None:
    """An auditor can tell from the record alone whether the threshold was the bundle's or an
    override (and what the bundle's was), which upload was judged, how and where; the metrics
    count the verdict the answer gave; and a batch whose answer fails leaves no record."""
    import hashlib
    import re

    import models.results as results_module
    import service.app as app_module

    category = tiny_release.name
    with _served(tiny_release.parent, tmp_path) as c:
        info = c.get("/categories").json()["categories"][0]
        calibrated = info["threshold"]
        counted = _verdict_counts(c, category)
        # The tiny bundle's poses do not verify (every verdict is review, whatever the threshold):
        # decided by the score alone here, so that an override changes the verdict.
        monkeypatch.setattr(results_module, "verdict_of", lambda score, t, check: "anomalous" if score > t else "normal")
        plain = _inspect(c, category, images["good"])
        high = 2 * max(plain["score"], calibrated)  # an override over this query's score
        forced = _inspect(c, category, images["good"], threshold=str(high))
        assert plain["threshold_source"] == "calibrated" and plain["threshold"] == pytest.approx(calibrated)
        assert forced["threshold_source"] == "override" and forced["threshold"] == pytest.approx(high)
        assert forced["calibrated_threshold"] == pytest.approx(calibrated) == plain["calibrated_threshold"]
        for out in (plain, forced):
            assert out["query_sha256"] == hashlib.sha256(images["good"]).hexdigest()
            assert out["pose_mode"] == info["pose_mode"] and out["device"] == info["device"] == "cpu"
            assert re.fullmatch(r"\d+\.\d+.*", out["service_version"]) and out["intrinsics"] is None
        _flush(c)
        detail = c.get(f"/inspections/{forced['record_id']}").json()
        for key in ("threshold_source", "calibrated_threshold", "query_sha256", "pose_mode", "device",
                    "service_version", "intrinsics"):
            assert detail["result"][key] == forced[key], key
        assert hashlib.sha256(c.get(detail["query_url"]).content).hexdigest() == detail["result"]["query_sha256"]
        rows = {r["id"]: r for r in csv.DictReader(io.StringIO(c.get("/inspections.csv").text))}
        assert rows[forced["record_id"]]["threshold_source"] == "override"
        assert rows[plain["record_id"]]["threshold_source"] == "calibrated"
        assert float(rows[forced["record_id"]]["calibrated_threshold"]) == pytest.approx(calibrated)
        assert rows[plain["record_id"]]["query_sha256"] == plain["query_sha256"]
        # The metrics count the verdict each answer gave, the override's included.
        assert (plain["verdict"], forced["verdict"]) == ("anomalous", "normal")
        now = _verdict_counts(c, category)
        assert {v: now[v] - counted[v] for v in now} == {"normal": 1, "anomalous": 1, "review": 0}

        # A batch whose second answer cannot be built: a 500, and none of its images recorded.
        real, calls = app_module._png_b64, []

        def failing(image):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("injected")
            return real(image)

        monkeypatch.setattr(app_module, "_png_b64", failing)
        before = c.get("/inspections").json()["total"]
        batch = c.post("/inspect/batch", data={"category": category, "include_reference": "true"},
                       files=[("files", ("a.png", images["good"], "image/png")),
                              ("files", ("b.png", images["bad"], "image/png"))])
        assert batch.status_code == 500 and len(calls) == 2
        _flush(c)
        assert c.get("/inspections").json()["total"] == before
        assert _verdict_counts(c, category) == now  # nor counted: it was not answered


def _verdict_counts(client: TestClient, category: str) -> dict[str, float]:
    """``rpepad_images_inspected_total`` of ``category`` by decision, from ``/metrics``."""
    text = client.get("/metrics").text
    counts = {}
    for verdict in ("normal", "anomalous", "review"):
        line = f'rpepad_images_inspected_total{{category="{category}",decision="{verdict}"}} '
        counts[verdict] = next((float(row[len(line):]) for row in text.splitlines() if row.startswith(line)), 0.0)
    return counts


def test_time_filters_are_half_open(tmp_path: Path) -> None:
    """since <= created < until: consecutive windows neither share nor miss a record."""
    from service.records import Filters, RecordStore, new_id

    store = RecordStore(f"sqlite:///{tmp_path / 'r.db'}")
    store.start()
    try:
        t0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
        for s in range(3):
            store.submit(replace(_pending(new_id()), created=t0 + timedelta(seconds=s)))
        assert store.flush(timeout=30)
        t1, t2 = t0 + timedelta(seconds=1), t0 + timedelta(seconds=2)
        assert store.count(Filters(since=t1, until=t2)) == 1
        assert store.count(Filters(until=t1)) + store.count(Filters(since=t1)) == 3
    finally:
        store.stop()


def test_every_formula_start_is_quoted_in_the_csv() -> None:
    from service.records import _csv_value

    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert _csv_value(text) == "'" + text, repr(text)
    assert _csv_value("a=b") == "a=b" and _csv_value(-1.5) == "-1.5" and _csv_value(None) == ""
