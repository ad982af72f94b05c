"""Inspection records: every inspection the service answers is stored, with operator feedback.

One table, ``inspections`` (SQLAlchemy 2; an embedded SQLite file under the data directory by
default, any SQLAlchemy URL such as PostgreSQL's for fleets). A row holds the result as the
API returned it, the overlay's evidence (the query as inspected, the rendered reference and
the normalised anomaly map, as PNGs: ``Evidence``), the uploaded query as it arrived
(optional, on by default, up to a size cap), the
bundle's id and the sha256 of its manifest (which pins every file of the bundle), the
request id, and the operator's feedback (``confirmed_defect`` or ``false_alarm``, a note).

Writes never wait on the database: ``RecordStore.submit`` appends the result (no images)
as one line to a journal file and puts the record on a bounded queue, and returns; one
writer thread encodes the evidence, inserts everything waiting in one transaction, enforces
the retention limits (count and age), and empties the journal once everything in it is
in the database. The journal line is in the operating system's hands before the answer
leaves, so a service killed at any moment (SIGKILL, OOM) keeps the record of every
answered inspection: ``start`` inserts what the journal holds and the database lacks
(without its images, which were still in memory). One writer means concurrent requests
and micro-batches lose nothing.

Nothing answered is dropped while the service runs either:
- a write that fails for a reason that may pass (the database locked, unreachable, its disk
  full: ``TRANSIENT``) is retried, one try a round for the whole batch, after a pause that
  grows with the most-tried record (0.5 s doubling to 30 s; records arriving meanwhile wait
  with them), images and all; the journal keeps the records until they are in;
- any other failed transaction, or a transient one tried ``SPLIT_AFTER`` times, is split, so
  one row the database refuses never sinks the others; a row refused for what it holds (or
  failing ``REJECT_AFTER`` times while the rows around it are written) is moved, with the
  reason, to ``records.journal.rejected`` beside the journal (for an administrator);
- a record that finds the queue full is still written, without its images (the queue bounds
  the memory the images hold); past ``WAITING_MAX`` waiting records, one is left to the
  journal alone, and the writer restores it from there once it has caught up;
- a record asked for before the writer reached it is waited for (``wait_written``), so an
  answer's ``record_id`` can be opened and given feedback at once;
- the writer outlives any failure of its own (counted ``writer``), and ``stop`` returns in its
  timeout, leaving to the journal what it could not write.
Each of these is logged and counted (``rpepad_records_failed_total{reason}``), never raised to
the inspection, and ``health`` says what is waiting for ``/readyz``.

The overlay figure (query | rendered reference | overlay with the decision contour,
``models.viz.inspection_figure``) is drawn from the evidence when someone opens it
(``Record.overlay``), not for every record: encoding the three small PNGs costs the writer
7.5-9 ms of CPU a Lego record against 16 ms for drawing and encoding the figure, and on a
2-core host every millisecond the writer takes is taken from an inspection
(docs/SERVICE.md, "Recording on vs off"). The map is kept as a 16-bit PNG with every pixel
on its side of the threshold, so the redrawn decision contour is the one the answer had.
Rows written before the evidence existed keep their drawn overlay in ``overlay_png``;
``upgrade`` adds the evidence columns to such a table at start.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import os
import queue
import random
import threading
import time
import unicodedata
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote, unquote
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np
from PIL import Image
from sqlalchemy import (BigInteger, Boolean, DateTime, Float, LargeBinary, String, Text, and_, create_engine, delete,
                        event, func, inspect, or_, select, text, update)
from sqlalchemy.engine import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (ArgumentError, DisconnectionError, IntegrityError, InterfaceError, NoSuchTableError,
                            OperationalError, SQLAlchemyError, StatementError)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, defer, mapped_column
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.schema import CreateColumn

from models.images import decode_rgb, to_uint8
from models.viz import inspection_figure
from service.sealing import Sealer, Unreadable, printable

log = logging.getLogger("rpe_pad.records")

FEEDBACK: tuple[str, ...] = ("confirmed_defect", "false_alarm")
FEEDBACK_ATTEMPTS = 50  # compare-and-set tries of one feedback write before it answers 409


class FeedbackConflict(RuntimeError):
    """Other feedback on the same record kept landing first; nothing of this word was stored."""


MAX_FILENAME = 255  # characters of an upload's file name a record keeps (clean_filename)


def clean_filename(name: str | None) -> str | None:
    """An upload's file name as the answer and its record carry it: control characters dropped
    (a NUL, which PostgreSQL's text refuses, among them), what is not valid UTF-8 replaced,
    and at most ``MAX_FILENAME`` characters, keeping its end (the extension). None for none."""
    if name is None:
        return None
    name = "".join(ch for ch in name if unicodedata.category(ch) != "Cc")
    name = name.encode("utf-8", "replace").decode("utf-8")
    if len(name) > MAX_FILENAME:
        name = name[: MAX_FILENAME - 17] + "\u2026" + name[-16:]
    return name or None


class Base(DeclarativeBase):
    pass


class Record(Base):
    __tablename__ = "inspections"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    created: Mapped[datetime] = mapped_column(DateTime(), index=True)  # UTC (naive: the same on every backend)
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    category: Mapped[str] = mapped_column(String(128), index=True)
    verdict: Mapped[str] = mapped_column(String(16), index=True)
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    normalised_score: Mapped[float] = mapped_column(Float)
    filename: Mapped[str | None] = mapped_column(String(MAX_FILENAME))  # clean_filename
    bundle_id: Mapped[str] = mapped_column(String(200))  # category@created of the bundle
    bundle_sha256: Mapped[str] = mapped_column(String(64))  # of its manifest.json
    result_json: Mapped[str] = mapped_column(Text)  # the API's result, without images
    overlay_png: Mapped[bytes | None] = mapped_column(LargeBinary)  # a drawn figure (rows before the evidence)
    query_png: Mapped[bytes | None] = mapped_column(LargeBinary)  # evidence: the query as inspected, 8-bit RGB
    reference_png: Mapped[bytes | None] = mapped_column(LargeBinary)  # evidence: the rendered reference, 8-bit RGB
    map_png: Mapped[bytes | None] = mapped_column(LargeBinary)  # evidence: the normalised map, 16-bit grey
    query_bytes: Mapped[bytes | None] = mapped_column(LargeBinary)  # the upload as it arrived
    query_media_type: Mapped[str | None] = mapped_column(String(64))
    feedback: Mapped[str | None] = mapped_column(String(32), index=True)
    feedback_note: Mapped[str | None] = mapped_column(Text)
    feedback_at: Mapped[datetime | None] = mapped_column(DateTime())
    feedback_by: Mapped[str | None] = mapped_column(String(100))  # who gave it (NULL before session 50, or unnamed)
    # The feedback it had before, oldest first: a JSON list of {label, note, at, by} (NULL: none).
    feedback_history: Mapped[str | None] = mapped_column(Text)
    # The pose check (the result's ``verification``), for the CSV without reading every result
    # (NULL in rows written before session 28; an upgrade adds the columns).
    pose_verified: Mapped[bool | None] = mapped_column(Boolean())
    pose_check_reason: Mapped[str | None] = mapped_column(Text)
    misalignment_px: Mapped[float | None] = mapped_column(Float)
    silhouette_iou: Mapped[float | None] = mapped_column(Float)
    # Where the threshold came from and what the upload was (NULL in rows written before session 50).
    threshold_source: Mapped[str | None] = mapped_column(String(16))  # calibrated or override
    calibrated_threshold: Mapped[float | None] = mapped_column(Float)  # the bundle's, whichever was used
    query_sha256: Mapped[str | None] = mapped_column(String(64))  # of the upload's bytes, as they arrived
    # Tamper evidence (service/sealing.py; NULL in rows written before session 52, and seals in rows written
    # without a records key): the writer's chain and the record's number in it, the key's name, the seals.
    chain_id: Mapped[str | None] = mapped_column(String(32))
    chain_seq: Mapped[int | None] = mapped_column(BigInteger())
    seal_key: Mapped[str | None] = mapped_column(String(16))
    seal: Mapped[str | None] = mapped_column(String(64))  # HMAC-SHA256 of the inspection (sealing.RECORD_FIELDS)
    feedback_seal: Mapped[str | None] = mapped_column(String(81))  # key name ":" HMAC of the seal and the feedback

    def overlay(self) -> bytes | None:
        """The overlay figure as PNG: the stored one, or drawn from the evidence; None when
        the row has neither (its evidence failed, or it was recovered from the journal)."""
        if self.overlay_png is not None:
            return self.overlay_png
        if self.query_png is None or self.reference_png is None or self.map_png is None:
            return None
        return png_bytes(inspection_figure(decode_rgb(self.query_png), decode_rgb(self.reference_png),
                                           _unit_map(self.map_png), self.verdict, self.score, self.threshold))


@dataclass(frozen=True)
class Evidence:
    """What a record keeps to draw its overlay later, encoded as PNGs (module docstring)."""

    query_png: bytes
    reference_png: bytes
    map_png: bytes

    @classmethod
    def encode(cls, query: np.ndarray, reference: np.ndarray, norm_map: np.ndarray) -> Evidence:
        """``query`` and ``reference`` RGB float ``[H, W, 3]`` in [0, 1], ``norm_map`` ``[H, W]``
        in [0, 1] (0.5 at the threshold)."""
        norm_map = np.asarray(norm_map, dtype=np.float32)
        unit = np.round(np.clip(norm_map, 0, 1) * MAP_SCALE).astype(np.uint16)
        # 0.5 falls between two steps: keep every pixel on its side of the decision (> 0.5).
        unit = np.where(norm_map > 0.5, np.maximum(unit, HALF_UP), np.minimum(unit, HALF_UP - 1)).astype(np.uint16)
        return cls(png_bytes(Image.fromarray(to_uint8(query))), png_bytes(Image.fromarray(to_uint8(reference))),
                   png_bytes(Image.fromarray(unit)))


MAP_SCALE = 65535  # the evidence map's 16-bit steps over [0, 1]
HALF_UP = MAP_SCALE // 2 + 1  # the first step above 0.5 (32768 / 65535)


def _unit_map(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image, dtype=np.float32) / MAP_SCALE


@dataclass
class Pending:
    """What the request path hands over: everything needed to write one row later."""

    id: str
    created: datetime
    request_id: str
    category: str
    filename: str | None
    bundle_id: str
    bundle_sha256: str
    result: dict  # the API's result fields (JSON-able), without images
    evidence: Callable[[], Evidence] | None  # encodes the evidence (in the writer thread)
    query_bytes: bytes | None
    query_media_type: str | None
    encoded: Evidence | None = None  # the evidence once encoded (kept for a retry)
    attempts: int = 0  # failed writes so far
    chain_id: str | None = None  # the writer's chain and the record's number in it (set by RecordStore.submit)
    chain_seq: int | None = None

    def without_images(self) -> Pending:
        return replace(self, evidence=None, encoded=None, query_bytes=None, query_media_type=None)


@dataclass(frozen=True)
class Filters:
    category: str | None = None
    verdict: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    feedback: Literal["confirmed_defect", "false_alarm", "none", "any"] | None = None  # any = has feedback

    def apply(self, stmt):
        if self.category:
            stmt = stmt.where(Record.category == self.category)
        if self.verdict:
            stmt = stmt.where(Record.verdict == self.verdict)
        if self.since:
            stmt = stmt.where(Record.created >= utc_naive(self.since))
        if self.until:
            stmt = stmt.where(Record.created < utc_naive(self.until))
        if self.feedback == "none":
            stmt = stmt.where(Record.feedback.is_(None))
        elif self.feedback == "any":
            stmt = stmt.where(Record.feedback.is_not(None))
        elif self.feedback:
            stmt = stmt.where(Record.feedback == self.feedback)
        return stmt


def new_id() -> str:
    return uuid.uuid4().hex


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL (readers never wait for the writer) and a
    busy timeout."""
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):  # noqa: ANN001
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # WAL: safe against a killed process, no fsync per commit
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()
    return engine


