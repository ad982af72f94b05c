"""The photos of a folder, read once: EXIF orientation applied, sizes checked (as stored,
before any downscaling), duplicates, hidden files, unreadable files and files the product does
not read (more than ``MAX_PHOTO_PIXELS``, another format, several frames: from the header,
before any pixel is decoded) set aside with their reason (never dropped silently). A photo
with transparency is composited onto white and its alpha kept: it is the object's mask
(``training.prepare.masks.from_alpha``)."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from models.images import MAX_IMAGE_PIXELS, ImageRefused, exif_camera, open_image

SUFFIXES = (".png", ".jpg", ".jpeg", ".jfif", ".jpe", ".tif", ".tiff", ".webp", ".bmp")
# What a customer's folder often holds beside the photos, and what to do about it.
NOT_READ = {**dict.fromkeys((".heic", ".heif"), "HEIC is not read: export the photos as JPEG (quality 90 or more) "
                                                "or PNG"),
            **dict.fromkeys((".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf"),
                            "a camera raw file is not read: export it as PNG, TIFF or JPEG"),
            **dict.fromkeys((".mov", ".mp4", ".avi", ".mkv"), "a video is not read: photograph the object, or export "
                                                              "frames as PNG")}
MIN_PHOTOS = 8  # fewer cannot make a model worth training (structure-from-motion needs far more)
# Mean |difference| of two photos' 64 x 64 grey thumbnails (of 255) under which a photo saved in
# another format beside it is the same view. Such a copy would be registered twice and, held out of
# one calibration model while its twin is fitted, make that view look easier than a new one. A JPEG
# copy of a Lego view (quality 50 or better) reads 0.1-0.4, the closest two of its 60 views 1.07
# (session 50). Only files of different formats are compared: the measure covers the background
# too, so distinct views of a part small in the frame read under it (a review: views 3-11 degrees
# apart at 0.19-0.47 with the part a quarter of the frame wide).
SAME_VIEW = 0.5
LOSSLESS = (".png", ".tif", ".tiff", ".bmp")  # kept before a lossy copy of the same view
_FORMAT = {".jpeg": ".jpg", ".jfif": ".jpg", ".jpe": ".jpg", ".tiff": ".tif"}  # one name per format
MIN_TRANSPARENT = 0.01  # a photo's alpha is its mask when at least this share of it is transparent
MAX_PHOTO_PIXELS = 3 * MAX_IMAGE_PIXELS  # 75 MP: a 64 MP camera's full-size photo (downscaled as it is read)


class PrepareError(ValueError):
    """The photo folder cannot be prepared; the message says why and what to do."""


@dataclass(frozen=True)
class Photo:
    name: str  # file name in the photo folder
    rgb: np.ndarray  # [H, W, 3] uint8, EXIF orientation applied, at most max_size on its long side
    scale: float  # this array's pixels per pixel of the file as stored (1 unless downscaled)
    camera: str | None  # EXIF "Make Model", when the file has it
    focal_35mm: float | None  # EXIF FocalLengthIn35mmFilm (mm), when the file has it
    size: tuple[int, int] = (0, 0)  # (width, height) as stored, EXIF orientation applied
    alpha: np.ndarray | None = None  # [H, W] float32 in [0, 1] for a photo with transparency (as ``rgb``)


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str
    photo: bool = True  # False: a file or folder beside the photos, not one (not counted among them)


def find_photos(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, any names, sorted by name (hidden ones too:
    ``read_photos`` sets them aside)."""
    if not folder.is_dir():
        raise PrepareError(f"{folder}: not a folder of photos")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


def not_photos(folder: Path) -> list[Skipped]:
    """The files and folders in ``folder`` that are not photos it reads (hidden ones left out),
    each with what to do: they are listed, never dropped unseen (an iPhone's HEIC beside JPEGs)."""
    out = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            out.append(Skipped(f"{path.name}/", "a subfolder: only the photos directly in the folder are used",
                               photo=False))
        elif path.suffix.lower() not in SUFFIXES:
            out.append(Skipped(path.name, NOT_READ.get(path.suffix.lower(), "not a photo format prepare reads ("
                                                       + ", ".join(SUFFIXES) + ")"), photo=False))
    return out


