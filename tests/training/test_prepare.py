"""`rpe-pad prepare`: photos -> a category, on renders of a textured object whose true poses
the tests keep and `prepare` never sees; and the clear errors of a bad photo folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from lab.onboarding import pose_errors
from models.data import load_category
from rpe_pad.cli import main
from training.prepare import PrepareConfig, PrepareError, prepare
from training.prepare import masks as mk
from training.prepare.frame import CAMERA_DISTANCE
from training.prepare.photos import read_photos
from training.prepare.verify import grown, share_inside, verify
from training.synth import SynthConfig, generate

VIEWS = 36


@pytest.fixture(scope="module")
def textured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A printed object photographed from above, as an operator would: rings at 15-65 degrees."""
    out = tmp_path_factory.mktemp("textured") / "part"
    generate(out, SynthConfig(seed=6, size=224, train_views=VIEWS, test_views=0, texture=0.6,
                              elevation_deg=(15.0, 65.0), supersample=1), progress=False)
    return out


@pytest.fixture(scope="module")
def photos(textured: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The renders renamed as a camera would (the poses stay with the tests)."""
    folder = tmp_path_factory.mktemp("photos")
    for i, path in enumerate(sorted((textured / "train" / "good").glob("*.png"))):
        shutil.copy(path, folder / f"IMG_{4100 + 7 * i}.png")
    return folder


@pytest.fixture(scope="module")
def prepared(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prepared") / "part"
    return out, prepare(photos, out, PrepareConfig(threads=2), progress=False)


def _truth_by_photo_name(textured: Path, photos: Path, tmp: Path) -> Path:
    """The true category with its frames named as the photos, for lab.onboarding."""
    raw = json.loads((textured / "train" / "transforms.json").read_text())
    names = sorted(p.stem for p in photos.glob("*.png"))
    for frame, name in zip(raw["frames"], names):
        frame["file_path"] = f"train/good/{name}"
    (tmp / "train").mkdir(parents=True)
    (tmp / "train" / "transforms.json").write_text(json.dumps(raw))
    return tmp


@pytest.mark.slow(seconds=20)
def test_every_photo_registers_close_to_its_true_pose(prepared, textured: Path, photos: Path, tmp_path: Path) -> None:
    out, report = prepared
    assert report["registered"] == VIEWS and report["ready"], report["warnings"]
    assert report["mean_reprojection_px"] < 1.0
    errors = pose_errors(out, _truth_by_photo_name(textured, photos, tmp_path / "truth"))
    assert errors["views"] == VIEWS
    assert errors["rotation_error_deg"]["median"] < 1.0, errors["rotation_error_deg"]
    assert errors["centre_error_fraction"]["median"] < 0.02, errors["centre_error_fraction"]
    # The frame: object at the origin, +z up, median camera distance 4.0. The similarity to the
    # true frame (object at its origin, z up, no roll in the renders) shows each.
    sim = errors["similarity_prepared_to_true"]
    rot, t, s = np.array(sim["rotation"]), np.array(sim["translation"]), sim["scale"]
    assert np.degrees(np.arccos(np.clip(rot[2, 2], -1, 1))) < 3.0  # prepared +z is the true up
    assert np.linalg.norm(t) < 0.05 * CAMERA_DISTANCE * s  # the prepared origin lands on the object
    category = load_category(out)  # the layout `rpe-pad train` reads, as it is
    centres = -np.einsum("nji,nj->ni", category.train_poses()[:, :3, :3].numpy(), category.train_poses()[:, :3, 3].numpy())
    assert np.median(np.linalg.norm(centres, axis=1)) == pytest.approx(CAMERA_DISTANCE, rel=1e-6)
    assert len(category.train) == VIEWS
    if report["camera"]["undistorted"]:  # the lens is recorded for the queries of this camera
        assert category.lens == pytest.approx(tuple(report["camera"]["distortion"]), abs=1e-5)
    else:
        assert category.lens is None


def test_masks_and_composites_and_the_report(prepared) -> None:
    out, report = prepared
    sources = {f["source"] for f in json.loads((out / "train" / "transforms.json").read_text())["frames"]}
    assert len(sources) == VIEWS and all(s.startswith("IMG_") for s in sources)
    first = np.asarray(Image.open(out / "train" / "good" / "000.png"))
    mask = np.asarray(Image.open(out / "prepare" / "masks" / "000.png")) >= 128
    assert 0.05 < mask.mean() < 0.6
    assert (first[~grown(mask)] == 255).all()  # the composite is on the pipeline's white
    for name in ("readiness.json", "coverage.png", "masks.png"):
        assert (out / "prepare" / name).stat().st_size > 1000
    assert json.loads((out / "prepare" / "readiness.json").read_text())["registered"] == VIEWS
    detail = report["photos_detail"]
    assert all(d["silhouette"] > 0.9 for d in detail) and not any(d["placed_again"] for d in detail)
    assert report["coverage"]["azimuth_gap_deg"] < 45 and report["camera"]["focal_px"] > 0


def test_a_wrong_pose_is_refuted_by_the_silhouette_and_placed_again(prepared) -> None:
    """Pan one registered camera 15 degrees about its own centre (the object moves ~80 px
    across the frame): the silhouette check refutes the pose, and RANSAC over the view's own
    matches puts it back where it was."""
    out, _ = prepared
    model = pycolmap.Reconstruction(str(out / "prepare" / "sfm" / "sparse"))
    image_id = sorted(model.reg_image_ids())[5]
    image = model.images[image_id]
    before = np.eye(4)
    before[:3] = image.cam_from_world().matrix()
    points = np.array([p.xyz for p in model.points3D.values() if p.track.length() >= 3])
    half = np.radians(15.0) / 2
    pan = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0.0, np.sin(half), 0.0, np.cos(half)])), np.zeros(3))
    model.frames[image.frame_id].set_cam_from_world(image.camera_id, pan * image.cam_from_world())
    masks = {}
    for frame in json.loads((out / "train" / "transforms.json").read_text())["frames"]:
        masks_png = out / "prepare" / "masks" / f"{Path(frame['file_path']).name}.png"
        masks[frame["source"]] = np.asarray(Image.open(masks_png)) >= 128
    names = sorted(masks)
    by_file = {f"{i:04d}.png": masks[n] for i, n in enumerate(names)}
    (camera,) = model.cameras.values()
    wrong = np.eye(4)
    wrong[:3] = model.images[image_id].cam_from_world().matrix()
    assert share_inside(points, wrong, camera, grown(by_file[image.name])) < 0.5
    verdicts = {v.file: v for v in verify(model, str(out / "prepare" / "sfm" / "database.db"), by_file)}
    assert verdicts[image.name].replaced and verdicts[image.name].share > 0.9
    assert sum(v.replaced or bool(v.removed) for v in verdicts.values()) == 1
    after = np.eye(4)
    after[:3] = model.images[image_id].cam_from_world().matrix()
    angle = np.degrees(np.arccos(np.clip((np.trace(after[:3, :3] @ before[:3, :3].T) - 1) / 2, -1, 1)))
    assert angle < 1.0


def test_masks_of_a_plain_and_of_a_busy_background() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:120, 0:160]
    truth = ((xx - 80) / 40.0) ** 2 + ((yy - 60) / 30.0) ** 2 <= 1.0
    photo = np.clip(rng.normal(200, 1.5, (120, 160, 3)), 0, 255)  # plain grey, sensor noise
    photo[truth] = rng.integers(20, 120, (int(truth.sum()), 3))  # a dark, mottled object
    mask = mk.object_mask(photo.astype(np.uint8))
    iou = (mask.binary & truth).sum() / (mask.binary | truth).sum()
    assert iou > 0.97 and mask.plain and mask.border_object == 0.0
    comp = mk.composite(photo.astype(np.uint8), mask.alpha)
    assert (comp[~grown(truth)] == 255).all()
    busy = photo.copy()
    busy[:, ::8] = 40  # stripes through the backdrop
    assert not mk.object_mask(busy.astype(np.uint8)).plain


def _pngs(folder: Path, n: int, size=(64, 48), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")


def test_a_bad_folder_gets_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("photos to follow")
    cases = {
        "missing": "not a folder of photos",
        "empty": "no photos .* the folder is empty",
        "notes": "no photos .* found readme.txt",
    }
    _pngs(tmp_path / "three", 3)
    cases["three"] = "3 usable photo\\(s\\), at least 8 are needed"
    (tmp_path / "same").mkdir()
    _pngs(tmp_path / "one", 1)
    for i in range(10):
        shutil.copy(tmp_path / "one" / "p00.png", tmp_path / "same" / f"copy{i}.png")
    cases["same"] = "1 usable photo.*copy1.png: identical to copy0.png"
    _pngs(tmp_path / "mixed", 9)
    _pngs(tmp_path / "mixed_odd", 1, size=(80, 60), seed=1)
    shutil.copy(tmp_path / "mixed_odd" / "p00.png", tmp_path / "mixed" / "odd.png")
    cases["mixed"] = "2 sizes \\(64x48 \\(9\\), 80x60 \\(1\\)\\).*Different from the rest: odd.png"
    for folder, message in cases.items():
        with pytest.raises(PrepareError, match=message):
            read_photos(tmp_path / folder, 1600)
        assert main(["prepare", str(tmp_path / folder), "--out", str(tmp_path / f"out_{folder}")]) == 2
        assert "rpe-pad prepare: error:" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    with pytest.raises(FileExistsError, match="not empty"):
        prepare(tmp_path / "mixed", tmp_path / "taken")
    (tmp_path / "failed" / "prepare").mkdir(parents=True)  # what a run that did not finish leaves
    with pytest.raises(FileExistsError, match="report of an earlier run that did not finish"):
        prepare(tmp_path / "mixed", tmp_path / "failed")
    with pytest.raises(FileExistsError, match="is a file"):
        prepare(tmp_path / "mixed", tmp_path / "taken" / "x")


def test_a_corrupt_photo_is_set_aside_with_its_reason_and_exif_orientation_is_honoured(tmp_path: Path) -> None:
    _pngs(tmp_path / "ok", 9)
    (tmp_path / "ok" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    upright = np.asarray(Image.open(tmp_path / "ok" / "p00.png"))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the sensor's image is turned; viewers rotate it 90 degrees clockwise
    Image.fromarray(np.rot90(upright, 1)).save(tmp_path / "ok" / "p00.png", exif=exif)
    photos, skipped = read_photos(tmp_path / "ok", 1600)
    assert [s.name for s in skipped] == ["broken.jpg"] and "cannot be decoded" in skipped[0].reason
    assert len(photos) == 9 and np.array_equal(photos[0].rgb, upright)
    big, _ = read_photos(tmp_path / "ok", 32)  # downscaled to the long side
    assert big[1].rgb.shape == (24, 32, 3) and big[1].scale == 0.5
