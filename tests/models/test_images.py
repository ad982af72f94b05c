"""Every image mode the data layer and the service may meet becomes RGB float in [0, 1]."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from models.images import decode_rgb, resize_mask, resize_rgb, to_rgb_float


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def test_rgba_composited_onto_background() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = [255, 0, 0, 255]  # opaque red
    rgba[0, 1] = [255, 0, 0, 0]  # fully transparent
    rgba[1, 0] = [0, 0, 0, 128]  # half-transparent black
    out = decode_rgb(_png_bytes(Image.fromarray(rgba, "RGBA")), background=(1.0, 1.0, 1.0))
    np.testing.assert_allclose(out[0, 0], [1, 0, 0])
    np.testing.assert_allclose(out[0, 1], [1, 1, 1])
    np.testing.assert_allclose(out[1, 0], [1 - 128 / 255] * 3, atol=1e-6)
    black_bg = decode_rgb(_png_bytes(Image.fromarray(rgba, "RGBA")), background=(0.0, 0.0, 0.0))
    np.testing.assert_allclose(black_bg[0, 1], [0, 0, 0])


def test_grey_palette_and_16_bit() -> None:
    grey = Image.fromarray(np.array([[0, 255]], np.uint8), "L")
    np.testing.assert_allclose(decode_rgb(_png_bytes(grey))[0], [[0, 0, 0], [1, 1, 1]])

    pal = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    pal.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    np.testing.assert_allclose(decode_rgb(_png_bytes(pal))[0], [[0, 0, 1], [0, 1, 0]])

    pal_t = pal.copy()
    pal_t.info["transparency"] = 0  # palette index 0 transparent -> background
    np.testing.assert_allclose(decode_rgb(_png_bytes(pal_t, transparency=0))[0, 0], [1, 1, 1])

    sixteen = Image.fromarray(np.array([[0, 32768, 65535]], np.uint16))
    out = decode_rgb(_png_bytes(sixteen))
    np.testing.assert_allclose(out[0, :, 0], [0.0, 32768 / 65535, 1.0], atol=1e-6)
    assert out.dtype == np.float32 and out.shape == (1, 3, 3)


def test_cmyk_and_exif_rotation() -> None:
    cmyk = Image.new("CMYK", (3, 2), (0, 255, 255, 0))  # red in CMYK
    np.testing.assert_allclose(to_rgb_float(cmyk)[0, 0], [1, 0, 0], atol=1e-6)

    wide = Image.new("RGB", (4, 2), (10, 20, 30))
    exif = wide.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    wide.save(buf, format="JPEG", exif=exif.tobytes())
    assert decode_rgb(buf.getvalue()).shape == (4, 2, 3)


def test_resize() -> None:
    image = np.zeros((8, 8, 3), np.float32)
    image[:, 4:] = 1.0
    small = resize_rgb(image, 4, 4)
    assert small.shape == (4, 4, 3)
    np.testing.assert_allclose(small[:, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(small[:, 3], 1.0, atol=1e-6)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    assert resize_mask(mask, 4, 4).sum() == 4


def test_garbage_raises() -> None:
    with pytest.raises(UnidentifiedImageError):
        decode_rgb(b"not an image")
