"""Shared fixtures. Tests never read ../shared: real data comes from tests/data.

`make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadfile`: a module's tests
stay on one worker, so its module fixtures are built once). The session's tiny category and
bundles are built once per run, not once per worker: ``_built_once`` builds each under a file
lock in the folder the workers share. They are read-only for the tests."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
LEGO = DATA / "Lego"


def pytest_configure(config: pytest.Config) -> None:
    """On an xdist worker, one torch thread: the two workers share the machine's cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules with the longest tests first, longest first (``slow(seconds=...)``, about
    how long the test takes alone on an idle 2-core machine): on two workers they start at
    once and the short modules fill in around them. The order within a module is kept."""
    weight: dict[str, float] = {}
    marked: dict[tuple[str, str], float] = {}  # a parametrized test counts once
    for item in items:
        module = item.nodeid.split("::")[0]
        weight.setdefault(module, 0.0)
        if (mark := item.get_closest_marker("slow")) is not None:
            marked[module, getattr(item, "originalname", item.name)] = mark.kwargs.get("seconds", 0.0)
    for (module, _), seconds in marked.items():
        weight[module] += seconds
    items.sort(key=lambda item: -weight[item.nodeid.split("::")[0]])  # stable: ties keep their order


def _built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]) -> Path:
    """``build(folder)`` run once per test run, across xdist workers; it fills the empty
    ``folder`` and returns the path the fixture gives (the folder or a path inside it)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(factory.mktemp(name))
    from filelock import FileLock

    shared = factory.getbasetemp().parent  # the run's folder, above each worker's own
    done = shared / f"{name}.built.json"
    with FileLock(shared / f"{name}.lock"):
        if not done.exists():
            folder = shared / name
            shutil.rmtree(folder, ignore_errors=True)  # what a worker's failed build left
            folder.mkdir()
            done.write_text(json.dumps({"path": str(build(folder))}))
    return Path(json.loads(done.read_text())["path"])


@pytest.fixture(scope="session")
def lego_dir() -> Path:
    return LEGO


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic category, generated once per test session."""
    from training.synth import SynthConfig, generate

    def build(folder: Path) -> Path:
        generate(folder / "tiny", SynthConfig(seed=3, size=64, train_views=8, test_views=8), progress=False)
        return folder / "tiny"

    return _built_once(tmp_path_factory, "synth", build)


# A 150-step Gaussian model of ``tiny_synth``: enough for renders that resemble the views.
TINY_SPLATS = dict(iterations=150, init_points=3000, refine_start=40, refine_stop=120, refine_every=20,
                   reset_every=10_000, checkpoint_every=0, sh_degree=0)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BUNDLES/<tiny> with the splats stage only (later stages are built by their tests)."""
    from models.data import load_category
    from training.splats import preset, run_splats_stage

    def build(folder: Path) -> Path:
        cat = load_category(tiny_synth)
        run_splats_stage(cat, preset("demo", **TINY_SPLATS), folder / cat.name, progress=False)
        return folder / cat.name

    return _built_once(tmp_path_factory, "bundles", build)


TINY_IRPRN = dict(epochs=2, augment_copies=1, checkpoint_every=0)


