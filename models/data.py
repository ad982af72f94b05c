"""MAD-Sim-format categories: training views with poses, test views with labels and masks.

Layout read (see ``docs/ARCHITECTURE.md``)::

    <category>/transforms.json  or  <category>/train/transforms.json
        {"camera_angle_x": rad, "frames": [{"file_path": ..., "transform_matrix": 4x4}]}
    <category>/train/good/<n>.png
    <category>/test/<good|defect type>/<n>.png
    <category>/test/transforms.json                  (optional: true query poses)
    <category>/ground_truth/<defect type>/<n>_mask.png

``file_path`` is relative to the category root (or to the JSON's folder), with or without
``.png``; image names may be unpadded (``0.png``) or zero-padded (``000.png``); it may not be
absolute or lead outside the category folder, and no two frames may name one image.
``transform_matrix`` is camera-to-world in OpenGL axes; views carry world-to-camera poses
in OpenCV axes (``models.camera``). A camera whose field of view no pinhole camera has
(``FOV_DEGREES``), a training camera far off the others (``FAR_CAMERA``) and a greyscale
training image among colour ones are refused. Every error names the file it is about.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch
from PIL import UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from tqdm.auto import tqdm

from models import camera
from models.bundle import SIDES, RadialTerms
from models.compression import compression_of
from models.images import (
    WHITE,
    Background,
    ImageRefused,
    greyscale_file,
    has_colour,
    load_mask,
    load_rgb,
    resize_mask,
    resize_rgb,
    to_uint8,
    undistort,
)

GOOD = "good"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FOV_DEGREES = (1.0, 150.0)  # camera_angle_x of a pinhole camera: the widest rectilinear lenses see about 135 degrees
FAR_CAMERA = 100.0  # a training camera more than this many times the median camera distance from the origin is refused


class DataError(ValueError):
    """A category on disk is missing something or malformed; the message names the file."""


class FrameModel(BaseModel):
    """One entry of ``frames`` in a ``transforms.json``."""

    model_config = ConfigDict(extra="allow")

    file_path: str = Field(min_length=1)
    transform_matrix: list[list[float]]

    @field_validator("transform_matrix")
    @classmethod
    def _check_matrix(cls, value: list[list[float]]) -> list[list[float]]:
        mat = np.asarray(value, dtype=np.float64)
        if mat.shape != (4, 4):
            raise ValueError(f"transform_matrix must be 4x4, got shape {mat.shape}")
        problem = camera.rigid_problem(torch.from_numpy(mat))
        if problem is not None:
            raise ValueError(f"transform_matrix {problem}, got {mat.round(6).tolist()}")
        return value


class LensModel(BaseModel):
    """Radial distortion of the camera the photos came from (``rpe-pad prepare`` writes it)."""

    model: str = Field(min_length=1)  # COLMAP's camera model it was estimated with
    radial: RadialTerms  # k1[, k2], normalised coordinates


class CameraModel(BaseModel):
    """The camera of a category's photos (optional; ``rpe-pad prepare`` writes it)."""

    model_config = ConfigDict(extra="allow")

    exif: str | None = None  # EXIF "Make Model" of the photos, when they carried one
    lossy: bool | None = None  # the photos were lossy (JPEG), though the training images written from them are not
    lens: LensModel | None = None  # training images are undistorted already; raw photos of this camera are not


class TransformsModel(BaseModel):
    """A ``transforms.json`` file (NeRF synthetic / MAD-Sim convention)."""

    model_config = ConfigDict(extra="allow")

    camera_angle_x: float  # radians across the image, within FOV_DEGREES
    frames: list[FrameModel]
    camera: CameraModel | None = None

    @field_validator("camera_angle_x")
    @classmethod
    def _check_fov(cls, value: float) -> float:
        low, high = FOV_DEGREES
        if not (math.isfinite(value) and low <= math.degrees(value) <= high):
            shown = f"{value:g} rad ({math.degrees(value):.4g} degrees)" if math.isfinite(value) else f"{value}"
            raise ValueError(f"{shown} is not the field of view of a pinhole camera: it must be {low:g} to {high:g} "
                             f"degrees across, {math.radians(low):.4g} to {math.radians(high):.4g} rad")
        return value