def read_photos(folder: Path, max_size: int) -> tuple[list[Photo], list[Skipped]]:
    """Decode every photo in ``folder``. Unreadable files, exact duplicates and copies of one
    view (``same_views``) are skipped with a reason, and so are the files and folders beside
    them that are not photos (``not_photos``); no photos, too few, or photos of different sizes
    raise ``PrepareError``."""
    paths = find_photos(folder)
    if not paths:
        others = sorted(p.name for p in folder.iterdir())[:5]
        raise PrepareError(f"{folder}: no photos (looked for {', '.join(SUFFIXES)}"
                           + (f"; found {', '.join(others)}" if others else "; the folder is empty") + ")")
    photos: list[Photo] = []
    skipped: list[Skipped] = not_photos(folder)
    seen: dict[str, str] = {}
    for path in paths:
        if path.name.startswith("."):  # a thumbnail, or macOS's ._ metadata: not a photo the user chose
            skipped.append(Skipped(path.name, "a hidden file (its name starts with '.')"))
            continue
        try:
            photo, digest = _read(path, max_size)
        except ImageRefused as exc:  # a decompression bomb, another format, several frames
            skipped.append(Skipped(path.name, f"not read: {exc}"))
            continue
        except UnidentifiedImageError:  # Pillow's message names its file object, not the file
            skipped.append(Skipped(path.name, f"cannot be decoded: not an image in any format read here (its name "
                                              f"says {path.suffix or 'nothing'}; truncated, or another format)"))
            continue
        except Exception as exc:  # noqa: BLE001 (truncated, corrupt, hostile: Pillow raises OSError, TypeError, ...)
            skipped.append(Skipped(path.name, f"cannot be decoded ({type(exc).__name__}: {exc})"))
            continue
        if digest in seen:
            skipped.append(Skipped(path.name, f"identical to {seen[digest]}"))
            continue
        seen[digest] = path.name
        photos.append(photo)
    copies = same_views(photos)
    for copy, kept, difference in copies:
        skipped.append(Skipped(copy, f"the same view as {kept}, saved in another format (mean difference "
                                     f"{difference:.2f} of 255)"))
    photos = [p for p in photos if p.name not in {copy for copy, _, _ in copies}]
    sizes = Counter(p.size for p in photos)  # as stored: downscaling would hide a crop or another camera
    if len(sizes) > 1:
        (main_size, _), *_ = sizes.most_common()
        odd = [p.name for p in photos if p.size != main_size]
        listing = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common())
        turned = all(size in (main_size, main_size[::-1]) for size in sizes)
        raise PrepareError(f"{folder}: the photos have {len(sizes)} sizes ({listing}); one camera at one resolution "
                           f"is needed. Different from the rest: {', '.join(odd[:10])}"
                           + (" ..." if len(odd) > 10 else "")
                           + (". They differ only in orientation: turn them all the same way (portrait or "
                              "landscape), or hold the camera the same way" if turned else ""))
    if len(photos) < MIN_PHOTOS:
        why = "; ".join(f"{s.name}: {s.reason}" for s in sorted(skipped, key=lambda s: not s.photo)[:5])  # photos first
        raise PrepareError(f"{folder}: {len(photos)} usable photo(s), at least {MIN_PHOTOS} are needed (60 or more "
                           "around the object is best)" + (f"; set aside: {why}" if why else ""))
    return photos, skipped


def same_views(photos: list[Photo]) -> list[tuple[str, str, float]]:
    """``(copy, kept, difference)`` for each photo that is a copy of another in another format
    (``SAME_VIEW``): of the two, a lossless file is kept before a lossy one, else the first by
    name. Photos of one format are never compared (distinct views may read alike)."""
    formats = [_FORMAT.get(Path(p.name).suffix.lower(), Path(p.name).suffix.lower()) for p in photos]
    if len(set(formats)) < 2:
        return []
    thumbs = np.stack([np.asarray(Image.fromarray(p.rgb).convert("L").resize((64, 64), Image.Resampling.BOX),
                                  dtype=np.float32) for p in photos]).reshape(len(photos), -1)
    order = sorted(range(len(photos)), key=lambda i: (Path(photos[i].name).suffix.lower() not in LOSSLESS, i))
    kept: list[int] = []
    out = []
    for i in order:
        others = [j for j in kept if formats[j] != formats[i]]
        if others:
            differences = np.abs(thumbs[others] - thumbs[i]).mean(axis=1)
            j = int(np.argmin(differences))
            if differences[j] < SAME_VIEW:
                out.append((photos[i].name, photos[others[j]].name, float(differences[j])))
                continue
        kept.append(i)
    return out


def _read(path: Path, max_size: int) -> tuple[Photo, str]:
    with open_image(path, MAX_PHOTO_PIXELS) as image:
        image.load()
        exif = image.getexif()
        camera = exif_camera(image)
        image = ImageOps.exif_transpose(image)
        transparent = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
        rgba = image.convert("RGBA") if transparent else None
        rgb = image.convert("RGB")
    digest = hashlib.sha256(np.asarray(rgba if rgba is not None else rgb).tobytes()).hexdigest()
    size = rgb.size
    long_side = max(rgb.size)
    scale = 1.0
    if long_side > max_size:
        scale = max_size / long_side
        new = (round(rgb.width * scale), round(rgb.height * scale))
        rgb = rgb.resize(new, Image.Resampling.LANCZOS)
        rgba = rgba.resize(new, Image.Resampling.LANCZOS) if rgba is not None else None
    alpha = None
    if rgba is not None and (np.asarray(rgba)[..., 3] < 128).mean() >= MIN_TRANSPARENT:
        # onto white, as the category's photos are; the alpha is the object's mask (an alpha
        # channel that is opaque, as many exporters write, says nothing: the photo is as any other)
        pixels = np.asarray(rgba, dtype=np.float32) / 255.0
        alpha = pixels[..., 3]
        on_white = pixels[..., :3] * alpha[..., None] + (1.0 - alpha[..., None])
        rgb = Image.fromarray((on_white * 255.0 + 0.5).astype(np.uint8))
    focal = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.FocalLengthIn35mmFilm)
    return Photo(path.name, np.asarray(rgb), scale, camera, float(focal) if focal else None, size, alpha), digest
