"""Image files the product must refuse in one line, made in memory for the tests: headers that
claim a huge size over a few bytes (decompression bombs), and formats or frame counts the
service does not take (``models.images.open_image``)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image


def _encoded(fmt: str, size: tuple[int, int] = (8, 8)) -> bytearray:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, fmt)
    return bytearray(buf.getvalue())


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (its CRC made right) over 8 x 8 pixels of data."""
    data = _encoded("PNG")
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def bmp_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A BMP whose info header claims ``width`` x ``height``."""
    data = _encoded("BMP")
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def jpeg_bomb(width: int = 65_500, height: int = 65_500) -> bytes:
    """A JPEG whose SOF0 frame header claims ``width`` x ``height``."""
    data = _encoded("JPEG")
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def frames(path: Path, fmt: str, count: int = 3, size: tuple[int, int] = (64, 64)) -> Path:
    """``count`` frames of different colours in one file (an animation, pages, an MPO's images)."""
    images = [Image.new("RGB", size, (40 * i, 120, 200 - 40 * i)) for i in range(count)]
    images[0].save(path, fmt, save_all=True, append_images=images[1:])
    return path
