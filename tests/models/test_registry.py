"""The one registry of names: lookups, refusals, and the docs table that lists it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from models import registry

ROOT = Path(__file__).resolve().parents[2]


def test_lookup_and_refusals() -> None:
    assert registry.pose_mode("rpe").target == "models.inspector:RpePose"
    assert registry.resolve(registry.pose_mode("rpe+refine")).__name__ == "RefinedPose"
    with pytest.raises(ValueError, match="not available.*rpe\\+refine"):
        registry.pose_mode("warp")
    with pytest.raises(ValueError, match="registered already"):
        registry.register_pose_mode("rpe", "something else", "x:y")
    assert registry.DEFAULT_POSE in registry.pose_modes()


def test_the_architecture_table_lists_every_pose_mode() -> None:
    """docs/ARCHITECTURE.md's table of pose modes names exactly the registered ones, product and lab."""
    import lab  # noqa: F401 (registers the lab's modes)

    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    table = text.split("## One registry of names")[1].split("\n\n")[2]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)`(?: \(default\))? \| (product|lab) \|", table, re.M)}
    assert rows == {name: ("lab" if e.lab else "product") for name, e in registry.POSE_MODES.items()}
