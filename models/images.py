"""Image decoding and resizing, shared by the data layer and the service.

Every image that enters the pipeline goes through :func:`to_rgb_float` once: any PIL
mode (RGBA and LA composited onto the background colour, palette with or without
transparency, L, 1, 16-bit and 32-bit integer grey, float, CMYK, YCbCr) becomes an RGB
float32 array in [0, 1], ``[H, W, 3]``. EXIF orientation is applied first.

Files are opened through :func:`open_image`, which reads the header only and refuses, before
any pixel is decoded, what the product does not read: a format outside ``FORMATS``, several
frames (an animation, a multi-page TIFF; MPO, a phone's JPEG, is read by its first frame),
or more than ``MAX_IMAGE_PIXELS`` pixels (a decompression bomb: a few bytes of header that
claim 20000 x 20000 pixels).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps

Background = tuple[float, float, float]
WHITE: Background = (1.0, 1.0, 1.0)
MIN_IMAGE_SIDE = 32  # a query's shorter side at least, in its own pixels (`rpe-pad inspect`; the service's default)
MAX_IMAGE_PIXELS = 25_000_000  # width x height at most, from the header before decoding (the service's default)
FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF"})  # Pillow's names of the formats the product reads
FORMAT_NAMES = "PNG, JPEG, WebP, BMP or TIFF"  # ``FORMATS`` in words (MPO is a JPEG)


class ImageRefused(ValueError):
    """An image file the product does not read: too many pixels, another format, several
    frames. The message says what the file is and what is read; callers put its name in front.
    ``reason`` ("format", "pixels", "frames") and ``facts`` let a caller say it its own way
    (the service: a status code and its words)."""

    def __init__(self, message: str, reason: str, **facts) -> None:
        super().__init__(message)
        self.reason, self.facts = reason, facts


def declared_pixels(exc: Image.DecompressionBombError) -> int | None:
    """The pixel count a header declared, from Pillow's error (it names the count, not the sides)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return int(found[1]) if found else None


def header_problem(image: Image.Image, max_pixels: int) -> ImageRefused | None:
    """What the product refuses in an opened image, from its header alone (no pixel decoded):
    a format outside ``FORMATS``, more than ``max_pixels`` pixels, several frames (except MPO,
    read by its first frame). Whether there are several is read from the first header; a
    TIFF's pages are not counted (Pillow walks them all, and a hostile file of 10 MB holds
    tens of thousands: a minute's work), other formats' frames are (their header says how
    many). Hostile bytes raise Pillow's errors here, for the caller to wrap."""
    if image.format not in FORMATS:
        return ImageRefused(f"format {image.format} is not read (give {FORMAT_NAMES})", "format", format=image.format)
    width, height = image.size
    if width * height > max_pixels:
        return ImageRefused(_too_many(f"{width} x {height} pixels", max_pixels), "pixels", width=width, height=height)
    if getattr(image, "is_animated", False) and image.format != "MPO":
        frames = "several" if image.format == "TIFF" else str(image.n_frames)
        return ImageRefused(f"it is a {image.format} of {frames} frames (an animation or several pages): give one "
                            "still image", "frames", format=image.format, frames=frames)
    return None


def _too_many(declared: str, max_pixels: int) -> str:
    return (f"its header declares {declared}, more than the {max_pixels} an image may have (a "
            "decompression bomb, or not a photo)")


