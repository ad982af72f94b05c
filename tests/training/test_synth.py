"""`rpe-pad synth`: the analytic ray caster, determinism, and masks that match the defects."""

from __future__ import annotations

import importlib
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_dilation

from models import camera
from models.data import load_category
from training.synth import SynthConfig, generate
from training.synth import raycast as rc
from training.synth.generate import build_object, render

UP = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)


def _cam(eye: list[float], size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    w2c = camera.look_at(torch.tensor(eye, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), UP)
    return w2c, camera.intrinsics_from_fov(0.69, size, size)


@pytest.mark.parametrize("kind", ["sphere", "cylinder", "box"])
def test_raycaster_silhouettes_match_geometry(kind: str) -> None:
    """Pixel coverage of a primitive equals its analytic projected area (within 1.5%)."""
    scene = rc.Scene()
    prim = {
        "sphere": rc.Primitive("sphere", (1, 0, 0), center=(0, 0, 0), radius=1.0),
        "cylinder": rc.Primitive("cylinder", (1, 0, 0), center=(0, 0, 0), radius=0.8, z0=-0.5, z1=0.5),
        "box": rc.Primitive("box", (1, 0, 0), lo=(-0.6, -0.6, -0.6), hi=(0.6, 0.6, 0.6)),
    }[kind]
    scene.add("p", prim)
    w2c, K = _cam([4.0, 0.0, 0.0], size=128)
    hits = rc.cast(scene, w2c, K, 128, 128, ss=4)
    area = (hits.prim != rc.NO_HIT).float().mean().item() * 128 * 128
    f = K[0, 0].item()
    if kind == "sphere":  # a cone tangent to the sphere: radius f * tan(asin(R/d))
        expected = math.pi * (f * math.tan(math.asin(1 / 4))) ** 2
    elif kind == "box":  # seen face-on from +x: the near face, 1.2 wide at depth 3.4
        expected = (f * 1.2 / 3.4) ** 2
    else:  # side-on cylinder: silhouette bounded by the tangent lines and the two caps
        half_w = f * math.tan(math.asin(0.8 / 4))
        expected = None
        cols = (hits.prim != rc.NO_HIT).any(0).sum().item() / 4
        assert cols == pytest.approx(2 * half_w, rel=0.02)
        return
    assert area == pytest.approx(expected, rel=0.015)
    # Normals face the camera and are unit length.
    n = hits.normal[hits.prim != rc.NO_HIT]
    assert torch.allclose(n.norm(dim=-1), torch.ones(len(n)), atol=1e-4)


def test_raycaster_depth_order() -> None:
    """The nearer of two overlapping primitives wins, whatever the insertion order."""
    near = rc.Primitive("sphere", (0, 1, 0), center=(0, 0, 1.0), radius=0.3)
    far = rc.Primitive("box", (1, 0, 0), lo=(-1, -1, -1), hi=(1, 1, -0.5))
    w2c, K = _cam([0.0, 0.001, 4.0])
    for order in ((near, far), (far, near)):
        scene = rc.Scene()
        ids = [scene.add(f"p{i}", p) for i, p in enumerate(order)]
        hits = rc.cast(scene, w2c, K, 64, 64, ss=1)
        centre_id = int(hits.prim[32, 32])
        assert scene.prims[centre_id] is near
        assert hits.t[32, 32].item() == pytest.approx(4.0 - 1.3, abs=1e-3)
        assert set(torch.unique(hits.prim).tolist()) == {rc.NO_HIT, *ids}


def test_tiny_synth_loads(tiny_synth: Path) -> None:
    cat = load_category(tiny_synth)
    assert len(cat.train) == 8 and len(cat.test) == 8
    assert (cat.width, cat.height) == (64, 64)
    assert sorted({q.label for q in cat.test}) == ["Burrs", "Missing", "Stains", "good"]
    assert all(q.w2c is not None for q in cat.test)
    assert all(bool(q.mask.any()) == q.is_anomalous for q in cat.test)
    corners = cat.train_images()[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert torch.equal(corners, torch.ones_like(corners))  # white background
    centres = camera.camera_center(cat.train_poses())
    radius = centres.norm(dim=-1)
    assert ((radius >= 3.6 - 1e-9) & (radius <= 4.2 + 1e-9)).all()


def test_query_rolls_are_random_and_training_rolls_are_zero(tiny_synth: Path) -> None:
    cat = load_category(tiny_synth)

    def roll(w2c: torch.Tensor) -> float:
        # Angle between the image's x axis and the horizontal plane of the world.
        right = w2c[0, :3]
        return math.degrees(math.asin(float(right[2])))

    assert max(abs(roll(v.w2c)) for v in cat.train) < 1e-6
    assert max(abs(roll(q.w2c)) for q in cat.test) > 1.0


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_per_seed(tmp_path: Path) -> None:
    cfg = SynthConfig(seed=11, size=40, train_views=4, test_views=4)
    generate(tmp_path / "a", cfg, progress=False)
    generate(tmp_path / "b", cfg, progress=False)
    generate(tmp_path / "c", SynthConfig(seed=12, size=40, train_views=4, test_views=4), progress=False)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert a["train/good/000.png"] != c["train/good/000.png"]
    with pytest.raises(FileExistsError):
        generate(tmp_path / "a", cfg, progress=False)


def test_masks_match_the_defects(tiny_synth: Path) -> None:
    """Re-render the normal object at each query's recorded pose (read back through the
    data layer): good views reproduce exactly, and a defective view differs from its
    normal render only inside its mask (plus one pixel of antialiasing), over most of it."""
    cfg = SynthConfig(seed=3, size=64, train_views=8, test_views=8)
    obj = build_object(np.random.default_rng(cfg.seed))
    cat = load_category(tiny_synth)
    for q in cat.test:
        normal, _, _ = render(obj.scene, q.w2c, q.K, cfg.size, cfg.supersample)
        saved = np.asarray(Image.open(q.path).convert("RGB"), np.float32) / 255.0
        changed = np.abs(saved - normal).max(-1) > 0.03
        mask = q.mask.numpy()
        if not q.is_anomalous:
            assert np.abs(saved - normal).max() <= 0.5 / 255 + 1e-6, q.name
            continue
        outside = changed & ~binary_dilation(mask, iterations=1)
        assert outside.sum() == 0, f"{q.name}: {outside.sum()} changed pixels outside the mask"
        assert changed[mask].mean() >= 0.5, q.name


def test_bad_arguments_refused_before_writing(tmp_path: Path) -> None:
    """Bad arguments are refused before anything is written."""
    with pytest.raises(ValueError):
        generate(tmp_path / "x", SynthConfig(size=8), progress=False)
    assert not (tmp_path / "x").exists()


def test_a_printed_texture_changes_the_surfaces_not_the_cameras(tmp_path: Path) -> None:
    plain, printed = tmp_path / "plain", tmp_path / "printed"
    generate(plain, SynthConfig(seed=4, size=40, train_views=3, test_views=0), progress=False)
    generate(printed, SynthConfig(seed=4, size=40, train_views=3, test_views=0, texture=0.5), progress=False)
    assert (plain / "train" / "transforms.json").read_bytes() == (printed / "train" / "transforms.json").read_bytes()
    a = np.asarray(Image.open(plain / "train" / "good" / "000.png"), np.float32)
    b = np.asarray(Image.open(printed / "train" / "good" / "000.png"), np.float32)
    background = (a == 255).all(-1)
    assert np.array_equal(a[background], b[background]) and np.abs(a - b)[~background].mean() > 5
    with pytest.raises(ValueError, match="texture"):
        generate(tmp_path / "x", SynthConfig(size=40, texture=1.5), progress=False)


@pytest.mark.parametrize("existed", [False, True])
def test_a_failed_synth_takes_back_what_it_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existed: bool) -> None:
    """Interrupted half-way (here: the disk fills on the third image), it leaves the output
    folder as it found it (absent, or empty) and nothing beside it, so the same command can run again."""
    module = importlib.import_module("training.synth.generate")  # the package exports the function of that name

    out = tmp_path / "cat"
    if existed:
        out.mkdir()
    real, calls = module.save_rgb, []

    def failing(path, image):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(path, image)

    monkeypatch.setattr(module, "save_rgb", failing)
    cfg = SynthConfig(seed=3, size=24, train_views=4, test_views=2)
    with pytest.raises(OSError, match="No space"):
        generate(out, cfg, progress=False)
    assert (out.is_dir() and not any(out.iterdir())) if existed else not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["cat"] if existed else [])  # no partial folder left
    monkeypatch.setattr(module, "save_rgb", real)
    assert generate(out, cfg, progress=False) == out  # the same command, again
    assert len(list((out / "train" / "good").glob("*.png"))) == 4


