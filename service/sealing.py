"""Tamper evidence for inspection records: a keyed seal on every row, and numbered chains.

Whoever can write to the records database could otherwise change a verdict, a score or a
feedback word, or delete an inconvenient record, and nothing would show it. With a key
(``RPEPAD_RECORDS_KEY_FILE``: a file of at least 32 secret bytes, kept away from the
database), the records writer seals each row as it writes it:

- ``seal``: HMAC-SHA256 under the key over the row's inspection (version ``SEAL_VERSION``'s
  fields, ``RECORD_FIELDS``: its id, time, request, category, verdict, score, thresholds,
  file name, bundle, the whole result as stored, its chain place, and the sha256 of each of
  its images and of the upload); one changed byte anywhere, an image removed or swapped,
  breaks it.
- ``feedback_seal``: HMAC over the record's seal and its feedback (the word, the note, who
  gave it, when, and the history of earlier words), written with each feedback under the
  key the service has then, and prefixed with that key's name.
- ``chain_id`` and ``chain_seq``: each records writer (one a service process) numbers the
  records submitted to it 0, 1, 2, ... in one chain of its own (a new chain at each
  start). The number is covered by the seal, so a deleted record leaves a gap that cannot be
  closed without the key. Retention deletes the oldest records, so within a chain it removes
  a run at its start (``RecordStore.submit`` gives a chain's records strictly increasing
  times); a gap anywhere else is a deletion, or a row the database refused (those are kept
  in ``records.journal.rejected``).

``seal_key`` names the key (``key_id``: the start of the key's sha256), so keys can be
rotated and old records checked with the old key. What a seal does not prove: that the
newest records of a chain were not deleted (nothing after them is left to show a gap);
that a record had no feedback (every feedback column and the feedback seal set to NULL read
as a record never given any; a feedback changed, or partly removed, is found); and anything
about a record written without a key (``unsealed``). The check is
``rpe-pad records verify`` (``verify_rows``) and, for one record, ``GET /inspections/{id}``'s
``seal``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

SEAL_VERSION = 1  # the message's layout; a new layout gets a new number and old rows keep theirs
MIN_KEY_BYTES = 32  # HMAC-SHA256's own size: a shorter key is easier to guess than the hash is to break
MAX_KEY_BYTES = 4096  # a key file larger than this is a wrong file, not a key

# The row's columns a record seal covers, in this order (images by their sha256).
RECORD_FIELDS = ("id", "created", "request_id", "category", "verdict", "score", "threshold", "normalised_score",
                 "filename", "bundle_id", "bundle_sha256", "result_json", "overlay_png", "query_png",
                 "reference_png", "map_png", "query_bytes", "query_media_type", "pose_verified", "pose_check_reason",
                 "misalignment_px", "silhouette_iou", "threshold_source", "calibrated_threshold", "query_sha256",
                 "chain_id", "chain_seq", "seal_key")
FEEDBACK_WORDS = ("feedback", "feedback_note", "feedback_at", "feedback_by", "feedback_history")  # the feedback itself
FEEDBACK_FIELDS = ("id", "seal", *FEEDBACK_WORDS)  # what a feedback seal covers: the record's seal and its feedback

Status = Literal["valid", "invalid", "unsealed", "unknown_key"]


def read_key(path: Path) -> bytes:
    """The key in ``path``: every byte of it (a random key may end in a newline's byte, so
    nothing is stripped; the service and the check read the same file). ValueError naming
    what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"records key file {path} is not a file")
    size = path.stat().st_size
    if size > MAX_KEY_BYTES:
        raise ValueError(f"records key file {path} has {size} bytes: a key is {MIN_KEY_BYTES}-{MAX_KEY_BYTES} "
                         "bytes (make one with: head -c 32 /dev/urandom > FILE)")
    key = path.read_bytes()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"records key file {path} holds {len(key)} bytes, fewer than {MIN_KEY_BYTES} (make one "
                         "with: head -c 32 /dev/urandom > FILE)")
    return key


def key_id(key: bytes) -> str:
    """A name for ``key`` that records carry: 16 hex digits of its sha256 (it gives nothing of a
    random key away)."""
    return hashlib.sha256(key).hexdigest()[:16]