@pytest.fixture(scope="session")
def tiny_pose_bundle(tiny_bundle: Path, tiny_synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_bundle`` plus every later stage (calibration, rvss, a 2-epoch IRPRN on 112 px
    inputs, gallery, onnx). The network's input is half the default side: its pose estimates
    reach every later stage and the service, and a quarter of the pixels keeps each cheap."""
    from models.data import load_category
    from models.irprn import IRPRNConfig
    from training.calibrate import CalibConfig, run_calibration_stage
    from training.export import run_onnx_stage
    from training.gallery import run_gallery_stage
    from training.irprn import preset, run_irprn_stage
    from training.rvss import RVSSConfig, run_rvss_stage

    def build(folder: Path) -> Path:
        out = folder / tiny_bundle.name
        shutil.copytree(tiny_bundle, out)
        cat = load_category(tiny_synth)
        run_calibration_stage(cat, CalibConfig(), out, progress=False)
        run_rvss_stage(cat, RVSSConfig(), out, progress=False)
        run_irprn_stage(cat, preset("demo", **TINY_IRPRN, model=IRPRNConfig(input_size=112)), out, progress=False)
        run_gallery_stage(cat, out, progress=False)
        run_onnx_stage(cat, out, progress=False)
        return out

    return _built_once(tmp_path_factory, "pose_bundles", build)


@pytest.fixture(scope="session")
def tiny_release(tiny_pose_bundle: Path, tiny_synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The assembled, verified bundle of ``tiny_pose_bundle``: BUNDLES/<tiny>/ with its manifest."""
    from models.data import load_category
    from training.bundle import run_bundle_stage
    from training.calibrate import CalibConfig

    def build(bundles: Path) -> Path:
        report = run_bundle_stage(load_category(tiny_synth), tiny_pose_bundle, bundles, "demo", CalibConfig(),
                                  progress=False)
        return Path(report["bundle"])

    return _built_once(tmp_path_factory, "release", build)


@pytest.fixture(scope="session")
def served_release(tiny_release: Path, tmp_path_factory: pytest.TempPathFactory):
    """``rpe-pad serve`` on the tiny release in a child process, without an API key, answering
    each request at once (no micro-batch wait): one start shared by the tests that only read from
    it (the API contract, the browser's tablet layout)."""
    from lab.served import Service

    data = tmp_path_factory.mktemp("served")
    service = Service(tiny_release.parent, data, log=data / "serve.log", RPEPAD_MAX_WAIT_MS="0").start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def tiny_heldout_bundles(tiny_bundle: Path, tiny_release: Path, tiny_synth: Path,
                         tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundles folder with the tiny release and its work folder calibrated on held-out
    views (every 4th withheld until step 16 of a 20-step fit): what `rpe-pad selfcheck` and
    the scorer study read. Read-only for the tests."""
    from models.bundle import FILES, MANIFEST, FileEntry, read_manifest
    from models.data import load_category
    from models.hashing import sha256_file
    from training.calibrate import CalibConfig, run_calibration_stage
    from training.splats import preset, run_splats_stage

    def build(folder: Path) -> Path:
        bundles = folder / "bundles"
        shutil.copytree(tiny_release, bundles / tiny_release.name)
        work = bundles / ".work" / tiny_release.name
        shutil.copytree(tiny_bundle, work)
        category, splats = load_category(tiny_synth), preset("demo", **{**TINY_SPLATS, "iterations": 20})
        run_splats_stage(category, splats, work, progress=False, holdout_every=4)
        run_calibration_stage(category, CalibConfig(holdout_every=4, jitters=2, false_alarm_rate=0.1), work,
                              progress=False, splats=splats)
        # The bundle carries its work folder's calibration, as the bundle stage would copy it.
        bundle, name = bundles / tiny_release.name, FILES["calibration"]
        shutil.copyfile(work / name, bundle / name)
        manifest = read_manifest(bundle)
        files = {**manifest.files, name: FileEntry(sha256=sha256_file(bundle / name), bytes=(bundle / name).stat().st_size)}
        (bundle / MANIFEST).write_text(manifest.model_copy(update={"files": files}).model_dump_json(indent=2) + "\n")
        return bundles

    return _built_once(tmp_path_factory, "heldout", build)


POSED_SIZE = 128


@pytest.fixture(scope="session")
def posed_renders(tiny_bundle: Path, tiny_synth: Path):
    """Renders of the tiny scene at six training poses (queries whose true pose is exact)."""
    import torch

    from models.data import load_category
    from models.splat.scene import GaussianScene, render

    scene = GaussianScene.load(tiny_bundle / "splats" / "scene.safetensors")
    cat = load_category(tiny_synth)
    poses = torch.stack([v.w2c for v in cat.train[:6]]).double()
    K = cat.K.double().clone()
    K[:2] *= POSED_SIZE / cat.width
    Ks = K.expand(6, 3, 3).clone()
    images = render(scene, poses.float(), Ks.float(), POSED_SIZE, POSED_SIZE).colors.clamp(0, 1)
    return scene, images, poses, Ks


@pytest.fixture(scope="session")
def two_categories(tiny_release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundles folder with two categories, ``alpha`` and ``beta``: the tiny release under two
    names (the same files, each with its own manifest, so each verifies). Read-only for the tests."""
    from models.bundle import MANIFEST, read_manifest

    bundles = tmp_path_factory.mktemp("two_categories")
    for name in ("alpha", "beta"):
        shutil.copytree(tiny_release, bundles / name)
        manifest = read_manifest(tiny_release).model_copy(update={"category": name})
        (bundles / name / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    return bundles


@pytest.fixture
def irprn_stops_in_epoch_3(monkeypatch: pytest.MonkeyPatch):
    """While in effect, IRPRN's training is interrupted in its third epoch, after the second
    epoch's checkpoint (``checkpoint_every=1``), as a killed build would be. Call the returned
    function to let the next training run through."""
    from training import irprn as irprn_stage

    real_validate, calls = irprn_stage._validate, {"n": 0}

    def stop_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(irprn_stage, "_validate", stop_in_epoch_3)
    return lambda: monkeypatch.setattr(irprn_stage, "_validate", real_validate)
