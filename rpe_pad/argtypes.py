"""Argument types shared by the product's CLI and the lab's (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse
import math
from datetime import UTC, datetime
from pathlib import Path


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def int_between(low: int, high: int):
    """An integer from ``low`` to ``high``: a bound keeps a typo (``--size 100000``) from
    asking for more memory than the machine has."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse's "invalid integer value" for what int() refuses
    return parse


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (``nan`` and ``inf`` are refused)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def iso_time(text: str) -> datetime:
    """An ISO 8601 time (``2026-12-08``, ``2026-12-08T01:00``, ``...+01:00``), UTC when no zone
    is given (as the service's ``since`` and ``until``)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"is not an ISO 8601 time (2026-12-08 or 2026-12-08T01:00), got {text!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def folder(text: str) -> Path:
    """A folder's path; an empty one is refused (``Path("")`` would quietly be the current folder),
    and so is one that is a file or lies under one: an output folder that cannot be made was
    found only when the work was done and its results were to be written."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    path = Path(text)
    blocking = writable_parent(path)
    if blocking is not None:
        where = "" if blocking == path else f"{text}: "
        raise argparse.ArgumentTypeError(f"{where}{blocking} is a file, not a folder")
    return path


def writable_parent(path: Path) -> Path | None:
    """The file that stands where ``path`` or one of its folders would be, or None (also when a
    folder cannot be read: the command's own error names that, as it did)."""
    try:
        for part in (path, *path.parents):
            if part.exists():
                return None if part.is_dir() else part
    except OSError:
        return None
    return None


def intrinsics(text: str) -> tuple[float, float, float, float]:
    """``FX,FY,CX,CY``: a camera's intrinsics in its own pixels."""
    from models.camera import parse_intrinsics

    try:
        return parse_intrinsics(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