def _value(value):
    """A column's value in the message: bytes by their sha256, times in ISO 8601, floats by
    their shortest repr (every backend stores a double exactly, but SQLite gives -0.0 back as
    0.0: zero is written 0.0)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "sha256:" + hashlib.sha256(bytes(value)).hexdigest()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value + 0.0)
    return value


def message(row, fields: tuple[str, ...], kind: str) -> bytes:
    """The bytes a seal is computed over: the version, what it seals and the named columns
    of ``row`` (any object with them as attributes), as canonical JSON."""
    body = {"v": SEAL_VERSION, "kind": kind, **{name: _value(getattr(row, name)) for name in fields}}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class Sealer:
    """Seals rows under one key, and checks them under any of ``keys`` (the current one first,
    then older ones kept to check records written before a rotation)."""

    key: bytes = field(repr=False)  # never in a log or a traceback
    old_keys: tuple[bytes, ...] = field(default=(), repr=False)
    id: str = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "id", key_id(self.key))

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> Sealer:
        keys = [read_key(p) for p in paths]
        if not keys:
            raise ValueError("no records key file given")
        return cls(keys[0], tuple(keys[1:]))

    def _mac(self, key: bytes, data: bytes) -> str:
        return hmac.new(key, data, hashlib.sha256).hexdigest()

    def seal(self, row) -> None:
        """Set ``row``'s ``seal_key`` and ``seal`` (its chain place must be set already)."""
        row.seal_key = self.id
        row.seal = self._mac(self.key, message(row, RECORD_FIELDS, "record"))

    def feedback_seal(self, row) -> str | None:
        """The seal of ``row``'s feedback as it now stands, ``KEY_ID:HMAC`` (under this key,
        whichever sealed the record); None for a record without a seal."""
        if row.seal is None:
            return None
        return f"{self.id}:{self._mac(self.key, message(row, FEEDBACK_FIELDS, 'feedback'))}"

    def _key_for(self, name: str | None) -> bytes | None:
        return next((k for k in (self.key, *self.old_keys) if key_id(k) == name), None)

    def check(self, row) -> tuple[Status, str | None]:
        """(status, what is wrong). ``invalid`` says whether the inspection or the feedback
        does not match its seal, or that a value does not read as any the service writes."""
        try:
            return self._check(row)
        except (TypeError, ValueError, AttributeError, UnicodeError) as exc:  # a value of a type never written
            return "invalid", f"a stored value is not one the service writes ({type(exc).__name__}: {exc})"

    def _check(self, row) -> tuple[Status, str | None]:
        if row.seal is None:
            return "unsealed", "written without a records key"
        key = self._key_for(row.seal_key)
        if key is None:
            return "unknown_key", f"sealed under key {row.seal_key}, which is not among the keys given"
        if not _same(row.seal, self._mac(key, message(row, RECORD_FIELDS, "record"))):
            return "invalid", "the inspection was changed after it was written (its seal does not match)"
        has_feedback = any(getattr(row, name) is not None for name in FEEDBACK_WORDS)
        if row.feedback_seal is None:
            if has_feedback:
                return "invalid", "it has feedback without a feedback seal"
            return "valid", None
        name, _, mac = str(row.feedback_seal).partition(":")
        feedback_key = self._key_for(name)
        if feedback_key is None:
            return "unknown_key", f"its feedback is sealed under key {name}, which is not among the keys given"
        if not _same(mac, self._mac(feedback_key, message(row, FEEDBACK_FIELDS, "feedback"))):
            return "invalid", "its feedback was changed after it was given (the feedback seal does not match)"
        return "valid", None


def _same(stored, computed: str) -> bool:
    """A stored seal equals ``computed`` (in constant time; a stored value that is not text of
    ASCII, as no seal is, is not equal)."""
    return isinstance(stored, str) and stored.isascii() and hmac.compare_digest(stored, computed)


def printable(value) -> str:
    """A record id as a report can print it: as it is when it is printable ASCII text (as the
    service's are), else Python's ``ascii`` of it (an id changed into bytes, or into text that
    is not UTF-8)."""
    return value if isinstance(value, str) and value.isascii() and value.isprintable() else ascii(value)


@dataclass(frozen=True)
class Unreadable:
    """A row whose stored values cannot be read back as the service wrote them (a time that is
    not a time, a number that is not a number): a finding in itself."""

    id: str
    reason: str


@dataclass
class Chain:
    """What a check saw of one writer's chain (of the records whose seal holds)."""

    id: str
    first: int
    last: int
    count: int
    missing: list[int]  # numbers between first and last with no record (at most MISSING_SHOWN kept)
    missing_count: int
    unsettled: int = 0  # numbers missing before a record newer than SETTLE_S: maybe still on their way


MISSING_SHOWN = 50
INVALID_SHOWN = 100
# A record the writer has not written yet (queued, retried, left to the journal) leaves a gap for a while:
# a gap counts only once the next record of its chain is this much older than the check.
SETTLE_S = 600.0