@dataclass(frozen=True, eq=False)
class View:
    """A posed training view."""

    name: str  # path from the category root without suffix, e.g. "train/good/000"
    path: Path
    image: torch.Tensor  # [H, W, 3] float32 in [0, 1], composited onto the background
    w2c: torch.Tensor  # [4, 4] float64 world-to-camera, OpenCV axes
    K: torch.Tensor  # [3, 3] float64 intrinsics at this image's size


@dataclass(frozen=True, eq=False)
class QueryView:
    """A test view: label, mask and (when the category ships it) the true pose."""

    name: str  # e.g. "test/Burrs/003"
    path: Path
    image: torch.Tensor  # [H, W, 3] float32 in [0, 1]
    K: torch.Tensor  # [3, 3] float64
    label: str  # "good" or the defect type (the folder name)
    mask: torch.Tensor  # [H, W] bool, True = defective pixel (all False for good views)
    w2c: torch.Tensor | None  # [4, 4] float64 true pose, for measuring pose error only

    @property
    def is_anomalous(self) -> bool:
        return self.label != GOOD


@dataclass(eq=False)
class Category:
    """A loaded category. All images are RGB float32 in [0, 1] at one size per split."""

    name: str
    root: Path
    camera_angle_x: float
    width: int  # of the training images, after any resize
    height: int
    background: Background
    train: list[View]
    test: list[QueryView] = field(default_factory=list)
    lens: tuple[float, ...] | None = None  # radial terms of the photos' lens (training images are undistorted)
    exif_camera: str | None = None  # EXIF "Make Model" of the photos
    lossy_photos: bool = False  # the photos were lossy (JPEG, lossy WebP): models.compression

    @property
    def defect_types(self) -> list[str]:
        return sorted({q.label for q in self.test if q.label != GOOD})

    @property
    def K(self) -> torch.Tensor:
        """Intrinsics of the training views [3, 3]."""
        return self.train[0].K

    def train_poses(self) -> torch.Tensor:
        """World-to-camera poses of the training views [N, 4, 4] float64."""
        return torch.stack([v.w2c for v in self.train])

    def train_images(self) -> torch.Tensor:
        """Training images [N, H, W, 3] float32."""
        return torch.stack([v.image for v in self.train])