@contextmanager
def open_image(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Iterator[Image.Image]:
    """``Image.open`` for the product's readers, with the header checked before any pixel is
    decoded: more than ``max_pixels`` pixels, a format outside ``FORMATS``, or several frames
    (except MPO, read by its first frame) raise :class:`ImageRefused`. Other failures are
    Pillow's (``OSError``, ``UnidentifiedImageError``). Pillow's own warning is silenced (this
    check replaces it) and its error, at twice ``Image.MAX_IMAGE_PIXELS`` (about 179 MP), still
    refuses first. ``warnings.catch_warnings`` is not thread-safe: for the command line and the
    data layer, not the service's threads."""
    with open(path, "rb") as fp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(fp)
        except Image.DecompressionBombError as exc:  # over Pillow's own limit
            declared = declared_pixels(exc)
            limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
            raise ImageRefused(_too_many(f"{declared} pixels" if declared else "more pixels", limit), "pixels") from exc
        with image:
            try:
                problem = header_problem(image, max_pixels)
            except Exception as exc:  # noqa: BLE001 (hostile bytes: Pillow raises OSError, EOFError, struct.error, ...)
                raise ValueError(f"its frames cannot be read ({type(exc).__name__}: {exc})") from exc
            if problem is not None:
                raise problem
            yield image


def to_rgb_float(image: Image.Image, background: Background = WHITE) -> np.ndarray:
    """Convert a PIL image of any mode to RGB float32 ``[H, W, 3]`` in [0, 1].

    Transparent pixels are composited onto ``background`` (RGB in [0, 1]) with
    straight (non-premultiplied) alpha, as PNG stores it.
    """
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 (Pillow raises struct.error, TypeError, ... on malformed EXIF)
        raise ValueError(f"its EXIF orientation cannot be read ({exc})") from exc
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(image, dtype=np.float32)
        # 16-bit PNGs open as I;16 (or I with values up to 65535); 8-bit-range I is rare.
        scale = 65535.0 if mode != "I" or grey.max(initial=0) > 255 else 255.0
        grey = np.clip(grey / scale, 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "F":
        grey = np.asarray(image, dtype=np.float32)
        if not np.isfinite(grey).all():
            raise ValueError("it has pixels that are not numbers (NaN or infinite)")
        grey = np.clip(grey, 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=-1)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:4]
        bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
        return (rgba[..., :3] * alpha + bg * (1.0 - alpha)).astype(np.float32)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def load_rgb(path: str | Path, background: Background = WHITE) -> np.ndarray:
    """Decode an image file to RGB float32 ``[H, W, 3]`` (see :func:`to_rgb_float`).

    Raises ``OSError``/``PIL.UnidentifiedImageError`` for unreadable files and
    :class:`ImageRefused` for what :func:`open_image` refuses; callers that know the context
    (the data layer, the command line) wrap them with a message naming it.
    """
    with open_image(path) as image:
        try:
            image.load()
        except (OSError, ValueError):
            raise
        except Exception as exc:  # noqa: BLE001 (hostile bytes: Pillow's plugins raise TypeError, struct.error, ...)
            raise ValueError(f"cannot decode the image ({type(exc).__name__}: {exc})") from exc
        return to_rgb_float(image, background)


def decode_rgb(data: bytes, background: Background = WHITE) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, ...) to RGB float32 ``[H, W, 3]``."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return to_rgb_float(image, background)


def load_mask(path: str | Path) -> np.ndarray:
    """Binary mask ``[H, W]`` (bool) from an image file: any non-zero pixel is defective."""
    with open_image(path) as image:
        image.load()
        return np.asarray(image.convert("L")) > 0


def resize_rgb(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize ``[H, W, 3]`` float32 with antialiased bilinear filtering (Pillow, per channel;
    the same weights as torch's ``interpolate(..., antialias=True)``, to 1e-7). No torch op:
    the service resizes queries off its inference thread (``service.app.State``)."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    image = np.asarray(image, dtype=np.float32)
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]), mode="F")
                           .resize((width, height), Image.Resampling.BILINEAR)) for c in range(image.shape[2])]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a bool mask ``[H, W]`` with nearest-neighbour sampling (the peers' protocol)."""
    if mask.shape[1] == width and mask.shape[0] == height:
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize((width, height), Image.Resampling.NEAREST)) > 0


GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}  # Pillow's modes without colour
COLOUR_LEVELS = 16  # photos whose 99th-percentile chroma exceeds this many levels are colour photos


