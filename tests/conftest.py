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


# A 150-step Gaussian model of ``tiny_synth``: enough for renders that resemble the views.
TINY_SPLATS = dict(iterations=150, init_points=3000, refine_start=40, refine_stop=120, refine_every=20,
                   reset_every=10_000, checkpoint_every=0, sh_degree=0)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BUNDLES/<tiny> with the splats stage only (later stages are built by their tests)."""
    from models.data import load_category
    from training.splats import preset, run_splats_stage

    cat = load_category(tiny_synth)
    out = tmp_path_factory.mktemp("bundles") / cat.name
    run_splats_stage(cat, preset("demo", **TINY_SPLATS), out, progress=False)
    return out