def find_transforms(root: Path) -> Path:
    """The training ``transforms.json``: at the category root or inside ``train/``."""
    for candidate in (root / "transforms.json", root / "train" / "transforms.json"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{root}: no transforms.json (looked for {root / 'transforms.json'} and "
        f"{root / 'train' / 'transforms.json'})"
    )


def read_transforms(path: Path) -> TransformsModel:
    """Parse and validate a ``transforms.json``; errors name the file and the bad field."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from exc
    try:
        return TransformsModel.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise DataError(f"{path}: malformed transforms.json: {problems}") from exc


def _name_variants(stem: str) -> list[str]:
    """``7`` and ``007`` name the same view; return both spellings (and the original)."""
    variants = [stem]
    if stem.isdigit():
        for alt in (str(int(stem)), f"{int(stem):03d}"):
            if alt not in variants:
                variants.append(alt)
    return variants


def _inside(path: Path, root: Path) -> bool:
    """``path`` is ``root`` or below it, lexically (``..`` collapsed; links are not followed)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    return rel != ".." and not rel.startswith(".." + os.sep)


def resolve_image_path(file_path: str, bases: Sequence[Path], root: Path | None = None) -> Path | None:
    """Find the image a ``file_path`` entry names, trying each base folder, with or
    without a suffix, padded or unpadded. ``None`` when nothing exists. An absolute
    ``file_path`` raises ``ValueError``; with ``root``, so does one that names no image inside
    ``root`` and leads outside it from a base (a lexical check after collapsing ``..``: a link
    inside ``root`` may point anywhere)."""
    text = file_path.replace("\\", "/")
    if PurePosixPath(text).is_absolute() or PureWindowsPath(file_path).anchor:
        raise ValueError("is an absolute path; file_path is relative to the category folder")
    rel = Path(re.sub(r"^(\./)+", "", text))
    inside = [base for base in bases if root is None or _inside(base / rel, root)]
    if rel.suffix.lower() in IMAGE_SUFFIXES:
        stem, suffixes = rel.stem, (rel.suffix,)
    else:
        stem, suffixes = rel.name, IMAGE_SUFFIXES
    for base in inside:
        for name in _name_variants(stem):
            for suffix in suffixes:
                candidate = base / rel.parent / f"{name}{suffix}"
                if candidate.is_file():
                    return candidate
    if len(inside) < len(bases):
        raise ValueError(f"leads outside the category folder {root}")
    return None


def _view_key(label: str, stem: str) -> tuple[str, str]:
    return label, str(int(stem)) if stem.isdigit() else stem


def _natural_key(path: Path) -> tuple[int, str]:
    return (int(path.stem), "") if path.stem.isdigit() else (10**12, path.stem)


class _Loader:
    """Loads and resizes images consistently; one instance per category."""

    def __init__(self, root: Path, size: int | None, background: Background):
        self.root = root
        self.size = size
        self.background = background

    def rgb(self, path: Path) -> np.ndarray:
        try:
            return load_rgb(path, self.background)
        except ImageRefused as exc:  # too many pixels, another format, several frames
            raise DataError(f"{path}: {exc}") from exc
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"{path}: cannot decode image: {exc}") from exc

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        if self.size is None:
            return width, height
        return self.size, max(1, round(height * self.size / width))

    def view(self, path: Path, camera_angle_x: float) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(image [H', W', 3], K at the new size, original (H, W)) for one image file."""
        image = self.rgb(path)
        height, width = image.shape[:2]
        new_w, new_h = self.target_size(width, height)
        image = resize_rgb(image, new_w, new_h)
        K = camera.intrinsics_from_fov(camera_angle_x, width, height)
        K = camera.scale_intrinsics(K, new_w / width, new_h / height)
        return torch.from_numpy(np.ascontiguousarray(image)), K, np.array([height, width])

    def mask(self, path: Path, image_hw: np.ndarray, image_path: Path) -> torch.Tensor:
        try:
            mask = load_mask(path)
        except ImageRefused as exc:
            raise DataError(f"{path}: {exc}") from exc
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"{path}: cannot decode mask: {exc}") from exc
        if mask.shape != tuple(image_hw):
            raise DataError(
                f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
                f"{image_hw[1]}x{image_hw[0]}"
            )
        new_w, new_h = self.target_size(int(image_hw[1]), int(image_hw[0]))
        return torch.from_numpy(resize_mask(mask, new_w, new_h))


def not_a_folder(path: Path) -> str:
    """Why ``path``, which is no folder, cannot be read as one, in words."""
    return "is a file, not a folder" if path.exists() else "does not exist"


def load_category(
    root: str | Path,
    size: int | None = None,
    background: Background = WHITE,
    load_test: bool = True,
    progress: bool = False,
) -> Category:
    """Load a MAD-Sim-format category.

    Args:
        root: the category folder (its name is the category's name).
        size: resize every image to this width (height keeps the aspect ratio); the
            intrinsics are scaled to match. ``None`` keeps the original size.
        background: colour transparent pixels are composited onto (RGB in [0, 1]).
        load_test: also load ``test/`` (labels, masks, optional true poses).
        progress: show a progress bar while decoding.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: category folder {not_a_folder(root)}")
    loader = _Loader(root, size, background)
    transforms_path = find_transforms(root)
    transforms = read_transforms(transforms_path)
    if not transforms.frames:
        raise DataError(f"{transforms_path}: 'frames' is empty")

    paths = _training_paths(transforms_path, transforms, root)  # every frame checked before any image is decoded
    train: list[View] = []
    for frame, path in tqdm(list(zip(transforms.frames, paths)), desc=f"{root.name}: train", disable=not progress,
                            leave=False):
        image, K, _ = loader.view(path, transforms.camera_angle_x)
        if train and image.shape != train[0].image.shape:
            raise DataError(
                f"{path}: training image is {image.shape[1]}x{image.shape[0]} but "
                f"{train[0].path} is {train[0].image.shape[1]}x{train[0].image.shape[0]}"
            )
        c2w = torch.tensor(frame.transform_matrix, dtype=torch.float64)
        name = Path(os.path.relpath(path, root)).with_suffix("").as_posix()
        train.append(View(name, path, image, camera.opengl_c2w_to_opencv_w2c(c2w), K))
    _check_colour(train)

    height, width = train[0].image.shape[:2]
    if not (SIDES[0] <= width <= SIDES[1] and SIDES[0] <= height <= SIDES[1]):  # refused now, not after the training
        raise ValueError(f"{root}: training images are {width} x {height}{' after resizing' if size else ''}; a "
                         f"bundle's camera takes {SIDES[0]} to {SIDES[1]} pixels a side: resize the photos")
    category = Category(
        name=root.name,
        root=root,
        camera_angle_x=transforms.camera_angle_x,
        width=width,
        height=height,
        background=background,
        train=train,
        lens=tuple(transforms.camera.lens.radial) if transforms.camera and transforms.camera.lens else None,
        exif_camera=transforms.camera.exif if transforms.camera else None,
        lossy_photos=_lossy_photos(transforms, paths),
    )
    if load_test:
        category.test = _load_test(root, loader, transforms.camera_angle_x, progress, category.lens)
    return category


def _lossy_photos(transforms: TransformsModel, paths: list[Path]) -> bool:
    """Whether the category's photos were lossy: as ``transforms.json``'s camera says (``rpe-pad
    prepare`` writes PNGs from the photos it was given), else from the training files' own
    encoding (``models.compression``, headers only)."""
    if transforms.camera is not None and transforms.camera.lossy is not None:
        return transforms.camera.lossy
    return any(compression_of(path.read_bytes()) is not None for path in paths)


def _training_paths(transforms_path: Path, transforms: TransformsModel, root: Path) -> list[Path]:
    """The image of each training frame, refusing (each error naming the frame) a ``file_path``
    that is absolute, leads outside ``root`` or names no image, two frames of one image, and a
    camera far off the others (more than ``FAR_CAMERA`` times their median distance)."""
    paths: list[Path] = []
    seen: dict[str, int] = {}
    bases = [root, transforms_path.parent]
    for index, frame in enumerate(transforms.frames):
        where = f"{transforms_path}: frame {index} (file_path {frame.file_path!r})"
        try:
            path = resolve_image_path(frame.file_path, bases, root)
        except ValueError as exc:
            raise DataError(f"{where} {exc}") from exc
        if path is None:
            raise DataError(f"{where}: image not found under {root}")
        key = os.path.abspath(path)
        if key in seen:
            first = seen[key]
            raise DataError(f"{transforms_path}: frames {first} (file_path {transforms.frames[first].file_path!r}) "
                            f"and {index} (file_path {frame.file_path!r}) name the same image {path}: one frame "
                            "per photo")
        seen[key] = index
        paths.append(path)
    distances = np.array([np.linalg.norm(np.asarray(f.transform_matrix, dtype=np.float64)[:3, 3])
                          for f in transforms.frames])
    median = float(np.median(distances))
    far = np.flatnonzero(~(distances <= FAR_CAMERA * median)) if median > 0 else []
    if len(far):
        index = int(far[0])
        others = f" (and {len(far) - 1} more)" if len(far) > 1 else ""
        raise DataError(f"{transforms_path}: frame {index} (file_path {transforms.frames[index].file_path!r}): its "
                        f"camera is {distances[index]:.3g} from the origin, more than {FAR_CAMERA:g} times the "
                        f"cameras' median distance {median:.3g}{others}: check its transform_matrix")
    _check_rig(transforms_path, [np.asarray(f.transform_matrix, dtype=np.float64) for f in transforms.frames])
    return paths


def _check_rig(transforms_path: Path, c2w: list[np.ndarray]) -> None:
    """Cameras that cannot have photographed an object at the origin are refused: all at one
    place (identity matrices: a fit that ends at PSNR 10, then a crash in RVSS), or all facing
    away from it (another axis convention)."""
    centres = np.stack([m[:3, 3] for m in c2w])
    scale = float(np.median(np.linalg.norm(centres, axis=1)))
    spread = float(np.linalg.norm(centres - centres.mean(0), axis=1).max())
    if len(c2w) > 1 and not spread > 1e-6 * max(scale, 1e-12):
        raise DataError(f"{transforms_path}: all {len(c2w)} training cameras are at one place "
                        f"({np.array2string(centres[0], precision=3)}): each transform_matrix must place its camera "
                        "where the photo was taken, around the object at the origin")
    # OpenGL camera-to-world: a camera looks down its -z axis, so the origin is in front of it
    # where its camera-frame z is negative.
    depth = np.array([(m[:3, :3].T @ -m[:3, 3])[2] for m in c2w])
    if not (depth < 0).any():
        raise DataError(f"{transforms_path}: the origin, where the object sits, is behind or level with every "
                        "training camera: transform_matrix must be camera-to-world in OpenGL/Blender axes (the "
                        "camera looks down its -z axis, y up), as NeRF's and MAD's transforms.json")


def _check_colour(train: list[View]) -> None:
    """A greyscale training image (by its file's mode, as a query's is judged) among training
    images that show colour is refused: the bundle would be a colour one, and that image's
    view of the part reads as a defect (the service refuses such a greyscale query)."""
    grey = [greyscale_file(view.path) for view in train]
    if not any(grey) or all(grey):
        return
    colour = [to_uint8(view.image.numpy()) for view, g in zip(train, grey) if not g]
    if has_colour(np.stack(colour)):
        names = [str(view.path) for view, g in zip(train, grey) if g]
        raise DataError(f"{names[0]}: a greyscale training image, but the other training images are in colour"
                        + (f" ({len(names)} greyscale in all)" if len(names) > 1 else "")
                        + ": use its colour photo, or make every training image greyscale")


def _load_test(root: Path, loader: _Loader, camera_angle_x: float, progress: bool,
               lens: tuple[float, ...] | None = None) -> list[QueryView]:
    """The test split; its photos come straight from the camera, so with a ``lens`` they (and
    their masks) are undistorted as the training images were."""
    test_dir = root / "test"
    if not test_dir.is_dir():
        return []
    poses: dict[tuple[str, str], torch.Tensor] = {}
    test_json = test_dir / "transforms.json"
    if test_json.is_file():
        for frame in read_transforms(test_json).frames:
            rel = Path(re.sub(r"^(\./)+", "", frame.file_path))
            stem = rel.stem if rel.suffix.lower() in IMAGE_SUFFIXES else rel.name
            c2w = torch.tensor(frame.transform_matrix, dtype=torch.float64)
            poses[_view_key(rel.parent.name, stem)] = camera.opengl_c2w_to_opencv_w2c(c2w)

    files = [
        path
        for label_dir in sorted(p for p in test_dir.iterdir() if p.is_dir())
        for path in sorted(
            (p for p in label_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key
        )
    ]
    queries: list[QueryView] = []
    for path in tqdm(files, desc=f"{root.name}: test", disable=not progress, leave=False):
        label = path.parent.name
        image, K, image_hw = loader.view(path, camera_angle_x)
        if label == GOOD:
            mask = torch.zeros(image.shape[:2], dtype=torch.bool)
        else:
            mask_path = _find_mask(root, label, path.stem)
            mask = loader.mask(mask_path, image_hw, path)
        if lens is not None:
            image = torch.from_numpy(undistort(image.numpy(), K.numpy(), lens))
            mask = torch.from_numpy(undistort(mask.numpy(), K.numpy(), lens, nearest=True))
        queries.append(
            QueryView(
                name=path.relative_to(root).with_suffix("").as_posix(),
                path=path,
                image=image,
                K=K,
                label=label,
                mask=mask,
                w2c=poses.get(_view_key(label, path.stem)),
            )
        )
    return queries


def _find_mask(root: Path, label: str, stem: str) -> Path:
    folder = root / "ground_truth" / label
    for name in _name_variants(stem):
        for suffix in (".png", ".jpg", ".bmp"):
            candidate = folder / f"{name}_mask{suffix}"
            if candidate.is_file():
                return candidate
    raise DataError(f"{folder / (stem + '_mask.png')}: mask for test/{label}/{stem} not found")
