"""``service.uploads.decode``: the service's own pixel limit is the one that applies (not
Pillow's global one), and images of several frames are refused, MPO excepted."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from models.images import WHITE
from service.problems import ServiceError
from service.settings import Settings
from service.uploads import decode

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _pillow_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's global limit as it was, after each test (``decode`` may raise it)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


def _encoded(frames: list[np.ndarray], format: str, **save) -> bytes:
    buf = io.BytesIO()
    first, *rest = [Image.fromarray(frame) for frame in frames]
    first.save(buf, format=format, **({"save_all": True, "append_images": rest} if rest else {}), **save)
    return buf.getvalue()


def _claiming(width: int, height: int) -> bytes:
    """A 1 x 1 PNG whose header claims ``width`` x ``height`` pixels (its data is 1 pixel)."""
    data = bytearray(_encoded([np.zeros((1, 1, 3), np.uint8)], "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _refused(data: bytes, settings: Settings) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        decode(data, "q.png", settings, WHITE)
    return info.value


def _frames(n: int, side: int = 64) -> list[np.ndarray]:
    return [(RNG.random((side, side, 3)) * 255).astype(np.uint8) for _ in range(n)]


# ------------------------------------------------------------ the pixel limit


def test_the_setting_is_the_limit_above_pillows_own() -> None:
    """``RPEPAD_MAX_IMAGE_PIXELS=200000000`` and a 10000 x 10000 upload: Pillow's limit (about
    89.5 MP) answered 413 "too many pixels". Now the header passes, and this file's one pixel
    of data is a 400 at decoding."""
    error = _refused(_claiming(10_000, 10_000), Settings(max_image_pixels=200_000_000, _env_file=None))
    assert error.status == 400 and "cannot decode" in error.detail, error.detail
    assert Image.MAX_IMAGE_PIXELS >= 200_000_000  # Pillow's limit raised to the setting


@pytest.mark.parametrize("width, height, count", [
    (10_000, 10_000, "10000 x 10000 = 100000000 pixels"),  # the service's check on the header
    (100_000, 100_000, "10000000000 pixels"),  # over twice Pillow's limit: stopped in Image.open
])
def test_too_many_pixels_says_how_many_and_the_limit(width: int, height: int, count: str) -> None:
    error = _refused(_claiming(width, height), Settings(_env_file=None))
    assert error.status == 413 and count in error.detail and "limit of 25000000" in error.detail, error.detail


def test_pillows_limit_never_refuses_what_the_setting_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # far below a 64 x 64 image (4096 pixels)
    image = decode(_encoded(_frames(1), "PNG"), "q.png", Settings(max_image_pixels=5000, _env_file=None), WHITE)
    assert image.shape == (64, 64, 3) and Image.MAX_IMAGE_PIXELS == 5000
    error = _refused(_encoded(_frames(1, side=80), "PNG"), Settings(max_image_pixels=5000, _env_file=None))
    assert error.status == 413 and "80 x 80 = 6400 pixels" in error.detail  # the setting's check, not Pillow's


def test_pillows_limit_is_never_lowered() -> None:
    before = Image.MAX_IMAGE_PIXELS
    decode(_encoded(_frames(1), "PNG"), "q.png", Settings(max_image_pixels=5000, _env_file=None), WHITE)
    assert Image.MAX_IMAGE_PIXELS == before  # the process's other images (a bundle's) are read under it too


# ------------------------------------------------------------ frames


@pytest.mark.parametrize("format", ["TIFF", "PNG", "WEBP"])  # multi-page TIFF, APNG, animated WebP
def test_an_image_of_several_frames_is_refused(format: str) -> None:
    """Only the first frame used to be scored, without a word."""
    error = _refused(_encoded(_frames(3), format), Settings(_env_file=None))
    count = "several" if format == "TIFF" else "3"
    assert error.status == 422 and f"has {count} frames; send one photograph per file" in error.detail, error.detail


def test_a_tiff_of_many_pages_is_refused_without_walking_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's page count walks every page of a TIFF, each against the list of pages seen:
    a 10 MB file of 80 000 chained headers held a decoding slot for a minute. Refused from
    its first header now."""
    one = _encoded(_frames(1), "TIFF")
    assert one[:4] == b"II*\x00"
    first = int.from_bytes(one[4:8], "little")  # offset of the first page's header (IFD)
    count = int.from_bytes(one[first:first + 2], "little")
    ifd = one[first:first + 2 + 12 * count]  # its entries, whose offsets stay valid in every copy
    pages, body = 80_000, bytearray(one)
    link = first + 2 + 12 * count  # where a header names the next one
    for _ in range(pages):
        body[link:link + 4] = len(body).to_bytes(4, "little")
        link = len(body) + len(ifd)
        body += ifd + bytes(4)  # the last names none
    assert len(body) < Settings(_env_file=None).max_upload_bytes
    from PIL import TiffImagePlugin

    seeks, seek = [], TiffImagePlugin.TiffImageFile._seek

    def counted(self, frame, *args, **kwargs):  # Pillow reads a page's header in _seek
        seeks.append(frame)
        return seek(self, frame, *args, **kwargs)

    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "_seek", counted)
    error = _refused(bytes(body), Settings(_env_file=None))
    assert error.status == 422 and "TIFF image has several frames" in error.detail, error.detail
    assert len(seeks) <= 2, f"{len(seeks)} pages read"  # the first page, and at most the link to the next


def test_an_mpo_is_read_by_its_first_frame() -> None:
    """A phone's JPEG (MPO: the photograph, then a preview or a depth map) stays accepted."""
    frames = _frames(2)
    data = _encoded(frames, "MPO", quality=95)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "MPO" and image.n_frames == 2
    image = decode(data, "q.jpg", Settings(_env_file=None), WHITE)
    assert np.abs(image * 255 - frames[0]).mean() < np.abs(image * 255 - frames[1]).mean()


@pytest.mark.parametrize("format", ["TIFF", "PNG", "WEBP"])
def test_one_frame_of_each_format_is_read(format: str) -> None:
    assert decode(_encoded(_frames(1), format), "q", Settings(_env_file=None), WHITE).shape == (64, 64, 3)


# ------------------------------------------------------------ size limits at their bounds


def test_the_shorter_side_is_the_one_checked() -> None:
    settings = Settings(_env_file=None, min_image_side=16)
    error = _refused(_encoded([(RNG.random((8, 64, 3)) * 255).astype(np.uint8)], "PNG"), settings)
    assert error.status == 422 and "64 x 8 is too small (at least 16 px a side)" in error.detail
    assert decode(_encoded(_frames(1, side=16), "PNG"), "q.png", settings, WHITE).shape == (16, 16, 3)


def test_an_upload_of_exactly_the_limit_is_read_and_one_byte_more_is_not() -> None:
    import asyncio

    from starlette.datastructures import UploadFile

    from service.uploads import read_limited

    data = bytes(range(256)) * 300  # over one read's chunk

    def read(size: int) -> bytes:
        return asyncio.run(read_limited(UploadFile(io.BytesIO(data[:size]), filename="q.png"), len(data) - 1))

    assert read(len(data) - 1) == data[:-1]
    with pytest.raises(ServiceError) as info:
        read(len(data))
    assert info.value.status == 413 and f"larger than {len(data) - 1} bytes" in info.value.detail
