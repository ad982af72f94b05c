"""Every image mode the data layer and the service may meet becomes RGB float in [0, 1]."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from models.images import (
    FORMATS,
    MAX_IMAGE_PIXELS,
    ImageRefused,
    decode_rgb,
    greyscale_file,
    has_colour,
    load_rgb,
    open_image,
    resize_mask,
    resize_rgb,
    to_rgb_float,
)
from tests import hostile


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


def test_undistort_moves_a_point_where_the_radial_model_says() -> None:
    """COLMAP's radial model (OpenCV's k1): a point seen at ``x_u (1 + k r_u^2)`` in normalised
    coordinates comes back to ``x_u``; pixel centres at +0.5 (models/camera.py)."""
    from models.images import undistort

    K = np.array([[100.0, 0, 50.0], [0, 100.0, 50.0], [0, 0, 1]])
    k = -0.2
    x_u = (80.5 - 50.0) / 100.0  # the undistorted point: pixel column 80, row 50
    u_d = 50.0 + 100.0 * x_u * (1 + k * x_u**2)  # where the lens puts it
    cols = np.arange(100) + 0.5
    blob = np.exp(-((cols[None, :] - u_d) ** 2 + (cols[:, None] - 50.5) ** 2) / (2 * 0.8**2)).astype(np.float32)
    out = undistort(np.repeat(blob[..., None], 3, axis=-1), K, [k])
    row, col = np.unravel_index(np.argmax(out[..., 0]), out.shape[:2])
    assert (row, col) == (50, 80) and int(np.argmax(blob[50])) == 79
    mask = blob > 0.5
    assert undistort(mask, K, [k], nearest=True).dtype == bool


def test_exif_camera_names_make_and_model(tmp_path) -> None:
    import io

    from PIL import Image

    from models.images import exif_camera_of

    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Acme", "C1"  # Make, Model
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG", exif=exif)
    assert exif_camera_of(buf.getvalue()) == "Acme C1"
    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, format="PNG")
    assert exif_camera_of(plain.getvalue()) is None and exif_camera_of(b"not an image") is None


def test_greyscale_files_and_colour_photos_told_apart() -> None:
    rng = np.random.default_rng(0)
    colour = rng.random((64, 64, 3)).astype(np.float32)
    grey = Image.fromarray((colour.mean(axis=2) * 255).astype(np.uint8))
    assert greyscale_file(_png_bytes(grey)) and greyscale_file(_png_bytes(grey.convert("LA")))
    assert greyscale_file(_png_bytes(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)))  # 16-bit
    assert not greyscale_file(_png_bytes(grey.convert("RGB")))  # a colour file of a grey picture: not refused
    assert not greyscale_file(b"not an image")
    # Photos of a grey part (noise, white balance: a few levels of chroma) are not colour photos.
    part = (np.repeat(rng.integers(60, 200, (4, 32, 32, 1)), 3, axis=3) + rng.integers(-4, 5, (4, 32, 32, 3)))
    assert not has_colour(part.clip(0, 255).astype(np.uint8))
    assert has_colour((colour * 255).astype(np.uint8)[None]) and not has_colour(np.zeros((0, 8, 8, 3), np.uint8))


@pytest.mark.parametrize("make, declared", [
    (lambda: hostile.png_bomb(20_000, 20_000), "400000000 pixels"),  # over Pillow's own limit: refused in open
    (lambda: hostile.bmp_bomb(20_000, 20_000), "400000000 pixels"),
    (lambda: hostile.jpeg_bomb(65_500, 65_500), "4290250000 pixels"),
    (lambda: hostile.png_bomb(6_000, 5_000), "6000 x 5000 pixels"),  # under Pillow's, over the product's
    (lambda: hostile.png_bomb(10_000, 8_000), "10000 x 8000 pixels"),  # between Pillow's warning and its error
])
def test_a_header_that_claims_too_many_pixels_is_refused_before_decoding(
        make, declared: str, tmp_path, recwarn: pytest.WarningsRecorder) -> None:
    """Decompression bombs: a few bytes whose header claims gigapixels. ``load_rgb`` (the
    command line's and the data layer's reader) refuses them from the header, with the count and
    the limit, as a ValueError (``ImageRefused``), not Pillow's DecompressionBombError, and
    without Pillow's warning on the way."""
    path = tmp_path / "bomb.img"
    path.write_bytes(make())
    with pytest.raises(ImageRefused, match=f"declares {declared}, more than the {MAX_IMAGE_PIXELS} an image may"):
        load_rgb(path)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    if " x " in declared:  # under Pillow's own error: a larger limit lets the header through
        with open_image(path, max_pixels=10**12) as image:
            assert image.width * image.height > MAX_IMAGE_PIXELS
    else:  # Pillow's error, at twice its own limit, still stands, and is the limit named
        with pytest.raises(ImageRefused, match=f"more than the {2 * Image.MAX_IMAGE_PIXELS} an image"), \
                open_image(path, max_pixels=10**12):
            pass
    assert MAX_IMAGE_PIXELS == 25_000_000  # the service's default (RPEPAD_MAX_IMAGE_PIXELS): one limit


def test_the_formats_and_frames_the_service_takes(tmp_path) -> None:
    """``FORMATS`` (the service's 415 list): an icon, a GIF (still or animated), an animated PNG
    and a multi-page TIFF are refused; one-frame TIFF and WebP are read, and an MPO (a phone's
    JPEG with its preview frames) by its first frame."""
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "icon.ico")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "still.gif")
    hostile.frames(tmp_path / "anim.gif", "GIF")
    hostile.frames(tmp_path / "anim.png", "PNG")
    hostile.frames(tmp_path / "pages.tiff", "TIFF")
    refused = {"icon.ico": "format ICO is not read", "still.gif": "format GIF is not read",
               "anim.gif": "format GIF is not read", "anim.png": "a PNG of 3 frames",
               "pages.tiff": "a TIFF of several frames"}
    for name, message in refused.items():
        with pytest.raises(ImageRefused, match=message):
            load_rgb(tmp_path / name)
    hostile.frames(tmp_path / "one.tiff", "TIFF", count=1)
    hostile.frames(tmp_path / "one.webp", "WEBP", count=1)
    hostile.frames(tmp_path / "phone.jpg", "MPO", count=2)
    assert Image.open(tmp_path / "phone.jpg").format == "MPO"
    for name in ("one.tiff", "one.webp", "phone.jpg"):
        assert load_rgb(tmp_path / name).shape == (64, 64, 3)
    np.testing.assert_allclose(load_rgb(tmp_path / "phone.jpg")[32, 32], [0, 120 / 255, 200 / 255], atol=0.03)
    assert FORMATS == {"PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF"}


def test_fuzzed_files_raise_what_the_readers_catch() -> None:
    """Pillow raises TypeError on some fuzzed TIFFs as it loads them: ``load_rgb`` makes it a
    ValueError, which the command line reports in one line (and the data layer as a DataError)."""
    from pathlib import Path

    hostile_files = Path(__file__).parents[1] / "data" / "hostile"
    with pytest.raises(ValueError, match=r"cannot decode the image \(TypeError: "):
        load_rgb(hostile_files / "strip_offsets_text.tiff")
    for name in ("exif_orientation_type.jpg", "exif_struct.jpg"):
        with pytest.raises(ValueError, match="its EXIF orientation cannot be read"):
            load_rgb(hostile_files / name)