@dataclass
class Report:
    """``verify_rows``'s findings."""

    records: int = 0
    valid: int = 0
    unsealed: int = 0
    unsealed_since: int = 0  # unsealed records dated at or after sealed_since (all of them without one): findings
    unknown_key: int = 0
    unknown_keys: set[str] = field(default_factory=set)  # the names of the keys not given that sealed some
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (record id, why), at most INVALID_SHOWN
    invalid_count: int = 0
    chains: list[Chain] = field(default_factory=list)

    @property
    def gaps(self) -> int:
        return sum(c.missing_count for c in self.chains)

    @property
    def unsettled(self) -> int:
        return sum(c.unsettled for c in self.chains)

    @property
    def ok(self) -> bool:
        """No record changed, none missing inside a chain, none under a key not given, and no
        unsealed record dated after sealing began."""
        return self.invalid_count == 0 and self.gaps == 0 and self.unknown_key == 0 and self.unsealed_since == 0

    def to_json(self) -> dict:
        return {"ok": self.ok, "records": self.records, "valid": self.valid, "invalid": self.invalid_count,
                "unsealed": self.unsealed, "unsealed_since": self.unsealed_since, "unknown_key": self.unknown_key,
                "unknown_keys": sorted(self.unknown_keys), "missing": self.gaps, "unsettled": self.unsettled,
                "invalid_records": [{"id": i, "reason": why} for i, why in self.invalid],
                "chains": [c.__dict__ for c in self.chains]}


def verify_rows(rows: Iterable, sealer: Sealer, sealed_since: datetime | None = None,
                progress: Callable[[int], None] | None = None, now: datetime | None = None,
                settle_s: float = SETTLE_S) -> Report:
    """Check every row of ``rows`` (records with their images, or ``Unreadable``) and the chains
    their seals hold. An unsealed record is a finding unless ``sealed_since`` (naive UTC: when
    every writer had the key, a date the auditor brings, not one read from the database) is
    given and it is dated before it. Only a record whose seal holds counts in its chain, so a
    record stripped of its seal leaves a gap as a deleted one does. A gap before a record newer
    than ``settle_s`` before ``now`` (naive UTC; the wall clock by default) is ``unsettled``, not
    missing: a live service's writer may still be writing it."""
    report = Report()
    seqs: dict[str, list[tuple[int, datetime]]] = {}
    settled = (now or datetime.now(UTC).replace(tzinfo=None)) - timedelta(seconds=settle_s)

    def finding(record_id, why: str) -> None:
        report.invalid_count += 1
        if len(report.invalid) < INVALID_SHOWN:
            report.invalid.append((printable(record_id), why))

    for row in rows:
        report.records += 1
        if progress is not None and report.records % 1000 == 0:
            progress(report.records)
        if isinstance(row, Unreadable):
            finding(row.id, row.reason)
            continue
        status, why = sealer.check(row)
        if status == "valid":
            report.valid += 1
            if row.chain_id is not None and row.chain_seq is not None:
                seqs.setdefault(row.chain_id, []).append((row.chain_seq, row.created))
        elif status == "unsealed":
            report.unsealed += 1
            created = row.created if isinstance(row.created, datetime) else None
            report.unsealed_since += sealed_since is None or created is None or created >= sealed_since
        elif status == "unknown_key":
            report.unknown_key += 1
            report.unknown_keys.add(_unknown_name(sealer, row))
        else:
            finding(row.id, why)
    for chain_id, places in seqs.items():
        places.sort()
        numbers = [n for n, _ in places]
        fresh = {n for n, created in places[1:] if created > settled}  # a gap before these may yet be written
        gone = [(a, b) for a, b in zip(numbers, numbers[1:]) if b not in fresh]
        shown = list(itertools.islice(_missing(gone), MISSING_SHOWN))
        count = sum(max(0, b - a - 1) for a, b in gone)
        waiting = sum(max(0, b - a - 1) for a, b in zip(numbers, numbers[1:]) if b in fresh)
        report.chains.append(Chain(chain_id, numbers[0], numbers[-1], len(numbers), shown, count, waiting))
    report.chains.sort(key=lambda c: (-c.missing_count, c.id))
    return report


def _unknown_name(sealer: Sealer, row) -> str:
    """The name of the key, not among ``sealer``'s, that sealed ``row`` or its feedback."""
    if sealer._key_for(row.seal_key) is None:
        return str(row.seal_key)
    return str(row.feedback_seal).partition(":")[0]


def _missing(gaps: list[tuple[int, int]]) -> Iterator[int]:
    """The numbers strictly between each pair of ``gaps``."""
    for a, b in gaps:
        yield from range(a + 1, b)
