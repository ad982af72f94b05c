"""Imports go one way: models <- training, models <- service; never training <-> service."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "models": {"training", "service", "rpe_pad"},
    "training": {"service", "rpe_pad"},
    "service": {"training", "rpe_pad"},
}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no modules"
    bad = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in _imported_packages(path) & FORBIDDEN[package]
    }
    assert not bad, sorted(bad)

