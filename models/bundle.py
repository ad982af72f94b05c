"""The bundle: one self-describing directory per category, the contract between training and service.

Layout of ``BUNDLES_DIR/<category>/`` (paths in ``FILES`` and ``REPORTS``; the training work
folder's other files in ``WORK_FILES``: every stage output's path is spelled here alone):

- ``manifest.json``: ``Manifest`` below: format version, category, creation time, camera
  model (image size, intrinsics, background), scene normalisation, every model's
  arguments and preprocessing constants, the resolved training config, the calibrated
  threshold, the default inspection settings, and the sha256 and size of every other file;
- ``splats/scene.safetensors``: the Gaussian model (``models.splat.scene``);
- ``calibration/calibration.json``: the threshold and normal statistics (``models.calibration``);
- ``gallery/gallery.safetensors``: poses, descriptors, encoder features, views and depths
  (``models.gallery``); ``gallery/views/NNNN.png``: the same views for display;
- ``irprn/encoder.onnx``, ``irprn/pair_head.onnx``, ``irprn/config.json``: IRPRN for
  ONNX Runtime (``training/export.py``) and its arguments;
- ``reports/*``: what training measured (JSON, PNG), for people.

``assemble`` writes a bundle into a temporary sibling directory and renames it into place,
so a crash never leaves a half bundle under the category's name: a reader sees the old
bundle, the new one, or (for the instant between two renames, or after a crash exactly
there) none, never a mixture. ``open_bundle`` checks the manifest's schema version, that it
is valid, that every listed file exists with its size and sha256, and refuses the bundle
with ``BundleError`` naming the problem otherwise. Nothing here uses pickle.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated

import numpy as np
from PIL import Image
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.hashing import sha256_file

FORMAT = "rpe-pad-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FILES = {
    "scene": "splats/scene.safetensors",
    "calibration": "calibration/calibration.json",
    "gallery": "gallery/gallery.safetensors",
    "encoder": "irprn/encoder.onnx",
    "pair_head": "irprn/pair_head.onnx",
    "irprn_config": "irprn/config.json",
}
# The other stage outputs of the training work folder ``BUNDLES_DIR/.work/<category>/``
# (``training/pipeline.py``), by the same relative paths: a file the bundle carries keeps
# its ``FILES`` path there. Not copied into the bundle.
WORK_FILES = {
    "splats_config": "splats/config.json",  # the resolved SplatConfig: the splats stage's key
    "splats_checkpoint": "splats/checkpoint.safetensors",  # removed when the fit ends
    "calibration_scene": "calibration/holdout_scene.safetensors",  # the calibration model (the splats fit before the held-out views joined)
    "calibration_scene_key": "calibration/holdout_scene.json",  # its settings and fitted views (training.splats.calibration_key)
    "calibration_folds": "calibration/folds",  # the other folds' calibration models and keys (training.splats.fold_paths)
    "novel": "rvss/novel.safetensors",  # RVSS novel views: images, poses, parents
    "rvss_config": "rvss/config.json",  # the resolved RVSSConfig
    "irprn_weights": "irprn/weights.safetensors",  # IRPRN in PyTorch (models.irprn.save_irprn)
    "irprn_checkpoint": "irprn/checkpoint.safetensors",  # removed when training ends
    "onnx_key": "irprn/onnx.json",  # ties the ONNX graphs to the weights they were checked against
    "train_summary": "reports/train_summary.json",  # rpe-pad train's closing summary
}
# What the stages measured, for people: copied into the bundle's ``reports/`` when present.
# The JSON reports are named after their stage (the manifest's ``summary`` reads them).
REPORTS = {
    "splats": "reports/splats.json",
    "splats_sheet": "reports/splats_sheet.png",
    "calibration": "reports/calibration.json",
    "calibration_hist": "reports/calibration_hist.png",
    "calibration_views": "reports/calibration_views.png",
    "rvss": "reports/rvss.json",
    "rvss_sheet": "reports/rvss_sheet.png",
    "irprn": "reports/irprn.json",
    "irprn_curve": "reports/irprn_curve.png",
    "gallery": "reports/gallery.json",
    "onnx": "reports/onnx.json",
}
GALLERY_VIEWS = "gallery/views"  # the gallery's views as NNNN.png, for display (write_views_png)
# Entries a manifest may list. A bundle has its required files, reports and one PNG per gallery
# view (Lego: 616 with 600 views); 100 000 leaves room for galleries 100 times larger, and bounds
# the files, hashes and downloads one manifest can ask for before any of them is read.
MAX_FILES = 100_000


class BundleError(ValueError):
    """A bundle that must not be loaded: the message names the bundle and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


