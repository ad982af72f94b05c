"""Shared fixtures. Tests never read ../shared: real data comes from tests/data."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
LEGO = DATA / "Lego"


@pytest.fixture(scope="session")
def lego_dir() -> Path:
    return LEGO


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic category, generated once per test session."""
    from training.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth") / "tiny"
    generate(out, SynthConfig(seed=3, size=64, train_views=8, test_views=8), progress=False)
    return out