TRANSIENT = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout, OSError)  # may pass: retry
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0  # the pause before a failed write's retry, doubling up to this
WAITING_MAX = 100_000  # records waiting beyond the queue (a retry, a full queue), kept without images past the
#                        queue's size: about 2 kB each; beyond it a record is left to the journal alone
NOTES_KEPT = 1000  # ids of records rejected or left to the journal, remembered to say why when asked
SPLIT_AFTER, REJECT_AFTER = 3, 8  # a batch failing for a transient reason this often is split; a row, rejected
WRITER_ERROR_SHOWN_S = 600.0  # how long /readyz names a failure the writer recovered from (the log keeps it)
CHECK_IDS = 500  # ids per "which of these are in the database" query (under every backend's parameter limit)

Waiting = Literal["queued", "retrying", "rejected", "journal"]


class RecordStore:
    """The records database and its one writer thread (``start`` / ``stop``).

    States of a submitted record until it is in the database (``wait_written``): ``queued``
    (on the queue, or beyond it without its images); ``retrying`` (a write failed for a
    ``TRANSIENT`` reason); ``rejected`` (refused for what it holds: in ``rejected_path``);
    ``journal`` (more than ``WAITING_MAX`` waited: only the journal holds it, and the writer
    restores it from there once it has caught up, as a start does)."""

    def __init__(self, url: str, max_count: int | None = None, max_age_days: float | None = None,
                 queue_size: int = 256, on_failure: Callable[[str], None] | None = None,
                 journal: Path | None = None, sealer: Sealer | None = None):
        self.url = url
        self.sealer = sealer  # seals every row written and every feedback given (None: rows go unsealed)
        # This writer's chain: records submitted here are numbered 0, 1, ... with strictly increasing
        # times, so retention (oldest first) removes a chain's start and any other gap is a deletion.
        self.chain_id, self._chain_next, self._chain_last = new_id(), 0, datetime.min
        self.journal_path = journal
        self._journal: int | None = None  # file descriptor, O_APPEND
        self._journal_lock = threading.Lock()  # an append and its submit, the emptying, or the closing, at a time
        self._restore_journal = False  # some record is in the journal alone: restore it from there when caught up
        self.engine = make_engine(url)
        self.max_count, self.max_age_days = max_count, max_age_days
        self.pending: queue.Queue[Pending | None] = queue.Queue(maxsize=queue_size)
        self.on_failure = on_failure or (lambda reason: None)
        self.written = 0
        # Retention costs a scan of the newest max_count ids: run it every 1 % of max_count
        # writes (at most 100; every write for small limits), so the table may exceed
        # max_count by under 1 % between runs.
        self._retention_every = max(1, min(100, (max_count or 0) // 100))
        self._since_retention = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._overflow: list[Pending] = []  # submitted to a full queue (without images); under _journal_lock
        self._retry: list[Pending] = []  # failed for a reason that may pass (the writer's own)
        self._inflight: list[Pending] = []  # the round's records, until written, retried or rejected
        self._busy = False  # the writer is in a round (written rows, then the journal emptied)
        self._again_soon = False  # a round failed: run another (which empties the journal) without waiting
        self._retry_at = 0.0  # monotonic time of the next retry
        self._last_error: str | None = None  # of the last failed write, while records wait for a retry
        self._writer_error: str | None = None  # the writer's last unexpected failure (it carries on)
        self._writer_error_at = 0.0  # when (monotonic): /readyz names it for WRITER_ERROR_SHOWN_S
        # Every record submitted and not yet in the database, by id: (state, why); guarded by _changed.
        self._changed = threading.Condition()
        self._unwritten: dict[str, tuple[Waiting, str]] = {}
        self._notes: OrderedDict[str, tuple[Waiting, str]] = OrderedDict()  # rejected, or in the journal alone

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        Base.metadata.create_all(self.engine)
        upgrade(self.engine)
        if self.journal_path is not None:
            self.recover()
            self._journal = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._thread = threading.Thread(target=self._run, name="records-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued (one more try for what waits for a retry), then stop the writer;
        what it could not write in ``timeout`` stays in the journal for the next start."""
        if self._thread is not None:
            self._stopping.set()
            try:
                self.pending.put_nowait(None)  # wakes a waiting writer; a full queue wakes it anyway
            except queue.Full:
                pass
            self._thread.join(timeout)
            self._thread = None
        with self._journal_lock:
            if self._journal is not None:
                os.close(self._journal)
                self._journal = None
        self.engine.dispose()

    @property
    def rejected_path(self) -> Path | None:
        """Where records the database refused are kept, with the reason (one JSON line each)."""
        return None if self.journal_path is None else self.journal_path.with_name(self.journal_path.name + ".rejected")

    def recover(self) -> int:
        """Insert the journal's records that the database lacks (a service that was killed);
        returns how many. Their images were never written: the rows have none. A record the
        database refuses for what it holds goes to ``rejected_path``; one it cannot take now
        (``TRANSIENT``) stops the start, and the journal keeps it."""
        if self.journal_path is None or not self.journal_path.exists():
            return 0
        restored, again = self._restore()
        if again:
            raise RuntimeError(f"could not recover {again} journaled record(s) into {self.url}: {self._last_error}")
        if restored:
            log.warning("recovered %d inspection record(s) from the journal (their images were lost)", restored)
        self.journal_path.write_bytes(b"")
        return restored

    def _restore(self, at_start: bool = True) -> tuple[int, int]:
        """Write the journal's records that the database lacks, a chunk at a time (the file
        streamed, the ids checked ``CHECK_IDS`` at a time); (written, left for a retry). While
        the service runs, records on their way to the writer are left to it (with their images)."""
        restored = again = cut = 0
        with open(self.journal_path, "rb") as journal:
            while chunk := list(itertools.islice(journal, CHECK_IDS)):
                items = []
                for line in chunk:
                    try:
                        items.append(_from_journal(json.loads(line)))
                    except (ValueError, KeyError, TypeError):  # a line cut short by a kill
                        cut += 1
                with Session(self.engine) as session:
                    have = set(session.scalars(select(Record.id).where(Record.id.in_([i.id for i in items]))))
                with self._changed:
                    on_their_way = set(self._unwritten)
                missing = list({i.id: i for i in items if i.id not in have and i.id not in on_their_way}.values())
                left = {i.id for i in (self._write(missing) if missing else [])}
                restored, again = restored + len(missing) - len(left), again + len(left)
                with self._changed:
                    for item in missing:
                        if item.id not in left and self._notes.get(item.id, ("",))[0] == "journal":
                            del self._notes[item.id]
        if cut and at_start:  # while running, the last line may be one being appended: its record is queued
            log.warning("records journal: %d line(s) cut short (a kill mid-append) skipped", cut)
        return restored, again

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record submitted so far is in the database, rejected, or left to the
        journal (tests, shutdown); False when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._unwritten or self._busy:
                if (left := deadline - time.monotonic()) <= 0:
                    return False
                self._changed.wait(left)
        return True

    def wait_written(self, record_id: str, timeout: float = 2.0) -> tuple[Waiting, str] | None:
        """None once ``record_id`` is in the database (or when it was never submitted here);
        else its state and why. Waits up to ``timeout`` s while it is queued (the writer is on
        its way); a record waiting for a retry or rejected is answered at once."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while (state := self._unwritten.get(record_id)) and state[0] == "queued":
                if (left := deadline - time.monotonic()) <= 0:
                    break
                self._changed.wait(left)
            return self._unwritten.get(record_id) or self._notes.get(record_id)

    def health(self) -> str | None:
        """What the writer is behind on, for ``/readyz``; None when it keeps up."""
        if self._thread is not None and not self._thread.is_alive():
            return f"the records writer stopped ({self._writer_error}); new records are journaled only"
        with self._changed:
            retrying = sum(1 for state, _ in self._unwritten.values() if state == "retrying")
        problems = []
        if retrying:
            problems.append(f"{retrying} inspection record(s) waiting to be written, retried every "
                            f"{RETRY_MAX_S:g} s at most (last error: {self._last_error}); the journal keeps them")
        if self._restore_journal:
            problems.append("some records are in the journal alone (too many waited): written once the writer "
                            "catches up")
        if self._writer_error and time.monotonic() - self._writer_error_at < WRITER_ERROR_SHOWN_S:
            problems.append(f"the records writer recovered from an error in the last {WRITER_ERROR_SHOWN_S / 60:g} "
                            f"min: {self._writer_error}")
        return "; ".join(problems) or None

    @property
    def chain_numbered(self) -> int:
        """How many records this writer's chain has numbered (the next number)."""
        return self._chain_next

    # ------------------------------------------------------------ writing
    def submit(self, item: Pending) -> bool:
        """Queue ``item`` for writing; never blocks. A full queue keeps it without its images
        (False, logged, counted) for the writer to write when it can."""
        filename = clean_filename(item.filename)
        with self._journal_lock:
            created = max(utc_naive(item.created), self._chain_last + timedelta(microseconds=1))
            item = replace(item, filename=filename, created=created, chain_id=self.chain_id, chain_seq=self._chain_next)
            self._chain_next, self._chain_last = self._chain_next + 1, created
            if self._journal is not None:
                self._append(item)
            with self._changed:
                self._unwritten[item.id] = ("queued", "queued for the records writer")
            try:
                self.pending.put_nowait(item)
                return True
            except queue.Full:
                pass
            kept = len(self._overflow) + len(self._retry) < WAITING_MAX
            if kept:
                self._overflow.append(item.without_images())
        if kept:
            log.error("inspection record %s will be written without its images: the records queue is full "
                      "(%d waiting)", item.id, self.pending.qsize())
            self.on_failure("queue_full")
        else:
            self._leave_to_journal([item])
        return False

    def _leave_to_journal(self, items: list[Pending]) -> None:
        """More than ``WAITING_MAX`` records wait: these are left to the journal, which the
        writer restores from once it has caught up (counted ``dropped``: their images are lost)."""
        self._restore_journal = True
        self._set_aside(items, "journal", "kept in the records journal alone (too many records waited); it is "
                                          "written once the records writer catches up, without its images")
        log.error("%d inspection record(s) left to the journal: %d records wait to be written", len(items),
                  WAITING_MAX)
        for _ in items:
            self.on_failure("dropped")

    def _append(self, item: Pending) -> None:
        """One journal line, whole or not at all (a short write is cut back off, so the next
        line does not glue onto it); called under ``_journal_lock``."""
        data = memoryview(_journal_line(item))
        size = None
        try:
            size = os.fstat(self._journal).st_size
            while data:
                data = data[os.write(self._journal, data):]
        except OSError as exc:
            log.error("journaling inspection record %s failed: %s", item.id, exc)
            self.on_failure("journal")
            if size is not None:
                try:
                    os.ftruncate(self._journal, size)
                except OSError:
                    pass

    def _run(self) -> None:
        _lower_priority()
        while True:
            try:
                done = self._step()
                self._round_over()
                if done:
                    return
            except Exception as exc:  # noqa: BLE001 (the writer must outlive any one failure)
                self._writer_error, self._writer_error_at = _short(exc), time.monotonic()
                log.exception("the records writer failed (%s): it carries on; the journal keeps the records",
                              self._writer_error)
                self.on_failure("writer")
                waiting = {i.id for i in self._retry}
                self._retry += [i for i in self._inflight if i.id not in waiting]  # tried again in a moment
                self._inflight = []
                self._retry_at = time.monotonic() + RETRY_FIRST_S
                self._again_soon = True
                self._round_over()
                time.sleep(RETRY_FIRST_S)

    def _round_over(self) -> None:
        with self._changed:
            self._busy = False
            self._changed.notify_all()

    def _step(self) -> bool:
        """One round of the writer: a batch from the queue, what waits beyond it, and the
        retries that are due; True when it is time to stop."""
        now = time.monotonic()
        if self._stopping.is_set() or self._again_soon:
            self._again_soon = False
            timeout = 0.0
        elif self._retry:
            timeout = max(0.0, self._retry_at - now)
        else:
            timeout = 0.0 if self._overflow else None
        try:
            batch = [self.pending.get(timeout=timeout)]
        except queue.Empty:
            batch = []
        self._busy = True
        while len(batch) < 64:
            try:
                batch.append(self.pending.get_nowait())
            except queue.Empty:
                break
        stopping = self._stopping.is_set()
        items = [b for b in batch if b is not None]
        if self._overflow:
            with self._journal_lock:
                items, self._overflow = items + self._overflow, []
        due = stopping or time.monotonic() >= self._retry_at
        self._inflight = items
        if self._retry and not due:  # the database failed a moment ago: these wait for the retry with the others
            self._wait_for_retry(items)
            items = []
        elif self._retry:
            items, self._retry = self._retry + items, []
            self._inflight = items
        if items:
            again = self._write(items)
            if again:
                self._wait_for_retry(again)
        self._inflight = []
        self._empty_journal()
        if stopping and (self.pending.empty() or self._retry):
            if self._retry:
                log.error("stopping with %d inspection record(s) not written (%s): the journal keeps them for "
                          "the next start", len(self._retry), self._last_error)
            return True
        return False

    def _wait_for_retry(self, items: list[Pending]) -> None:
        """``items`` join those waiting for a retry; the pause grows with the most-tried of them
        and is never shortened by a newcomer. Past ``WAITING_MAX`` they are left to the journal;
        past the queue's size they wait without their images."""
        room = max(0, WAITING_MAX - len(self._retry) - len(self._overflow))
        if len(items) > room:
            self._leave_to_journal(items[room:])
            items = items[:room]
        self._retry += items
        tries = max((i.attempts for i in self._retry), default=1)
        pause = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(max(tries, 1) - 1, 16))
        self._retry_at = max(self._retry_at, time.monotonic() + pause)
        reason = f"not written yet: the records database failed ({self._last_error}); retrying"
        with self._changed:
            for item in items:
                if item.id in self._unwritten:
                    self._unwritten[item.id] = ("retrying", reason)
            self._changed.notify_all()
        keep = self.pending.maxsize or 256
        heavy = [i for i, item in enumerate(self._retry) if item.encoded is not None or item.query_bytes is not None]
        for i in heavy[: max(0, len(heavy) - keep)]:
            self._retry[i] = self._retry[i].without_images()
            self.on_failure("images")

    def _empty_journal(self) -> None:
        """Everything journaled is in the database once nothing waits: empty the journal (after
        restoring from it what was left to it alone)."""
        if self._journal is None or self.journal_path is None:
            return
        if self._restore_journal and self._caught_up():
            try:
                _, again = self._restore(at_start=False)
            except Exception as exc:  # noqa: BLE001 (tried again when the writer next catches up)
                log.error("restoring records from the journal failed: %s", exc)
                return
            if again:
                return
            self._restore_journal = False
        with self._journal_lock:
            if self._journal is not None and self._caught_up() and not self._restore_journal:
                try:
                    os.ftruncate(self._journal, 0)
                except OSError as exc:  # a journal that cannot be emptied only grows; the records are safe
                    log.error("emptying the records journal failed: %s", exc)
                    self.on_failure("journal")

    def _caught_up(self) -> bool:
        return self.pending.empty() and not self._overflow and not self._retry and not self._inflight

    def _row(self, item: Pending) -> Record:
        if item.evidence is not None:
            try:
                item.encoded = item.evidence()
            except Exception as exc:  # noqa: BLE001 (the record is kept without its pictures)
                log.error("the overlay's evidence of inspection %s failed: %s", item.id, exc)
                self.on_failure("overlay")
            item.evidence = None  # encoded once; the closure's arrays are let go
        r, evidence = item.result, item.encoded
        check = r.get("verification") or {}
        record = Record(
            id=item.id, created=utc_naive(item.created), request_id=item.request_id, category=item.category,
            verdict=r["verdict"], score=float(r["score"]), threshold=float(r["threshold"]),
            normalised_score=float(r["normalised_score"]), filename=item.filename, bundle_id=item.bundle_id,
            bundle_sha256=item.bundle_sha256, result_json=json.dumps(r),
            query_png=evidence and evidence.query_png, reference_png=evidence and evidence.reference_png,
            map_png=evidence and evidence.map_png, query_bytes=item.query_bytes, query_media_type=item.query_media_type,
            pose_verified=check.get("verified"), pose_check_reason=check.get("reason") or None,
            misalignment_px=_float(check.get("misalignment_px")), silhouette_iou=_float(check.get("silhouette_iou")),
            threshold_source=r.get("threshold_source"), calibrated_threshold=_float(r.get("calibrated_threshold")),
            query_sha256=r.get("query_sha256"), chain_id=item.chain_id, chain_seq=item.chain_seq,
            overlay_png=None, seal_key=None, seal=None, feedback_seal=None)
        if self.sealer is not None:  # over the values as the database gives them back (floats as floats)
            self.sealer.seal(record)
        return record

    def _insert(self, items: list[Pending]) -> None:
        with Session(self.engine) as session, session.begin():
            session.add_all([self._row(item) for item in items])

    def _write(self, items: list[Pending]) -> list[Pending]:
        """Insert ``items`` in one transaction; returns those to retry. A ``TRANSIENT`` failure
        sends the whole batch back for a retry (the database is down: one try, not one a row),
        until its records have been tried ``SPLIT_AFTER`` times. Any other failure, or that one,
        splits the batch one row at a time, so one row the database refuses never sinks the
        others: a row refused for what it holds is rejected (``_reject``), and so is one that
        keeps failing ``REJECT_AFTER`` times while the rows around it are written."""
        try:
            self._insert(items)
            written, again = items, []
        except Exception as exc:  # noqa: BLE001 (logged and counted; inspections are never failed by it)
            if isinstance(exc, TRANSIENT) and (len(items) == 1 or max(i.attempts for i in items) < SPLIT_AFTER):
                self._note_failure(exc, items)
                written, again = [], items
            else:
                if len(items) > 1:
                    log.warning("writing %d inspection records together failed (%s): writing them one at a time",
                                len(items), _short(exc))
                written, again = self._write_each(items)
        if again:
            log.error("writing %d inspection record(s) failed (%s): retrying; the journal keeps them",
                      len(again), self._last_error)
        with self._changed:
            for item in written:
                self._unwritten.pop(item.id, None)
            self._changed.notify_all()
        if written and not again and not self._retry:
            self._last_error = None
        self.written += len(written)
        self._since_retention += len(written)
        if written and self._since_retention >= self._retention_every:
            self._since_retention = 0
            try:
                self.enforce_retention()
            except Exception as exc:  # noqa: BLE001
                log.error("enforcing the records' retention failed: %s", exc)
                self.on_failure("retention")
        return again

    def _write_each(self, items: list[Pending]) -> tuple[list[Pending], list[Pending]]:
        """``items`` one transaction each; (written, to retry). Two rows in a row failing for a ``TRANSIENT`` reason before any is
        written means the database is down: the rest go back untried."""
        written, again, failing = [], [], 0
        for n, item in enumerate(items):
            try:
                self._insert([item])
                written.append(item)
                failing = 0
            except TRANSIENT as one:
                self._note_failure(one, [item])
                again.append(item)
                failing += 1
                if failing >= 2 and not written:
                    again += items[n + 1:]
                    break
            except IntegrityError as one:  # refused, or an earlier try's commit that did land
                try:
                    landed = self._exists(item.id)
                except Exception as check:  # noqa: BLE001 (cannot tell now: try again later)
                    self._note_failure(check, [item])
                    again.append(item)
                    continue
                if landed:
                    written.append(item)
                else:
                    self._reject(item, one)
            except Exception as one:  # noqa: BLE001
                self._reject(item, one)
        if written:  # the database takes rows: one that keeps failing is refusing it
            for item in [i for i in again if i.attempts >= REJECT_AFTER]:
                again.remove(item)
                self._reject(item, RuntimeError(f"it failed {item.attempts} times while other records were written "
                                                f"(last: {self._last_error})"))
        return written, again

    def _note_failure(self, exc: Exception, items: list[Pending]) -> None:
        self._last_error = _short(exc)
        for item in items:
            item.attempts += 1
            self.on_failure("write")

    def _exists(self, record_id: str) -> bool:
        with Session(self.engine) as session:
            return session.get(Record, record_id) is not None

    def _reject(self, item: Pending, exc: Exception) -> None:
        """A record the database refuses for what it holds: logged, counted, and kept with the
        reason in ``rejected_path`` (it would be refused again, so it is not retried)."""
        reason = f"the records database refused it ({_short(exc)})"
        log.error("inspection record %s rejected: %s", item.id, reason)
        self.on_failure("rejected")
        if self.rejected_path is not None:
            try:
                line = json.dumps({"error": reason, "record": json.loads(_journal_line(item))}) + "\n"
                with open(self.rejected_path, "a", encoding="utf-8") as f:
                    f.write(line)
                reason += f"; its result is kept in {self.rejected_path.name} on the service's data volume"
            except OSError as err:
                log.error("keeping rejected record %s failed: %s", item.id, err)
        self._set_aside([item], "rejected", reason)

    def _set_aside(self, items: list[Pending], state: Waiting, reason: str) -> None:
        """``items`` leave the writer's hands (rejected, or left to the journal): ``wait_written``
        answers with ``state`` and ``reason`` for the newest ``NOTES_KEPT`` of them."""
        with self._changed:
            for item in items:
                self._unwritten.pop(item.id, None)
                self._notes[item.id] = (state, reason)
            while len(self._notes) > NOTES_KEPT:
                self._notes.popitem(last=False)
            self._changed.notify_all()

    def enforce_retention(self, now: datetime | None = None) -> int:
        """Delete rows beyond the newest ``max_count`` and older than ``max_age_days``; returns
        how many. The count limit is committed first, so an age step that fails still leaves it
        applied (the rows kept are the same in either order)."""
        removed = 0
        if self.max_count is not None:
            with Session(self.engine) as session, session.begin():
                keep = select(Record.id).order_by(Record.created.desc(), Record.id.desc()).limit(self.max_count)
                removed += session.execute(delete(Record).where(Record.id.not_in(keep))).rowcount or 0
        if self.max_age_days is not None:
            cutoff = utc_naive(now or datetime.now(UTC)) - timedelta(days=self.max_age_days)
            with Session(self.engine) as session, session.begin():
                removed += session.execute(delete(Record).where(Record.created < cutoff)).rowcount or 0
        return removed

    # ------------------------------------------------------------ reading
    def count(self, filters: Filters = Filters()) -> int:
        with Session(self.engine) as session:
            return session.scalar(filters.apply(select(func.count()).select_from(Record))) or 0

    def list(self, filters: Filters = Filters(), limit: int = 50, offset: int = 0,
             before: tuple[datetime, str] | None = None) -> list[Record]:
        """Records without their images and result (``has_overlay``, ``has_query`` say whether
        they have images): what a history page and the CSV need. Newest first; ``before``
        (created, id) starts after that record, so pages read that way neither repeat nor skip
        a record when new ones arrive meanwhile."""
        stmt = filters.apply(select(Record, HAS_OVERLAY, Record.query_bytes.is_not(None))
                             .options(*(defer(c) for c in IMAGES), defer(Record.result_json)))
        if before is not None:
            created, rid = before
            stmt = stmt.where(or_(Record.created < created, and_(Record.created == created, Record.id < rid)))
        stmt = stmt.order_by(Record.created.desc(), Record.id.desc()).limit(limit).offset(offset)
        with Session(self.engine, expire_on_commit=False) as session:
            rows = []
            for record, has_overlay, has_query in session.execute(stmt):
                record.has_overlay, record.has_query = bool(has_overlay), bool(has_query)
                rows.append(record)
            return rows

    def position(self, record_id: str) -> tuple[datetime, str] | None:
        """Where a record sits in the newest-first order (``list``'s ``before``), or None."""
        with Session(self.engine) as session:
            created = session.scalar(select(Record.created).where(Record.id == record_id))
        return None if created is None else (created, record_id)

    def get(self, record_id: str) -> Record | None:
        with Session(self.engine, expire_on_commit=False) as session:
            record = session.get(Record, record_id)
        if record is not None:
            record.has_overlay = record.overlay_png is not None or record.map_png is not None
            record.has_query = record.query_bytes is not None
        return record

    def seal_status(self, record: Record) -> tuple[str, str | None]:
        """Whether ``record`` (read whole, as ``get`` reads it) is as it was written: ``sealing.Sealer.check``'s
        status and reason, or ``unchecked`` when this store has no key."""
        if self.sealer is None:
            return ("unsealed", "written without a records key") if record.seal is None else \
                ("unchecked", "the service has no records key (RPEPAD_RECORDS_KEY_FILE) to check the seal with")
        return self.sealer.check(record)

    def scan(self, chunk: int = 200) -> Iterator[Record | Unreadable]:
        """Every record whole, for a check of the seals (``scan``)."""
        return scan(self.engine, chunk)

    def set_feedback(self, record_id: str, label: str | None, note: str | None,
                     by: str | None = None) -> Record | None:
        """The operator's word on a record (``label`` None clears it, ``note`` then saying why;
        ``by`` who gives it);
        the word it replaces is kept in ``feedback_history``, so a correction never loses what
        was said before.

        Words given at the same moment (two operators, a retried request) are each kept: the
        write is a compare-and-set on ``feedback_at``, so an update whose history was read
        before another word landed writes nothing, and is read and applied again."""
        if label is not None and label not in FEEDBACK:
            raise ValueError(f"feedback must be one of {FEEDBACK} or None, got {label!r}")
        for attempt in range(FEEDBACK_ATTEMPTS):
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                record = session.get(Record, record_id)
                if record is None:
                    return None
                seen = record.feedback_at
                history = json.loads(record.feedback_history or "[]")
                if record.feedback is not None or record.feedback_note is not None:  # a word, or a clear's reason
                    history.append({"label": record.feedback, "note": record.feedback_note,
                                    "at": seen.isoformat() + "Z" if seen else None, "by": record.feedback_by})
                now = utc_now()
                if seen is not None and now <= seen:  # a coarse clock: keep the moments ordered
                    now = seen + timedelta(microseconds=1)
                values = {"feedback": label, "feedback_note": note, "feedback_by": by,
                          "feedback_at": now, "feedback_history": json.dumps(history) if history else None}
                values["feedback_seal"] = (None if self.sealer is None else
                                           self.sealer.feedback_seal(SimpleNamespace(id=record.id, seal=record.seal,
                                                                                     **values)))
                unchanged = Record.feedback_at.is_(None) if seen is None else Record.feedback_at == seen
                written = session.execute(update(Record).where(Record.id == record_id, unchanged).values(**values)
                                          .execution_options(synchronize_session=False)).rowcount
                if written == 1:
                    for key, value in values.items():
                        set_committed_value(record, key, value)
                    return record
            time.sleep(random.uniform(0.0, 0.002) * (attempt + 1))  # another word landed first: read again
        raise FeedbackConflict(f"the feedback on inspection {record_id} kept changing while this word was written "
                               f"({FEEDBACK_ATTEMPTS} tries); nothing of it was stored, send it again")

    def csv_rows(self, filters: Filters = Filters(), chunk: int = 500) -> Iterator[str]:
        """The filtered records as CSV text, header first, newest first, in chunks (each read
        after the last one's record: records that arrive meanwhile are neither repeated nor
        shift a later chunk)."""
        columns = ["id", "created", "request_id", "category", "verdict", "score", "threshold", "normalised_score",
                   "filename", "bundle_id", "bundle_sha256", "feedback", "feedback_note", "feedback_at",
                   "pose_verified", "pose_check_reason", "misalignment_px", "silhouette_iou",
                   "threshold_source", "calibrated_threshold", "query_sha256", "feedback_by"]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        before = None
        while True:
            rows = self.list(filters, limit=chunk, before=before)
            for r in rows:
                writer.writerow([_csv_value(getattr(r, c)) for c in columns])
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
            if len(rows) < chunk:
                return
            before = rows[-1].created, rows[-1].id


IMAGES = (Record.overlay_png, Record.query_png, Record.reference_png, Record.map_png, Record.query_bytes)
# A row has an overlay when it has a drawn one or its evidence (written together, in one row).
HAS_OVERLAY = or_(Record.overlay_png.is_not(None), Record.map_png.is_not(None))


def upgrade(engine: Engine) -> list[str]:
    """Add the columns a table made by an earlier version lacks; returns their names. Only
    nullable columns are ever added (older rows get NULL), so this is safe on a live table
    and on every backend (``ALTER TABLE ... ADD COLUMN``); anything else would be a
    migration, and none is needed yet. Replicas that start together on one database may race
    here: a column another one added in the meantime counts as added, and each column is its
    own transaction."""
    added, have = [], _columns(engine)
    for column in [c for c in Record.__table__.columns if c.name not in have]:
        if not column.nullable or column.index:
            raise RuntimeError(f"the records table lacks column {column.name!r}, which an upgrade cannot add "
                               f"(not nullable, or indexed): migrate or move {engine.url!r} aside")
        ddl = CreateColumn(column).compile(dialect=engine.dialect)
        try:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {Record.__tablename__} ADD COLUMN {ddl}"))
        except Exception:
            if column.name not in _columns(engine):  # not another replica's doing
                raise
            continue
        added.append(column.name)
    if added:
        log.warning("records table upgraded: added column(s) %s", ", ".join(added))
    return added


# What reading a row whose stored values are not the service's may raise: Python's own decoding errors,
# and the driver's (SQLite's text that is not UTF-8, PostgreSQL's time out of range), as SQLAlchemy wraps them.
READ_FAILURES = (ValueError, TypeError, OverflowError, StatementError)


def scan(engine: Engine, chunk: int = 200) -> Iterator[Record | Unreadable]:
    """Every record whole (images too), ``chunk`` rows a query, for a check of the seals. The
    ids are read first (as the database sorts the stored times: a time changed into text
    still sorts), then the rows by id; a row whose values do not read back as a record (a
    time that is not a time, text that is not UTF-8) comes as ``Unreadable``, and the others
    still read. A database that stops answering raises, as it would at the start."""
    with Session(engine) as session:
        ids = list(session.scalars(select(Record.id).order_by(Record.created, Record.id)))
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        try:
            with Session(engine, expire_on_commit=False) as session:
                rows = {r.id: r for r in session.scalars(select(Record).where(Record.id.in_(part)))}
        except READ_FAILURES:  # some row's value does not decode: each alone
            _answers(engine)
            rows = {}
            for record_id in part:
                try:
                    with Session(engine, expire_on_commit=False) as session:
                        rows[record_id] = session.get(Record, record_id)
                except READ_FAILURES as exc:
                    _answers(engine)  # the database gone is the machine's failure, not this record's
                    rows[record_id] = Unreadable(printable(record_id), "a stored value does not read back as one "
                                                 f"the service writes ({_short(exc)})")
        yield from (rows[i] for i in part if rows.get(i) is not None)


def _answers(engine: Engine) -> None:
    """Raise the database's own error when it no longer answers."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def open_existing(url: str) -> Engine:
    """An engine on a records database that exists, to read (``rpe-pad records verify``, with
    ``scan``): nothing is created, upgraded or written. SQLite is opened read-only (SQLite may
    still make its ``-shm`` index beside a WAL database), and as an immutable file where its
    folder cannot be written and no ``-wal`` or ``-shm`` is beside it (a copy on a read-only
    mount, which read-only mode cannot open); its text is read even where it is not UTF-8.
    ValueError or FileNotFoundError naming what is wrong; ConnectionError when the database
    cannot be reached."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"records database URL {url!r} is not a database URL ({exc})") from None
    shown = parsed.render_as_string(hide_password=True)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        is_uri = str(parsed.query.get("uri", "")).lower() in ("true", "1")
        name = parsed.database or ""
        path = unquote(name.removeprefix("file:")) if is_uri else name  # as the service would open it
        if not path or path == ":memory:" or not Path(path).is_file():
            raise FileNotFoundError(f"records database {path or url} does not exist")
        path = Path(path).resolve()
        query = {**parsed.query, "mode": "ro", "uri": "true"}
        beside = [path.with_name(path.name + end) for end in ("-wal", "-shm")]
        if not os.access(path.parent, os.W_OK) and not any(p.exists() for p in beside):
            query["immutable"] = "1"
        url = parsed.set(database="file:" + quote(str(path)), query=query)
    try:
        engine = create_engine(url)
    except (ArgumentError, ImportError) as exc:  # an unknown dialect, or its driver not installed
        raise ValueError(f"records database URL {shown}: {_short(exc)}") from None
    if sqlite:
        @event.listens_for(engine, "connect")
        def _any_text(conn, _record):  # noqa: ANN001 (text that is not UTF-8 is a finding, not a stop)
            conn.text_factory = lambda data: data.decode("utf-8", "surrogateescape")
    try:
        have = _columns(engine)
    except NoSuchTableError:
        engine.dispose()
        raise ValueError(f"{shown} has no {Record.__tablename__} table: not a records database") from None
    except SQLAlchemyError as exc:
        engine.dispose()
        raise ConnectionError(f"records database {shown}: {_short(exc)}") from None
    lacking = sorted(c.name for c in Record.__table__.columns if c.name not in have)
    if lacking:
        engine.dispose()
        raise ValueError(f"the records table was written by an earlier version (it lacks {', '.join(lacking)}): "
                         "start the service on it once to upgrade it; its records are unsealed")
    return engine


def _columns(engine: Engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(Record.__tablename__)}


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may read as a formula (OWASP's CSV injection)


def _csv_value(value) -> str:
    """A record's field as CSV text; a text field (a file name, a feedback note) that a
    spreadsheet would read as a formula is quoted with a leading apostrophe."""
    if isinstance(value, datetime):
        return value.isoformat() + "Z"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    text = "" if value is None else str(value)
    return "'" + text if isinstance(value, str) and text.startswith(FORMULA_STARTS) else text


WRITER_NICE = 10  # the writer's niceness: CPU share about 5 % against an inspection's threads


def _lower_priority() -> None:
    """Let inspections have the CPU first: the writer thread runs at ``WRITER_NICE`` (Linux
    schedules threads by their own niceness; elsewhere this does nothing). At nice 10 a
    saturated 2-core host still gives it about 100 ms of CPU a second, several times what
    the records of 4 inspections a second cost (about 15 ms each)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
    except (AttributeError, OSError):
        pass


def _short(exc: BaseException) -> str:
    """An exception as one short line for a log, a metric's reason or an answer."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:200]}"


def _from_journal(entry: dict) -> Pending:
    """A journal line's record, without images (they were never journaled); its chain place
    where the line has one (lines of a version before session 52 do not)."""
    seq = entry.get("chain_seq")
    return Pending(id=entry["id"], created=datetime.fromisoformat(entry["created"]), request_id=entry["request_id"],
                   category=entry["category"], filename=entry["filename"], bundle_id=entry["bundle_id"],
                   bundle_sha256=entry["bundle_sha256"], result=entry["result"], evidence=None, query_bytes=None,
                   query_media_type=None, chain_id=entry.get("chain_id"), chain_seq=None if seq is None else int(seq))


def _journal_line(item: Pending) -> bytes:
    return (json.dumps({"id": item.id, "created": item.created.isoformat(), "request_id": item.request_id,
                        "category": item.category, "filename": item.filename, "bundle_id": item.bundle_id,
                        "bundle_sha256": item.bundle_sha256, "result": item.result, "chain_id": item.chain_id,
                        "chain_seq": item.chain_seq}) + "\n").encode()


def _float(value) -> float | None:
    """A number for a Float column as the database gives it back (a JSON 0 is 0.0), or None."""
    return None if value is None else float(value)


def png_bytes(image) -> bytes:
    """PNG bytes of a PIL image, fast zlib level 1 (Lego's overlay: 9 ms against 20 at the
    default level 6, 7 % larger)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def utc_naive(moment: datetime) -> datetime:
    """``moment`` in UTC without tzinfo: how the table stores times (every backend alike).
    A moment whose UTC time falls outside datetime's range (year 1 at +01:00, year 9999 at
    -01:00) is clamped to that range's end."""
    if moment.tzinfo is None:
        return moment
    try:
        return moment.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        return datetime.min if moment.year == datetime.min.year else datetime.max


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