def _small_radial(value: list[float]) -> list[float]:
    if not all(math.isfinite(k) and abs(k) < 1.0 for k in value):
        raise ValueError(f"radial terms must be finite and under 1 in magnitude, got {value}")
    return value


# A lens's radial distortion as this software undistorts with it: k1[, k2] in normalised coordinates
# (COLMAP's, which are OpenCV's), each under 1 in magnitude. Training photos' (models.data) and a bundle's.
RadialTerms = Annotated[list[float], Field(min_length=1, max_length=2), AfterValidator(_small_radial)]
SIDES = (16, 4096)  # the image sizes a bundle's camera may have, pixels


class CameraSpec(_Strict):
    width: int = Field(ge=SIDES[0], le=SIDES[1])  # pixels, the size every query is resized to
    height: int = Field(ge=SIDES[0], le=SIDES[1])
    K: list[list[float]]  # [3, 3] intrinsics at width x height, pixel centres at +0.5 (models/camera.py)
    camera_angle_x: float = Field(gt=0, lt=math.pi)  # horizontal field of view, radians
    background: tuple[float, float, float]  # RGB in [0, 1] behind the object
    convention: str = "world-to-camera 4x4, OpenCV axes (x right, y down, z forward)"
    lens_radial: RadialTerms | None = None  # k1[, k2] of the photos' lens: queries are undistorted with them
    exif_camera: str | None = None  # EXIF "Make Model" of the training photos: a query from another is refused
    lossy_photos: bool = False  # the training photos were lossy (JPEG, lossy WebP): coarse JPEG queries are not refused

    @field_validator("K")
    @classmethod
    def _pinhole(cls, value: list[list[float]]) -> list[list[float]]:
        if len(value) != 3 or any(len(row) != 3 for row in value):
            raise ValueError("K must be a 3 x 3 matrix")
        if not (value[0][0] > 0 and value[1][1] > 0) or value[2] != [0.0, 0.0, 1.0]:
            raise ValueError(f"K must have focal lengths fx, fy > 0 and last row [0, 0, 1], got {value}")
        return value

    @field_validator("background")
    @classmethod
    def _unit_colour(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(0 <= v <= 1 for v in value):
            raise ValueError(f"background must be RGB in [0, 1], got {list(value)}")
        return value


class Manifest(_Strict):
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    category: str = Field(min_length=1)
    created: datetime
    software: str  # rpe-pad version that wrote it
    camera: CameraSpec
    scene: dict  # normalisation (scene scale, median camera distance, ...), scene_unit, size
    models: dict  # per model: arguments and preprocessing constants
    training: dict  # the resolved config of every stage and the preset
    calibration: dict  # rule, threshold, floors (the full record is calibration/calibration.json)
    inference: dict  # default inspection settings (pose mode, refinement)
    gallery: dict  # n_views, n_train, n_novel, view names, descriptor (grid, rule)
    summary: dict  # what training measured, per stage
    files: dict[str, FileEntry]  # relative POSIX path -> sha256 and size

    @field_validator("category")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return check_category_name(value)

    @field_validator("files")
    @classmethod
    def _safe_paths(cls, value: dict[str, FileEntry]) -> dict[str, FileEntry]:
        if len(value) > MAX_FILES:
            raise ValueError(f"{len(value)} files listed, at most {MAX_FILES}")
        for rel in value:
            p = PurePosixPath(rel)
            if p.is_absolute() or ".." in p.parts or rel == MANIFEST or not rel:
                raise ValueError(f"file path {rel!r} must be relative, inside the bundle, and not the manifest")
            if str(p) != rel:  # one name per file: no '.' or empty segments, no trailing '/'
                raise ValueError(f"file path {rel!r} is not canonical (it names {str(p)!r})")
        folders = {str(parent) for rel in value for parent in PurePosixPath(rel).parents}
        clash = sorted(folders & (set(value) | {MANIFEST}))
        if clash:
            raise ValueError(f"{clash[0]!r} is listed as a file and as the folder of another listed file")
        missing = sorted(set(FILES.values()) - set(value))
        if missing:
            raise ValueError(f"required files not listed: {missing}")
        return value


def check_category_name(name: str) -> str:
    """``name`` when it can name a category (a plain directory name: the bundle's folder and
    its manifest's ``category``), else ``ValueError`` saying why."""
    if not name:
        raise ValueError("a category name must not be empty")
    if "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"category name {name!r} must be a plain directory name")
    return name


def read_manifest(bundle_dir: Path) -> Manifest:
    """The validated manifest of ``bundle_dir`` (no file hashes checked: see ``open_bundle``)."""
    path = bundle_dir / MANIFEST
    if path.is_symlink():  # it pins every file's hash: a link would give the bundle's identity from elsewhere
        raise BundleError(f"{bundle_dir}: {MANIFEST} is a symbolic link (a bundle holds its files)")
    if not path.is_file():
        inside = sorted(p.parent.name for p in bundle_dir.glob(f"*/{MANIFEST}")) if bundle_dir.is_dir() else []
        hint = f"; it holds bundles: give one of them ({bundle_dir / inside[0]}, ...)" if inside else ""
        raise BundleError(f"{bundle_dir}: no {MANIFEST} (not a bundle, or an unfinished one){hint}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{bundle_dir}: {MANIFEST} is not valid JSON ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BundleError(f"{bundle_dir}: {MANIFEST} is not an rpe-pad bundle manifest (format "
                          f"{raw.get('format') if isinstance(raw, dict) else type(raw).__name__!r})")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{bundle_dir}: bundle format version {version!r}; this software reads version "
                          f"{FORMAT_VERSION} (rebuild the bundle with this version's rpe-pad train)")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{bundle_dir}: invalid {MANIFEST}: {describe_invalid(exc)}") from exc
    if manifest.category != bundle_dir.name:
        raise BundleError(f"{bundle_dir}: manifest is for category {manifest.category!r}, but the directory is "
                          f"named {bundle_dir.name!r}")
    return manifest


def describe_invalid(exc: ValidationError) -> str:
    """One line for a pydantic ``ValidationError``: its first problem's field and message."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])  # empty for a check of the whole model
    message = f"{first['msg'].removeprefix('Value error, ')} ({exc.error_count()} problem(s))"
    return f"{where}: {message}" if where else message


def verify_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Every listed file is there, inside the bundle and reached through no symbolic link, with
    its size and sha256; nothing else is trusted."""
    root = bundle_dir.resolve()
    for rel, entry in manifest.files.items():
        path = bundle_dir / rel
        parts = PurePosixPath(rel).parts
        if any((bundle_dir / Path(*parts[:i])).is_symlink() for i in range(1, len(parts) + 1)):
            raise BundleError(f"{bundle_dir}: {rel} is reached through a symbolic link (a bundle holds its files)")
        if not path.resolve().is_relative_to(root):
            raise BundleError(f"{bundle_dir}: {rel} lies outside the bundle")
        if not path.is_file():
            raise BundleError(f"{bundle_dir}: missing file {rel}")
        size = path.stat().st_size
        if size != entry.bytes:
            raise BundleError(f"{bundle_dir}: {rel} has {size} bytes, the manifest says {entry.bytes} (edited or truncated)")
        if sha256_file(path) != entry.sha256:
            raise BundleError(f"{bundle_dir}: {rel} does not match its sha256 in the manifest (edited or corrupted)")


def open_bundle(bundle_dir: Path) -> Manifest:
    """Check a bundle completely (schema, version, every file's hash) and return its manifest."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: not a directory")
    manifest = read_manifest(bundle_dir)
    verify_files(bundle_dir, manifest)
    return manifest


def find_bundles(bundles_dir: Path) -> list[Path]:
    """Candidate bundle directories: the visible subdirectories (temporary and training
    work directories start with a dot and are skipped)."""
    return sorted(p for p in Path(bundles_dir).iterdir() if p.is_dir() and not p.name.startswith("."))


def write_views_png(images: np.ndarray, out_dir: Path) -> list[str]:
    """The gallery views ``[G, H, W, 3]`` uint8 as ``NNNN.png``; returns their file names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(images):
        name = f"{i:04d}.png"
        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(out_dir / name, optimize=False)
        names.append(name)
    return names


def assemble(bundles_dir: Path, category: str, copy: dict[str, Path], fields: dict, extra_writers=()) -> Path:
    """Write ``bundles_dir/<category>`` atomically and return it.

    ``copy``: relative path in the bundle -> source file; ``extra_writers``: callables
    ``f(tmp_dir)`` that write more files (e.g. the PNG views); ``fields``: the manifest's
    descriptive fields (everything but format, version, category, created, files).
    The manifest is written last, with the hash of every file, then the temporary
    directory replaces any previous bundle of the category.
    """
    bundles_dir.mkdir(parents=True, exist_ok=True)
    tmp = bundles_dir / f".tmp-{category}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for rel, src in copy.items():
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        for writer in extra_writers:
            writer(tmp)
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            rel = path.relative_to(tmp).as_posix()
            files[rel] = FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)
        manifest = Manifest(category=category, created=datetime.now(UTC), files=files, **fields)
        _write_synced(tmp / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
        _swap_into_place(tmp, bundles_dir / category)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return bundles_dir / category


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is moved aside first and removed
    after (each step a single rename, so ``target`` is always a whole bundle or absent)."""
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{uuid.uuid4().hex[:8]}")
        target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)  # put the previous bundle back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
