"""Uploaded image bytes -> an RGB float array, safely.

Checks, in order, each with its status: size in bytes (413, also enforced while reading),
declared media type (415: only images, or an undeclared octet stream), that Pillow
recognises a supported format (415 for other formats, 400 for undecodable bytes), the
pixel count from the header before any pixel is decoded (413: decompression bombs), a
minimum side (422), then a full decode (400 when truncated or corrupt, when its EXIF
orientation cannot be read, or when a float image holds NaN or infinite pixels: whatever
Pillow raises on hostile bytes is a 400, never a 500). 16-bit, CMYK,
palette, greyscale and transparent images are converted to RGB; EXIF orientation is
applied (``models.images.to_rgb_float``).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from fastapi import UploadFile
from PIL import Image, UnidentifiedImageError

from models.images import Background, to_rgb_float
from service.problems import ServiceError
from service.settings import Settings

FORMATS = {"PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF"}  # MPO: phone JPEGs (first frame)
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


def decode(data: bytes, name: str, settings: Settings, background: Background) -> np.ndarray:
    """RGB float32 ``[H, W, 3]`` in [0, 1] of encoded image bytes, or a ServiceError."""
    if not data:
        raise ServiceError(400, f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise ServiceError(400, f"{name}: not a decodable image") from exc
        raise ServiceError(413, f"{name}: too many pixels") from exc
    except Exception as exc:  # noqa: BLE001 (Pillow's plugins raise OSError, ValueError, TypeError, ... on hostile bytes)
        raise ServiceError(400, f"{name}: not a decodable image ({exc})") from exc
    with image:
        if image.format not in FORMATS:
            raise ServiceError(415, f"{name}: format {image.format} is not supported (PNG, JPEG, WebP, BMP, TIFF)")
        width, height = image.size
        if width * height > settings.max_image_pixels:
            raise ServiceError(413, f"{name}: {width} x {height} pixels is more than {settings.max_image_pixels}")
        if min(width, height) < settings.min_image_side:
            raise ServiceError(422, f"{name}: {width} x {height} is too small (at least {settings.min_image_side} px a side)")
        try:
            image.load()
            return to_rgb_float(image, background)
        except Exception as exc:  # noqa: BLE001 (truncated, corrupt, malformed EXIF, non-finite pixels: whatever Pillow raises)
            raise ServiceError(400, f"{name}: cannot decode the image ({exc})") from exc