def chroma_levels(images: np.ndarray, most: int = 250_000) -> np.ndarray:
    """The channels' spread (max - min), in levels, of up to ``most`` evenly spaced pixels of
    uint8 RGB ``[..., H, W, 3]`` images."""
    flat = images.reshape(-1, 3)[:: max(1, images.size // 3 // most)]
    return flat.max(axis=1).astype(np.int16) - flat.min(axis=1).astype(np.int16)


def greyscale_file(data: bytes | str | Path) -> bool:
    """True when an image file (its encoded bytes, or its path) holds a greyscale image (its
    mode, from the header: no pixel is decoded). A colour file of a grey scene is not
    greyscale: only the file says so."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            return image.mode in GREY_MODES
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def has_colour(images: np.ndarray) -> bool:
    """True when RGB photos show colour: their 99th-percentile chroma exceeds ``COLOUR_LEVELS``
    levels (a grey part's colour photos, with their noise and white balance, stay under it).
    No photos: False."""
    return len(images) > 0 and float(np.quantile(chroma_levels(images), 0.99)) > COLOUR_LEVELS


def to_lab(image: np.ndarray) -> np.ndarray:
    """CIELAB (D65; L in [0, 100]) of an RGB float image ``[..., 3]`` in [0, 1]: Euclidean
    distances in it are CIE76 colour differences (Delta E*ab)."""
    flat = np.ascontiguousarray(image, dtype=np.float32).reshape(-1, 1, 3)
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(np.shape(image))


def save_rgb(path: str | Path, image: np.ndarray) -> None:
    """Write RGB float ``[H, W, 3]`` in [0, 1] as an 8-bit PNG."""
    Image.fromarray(to_uint8(image)).save(path)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float in [0, 1] -> uint8, rounding to nearest."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def exif_camera(image: Image.Image) -> str | None:
    """The EXIF camera, ``"Make Model"`` (``None`` when the file does not say)."""
    exif = image.getexif()
    parts = [str(exif.get(tag, "")).strip("\x00 ") for tag in (ExifTags.Base.Make, ExifTags.Base.Model)]
    return " ".join(p for p in parts if p) or None


def exif_camera_of(data: bytes) -> str | None:
    """:func:`exif_camera` of encoded image bytes (``None`` when they cannot be read)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return exif_camera(image)
    except (OSError, ValueError):
        return None


class Undistortion:
    """Photos ``[H, W, ...]`` of a lens with radial distortion ``radial`` (COLMAP's k1[, k2] in
    normalised coordinates, which are OpenCV's) as the pinhole camera ``K`` (pixel centres at
    +0.5, ``models/camera.py``) sees them. The maps are made once; bilinear, or nearest for
    masks; the border is replicated."""

    def __init__(self, K: np.ndarray, radial: Sequence[float], width: int, height: int):
        k = (*radial, 0.0, 0.0)[:2]
        K_cv = np.array(K, dtype=np.float64).copy()
        K_cv[:2, 2] -= 0.5  # OpenCV's pixel centres are at integers
        self.size = (width, height)
        self.maps = cv2.initUndistortRectifyMap(K_cv, np.array([k[0], k[1], 0.0, 0.0]), None, K_cv, self.size,
                                                cv2.CV_32FC1)

    def __call__(self, image: np.ndarray, nearest: bool = False) -> np.ndarray:
        if (image.shape[1], image.shape[0]) != self.size:
            raise ValueError(f"image is {image.shape[1]} x {image.shape[0]}, the lens maps are {self.size[0]} x "
                             f"{self.size[1]}")
        flag = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        source = image.astype(np.uint8) if image.dtype == bool else image
        out = cv2.remap(source, *self.maps, flag, borderMode=cv2.BORDER_REPLICATE)
        return out.astype(bool) if image.dtype == bool else out


def undistort(image: np.ndarray, K: np.ndarray, radial: Sequence[float], nearest: bool = False) -> np.ndarray:
    """One photo through :class:`Undistortion`."""
    return Undistortion(K, radial, image.shape[1], image.shape[0])(image, nearest)
