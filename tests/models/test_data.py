"""The MAD-Sim data layer on the vendored Lego subset and on deliberately varied layouts."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import camera
from models.data import DataError, load_category
from tests import hostile


def test_lego_loads(lego_dir: Path) -> None:
    cat = load_category(lego_dir)
    assert cat.name == "Lego" and (cat.width, cat.height) == (100, 100)
    assert len(cat.train) == 60 and len(cat.test) == 10
    assert cat.defect_types == ["Burrs", "Missing", "Stains"]
    assert all(q.w2c is not None for q in cat.test)
    assert all(q.mask.any() == q.is_anomalous for q in cat.test)
    image = cat.train[0].image
    assert image.dtype == torch.float32 and image.shape == (100, 100, 3)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert cat.K[0, 0].item() == pytest.approx(0.5 * 100 / np.tan(0.5 * cat.camera_angle_x))


def test_lego_origin_projects_to_image_centre(lego_dir: Path) -> None:
    """The Lego cameras look at the world origin: with the pose conversion right, the
    origin lands on the image centre in every training and test view, in front."""
    cat = load_category(lego_dir)
    poses = torch.cat([cat.train_poses(), torch.stack([q.w2c for q in cat.test])])
    origin = torch.zeros(len(poses), 1, 3, dtype=torch.float64)
    uv, depth = camera.project_points(origin, poses, cat.K.expand(len(poses), 3, 3))
    assert (depth > 3.0).all()
    assert (uv[:, 0] - torch.tensor([50.0, 50.0], dtype=torch.float64)).abs().max() < 0.5
    # The object is there: the centre pixel region is not background in the training views.
    centre = cat.train_images()[:, 45:55, 45:55].reshape(len(cat.train), -1, 3)
    assert ((centre < 0.9).any(-1).float().mean(-1) > 0.2).float().mean() > 0.9


def test_resize_scales_intrinsics(lego_dir: Path) -> None:
    full = load_category(lego_dir, load_test=False)
    small = load_category(lego_dir, size=50)
    assert (small.width, small.height) == (50, 50)
    assert torch.allclose(small.K, camera.scale_intrinsics(full.K, 0.5, 0.5))
    assert all(q.mask.shape == (50, 50) for q in small.test)
    assert all(q.mask.any() for q in small.test if q.is_anomalous)


def test_a_size_no_bundle_camera_takes_is_refused_before_training(lego_dir: Path) -> None:
    """A bundle's camera takes 16 to 4096 px a side (models.bundle.SIDES): a category outside
    that is refused as it loads, not at the bundle stage after the whole training."""
    with pytest.raises(ValueError, match="training images are 8 x 8 after resizing"):
        load_category(lego_dir, size=8, load_test=False)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_mad_sim_variant_layout(lego_dir: Path, tmp_path: Path) -> None:
    """transforms.json at the root, unpadded names, file_path with .png and ./ prefix."""
    root = _copy(lego_dir, tmp_path / "Variant")
    data = json.loads((root / "train" / "transforms.json").read_text())
    (root / "train" / "transforms.json").unlink()
    for frame in data["frames"]:
        stem = frame["file_path"].split("/")[-1]
        (root / "train" / "good" / f"{stem}.png").rename(root / "train" / "good" / f"{int(stem)}.png")
        frame["file_path"] = f"./train/good/{int(stem)}.png"
    (root / "transforms.json").write_text(json.dumps(data))
    for folder in ("test/Burrs", "ground_truth/Burrs"):
        for path in (root / folder).iterdir():
            path.rename(path.with_name(path.name.replace("000", "0").replace("001", "1")))
    ref = load_category(lego_dir)
    cat = load_category(root)
    assert len(cat.train) == 60
    assert torch.equal(cat.train_poses(), ref.train_poses())
    assert torch.equal(cat.train_images(), ref.train_images())
    burrs = [q for q in cat.test if q.label == "Burrs"]
    assert [q.name for q in burrs] == ["test/Burrs/0", "test/Burrs/1"]
    assert all(q.w2c is not None and q.mask.any() for q in burrs)


def test_image_modes_are_converted(lego_dir: Path, tmp_path: Path) -> None:
    root = _copy(lego_dir, tmp_path / "Modes")
    good = root / "train" / "good"
    rgb = np.asarray(Image.open(good / "000.png").convert("RGB"))
    alpha = np.where((rgb == 255).all(-1), 0, 255).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(good / "000.png")
    Image.open(good / "002.png").convert("P").save(good / "002.png")
    ref = load_category(lego_dir, load_test=False)
    cat = load_category(root, load_test=False)
    assert torch.equal(cat.train[0].image, ref.train[0].image)
    assert (alpha == 0).mean() > 0.3  # the background really was transparent
    assert (cat.train[2].image - ref.train[2].image).abs().mean() < 0.03  # palette quantisation
    # Greyscale files (8 and 16 bit): a category of greyscale photos, every one of them.
    grey_root = _copy(lego_dir, tmp_path / "Grey")
    good = grey_root / "train" / "good"
    for path in sorted(good.glob("*.png")):
        Image.open(path).convert("L").save(path)
    grey8 = np.asarray(Image.open(good / "003.png"))
    Image.fromarray(grey8.astype(np.uint16) * 257).save(good / "003.png")
    cat = load_category(grey_root, load_test=False)
    assert torch.allclose(cat.train[1].image[..., 0], cat.train[1].image[..., 2])
    expected = torch.from_numpy(grey8 / 255.0).float()
    assert (cat.train[3].image[..., 1] - expected).abs().max() < 1e-6  # 16-bit grey, full range
    assert ref.train[1].image.shape == cat.train[1].image.shape


def test_a_greyscale_training_image_among_colour_ones_is_refused(lego_dir: Path, tmp_path: Path) -> None:
    """The bundle of a colour category refuses greyscale queries (models/inspector.py): one
    greyscale training view would be trained on as a colour view that lost its colours."""
    root = _copy(lego_dir, tmp_path / "OneGrey")
    Image.open(root / "train" / "good" / "004.png").convert("L").save(root / "train" / "good" / "004.png")
    with pytest.raises(DataError, match=r"train/good/004\.png: a greyscale training image, but the other training "
                                        r"images are in colour: use its colour photo"):
        load_category(root, load_test=False)
    # A grey part's colour files with one greyscale file among them: nothing to tell apart, accepted.
    grey_part = _copy(lego_dir, tmp_path / "GreyPart")
    for path in sorted((grey_part / "train" / "good").glob("*.png")):
        Image.open(path).convert("L").convert("RGB").save(path)
    Image.open(grey_part / "train" / "good" / "004.png").convert("L").save(grey_part / "train" / "good" / "004.png")
    assert len(load_category(grey_part, load_test=False).train) == 60


def _edit_transforms(root: Path, edit) -> Path:
    path = root / "train" / "transforms.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def _set(frame: int, key: str, value):
    def edit(data: dict) -> None:
        data["frames"][frame][key] = value
    return edit


def _translate(frame: int, value: float):
    def edit(data: dict) -> None:
        data["frames"][frame]["transform_matrix"][0][3] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(camera_angle_x=1e-9), r"camera_angle_x: .*1e-09 rad \(5\.73e-08 degrees\) is not the field of "
                                              r"view of a pinhole camera: it must be 1 to 150 degrees across"),
    (lambda d: d.update(camera_angle_x=3.0), r"camera_angle_x: .*3 rad \(171\.9 degrees\) is not the field of view"),
    (lambda d: d.update(camera_angle_x=float("nan")), r"camera_angle_x: .*nan is not the field of view"),
    (_translate(7, 1e30), r"frame 7 \(file_path 'train/good/007'\): its camera is 1e\+30 from the origin, more than "
                          r"100 times the cameras' median distance 4\.03"),
    (_translate(7, 500.0), r"frame 7 .* its camera is 500 from the origin"),
    (lambda d: [f.update(transform_matrix=np.eye(4).tolist()) for f in d["frames"]],
     r"all 60 training cameras are at one place \(\[0\. 0\. 0\.\]\)"),
    (lambda d: [f.update(transform_matrix=(np.diag([1, 1, -1, 1]) @ np.asarray(f["transform_matrix"])
                                           @ np.diag([1, 1, -1, 1])).tolist()) for f in d["frames"]],
     r"the origin, where the object sits, is behind or level with every training camera"),
    (_set(9, "file_path", "./train/good/3.png"), r"frames 3 \(file_path 'train/good/003'\) and 9 \(file_path "
                                                 r"'\./train/good/3\.png'\) name the same image .*train/good/003\.png"),
    (_set(2, "file_path", "/etc/hostname"), r"frame 2 \(file_path '/etc/hostname'\) is an absolute path; file_path is "
                                            r"relative to the category folder"),
    (_set(2, "file_path", "C:\\photos\\002.png"), r"frame 2 .* is an absolute path"),
    (_set(2, "file_path", "../../../../../../../../etc/hostname"),
     r"frame 2 \(file_path '\.\./\.\./.*/etc/hostname'\) leads outside the category folder"),
])
def test_camera_data_no_category_can_have_is_refused_naming_the_frame(edit, message: str, lego_dir: Path,
                                                                      tmp_path: Path) -> None:
    """A field of view no pinhole camera has (it trained at PSNR 8, or crashed the training),
    a camera far off the others, cameras all at one place or all facing away from the object
    (identity matrices trained at PSNR 10, then crashed RVSS), two frames of one photo, and a
    file_path that is absolute or leads out of the category: refused as the category loads, naming transforms.json and the
    frame, before any image is decoded."""
    root = _copy(lego_dir, tmp_path / "Camera")
    path = _edit_transforms(root, edit)
    with pytest.raises(DataError, match=re.escape(str(path)) + ": .*" + message):
        load_category(root, load_test=False)


def test_file_paths_stay_inside_the_category_lexically(lego_dir: Path, tmp_path: Path) -> None:
    """``..`` is collapsed before the check: a path relative to train/ that comes back inside is
    fine, one that reaches a photo beside the category is not; a link inside the folder is
    followed (the check is lexical: docs/DATA.md)."""
    root = _copy(lego_dir, tmp_path / "Paths")
    shutil.copy(root / "train" / "good" / "002.png", tmp_path / "beside.png")
    _edit_transforms(root, _set(2, "file_path", "../beside"))  # from the category root: outside
    with pytest.raises(DataError, match=r"frame 2 \(file_path '\.\./beside'\) leads outside the category folder"):
        load_category(root, load_test=False)
    _edit_transforms(root, _set(2, "file_path", "../train/good/002"))  # from train/: inside
    (root / "train" / "good" / "050.png").rename(tmp_path / "050.png")
    (root / "train" / "good" / "050.png").symlink_to(tmp_path / "050.png")
    cat = load_category(root, load_test=False)
    ref = load_category(lego_dir, load_test=False)
    assert cat.train[2].name == "train/good/002" and torch.equal(cat.train[2].image, ref.train[2].image)
    assert torch.equal(cat.train[50].image, ref.train[50].image)


def test_a_decompression_bomb_is_refused_naming_its_file(lego_dir: Path, tmp_path: Path) -> None:
    """A training image, a query or a mask whose header claims 20000 x 20000 pixels: a DataError
    naming the file (the command line's one line, exit 2), not Pillow's DecompressionBombError."""
    for place in ("train/good/005.png", "test/good/001.png", "ground_truth/Burrs/000_mask.png"):
        root = _copy(lego_dir, tmp_path / place.replace("/", "_"))
        (root / place).write_bytes(hostile.png_bomb())
        with pytest.raises(DataError, match=re.escape(place) + ": its header declares 400000000 pixels, more than the "
                                            "25000000 an image may have"):
            load_category(root)


def test_missing_image_names_file(lego_dir: Path, tmp_path: Path) -> None:
    root = _copy(lego_dir, tmp_path / "Missing")
    (root / "train" / "good" / "007.png").unlink()
    with pytest.raises(DataError, match=r"train/good/007"):
        load_category(root)


def test_malformed_transforms_names_file(lego_dir: Path, tmp_path: Path) -> None:
    root = _copy(lego_dir, tmp_path / "Bad")
    path = root / "train" / "transforms.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"transforms\.json: not valid JSON"):
        load_category(root)
    data = json.loads((lego_dir / "train" / "transforms.json").read_text())
    data["frames"][3]["transform_matrix"] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"transforms\.json: malformed.*frames\.3\.transform_matrix"):
        load_category(root)
    del data["camera_angle_x"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="camera_angle_x"):
        load_category(root)


def test_scaled_rotation_rejected(lego_dir: Path, tmp_path: Path) -> None:
    root = _copy(lego_dir, tmp_path / "Scaled")
    path = root / "train" / "transforms.json"
    data = json.loads(path.read_text())
    mat = np.array(data["frames"][0]["transform_matrix"])
    mat[:3, :3] *= 1.1
    data["frames"][0]["transform_matrix"] = mat.tolist()
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="not a proper rotation"):
        load_category(root)


def test_mask_size_mismatch_names_mask(lego_dir: Path, tmp_path: Path) -> None:
    root = _copy(lego_dir, tmp_path / "MaskSize")
    mask_path = root / "ground_truth" / "Stains" / "001_mask.png"
    Image.open(mask_path).resize((60, 60)).save(mask_path)
    with pytest.raises(DataError, match=r"Stains/001_mask\.png: mask is 60x60 but its image .* is 100x100"):
        load_category(root)


def test_missing_mask_and_missing_folder(lego_dir: Path, tmp_path: Path) -> None:
    root = _copy(lego_dir, tmp_path / "NoMask")
    (root / "ground_truth" / "Missing" / "000_mask.png").unlink()
    with pytest.raises(DataError, match=r"Missing/000_mask\.png"):
        load_category(root)
    assert load_category(root, load_test=False).test == []
    with pytest.raises(DataError, match="does not exist"):
        load_category(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no transforms.json"):
        load_category(tmp_path)


def test_undecodable_image_names_file(lego_dir: Path, tmp_path: Path) -> None:
    root = _copy(lego_dir, tmp_path / "Corrupt")
    (root / "test" / "good" / "002.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"test/good/002\.png: cannot decode image"):
        load_category(root)


def test_reflected_camera_rejected(lego_dir: Path, tmp_path: Path) -> None:
    root = _copy(lego_dir, tmp_path / "Reflected")
    path = root / "train" / "transforms.json"
    data = json.loads(path.read_text())
    mat = np.array(data["frames"][0]["transform_matrix"])
    mat[:3, 0] *= -1.0  # orthonormal, but a mirror: det -1
    data["frames"][0]["transform_matrix"] = mat.tolist()
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="not a proper rotation"):
        load_category(root)
