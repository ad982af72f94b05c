"""Uploaded image bytes -> an RGB float array, safely.

Checks, in order, each with its status: declared media type (415: only images, or an
undeclared octet stream; ``check_media_type``, before any byte is read), size in bytes
(413, enforced while reading), an empty file (400), that Pillow recognises a supported
format (415 for other formats, 400 for undecodable bytes), the pixel count from the
header before any pixel is decoded (413: decompression bombs; the limit is the service's
``max_image_pixels``, and Pillow's own global limit is raised to it), one frame (422 for
a multi-page TIFF or an animated PNG or WebP; an MPO, a phone's JPEG, is read as its
first frame, the photograph), a minimum side (422), then a full decode (400 when
truncated or corrupt, when its EXIF orientation cannot be read, or when a float image
holds NaN or infinite pixels: whatever Pillow raises on hostile bytes is a 400, never a
500). 16-bit, CMYK, palette, greyscale and transparent images are converted
to RGB; EXIF orientation is applied (``models.images.to_rgb_float``).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from fastapi import UploadFile
from PIL import Image, UnidentifiedImageError

from models.images import Background, ImageRefused, declared_pixels, header_problem, to_rgb_float
from service.problems import ServiceError
from service.settings import Settings

MEDIA_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/webp", "image/bmp", "image/tiff", "image/x-ms-bmp",
               "application/octet-stream", ""}
CHUNK = 1 << 16


async def read_limited(upload: UploadFile, limit: int) -> bytes:
    """The upload's bytes, refusing (413) as soon as more than ``limit`` arrive."""
    parts, total = [], 0
    while chunk := await upload.read(CHUNK):
        total += len(chunk)
        if total > limit:
            raise ServiceError(413, f"{upload.filename or 'upload'}: larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def check_media_type(upload: UploadFile) -> None:
    media = (upload.content_type or "").split(";")[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise ServiceError(415, f"{upload.filename or 'upload'}: media type {media!r} is not an image type this "
                                f"service reads (send PNG, JPEG, WebP, BMP or TIFF)")


def pillow_allows(pixels: int) -> None:
    """Raise Pillow's process-wide decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, about
    89.5 MP: a warning above it, an error above twice it) to at least ``pixels``, so that
    it never refuses an image the service's setting allows. Never lowered: the process
    reads its bundles' images under it too. ``decode`` ignores Pillow's warning, so the
    service's own check on the header refuses what the setting does not allow; Pillow's
    error still stops a gross bomb in ``Image.open``, before a WebP's canvas is allocated."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < pixels:
        Image.MAX_IMAGE_PIXELS = pixels


def _refusal(problem: ImageRefused, name: str, limit: int) -> ServiceError:
    """``models.images.header_problem``'s refusal as the service answers it."""
    facts = problem.facts
    if problem.reason == "format":
        return ServiceError(415, f"{name}: format {facts['format']} is not supported (PNG, JPEG, WebP, BMP, TIFF)")
    if problem.reason == "pixels":
        width, height = facts["width"], facts["height"]
        return ServiceError(413, f"{name}: {width} x {height} = {width * height} pixels, more than the limit of {limit}")
    return ServiceError(422, f"{name}: this {facts['format']} image has {facts['frames']} frames; send one photograph "
                             f"per file")


def decode(data: bytes, name: str, settings: Settings, background: Background) -> np.ndarray:
    """RGB float32 ``[H, W, 3]`` in [0, 1] of encoded image bytes, or a ServiceError."""
    if not data:
        raise ServiceError(400, f"{name}: empty file")
    limit = settings.max_image_pixels
    pillow_allows(limit)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the service's own check, below
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ServiceError(400, f"{name}: not a decodable image") from exc
    except Image.DecompressionBombError as exc:  # over twice Pillow's limit (at least ours): refused before decoding
        pixels = declared_pixels(exc)
        count = f"{pixels} pixels" if pixels else f"more than {2 * Image.MAX_IMAGE_PIXELS} pixels"
        raise ServiceError(413, f"{name}: {count}, more than the limit of {limit}") from exc
    except Exception as exc:  # noqa: BLE001 (Pillow's plugins raise OSError, ValueError, TypeError, ... on hostile bytes)
        raise ServiceError(400, f"{name}: not a decodable image ({exc})") from exc
    with image:
        try:
            problem = header_problem(image, limit)  # the product's one list of what it reads (models.images)
        except Exception as exc:  # noqa: BLE001 (counting a TIFF's pages on hostile bytes, as above)
            raise ServiceError(400, f"{name}: cannot read the image's frames ({exc})") from exc
        if problem is not None:
            raise _refusal(problem, name, limit)
        width, height = image.size
        if min(width, height) < settings.min_image_side:
            raise ServiceError(422, f"{name}: {width} x {height} is too small (at least {settings.min_image_side} px a side)")
        try:
            image.load()
            return to_rgb_float(image, background)
        except Exception as exc:  # noqa: BLE001 (truncated, corrupt, malformed EXIF, non-finite pixels: whatever Pillow raises)
            raise ServiceError(400, f"{name}: cannot decode the image ({exc})") from exc
