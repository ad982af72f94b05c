"""`rpe-pad prepare`: photos -> a category, on renders of a textured object whose true poses
the tests keep and `prepare` never sees; and the clear errors of a bad photo folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
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
from training.prepare.report import (
    MAX_AZIMUTH_GAP_DEG,
    MAX_ELEVATION_GAP_DEG,
    MIN_VIEWS,
    PhotoStats,
    azimuth_gap,
    elevation_gap,
    gap_span,
    warnings_for,
)
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


@pytest.mark.slow(seconds=20)
def test_a_wrong_focal_length_is_caught_not_trusted(textured: Path, photos: Path, tmp_path: Path) -> None:
    """--focal at half the true value (a typo, or the wrong unit): structure-from-motion refines
    it, and the report says the photos disagree, so the category is not called ready."""
    angle = json.loads((textured / "train" / "transforms.json").read_text())["camera_angle_x"]
    true_focal = 0.5 * 224 / np.tan(angle / 2)
    # The photos stored at twice the size and downscaled to the sfm's side: --focal is in pixels as stored.
    big = tmp_path / "big"
    big.mkdir()
    for path in sorted(photos.glob("*.png")):
        Image.open(path).resize((448, 448), Image.Resampling.LANCZOS).save(big / path.name)
    given = 0.5 * 2 * true_focal
    report = prepare(big, tmp_path / "part", PrepareConfig(threads=2, focal=given, max_size=224), progress=False)
    codes = {w["code"]: w for w in report["warnings"]}
    assert "focal_disagrees" in codes and codes["focal_disagrees"]["error"] and not report["ready"]
    message = codes["focal_disagrees"]["message"]
    assert f"--focal {given:.0f}" in message, message
    estimate = float(message.split("at ")[1].split(" px")[0])
    assert estimate == pytest.approx(2 * true_focal, rel=0.05)  # in the same pixels, as stored


def test_masks_and_composites_and_the_report(prepared) -> None:
    out, report = prepared
    transforms = json.loads((out / "train" / "transforms.json").read_text())
    sources = {f["source"] for f in transforms["frames"]}
    assert len(sources) == VIEWS and all(s.startswith("IMG_") for s in sources)
    assert transforms["camera"]["lossy"] is False  # PNG photos: its bundle refuses coarse JPEG queries
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
    low, width = report["coverage"]["elevation_gap_deg"]
    # Four rings from 15 to 65 degrees, each camera of a ring within a degree of the others: about 15-17 apart.
    assert report["coverage"]["elevation_deg"][0] <= low < report["coverage"]["elevation_deg"][1] and 13 < width < 18
    assert "elevation_gap" not in {w["code"] for w in report["warnings"]}


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
    with pytest.raises(FileExistsError, match="is a file"):
        prepare(tmp_path / "mixed", tmp_path / "taken" / "x")
    # A name `rpe-pad train` would refuse is refused first, before any work.
    assert main(["prepare", str(tmp_path / "mixed"), "--out", str(tmp_path / ".part")]) == 2
    assert "plain directory name" in capsys.readouterr().err and not (tmp_path / ".part").exists()
    # Photos of one camera, some held the other way: said so.
    _pngs(tmp_path / "turned", 9)
    _pngs(tmp_path / "turned_odd", 1, size=(48, 64), seed=2)
    shutil.copy(tmp_path / "turned_odd" / "p00.png", tmp_path / "turned" / "portrait.png")
    with pytest.raises(PrepareError, match="differ only in orientation"):
        read_photos(tmp_path / "turned", 1600)


@pytest.mark.slow(seconds=10)
def test_a_focal_length_too_far_off_to_start_from_is_reported_not_blamed_on_the_photos(photos: Path,
                                                                                      tmp_path: Path) -> None:
    """--focal 5 for photos whose focal length is 311 px: no pair of photos starts a model, an exit
    2 blaming the photos' overlap. Structure-from-motion runs again estimating the focal
    length, and the report says how far off the given one was (not ready, exit 1)."""
    report = prepare(photos, tmp_path / "part", PrepareConfig(threads=2, focal=5), progress=False)
    codes = {w["code"]: w for w in report["warnings"]}
    assert report["registered"] == VIEWS and not report["ready"] and codes["focal_disagrees"]["error"]
    assert "off --focal 5," in codes["focal_disagrees"]["message"]


def test_colmap_writes_no_log_files_and_a_failure_is_one_line(tmp_path: Path) -> None:
    """pycolmap's log (glog) wrote files to the temporary folder on every run, failed and
    interrupted ones too, and its error lines came before the command's own one."""
    rng = np.random.default_rng(0)
    (tmp_path / "noise").mkdir()
    for i in range(9):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "noise" / f"n{i}.png")
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RPEPAD_DEBUG", "TMP", "TEMP")} | {"TMPDIR": str(temp)}
    run = subprocess.run([sys.executable, "-m", "rpe_pad.cli", "prepare", str(tmp_path / "noise"), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2 and list(temp.iterdir()) == [], list(temp.iterdir())
    import re

    assert not re.search(r"^[IWEF]\d{8} ", run.stderr, re.M), run.stderr  # no glog line (E20261207 12:00:00 ...)
    errors = [line for line in run.stderr.splitlines() if line.startswith("rpe-pad prepare:")]
    assert errors == [next(line for line in errors if line.startswith("rpe-pad prepare: error: structure-from-motion"))]


def test_a_run_that_fails_leaves_nothing_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Structure-from-motion fails on photos of noise: the output folder is gone again (or
    emptied, when it was there), so no later command takes it for a prepared category."""
    rng = np.random.default_rng(0)
    (tmp_path / "noise").mkdir()
    for i in range(9):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "noise" / f"n{i}.png")
    assert main(["prepare", str(tmp_path / "noise"), "--out", str(tmp_path / "out")]) == 2
    assert "structure-from-motion" in capsys.readouterr().err and not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()
    assert main(["prepare", str(tmp_path / "noise"), "--out", str(tmp_path / "empty")]) == 2
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


def test_photos_are_read_as_stored(tmp_path: Path) -> None:
    """Hidden files are set aside; sizes are compared before downscaling (a crop stored at
    another size is refused even when both are shrunk to one side); a photo's transparency is
    its mask, so a black part on a transparent black background is not cut out."""
    _pngs(tmp_path / "ok", 9)
    shutil.copy(tmp_path / "ok" / "p00.png", tmp_path / "ok" / "._p00.png")  # macOS metadata, or a thumbnail
    photos, skipped = read_photos(tmp_path / "ok", 1600)
    assert len(photos) == 9 and [(s.name, "hidden" in s.reason) for s in skipped] == [("._p00.png", True)]
    assert "._p00.png" not in {p.name for p in photos}
    _pngs(tmp_path / "big", 9, size=(80, 60))
    _pngs(tmp_path / "big_odd", 1, size=(100, 75), seed=3)
    shutil.copy(tmp_path / "big_odd" / "p00.png", tmp_path / "big" / "crop.png")
    with pytest.raises(PrepareError, match="80x60 \\(9\\), 100x75 \\(1\\).*crop.png"):
        read_photos(tmp_path / "big", 40)  # both would be 40 px wide after downscaling
    (tmp_path / "cut").mkdir()

    def part(i: int) -> np.ndarray:  # the part seen from eight places (not one view eight times)
        rgba = np.zeros((48, 64, 4), np.uint8)  # transparent black around the part
        rgba[12:36, 16 + i:48 + i] = (10, 10, 10, 255)  # a black part
        rgba[20:28, 24 + i:40 + i] = (200, 40, 40, 255)
        return rgba

    for i in range(8):
        Image.fromarray(part(i)).save(tmp_path / "cut" / f"c{i}.png")
    photos, _ = read_photos(tmp_path / "cut", 1600)
    assert photos[0].alpha is not None and photos[0].rgb[0, 40].tolist() == [255, 255, 255]  # onto white
    assert photos[0].rgb[14, 18].tolist() == [10, 10, 10]
    mask = mk.from_alpha(photos[0].alpha)
    assert mask.binary[12:36, 16:48].all() and mask.binary.sum() == 24 * 32  # exactly the part
    for i in range(8):  # an alpha channel that is opaque everywhere (many exporters write one) says nothing
        rgba = part(i)
        rgba[..., 3] = 255
        rgba[0, 0] = (0, 0, 0, 254)
        Image.fromarray(rgba).save(tmp_path / "cut" / f"c{i}.png")
    photos, _ = read_photos(tmp_path / "cut", 1600)
    assert photos[0].alpha is None and photos[0].rgb[0, 40].tolist() == [0, 0, 0]  # the photo as it is


def test_a_copy_of_a_view_is_set_aside_and_the_lossless_one_kept(textured: Path, tmp_path: Path) -> None:
    """A JPEG or WebP copy of a view beside it is the same view: registered twice, and held
    out of one calibration model while its twin is fitted. Set aside, keeping the lossless
    file. Photos of one format are not compared: two views that read alike (a part small in
    the frame, a step apart) both stay."""
    folder = tmp_path / "photos"
    folder.mkdir()
    views = sorted((textured / "train" / "good").glob("*.png"))[:10]
    for path in views:
        shutil.copy(path, folder / path.name)
    first, second = views[0], views[1]
    Image.open(first).convert("RGB").save(folder / f"{first.stem}.jpg", quality=85)  # sorts before the PNG
    Image.open(second).convert("RGB").save(folder / f"{second.stem} copy.webp", quality=80)
    photos, skipped = read_photos(folder, 1600)
    reasons = {s.name: s.reason for s in skipped}
    assert set(reasons) == {f"{first.stem}.jpg", f"{second.stem} copy.webp"}, reasons
    assert reasons[f"{first.stem}.jpg"].startswith(f"the same view as {first.name}, saved in another format")
    assert reasons[f"{second.stem} copy.webp"].startswith(f"the same view as {second.name}")
    assert sorted(p.name for p in photos) == [p.name for p in views]
    # Near-alike views of one format: a small part a pixel apart (under the measure) both stay.
    alike = tmp_path / "alike"
    alike.mkdir()
    for i in range(9):
        image = np.full((96, 96, 3), 255, np.uint8)
        image[40:52, 40 + i:52 + i] = (90, 60, 30)
        Image.fromarray(image).save(alike / f"v{i}.png")
    photos, skipped = read_photos(alike, 1600)
    assert len(photos) == 9 and skipped == []


def test_a_corrupt_photo_is_set_aside_with_its_reason_and_exif_orientation_is_honoured(tmp_path: Path) -> None:
    _pngs(tmp_path / "ok", 9)
    (tmp_path / "ok" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    upright = np.asarray(Image.open(tmp_path / "ok" / "p00.png"))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the sensor's image is turned; viewers rotate it 90 degrees clockwise
    Image.fromarray(np.rot90(upright, 1)).save(tmp_path / "ok" / "p00.png", exif=exif)
    # Beside the photos, what a customer's folder holds: each listed with what to do, none a photo.
    (tmp_path / "ok" / "IMG_1.HEIC").write_bytes(b"heic")
    (tmp_path / "ok" / "notes.txt").write_text("shot on a turntable")
    (tmp_path / "ok" / "extra").mkdir()
    (tmp_path / "ok" / ".DS_Store").write_bytes(b"")
    Image.fromarray(upright).save(tmp_path / "ok" / "IMG_2.jfif", format="JPEG", quality=95)  # Windows' JPEG name
    (tmp_path / "ok" / "readme.png").write_text("not an image")
    photos, skipped = read_photos(tmp_path / "ok", 1600)
    assert [(s.name, s.photo) for s in skipped] == [("IMG_1.HEIC", False), ("extra/", False), ("notes.txt", False),
                                                     ("broken.jpg", True), ("readme.png", True)]
    assert "export the photos as JPEG" in skipped[0].reason and "subfolder" in skipped[1].reason
    assert "cannot be decoded: not an image" in skipped[4].reason and "BufferedReader" not in skipped[4].reason
    assert len(photos) == 10  # the .jfif read as the JPEG it is
    for name in ("IMG_2.jfif", "readme.png"):
        (tmp_path / "ok" / name).unlink()
    photos, skipped = read_photos(tmp_path / "ok", 1600)
    skipped = [s for s in skipped if s.photo]
    assert [s.name for s in skipped] == ["broken.jpg"] and "cannot be decoded" in skipped[0].reason
    assert len(photos) == 9 and np.array_equal(photos[0].rgb, upright)
    big, _ = read_photos(tmp_path / "ok", 32)  # downscaled to the long side
    assert big[1].rgb.shape == (24, 32, 3) and big[1].scale == 0.5


def test_a_decompression_bomb_is_set_aside_with_its_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Headers that claim 20000 x 20000 (PNG, BMP) or 65500 x 65500 (JPEG) pixels, and a photo
    of several pages, are set aside from the header with the reason, as a truncated photo is (and
    a fuzzed TIFF on which Pillow raises a TypeError); a
    full-size photo of a 48 MP camera (8000 x 6000, under ``MAX_PHOTO_PIXELS``) is not. Too few
    photos left: the one-line error lists them (exit 2), not Pillow's DecompressionBombError."""
    from tests import hostile
    from training.prepare.photos import MAX_PHOTO_PIXELS

    _pngs(tmp_path / "ok", 9)
    bombs = {"bomb.png": hostile.png_bomb(), "bomb.bmp": hostile.bmp_bomb(), "bomb.jpg": hostile.jpeg_bomb()}
    for name, data in bombs.items():
        (tmp_path / "ok" / name).write_bytes(data)
    hostile.frames(tmp_path / "ok" / "pages.tiff", "TIFF", size=(64, 48))
    shutil.copy(Path(__file__).parents[1] / "data" / "hostile" / "strip_offsets_text.tiff", tmp_path / "ok" / "odd.tiff")
    photos, skipped = read_photos(tmp_path / "ok", 1600)
    assert len(photos) == 9
    reasons = {s.name: s.reason for s in skipped}
    assert sorted(reasons) == ["bomb.bmp", "bomb.jpg", "bomb.png", "odd.tiff", "pages.tiff"]
    assert reasons["odd.tiff"].startswith("cannot be decoded (TypeError: ")  # Pillow's error on fuzzed bytes
    assert reasons["bomb.png"] == (f"not read: its header declares 400000000 pixels, more than the "
                                   f"{MAX_PHOTO_PIXELS} an image may have (a decompression bomb, or not a photo)")
    assert "4290250000 pixels" in reasons["bomb.jpg"] and "a TIFF of several frames" in reasons["pages.tiff"]
    (tmp_path / "few").mkdir()
    for i in range(3):
        shutil.copy(tmp_path / "ok" / f"p0{i}.png", tmp_path / "few")
    (tmp_path / "few" / "bomb.jpg").write_bytes(bombs["bomb.jpg"])
    assert main(["prepare", str(tmp_path / "few"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    error = [line for line in err.splitlines() if not line.startswith("prepare [")]  # after its progress lines
    assert len(error) == 1 and error[0].startswith("rpe-pad prepare: error:")
    assert "3 usable photo(s)" in error[0] and "bomb.jpg: not read: its header declares 4290250000 pixels" in error[0]
    (tmp_path / "camera").mkdir()
    (tmp_path / "camera" / "IMG_1.png").write_bytes(hostile.png_bomb(8000, 6000))  # a header is all it reads
    (tmp_path / "camera" / "IMG_2.png").write_bytes(hostile.png_bomb(10_000, 8000))
    with pytest.raises(PrepareError, match=f"IMG_2.png: not read: its header declares 10000 x 8000 pixels, more "
                                           f"than the {MAX_PHOTO_PIXELS} an image may have") as refused:
        read_photos(tmp_path / "camera", 1600)
    assert "IMG_1.png: cannot be decoded" in str(refused.value)  # its header passed: only its missing pixels fail


def test_the_largest_azimuth_gap_is_found_where_it_wraps() -> None:
    """coverage.png shades it, so it must be placed right when it crosses +-180 degrees."""
    assert gap_span(np.array([-170.0, -160.0, 150.0, 170.0])) == pytest.approx((200.0, 310.0))  # from -160 to 150
    assert gap_span(np.array([10.0, 20.0, 30.0])) == pytest.approx((30.0, 340.0))  # from 30 round to 10
    assert azimuth_gap(np.array([0.0, 90.0, 180.0, 270.0])) == pytest.approx(90.0)


def test_rings_far_apart_in_elevation_are_a_warning() -> None:
    """Rings 22 degrees apart (rpe-pad synth's) leave a band no photo sees the part from: a warning
    naming the band and where to add a ring; rings 10 degrees apart do not. Neither is an error."""
    assert elevation_gap(np.array([-30.0, -8.0, -8.0, 14.0, 36.0])) == pytest.approx((-30.0, 22.0))
    assert elevation_gap(np.array([12.0, 12.0])) == (12.0, 0.0)

    def stats(elevations):
        return [PhotoStats(name=f"IMG_{i}.png", file=f"train/good/{i:03d}.png", registered=True, reason=None,
                           reprojection_px=0.4, sharpness=100.0, overexposed=0.0, apparent_size=1.0,
                           azimuth_deg=(37.0 * i) % 360 - 180, elevation_deg=e) for i, e in enumerate(elevations)]

    wide = [e for e in (-30.0, -8.0, 14.0, 36.0) for _ in range(10)]
    flags = {f.code: f for f in warnings_for(stats(wide), [], 500.0, None, 1)}
    gap = flags["elevation_gap"]
    assert not gap.error and "between -30 and -8 degrees" in gap.message and "near -19 degrees" in gap.message
    near = [e for e in (0.0, 10.0, 20.0, 30.0) for _ in range(10)]
    assert "elevation_gap" not in {f.code for f in warnings_for(stats(near), [], 500.0, None, 1)}
    assert MAX_ELEVATION_GAP_DEG < 22.0
    # Photos saved as coarse JPEG (quality 8 passed as READY with no word, at twice the pose error).
    coarse = [replace(s, jpeg_quality=q) for s, q in zip(stats(near), [8] * 3 + [92] * 37)]
    flag = {f.code: f for f in warnings_for(coarse, [], 500.0, None, 1)}["coarse_jpeg"]
    assert not flag.error and flag.photos == ["IMG_0.png", "IMG_1.png", "IMG_2.png"] and "about 8" in flag.message
    assert "coarse_jpeg" not in {f.code for f in warnings_for(stats(near), [], 500.0, None, 1)}  # PNGs


def test_the_up_axis_holds_on_a_half_circle() -> None:
    """Cameras on one side of the object, at 10-76 degrees of elevation, each held about upright
    (a few degrees of roll): +z stays within a degree of the true up. The mean of the cameras'
    up directions, the earlier rule, leans with their elevation: on such a half circle it tilted
    +z by 25 degrees and put cameras under the object in the readiness report."""
    import torch

    from models.camera import look_at
    from training.prepare.frame import centres_and_axes, normalise

    rng = np.random.default_rng(0)
    azimuth, elevation = np.radians(rng.uniform(0, 180, 30)), np.radians(rng.uniform(10, 76, 30))
    eyes = 4.0 * np.stack([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                           np.sin(elevation)], axis=-1)
    w2c = look_at(torch.tensor(eyes), torch.zeros(30, 3, dtype=torch.float64),
                  torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), torch.tensor(np.radians(rng.normal(0, 3, 30))))
    turn = np.linalg.qr(rng.normal(size=(3, 3)))[0]  # structure-from-motion's frame: any rotation, scale, offset
    turn *= np.sign(np.linalg.det(turn))
    world = np.eye(4)
    world[:3, :3], world[:3, 3] = turn, rng.normal(size=3)
    poses = np.einsum("nij,jk->nik", w2c.numpy(), np.linalg.inv(world))
    up = normalise(poses).rotation[2] @ turn  # the new +z in the true frame
    assert np.degrees(np.arccos(up[2])) < 1.0
    mean_up = centres_and_axes(w2c.numpy())[2].mean(0)
    assert np.degrees(np.arccos(mean_up[2] / np.linalg.norm(mean_up))) > 10  # what the earlier rule took


def _readiness_stats(n: int, azimuth_span: float = 360.0) -> list[PhotoStats]:
    return [PhotoStats(name=f"IMG_{i}.png", file=f"train/good/{i:03d}.png", registered=True, reason=None,
                       reprojection_px=0.4, sharpness=100.0, overexposed=0.0, apparent_size=1.0,
                       azimuth_deg=azimuth_span * i / n - 180, elevation_deg=(0.0, 10.0, 20.0, 30.0)[i % 4])
            for i in range(n)]


def _readiness_flags(stats, groups: int = 1) -> dict:
    return {f.code: f for f in warnings_for(stats, [], 500.0, None, groups)}


def test_a_good_registration_has_no_error() -> None:
    assert not any(f.error for f in _readiness_flags(_readiness_stats(40)).values())


def test_too_few_views_is_an_error_at_the_boundary() -> None:
    assert _readiness_flags(_readiness_stats(MIN_VIEWS - 1))["too_few_views"].error
    assert "too_few_views" not in _readiness_flags(_readiness_stats(MIN_VIEWS))


def test_a_side_without_cameras_is_an_error() -> None:
    """40 cameras 8 degrees apart over a span: the gap left is 360 - span + 8.04 degrees."""
    narrower = _readiness_stats(40, azimuth_span=360.0 - MAX_AZIMUTH_GAP_DEG + 7.625 - 1)
    wider = _readiness_stats(40, azimuth_span=360.0 - MAX_AZIMUTH_GAP_DEG + 7.625 + 1)
    assert azimuth_gap(np.array([s.azimuth_deg for s in narrower])) == pytest.approx(MAX_AZIMUTH_GAP_DEG + 1.4, abs=0.1)
    assert _readiness_flags(narrower)["coverage_gap"].error
    assert azimuth_gap(np.array([s.azimuth_deg for s in wider])) == pytest.approx(MAX_AZIMUTH_GAP_DEG - 0.5, abs=0.1)
    assert "coverage_gap" not in _readiness_flags(wider) or not _readiness_flags(wider)["coverage_gap"].error


def test_separate_groups_are_an_error() -> None:
    assert _readiness_flags(_readiness_stats(40), groups=2)["separate_groups"].error


def test_inconsistent_views_are_an_error_only_past_a_tenth() -> None:
    few = [replace(s, reprojection_px=10.0) if i < 4 else s for i, s in enumerate(_readiness_stats(40))]  # 4 of 40: 10 %
    many = [replace(s, reprojection_px=10.0) if i < 5 else s for i, s in enumerate(_readiness_stats(40))]  # 5 of 40
    assert not _readiness_flags(few)["inconsistent_views"].error and _readiness_flags(many)["inconsistent_views"].error
