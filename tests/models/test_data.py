"""The MAD-Sim data layer on the vendored Lego subset and on deliberately varied layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import camera
from models.data import DataError, load_category


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
    Image.open(good / "001.png").convert("L").save(good / "001.png")
    Image.open(good / "002.png").convert("P").save(good / "002.png")
    grey8 = np.asarray(Image.open(good / "003.png").convert("L"))
    grey16 = grey8.astype(np.uint16) * 257
    Image.fromarray(grey16).save(good / "003.png")
    ref = load_category(lego_dir, load_test=False)
    cat = load_category(root, load_test=False)
    assert torch.equal(cat.train[0].image, ref.train[0].image)
    assert (alpha == 0).mean() > 0.3  # the background really was transparent
    grey = ref.train[1].image
    assert torch.allclose(cat.train[1].image[..., 0], cat.train[1].image[..., 2])
    expected = torch.from_numpy(grey8 / 255.0).float()
    assert (cat.train[3].image[..., 1] - expected).abs().max() < 1e-6  # 16-bit grey, full range
    assert (cat.train[2].image - ref.train[2].image).abs().mean() < 0.03  # palette quantisation
    assert grey.shape == cat.train[1].image.shape


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
