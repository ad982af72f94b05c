"""Imports go one way: models <- training, models <- service, and the lab over all three;
never training <-> service, and the product (models, training, service) never imports the lab."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "models": {"training", "service", "rpe_pad", "lab"},
    "training": {"service", "rpe_pad", "lab"},
    "service": {"training", "rpe_pad", "lab"},
}  # the lab may use every layer (its command-line wrappers import rpe_pad's argument types): nothing to check


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



def test_the_check_sees_an_import_of_the_lab(tmp_path: Path) -> None:
    """The parser behind the check catches the imports it must refuse."""
    module = tmp_path / "m.py"
    module.write_text("import lab.modes\nfrom lab.evaluate import evaluate\nfrom . import sibling\n")
    assert _imported_packages(module) == {"lab"}


def test_lab_modes_are_registered_by_name_only() -> None:
    """Importing the lab (as the CLI does to build its parser) imports no torch-heavy module."""
    import subprocess
    import sys

    code = "import sys, lab, lab.cli; print('models.inspector' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split() == ["False", "False"]
