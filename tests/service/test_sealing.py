"""Tamper evidence for inspection records (service/sealing.py): every change to a sealed record,
and every deletion inside a writer's chain, is found; retention, journal recovery and a key
rotation are not mistaken for tampering; the service and `rpe-pad records verify` say so."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from rpe_pad.cli import main
from service.app import create_app
from service.records import Evidence, Pending, RecordStore, open_existing, scan, utc_now
from service.sealing import MIN_KEY_BYTES, Sealer, key_id, read_key, verify_rows
from service.settings import Settings


def _key(path: Path, seed: int) -> Path:
    path.write_bytes(np.random.default_rng(seed).bytes(32))
    return path


def _pending(rid: str, created: datetime | None = None, images: bool = True, **result) -> Pending:
    rng = np.random.default_rng(list(rid.encode()))  # each record its own images
    evidence = (lambda: Evidence.encode(rng.random((16, 16, 3)), rng.random((16, 16, 3)), rng.random((16, 16)))) \
        if images else None
    return Pending(id=rid, created=created or utc_now(), request_id="req", category="Lego", filename=f"{rid}.png",
                   bundle_id="Lego@x", bundle_sha256="0" * 64,
                   result={"verdict": "anomalous", "score": 1.0 / 3, "threshold": 0.2, "normalised_score": 0.7,
                           "verification": {"verified": True, "misalignment_px": 0, "silhouette_iou": 0.97},
                           "threshold_source": "calibrated", "calibrated_threshold": 0.2, **result},
                   evidence=evidence, query_bytes=b"upload " + rid.encode() if images else None,
                   query_media_type="image/png" if images else None)


def _store(url: str, sealer: Sealer | None, tmp_path: Path, **kw) -> RecordStore:
    store = RecordStore(url, sealer=sealer, journal=tmp_path / "records.journal", **kw)
    store.start()
    return store


def _check(url: str, sealer: Sealer, sealed_since: datetime | None = None, now: datetime | None = None):
    """The check, an hour after now by default: every gap settled."""
    engine = open_existing(url)
    try:
        return verify_rows(scan(engine, chunk=3), sealer, sealed_since,  # chunks smaller than the table
                           now=now or utc_now() + timedelta(hours=1))
    finally:
        engine.dispose()


def _sql(url: str, statement: str, **params) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(statement), params)
    engine.dispose()


def test_every_change_and_every_deletion_inside_a_chain_is_found(records_url: str, tmp_path: Path) -> None:
    """On SQLite and PostgreSQL alike: the values the database gives back (floats, times, bytes)
    are the ones sealed."""
    sealer = Sealer(read_key(_key(tmp_path / "key", 0)))
    store = _store(records_url, sealer, tmp_path)
    ids = [f"r{i}" for i in range(12)]
    try:
        for rid in ids:
            store.submit(_pending(rid))
        assert store.flush(timeout=30)
        store.set_feedback("r1", "false_alarm", "glare", "ana")
        store.set_feedback("r1", "confirmed_defect", "seen again", "ben")  # the history is sealed too
        assert all(store.seal_status(store.get(rid)) == ("valid", None) for rid in ids)
    finally:
        store.stop()
    clean = _check(records_url, sealer)
    assert clean.ok and clean.records == clean.valid == 12
    assert [(c.first, c.last, c.missing_count) for c in clean.chains] == [(0, 11, 0)]

    changes = {
        "r1": "UPDATE inspections SET feedback_note = 'no word' WHERE id = :i",
        "r2": "UPDATE inspections SET score = 0.01, verdict = 'normal' WHERE id = :i",
        "r3": "UPDATE inspections SET result_json = replace(result_json, 'anomalous', 'normal') WHERE id = :i",
        "r4": "UPDATE inspections SET map_png = (SELECT map_png FROM inspections WHERE id = 'r0') WHERE id = :i",
        "r5": "UPDATE inspections SET query_bytes = NULL WHERE id = :i",
        "r6": "UPDATE inspections SET created = created - INTERVAL '1 day' WHERE id = :i"
              if records_url.startswith("postgresql") else
              "UPDATE inspections SET created = datetime(created, '-1 day') WHERE id = :i",
    }
    for rid, statement in changes.items():
        _sql(records_url, statement, i=rid)
    _sql(records_url, "DELETE FROM inspections WHERE id IN ('r0', 'r9')")  # the first, as retention would; one inside
    found = _check(records_url, sealer)
    assert not found.ok and {rid for rid, _ in found.invalid} == set(changes)
    assert dict(found.invalid)["r1"].startswith("its feedback was changed")
    assert dict(found.invalid)["r2"].startswith("the inspection was changed")
    (chain,) = found.chains
    # Only records whose seal holds count in the chain: the changed ones are missing from it too.
    assert (chain.first, chain.last, chain.missing, chain.missing_count) == (7, 11, [9], 1)


def test_unsealed_records_are_findings_unless_dated_before_sealing_began(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    sealer = Sealer(read_key(_key(tmp_path / "key", 0)))
    store = _store(url, None, tmp_path)  # before the key was set
    store.submit(_pending("old", created=utc_now() - timedelta(days=2)))
    assert store.flush(timeout=30)
    store.stop()
    began = utc_now() - timedelta(days=1)  # the auditor's date, not one read from the database
    store = _store(url, sealer, tmp_path)
    for rid in ("new", "new2", "new3"):
        store.submit(_pending(rid))
    assert store.flush(timeout=30)
    store.stop()
    report = _check(url, sealer)
    assert not report.ok and (report.valid, report.unsealed, report.unsealed_since) == (3, 1, 1)
    report = _check(url, sealer, began)
    assert report.ok and (report.unsealed, report.unsealed_since) == (1, 0)
    # A row inserted later without a seal (forged, or by a service without the key: a rolling update
    # that turns the key on is dated with --sealed-since after it) is a finding.
    _sql(url, "INSERT INTO inspections (id, created, request_id, category, verdict, score, threshold, "
              "normalised_score, bundle_id, bundle_sha256, result_json) VALUES ('forged', :c, 'r', 'Lego', 'normal', "
              "0.1, 0.2, 0.3, 'Lego@x', :h, '{}')", c=utc_now() + timedelta(seconds=1), h="0" * 64)
    report = _check(url, sealer, began)
    assert not report.ok and report.unsealed_since == 1


def test_a_record_stripped_of_its_seal_leaves_a_gap(tmp_path: Path) -> None:
    """Whoever strips a record's seal and backdates it before sealing began, to change it unseen,
    takes it out of its chain: its number is missing, as a deleted record's is; and seals
    stripped from every record leave them all findings."""
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    sealer = Sealer(read_key(_key(tmp_path / "key", 0)))
    began = utc_now() - timedelta(days=1)
    _sealed_records(url, sealer, tmp_path, ["s0", "s1", "s2", "s3"])
    _sql(url, "UPDATE inspections SET seal = NULL, seal_key = NULL, verdict = 'normal', created = :c WHERE id = 's1'",
         c=began - timedelta(days=30))
    report = _check(url, sealer, began)
    assert not report.ok and report.unsealed_since == 0 and report.chains[0].missing == [1]
    _sql(url, "UPDATE inspections SET seal = NULL, seal_key = NULL, chain_id = NULL, chain_seq = NULL")
    report = _check(url, sealer, began)
    assert not report.ok and report.unsealed_since == 3 and report.valid == 0


@pytest.mark.parametrize("column, value", [("seal", "'\u00e9'"), ("feedback_seal", "'{key}:\u00e9'"),
                                           ("chain_seq", "'abc'"), ("created", "'yesterday'"), ("score", "'high'")])
def test_a_value_of_a_type_never_written_is_a_finding_not_a_crash(tmp_path: Path, column: str, value: str) -> None:
    url, sealer = _sealed_db(tmp_path, ["v0", "v1", "v2"])
    value = value.encode().decode("unicode_escape").format(key=sealer.id)
    _sql(url, f"UPDATE inspections SET {column} = {value} WHERE id = 'v1'")
    report = _check(url, sealer)
    assert [rid for rid, _ in report.invalid] == ["v1"] and report.valid == 2 and not report.ok


def test_the_check_changes_nothing_of_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opened read-only: a write through the check's engine is refused, and a database in SQLite's
    rollback-journal mode keeps its bytes and its mode. A copy whose folder cannot be written,
    with no -wal or -shm beside it (a clean copy on a read-only mount), is read as immutable."""
    import hashlib
    import sqlite3

    from sqlalchemy.exc import OperationalError

    url, sealer = _sealed_db(tmp_path, ["w0", "w1"])
    copies = tmp_path / "copies#3"  # a '#' or '?' in a path is not the URI's
    copies.mkdir()
    copy = copies / "copy.sqlite3"
    with sqlite3.connect(tmp_path / "records.sqlite3") as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    before = hashlib.sha256(copy.read_bytes()).hexdigest()
    engine = open_existing(f"sqlite:///{copy}")
    with pytest.raises(OperationalError, match="readonly"):
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM inspections"))
    engine.dispose()
    assert _check(f"sqlite:///{copy}", sealer).valid == 2
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == before and sorted(os.listdir(copies)) == [copy.name]
    with sqlite3.connect(f"file:{copy}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"

    import service.records as records
    monkeypatch.setattr(records.os, "access", lambda path, mode: mode != os.W_OK)  # a read-only mount
    engine = open_existing(f"sqlite:///{copy}")
    assert engine.url.query["immutable"] == "1" and engine.url.query["mode"] == "ro"
    engine.dispose()
    assert _check(f"sqlite:///{copy}", sealer).valid == 2


def test_the_service_and_the_check_open_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sqlite:///file:NAME`` without ``uri=true`` is a file named ``file:NAME`` to the service, and
    to the check."""
    monkeypatch.chdir(tmp_path)
    sealer = Sealer(read_key(_key(tmp_path / "key", 0)))
    _sealed_records("sqlite:///file:records.sqlite3", sealer, tmp_path, ["a", "b", "c"])
    _sealed_records("sqlite:///records.sqlite3", sealer, tmp_path, ["d"])
    assert _check("sqlite:///file:records.sqlite3", sealer).valid == 3
    assert _check(f"sqlite:///file:{tmp_path / 'records.sqlite3'}?uri=true", sealer).valid == 1


def test_text_that_is_not_utf8_and_an_id_that_is_not_text_are_findings(tmp_path: Path) -> None:
    url, sealer = _sealed_db(tmp_path, ["u0", "u1", "u2", "u3"])
    _sql(url, "UPDATE inspections SET verdict = CAST(X'ff' AS TEXT) WHERE id = 'u1'")
    _sql(url, "UPDATE inspections SET id = X'0102' WHERE id = 'u2'")
    _sql(url, "UPDATE inspections SET id = CAST(X'fe41' AS TEXT) WHERE id = 'u3'")
    report = _check(url, sealer)
    assert {rid for rid, _ in report.invalid} == {"u1", "b'\\x01\\x02'", "'\\udcfeA'"} and report.valid == 1
    json.dumps(report.to_json())  # a report of them is still JSON


def test_a_postgresql_time_out_of_range_is_a_finding(records_url: str, tmp_path: Path) -> None:
    if not records_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's own range of times")
    sealer = Sealer(read_key(_key(tmp_path / "key", 0)))
    _sealed_records(records_url, sealer, tmp_path, ["p0", "p1", "p2"])
    _sql(records_url, "UPDATE inspections SET created = 'infinity' WHERE id = 'p1'")
    _sql(records_url, "UPDATE inspections SET feedback_at = '10000-01-01' WHERE id = 'p2'")
    report = _check(records_url, sealer)
    assert {rid for rid, _ in report.invalid} == {"p1", "p2"} and report.valid == 1


def test_a_value_no_message_can_hold_is_invalid_not_an_error() -> None:
    from types import SimpleNamespace

    from service.sealing import FEEDBACK_FIELDS, RECORD_FIELDS

    sealer = Sealer(b"k" * 32)
    row = SimpleNamespace(**{name: None for name in {*RECORD_FIELDS, *FEEDBACK_FIELDS, "feedback_seal"}})
    row.id, row.result_json = "x", "{}"
    sealer.seal(row)
    assert sealer.check(row) == ("valid", None)
    row.result_json = object()  # no JSON for it: the message cannot be made
    status, why = sealer.check(row)
    assert status == "invalid" and why.startswith("a stored value is not one the service writes (TypeError")


def test_negative_zero_reads_back_as_written(tmp_path: Path) -> None:
    """SQLite gives -0.0 back as 0.0; the seal takes zero as 0.0."""
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    sealer = Sealer(read_key(_key(tmp_path / "key", 0)))
    store = _store(url, sealer, tmp_path)
    store.submit(_pending("z", score=-0.0, verification={"verified": True, "misalignment_px": -0.0,
                                                         "silhouette_iou": 0.9}))
    assert store.flush(timeout=30)
    assert store.seal_status(store.get("z")) == ("valid", None)
    store.stop()


def test_retention_removes_a_chains_start_and_a_restart_starts_a_chain(tmp_path: Path) -> None:
    """Records of one writer get strictly increasing times, even submitted at the same moment, so
    the oldest-first retention takes a run from each chain's start: no gap."""
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    sealer = Sealer(read_key(_key(tmp_path / "key", 0)))
    same = datetime.now(UTC) - timedelta(hours=1)  # an aware time, as a caller may give
    store = _store(url, sealer, tmp_path, max_count=4)
    chains = [store.chain_id]
    for i in range(7):
        store.submit(_pending(f"a{i}", created=same))
    assert store.flush(timeout=30)
    store.enforce_retention()
    assert store.count() == 4
    store.stop()
    store = _store(url, sealer, tmp_path, max_count=4)
    chains.append(store.chain_id)
    for i in range(2):
        store.submit(_pending(f"b{i}"))
    assert store.flush(timeout=30)
    store.enforce_retention()
    kept = {r.id: r for r in store.scan()}
    store.stop()
    assert chains[0] != chains[1] and sorted(kept) == ["a5", "a6", "b0", "b1"]
    assert kept["a5"].created < kept["a6"].created
    report = _check(url, sealer)
    assert report.ok and report.valid == 4
    assert sorted((c.first, c.last) for c in report.chains) == [(0, 1), (5, 6)]


def test_journal_recovery_keeps_each_records_chain_place(tmp_path: Path) -> None:
    """A killed service's records come back from the journal with the numbers they were given, and
    are sealed when written: the chain has no gap."""
    url, journal = f"sqlite:///{tmp_path / 'records.sqlite3'}", tmp_path / "records.journal"
    sealer = Sealer(read_key(_key(tmp_path / "key", 0)))
    killed = RecordStore(url, journal=journal, sealer=sealer)
    killed.engine.dispose()
    killed._journal = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # as start() does; no writer runs
    for i in range(3):
        assert killed.submit(_pending(f"k{i}"))
    os.close(killed._journal)
    store = _store(url, sealer, tmp_path)
    store.stop()
    assert store.chain_id != killed.chain_id
    report = _check(url, sealer)
    assert report.ok and report.valid == 3
    assert [(c.id, c.first, c.last) for c in report.chains] == [(killed.chain_id, 0, 2)]


def test_a_rotated_key_checks_old_records_with_the_old_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    old = Sealer(read_key(_key(tmp_path / "old", 0)))
    new_key = read_key(_key(tmp_path / "new", 1))
    store = _store(url, old, tmp_path)
    store.submit(_pending("x"))
    assert store.flush(timeout=30)
    store.stop()
    store = _store(url, Sealer(new_key), tmp_path)
    store.set_feedback("x", "false_alarm", None, "ana")  # sealed under the new key, the record under the old
    status, why = store.seal_status(store.get("x"))
    store.stop()
    assert status == "unknown_key" and old.id in why
    assert _check(url, Sealer(new_key, (old.key,))).ok
    alone = _check(url, Sealer(new_key))
    assert not alone.ok and alone.unknown_key == 1


def test_the_service_says_whether_a_record_is_as_written(tiny_release: Path, tiny_synth: Path,
                                                        tmp_path: Path) -> None:
    key = _key(tmp_path / "records.key", 0)
    data = min((tiny_synth / "test" / "good").glob("*.png")).read_bytes()

    def served(**kw):
        return TestClient(create_app(Settings(bundles=tiny_release.parent, device="cpu", max_wait_ms=20,
                                              data_dir=tmp_path / "data", **kw)))

    with served(records_key_file=key) as c:
        _ready(c)
        out = c.post("/inspect", files={"file": ("q.png", data, "image/png")}, data={"category": tiny_release.name})
        assert out.status_code == 200, out.text
        rid = out.json()["record_id"]
        assert c.app.state.svc.records.flush(timeout=60)
        seal = c.get(f"/inspections/{rid}").json()["seal"]
        assert seal["status"] == "valid" and seal["key"] == key_id(read_key(key)) and seal["chain_seq"] == 0
        # The chain's count, for a scraper to keep apart from the database (deletions at its end).
        assert f'rpepad_records_numbered{{chain="{seal["chain_id"]}"}} 1.0' in c.get("/metrics").text
        c.post("/inspect", files={"file": ("q.png", data, "image/png")}, data={"category": tiny_release.name})
        assert f'rpepad_records_numbered{{chain="{seal["chain_id"]}"}} 2.0' in c.get("/metrics").text
        with c.app.state.svc.records.engine.begin() as conn:
            conn.execute(text("UPDATE inspections SET threshold = threshold * 2 WHERE id = :i"), {"i": rid})
        seal = c.get(f"/inspections/{rid}").json()["seal"]
        assert seal["status"] == "invalid" and "changed after it was written" in seal["reason"]
    with served() as c:  # no key now: the seal is there, and cannot be checked
        _ready(c)
        assert c.get(f"/inspections/{rid}").json()["seal"]["status"] == "unchecked"


def _ready(client: TestClient) -> None:
    end = time.time() + 120
    while client.get("/readyz").status_code != 200:
        assert time.time() < end, client.get("/readyz").json()
        time.sleep(0.2)


@pytest.mark.parametrize("content, problem", [(None, "is not a file"), (b"short\n", "fewer than 32"),
                                              (b"k" * 5000, "5000 bytes")])
def test_a_bad_key_file_is_refused_naming_the_problem(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=problem):
        Settings(records_key_file=path)


def test_every_byte_of_the_key_file_is_the_key(tmp_path: Path) -> None:
    """A random key may end in a newline's byte: nothing is stripped (32 random bytes ending in
    0x0d or 0x0a were refused as 31, one time in 128, when a newline was stripped)."""
    path = tmp_path / "key"
    path.write_bytes(b"k" * (MIN_KEY_BYTES - 1) + b"\r")
    assert read_key(path) == b"k" * (MIN_KEY_BYTES - 1) + b"\r"
    path.write_bytes(b"k" * (MIN_KEY_BYTES - 2) + b"\n")
    with pytest.raises(ValueError, match="31 bytes"):
        read_key(path)
    assert "kkkk" not in repr(Sealer(b"k" * 32, (b"k" * 40,)))  # a key never reaches a log or a traceback
    assert Settings(records_key_file="").records_key_file is None


def test_records_verify_command(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the checkout's
    for name in [n for n in os.environ if n.startswith("RPEPAD_")]:
        monkeypatch.delenv(name)
    db = tmp_path / "records.sqlite3"
    url, key = f"sqlite:///{db}", _key(tmp_path / "key", 0)
    store = _store(url, Sealer(read_key(key)), tmp_path)
    for i in range(4):  # an hour old: any gap among them is settled
        store.submit(_pending(f"c{i}", images=False, created=utc_now() - timedelta(hours=1)))
    assert store.flush(timeout=30)
    store.stop()

    assert main(["records", "verify", "--database", url, "--key-file", str(key)]) == 0
    out = capsys.readouterr().out
    assert "4 records: 4 valid, 0 changed" in out and "records 0-3 (4), none missing" in out and "OK:" in out
    _sql(url, "DELETE FROM inspections WHERE id = 'c1'")
    _sql(url, "UPDATE inspections SET verdict = 'normal' WHERE id = 'c3'")
    monkeypatch.setenv("RPEPAD_DATABASE_URL", url)  # the service's own settings name the database and key
    monkeypatch.setenv("RPEPAD_RECORDS_KEY_FILE", str(key))
    assert main(["records", "verify", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["ok"], report["invalid"], report["missing"]) == (False, 1, 1)
    assert report["invalid_records"][0]["id"] == "c3" and report["chains"][0]["missing"] == [1]
    _sql(url, "INSERT INTO inspections (id, created, request_id, category, verdict, score, threshold, "
              "normalised_score, bundle_id, bundle_sha256, result_json) VALUES ('before', :c, 'r', 'Lego', 'normal', "
              "0.1, 0.2, 0.3, 'Lego@x', :h, '{}')", c=utc_now() - timedelta(days=3), h="0" * 64)
    assert main(["records", "verify"]) == 1
    assert "1 unsealed (findings: give --sealed-since" in capsys.readouterr().out
    since = (datetime.now(UTC) - timedelta(days=2)).astimezone(timezone(timedelta(hours=5))).isoformat()
    assert main(["records", "verify", "--sealed-since", since]) == 1  # c1 and c3 are still findings
    assert "1 unsealed (0 dated after --sealed-since)" in capsys.readouterr().out

    # Mistakes: one line each, exit 2; nothing is created where no database was.
    monkeypatch.delenv("RPEPAD_DATABASE_URL")
    monkeypatch.delenv("RPEPAD_RECORDS_KEY_FILE")
    for argv, message in [
        (["--database", f"sqlite:///{tmp_path / 'none.sqlite3'}", "--key-file", str(key)], "does not exist"),
        (["--database", url], "no records key"),
        (["--database", url, "--key-file", str(tmp_path / "nokey")], "--key-file: Value error, records key file"),
        (["--database", "not a url", "--key-file", str(key)], "is not a database URL"),
        (["--database", "foo://bar", "--key-file", str(key)], "records database URL foo://bar"),
        (["--database", "mysql://u@h/db", "--key-file", str(key)], "ModuleNotFoundError"),  # no driver here
    ]:
        assert main(["records", "verify", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "none.sqlite3").exists()
    with pytest.raises(SystemExit) as stopped:  # argparse's usage and error, exit 2
        main(["records", "verify", "--database", url, "--key-file", str(key), "--sealed-since", "Tuesday"])
    assert stopped.value.code == 2 and "is not an ISO 8601 time" in capsys.readouterr().err
    other = tmp_path / "other.sqlite3"
    import sqlite3
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    assert main(["records", "verify", "--database", f"sqlite:///{other}", "--key-file", str(key)]) == 2
    assert "has no inspections table" in capsys.readouterr().err


def test_every_column_is_sealed() -> None:
    """A column added to the table must be named in a seal's fields (a new layout is a new
    SEAL_VERSION), so no part of a record can be changed outside them."""
    from service.records import Record
    from service.sealing import FEEDBACK_FIELDS, RECORD_FIELDS

    columns = {c.name for c in Record.__table__.columns}
    assert columns - set(RECORD_FIELDS) - set(FEEDBACK_FIELDS) == {"feedback_seal"}
    assert set(RECORD_FIELDS) <= columns and set(FEEDBACK_FIELDS) <= columns


def _sealed_db(tmp_path: Path, ids) -> tuple[str, Sealer]:
    """A SQLite records database in ``tmp_path`` with the records ``ids``, sealed: its URL and sealer."""
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    sealer = Sealer(read_key(_key(tmp_path / "key", 0)))
    _sealed_records(url, sealer, tmp_path, ids)
    return url, sealer


def _sealed_records(url: str, sealer: Sealer, tmp_path: Path, ids) -> None:
    store = _store(url, sealer, tmp_path)
    for rid in ids:
        store.submit(_pending(rid, images=False))
    assert store.flush(timeout=30)
    store.stop()


def test_closing_a_gap_by_renumbering_breaks_the_seals(tmp_path: Path) -> None:
    url, sealer = _sealed_db(tmp_path, ["n0", "n1", "n2", "n3"])
    _sql(url, "DELETE FROM inspections WHERE id = 'n1'")
    _sql(url, "UPDATE inspections SET chain_seq = chain_seq - 1 WHERE chain_seq > 1")
    report = _check(url, sealer)
    assert report.gaps == 0 and {rid for rid, _ in report.invalid} == {"n2", "n3"} and not report.ok


def test_a_change_to_any_sealed_column_breaks_the_seal(tmp_path: Path) -> None:
    """Each column of RECORD_FIELDS (but the seal's key name, which makes the seal unknown_key)
    changed on a record of its own, to a value of the column's type."""
    from sqlalchemy import Boolean, DateTime, Float, Integer, LargeBinary

    from service.records import Record
    from service.sealing import RECORD_FIELDS

    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    sealer = Sealer(read_key(_key(tmp_path / "key", 0)))
    columns = [c for c in RECORD_FIELDS if c != "seal_key"]
    _sealed_records(url, sealer, tmp_path, [f"c{i}" for i in range(len(columns) + 1)])

    def other(column) -> str:
        kind = Record.__table__.columns[column].type
        if isinstance(kind, LargeBinary):
            return "X'00'"
        if isinstance(kind, Boolean):
            return "0"
        if isinstance(kind, DateTime):
            return "'2001-01-01 00:00:00.000000'"
        if isinstance(kind, (Float, Integer)):
            return "77"
        return "'zz'"

    for i, column in enumerate(columns):
        _sql(url, f"UPDATE inspections SET {column} = {other(column)} WHERE id = :i", i=f"c{i}")
    report = _check(url, sealer)
    changed = {f"zz" if c == "id" else f"c{i}" for i, c in enumerate(columns)}
    assert {rid for rid, _ in report.invalid} == changed and report.valid == 1
    _sql(url, "UPDATE inspections SET seal_key = 'ffff' WHERE id = :i", i=f"c{len(columns)}")
    report = _check(url, sealer)
    assert report.unknown_key == 1 and report.unknown_keys == {"ffff"} and not report.ok


def test_a_gap_before_a_fresh_record_is_not_yet_counted(tmp_path: Path) -> None:
    """A live service's writer may still be writing a record (queued, retried, left to the
    journal) while later ones are in: a gap counts once the record after it is SETTLE_S old."""
    from service.sealing import SETTLE_S

    url, sealer = _sealed_db(tmp_path, ["f0", "f1", "f2"])
    _sql(url, "DELETE FROM inspections WHERE id = 'f1'")
    written = utc_now()
    fresh = _check(url, sealer, now=written + timedelta(seconds=SETTLE_S / 2))
    assert fresh.ok and fresh.gaps == 0 and fresh.unsettled == 1
    late = _check(url, sealer, now=written + timedelta(seconds=SETTLE_S + 5))
    assert not late.ok and late.gaps == 1 and late.unsettled == 0 and late.chains[0].missing == [1]


# ---------------------------------------------------------------- proposed tests (mutation testing, session 52)

def test_feedback_left_without_its_seal_is_a_finding(tmp_path: Path) -> None:
    """Only every feedback column NULL reads as a record never given feedback: any one of them
    left, with the feedback seal removed, is a finding."""
    columns = ["feedback", "feedback_note", "feedback_at", "feedback_by", "feedback_history"]
    url, sealer = _sealed_db(tmp_path, [f"g{i}" for i in range(len(columns) + 1)])
    store = _store(url, sealer, tmp_path)
    for i in range(len(columns) + 1):
        store.set_feedback(f"g{i}", "false_alarm", "glare", "ana")
        store.set_feedback(f"g{i}", "confirmed_defect", "seen again", "ben")  # a history too
    store.stop()
    for i, column in enumerate(columns):
        _sql(url, "UPDATE inspections SET feedback_seal = NULL, "
                  + ", ".join(f"{c} = NULL" for c in columns if c != column) + " WHERE id = :i", i=f"g{i}")
    last = f"g{len(columns)}"  # every feedback column and the seal removed: as if never given (documented)
    _sql(url, "UPDATE inspections SET feedback_seal = NULL, " + ", ".join(f"{c} = NULL" for c in columns)
              + " WHERE id = :i", i=last)
    report = _check(url, sealer)
    assert {rid for rid, _ in report.invalid} == {f"g{i}" for i in range(len(columns))} and report.valid == 1
    assert all(why == "it has feedback without a feedback seal" for _, why in report.invalid)


def test_feedback_under_another_key_is_checked_with_it_or_named(tmp_path: Path) -> None:
    """A feedback sealed under an older key given to the check is valid; one under a key not
    given is unknown_key, named by the feedback's key (the record's key is given)."""
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    old = Sealer(read_key(_key(tmp_path / "old", 0)))
    new = Sealer(read_key(_key(tmp_path / "new", 1)))
    _sealed_records(url, old, tmp_path, ["x", "y"])
    store = _store(url, old, tmp_path)
    store.set_feedback("x", "false_alarm", None, "ana")  # the feedback under the old key
    store.stop()
    store = _store(url, new, tmp_path)
    store.set_feedback("y", "confirmed_defect", None, "ben")  # the feedback under the new key
    store.stop()
    both = _check(url, Sealer(new.key, (old.key,)))
    assert both.ok and both.valid == 2
    only_old = _check(url, old)
    assert (only_old.valid, only_old.unknown_key, only_old.invalid_count) == (1, 1, 0)
    assert only_old.unknown_keys == {new.id}


def test_an_id_with_control_characters_is_printed_escaped(tmp_path: Path) -> None:
    url, sealer = _sealed_db(tmp_path, ["e0", "e1"])
    _sql(url, "UPDATE inspections SET id = :n WHERE id = 'e1'", n="e1\x1b[2J\r")
    report = _check(url, sealer)
    assert [rid for rid, _ in report.invalid] == [ascii("e1\x1b[2J\r")]


def test_findings_beyond_invalid_shown_are_counted_not_kept() -> None:
    from types import SimpleNamespace

    from service.sealing import FEEDBACK_FIELDS, INVALID_SHOWN, RECORD_FIELDS

    sealer = Sealer(b"k" * 32)

    def changed(i: int):
        row = SimpleNamespace(**{name: None for name in {*RECORD_FIELDS, *FEEDBACK_FIELDS, "feedback_seal"}})
        row.id, row.result_json = f"i{i}", "{}"
        sealer.seal(row)
        row.result_json = "{ }"
        return row

    report = verify_rows([changed(i) for i in range(INVALID_SHOWN + 1)], sealer)
    assert report.invalid_count == INVALID_SHOWN + 1 and len(report.invalid) == INVALID_SHOWN


def test_the_boundaries_of_sealed_since_and_of_settling() -> None:
    """An unsealed record dated exactly at --sealed-since is a finding ("at or after"); a gap
    before a record exactly SETTLE_S old counts."""
    from types import SimpleNamespace

    from service.sealing import FEEDBACK_FIELDS, RECORD_FIELDS, SETTLE_S

    sealer = Sealer(b"k" * 32)
    at = datetime(2026, 1, 1, 12, 0)

    def row(rid: str, seq: int | None, sealed: bool = True):
        r = SimpleNamespace(**{name: None for name in {*RECORD_FIELDS, *FEEDBACK_FIELDS, "feedback_seal"}})
        r.id, r.created, r.result_json, r.chain_id, r.chain_seq = rid, at, "{}", "c" if sealed else None, seq
        if sealed:
            sealer.seal(r)
        return r

    unsealed = verify_rows([row("u", None, sealed=False)], sealer, sealed_since=at)
    assert unsealed.unsealed_since == 1 and not unsealed.ok
    gap = verify_rows([row("a", 0), row("b", 2)], sealer, now=at + timedelta(seconds=SETTLE_S))
    assert (gap.gaps, gap.unsettled) == (1, 0) and not gap.ok


def test_chains_with_missing_records_come_first(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    sealer = Sealer(read_key(_key(tmp_path / "key", 0)))
    _sealed_records(url, sealer, tmp_path, ["a0", "a1", "a2"])
    _sealed_records(url, sealer, tmp_path, ["b0", "b1", "b2"])
    _sql(url, "DELETE FROM inspections WHERE id = 'a1'")
    report = _check(url, sealer)
    assert [(c.first, c.last, c.missing_count) for c in report.chains] == [(0, 2, 1), (0, 2, 0)]


def test_a_key_of_the_largest_size_is_read(tmp_path: Path) -> None:
    from service.sealing import MAX_KEY_BYTES

    path = tmp_path / "key"
    path.write_bytes(b"k" * MAX_KEY_BYTES)
    assert len(read_key(path)) == MAX_KEY_BYTES
    path.write_bytes(b"k" * (MAX_KEY_BYTES + 1))
    with pytest.raises(ValueError, match=f"{MAX_KEY_BYTES + 1} bytes"):
        read_key(path)


def test_records_verify_checks_with_every_key_given(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("RPEPAD_")]:
        monkeypatch.delenv(name)
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    old, new = _key(tmp_path / "old", 0), _key(tmp_path / "new", 1)
    _sealed_records(url, Sealer(read_key(old)), tmp_path, ["o0", "o1"])
    _sealed_records(url, Sealer(read_key(new)), tmp_path, ["n0"])
    assert main(["records", "verify", "--database", url, "--key-file", str(new), "--key-file", str(old),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["valid"], report["unknown_key"]) == (3, 0)


def test_records_verify_reads_sealed_since_in_its_zone(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("RPEPAD_")]:
        monkeypatch.delenv(name)
    url, sealer = _sealed_db(tmp_path, ["s0"])
    key = tmp_path / "key"
    written = utc_now() - timedelta(hours=1)  # an unsealed record, as a service without the key wrote it
    _sql(url, "INSERT INTO inspections (id, created, request_id, category, verdict, score, threshold, "
              "normalised_score, bundle_id, bundle_sha256, result_json) VALUES ('u', :c, 'r', 'Lego', 'normal', "
              "0.1, 0.2, 0.3, 'Lego@x', :h, '{}')", c=written, h="0" * 64)
    for since, zone, after in [(written - timedelta(hours=1), 5, 1), (written + timedelta(hours=1), -5, 0)]:
        text_since = since.replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=zone))).isoformat()
        assert main(["records", "verify", "--database", url, "--key-file", str(key), "--sealed-since", text_since,
                     "--json"]) == after
        assert json.loads(capsys.readouterr().out)["unsealed_since"] == after


def test_iso_time() -> None:
    from rpe_pad.argtypes import iso_time

    assert iso_time(" 2026-12-08T01:00+01:00\n") == datetime(2026, 12, 8, 0, 0, tzinfo=UTC)
    assert iso_time("2026-12-08") == datetime(2026, 12, 8, tzinfo=UTC)


def test_whole_numbers_in_a_result_are_stored_and_sealed_as_floats(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    sealer = Sealer(read_key(_key(tmp_path / "key", 0)))
    store = _store(url, sealer, tmp_path)
    try:
        store.submit(_pending("w", calibrated_threshold=1,
                              verification={"verified": True, "misalignment_px": 0, "silhouette_iou": 1}))
        assert store.flush(timeout=30)
        record = store.get("w")
        assert (record.misalignment_px, record.silhouette_iou, record.calibrated_threshold) == (0.0, 1.0, 1.0)
        assert record.misalignment_px is not None
        assert store.seal_status(record) == ("valid", None)
    finally:
        store.stop()


def test_a_store_without_a_key_says_an_unsealed_record_is_unsealed(tmp_path: Path) -> None:
    store = _store(f"sqlite:///{tmp_path / 'records.sqlite3'}", None, tmp_path)
    try:
        store.submit(_pending("u"))
        assert store.flush(timeout=30)
        assert store.seal_status(store.get("u")) == ("unsealed", "written without a records key")
    finally:
        store.stop()


def test_a_database_that_stops_answering_during_a_scan_raises(tmp_path: Path) -> None:
    """A row that does not read back sends the scan row by row; the database going away then
    is the machine's failure (raised), not each remaining record's (findings)."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    url, sealer = _sealed_db(tmp_path, ["d0", "d1", "d2", "d3"])
    _sql(url, "UPDATE inspections SET created = 'yesterday' WHERE id = 'd3'")  # read row by row
    engine = open_existing(url)
    gets = []

    @event.listens_for(engine, "before_cursor_execute")
    def _gone(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if len(gets) >= 1:
            raise sqlite3.OperationalError("disk I/O error")
        if "inspections.id = ?" in statement:
            gets.append(statement)

    try:
        with pytest.raises(OperationalError, match="disk I/O error"):
            list(scan(engine, chunk=4))
    finally:
        engine.dispose()


def test_a_database_with_its_wal_beside_is_read_with_the_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the folder cannot be written but a -wal is beside the file, it is not read as
    immutable: what the WAL holds (here a deletion) is read."""
    import sqlite3

    import service.records as records

    url, sealer = _sealed_db(tmp_path, ["l0", "l1", "l2"])
    writer = sqlite3.connect(tmp_path / "records.sqlite3")
    try:
        assert writer.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("DELETE FROM inspections WHERE id = 'l1'")
        writer.commit()
        assert (tmp_path / "records.sqlite3-wal").exists()
        monkeypatch.setattr(records.os, "access", lambda path, mode: mode != os.W_OK)  # a read-only folder
        report = _check(url, sealer)
        assert report.records == 2 and report.chains[0].missing == [1]
    finally:
        writer.close()


def test_a_table_of_an_earlier_version_is_refused(tmp_path: Path) -> None:
    url, _ = _sealed_db(tmp_path, ["e0"])
    _sql(url, "ALTER TABLE inspections DROP COLUMN feedback_seal")
    with pytest.raises(ValueError, match="written by an earlier version .it lacks feedback_seal"):
        open_existing(url)


def test_the_seal_layout_of_version_1_is_fixed() -> None:
    """Databases sealed under SEAL_VERSION 1 must still check: the message's layout (times in
    ISO 8601 with a T, bytes by sha256, -0.0 as 0.0, what is sealed) changes only with a new version."""
    from types import SimpleNamespace

    from service.sealing import FEEDBACK_FIELDS, RECORD_FIELDS

    row = SimpleNamespace(**{name: None for name in {*RECORD_FIELDS, *FEEDBACK_FIELDS, "feedback_seal"}})
    row.id, row.created, row.score, row.query_png = "r", datetime(2026, 1, 2, 3, 4, 5, 6), -0.0, b"png"
    row.chain_id, row.chain_seq = "c", 7
    row.feedback, row.feedback_at = "false_alarm", datetime(2026, 1, 2, 3, 4, 6)
    sealer = Sealer(b"k" * 32)
    sealer.seal(row)
    assert (row.seal_key, row.seal) == ("5e318f8cf9cbe249",
                                        "9e14e618aca79bc339a5d5dc66e76395f27380014354bc5eb6159723a07e2ae8")
    assert sealer.feedback_seal(row) == ("5e318f8cf9cbe249:"
                                         "8dc4f749e3de038eb3f1c0d53ff81b830b594f6d6ffb8f936e8a36b0f062d3e3")