def test_synth_fills_the_current_folder_and_the_demo_deletes_only_its_own(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`rpe-pad synth .` in an empty folder wrote the category, then failed renaming "."; the
    demo deleted a folder of the user's in its category's place."""
    from training.demo import run_demo

    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    cfg = SynthConfig(seed=3, size=24, train_views=4, test_views=2)
    generate(".", cfg, progress=False)
    assert len(list((here / "train" / "good").glob("*.png"))) == 4 and (here / "synth.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["here"]  # no partial folder left
    notes = tmp_path / "demo" / "synthetic_lego" / "train" / "my_notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("mine")
    with pytest.raises(FileExistsError, match="was not made by `rpe-pad demo`"):
        run_demo(tmp_path / "demo", cfg)
    assert notes.read_text() == "mine"
    shutil.rmtree(notes.parents[1])  # a category of the user's own `rpe-pad synth`, other settings: kept too
    generate(notes.parents[1], replace(cfg, seed=4), progress=False)
    with pytest.raises(FileExistsError, match="was not made by `rpe-pad demo`"):
        run_demo(tmp_path / "demo", cfg)
    assert json.loads((notes.parents[1] / "synth.json").read_text())["config"]["seed"] == 4


def test_synth_names_each_bad_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"size must be >= 16, got 8; test_views must be >= 0, got -1"):
        generate(tmp_path / "x", SynthConfig(size=8, test_views=-1), progress=False)
    assert not (tmp_path / "x").exists()
