"""models.compression: what lossy encoding a photo carries, and the rule a bundle trained on
lossless photos applies to it."""
import io

import numpy as np
import pytest
from PIL import Image

from models.compression import MIN_QUALITY, Compression, compression_of, ijg_table, too_coarse

RNG = np.random.default_rng(0)
PHOTO = Image.fromarray((RNG.random((48, 64, 3)) * 255).astype(np.uint8))


def encoded(image: Image.Image = PHOTO, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, **save)
    return buf.getvalue()


@pytest.mark.parametrize("quality", [10, 50, 75, 85, 90, 95, 100])
def test_a_jpegs_quality_is_read_from_its_table(quality: int) -> None:
    found = compression_of(encoded(format="JPEG", quality=quality))
    assert found.format == "JPEG" and found.quality == quality


def test_the_ijg_table_at_50_is_the_standards() -> None:
    assert ijg_table(50)[:8].tolist() == [16, 11, 10, 16, 24, 40, 51, 61] and ijg_table(100).max() == 1


def test_chroma_subsampling_is_read_from_the_frame_header() -> None:
    names = [compression_of(encoded(format="JPEG", quality=95, subsampling=s)).chroma for s in (0, 1, 2)]
    assert names == ["4:4:4", "4:2:2", "4:2:0"]
    assert compression_of(encoded(PHOTO.convert("CMYK"), format="JPEG", quality=95)).chroma == "4:4:4"
    assert compression_of(encoded(PHOTO.convert("L"), format="JPEG", quality=95)).chroma == "4:4:4"


def test_lossless_files_and_non_images_carry_none() -> None:
    assert compression_of(encoded(format="PNG")) is None
    assert compression_of(encoded(format="TIFF")) is None
    assert compression_of(encoded(format="TIFF", compression="tiff_lzw")) is None
    # JPEG inside a TIFF is as lossy as a plain JPEG (it was taken as lossless, and judged)
    assert compression_of(encoded(format="TIFF", compression="jpeg", quality=10)) == Compression("TIFF with JPEG")
    assert too_coarse(Compression("TIFF with JPEG"), 4000, 400).startswith("it is TIFF with JPEG, lossy")
    assert compression_of(encoded(format="WEBP", lossless=True)) is None
    assert compression_of(encoded(format="WEBP", quality=90)) == Compression("WebP")
    assert compression_of(b"not an image") is None


def test_the_rule_for_a_bundle_trained_on_lossless_photos() -> None:
    """Measured on seed 1 (docs/RESULTS.md, session 33): quality 95 with full chroma is harmless at
    any size, subsampled chroma only from twice the bundle's width; anything coarser is refused."""
    assert too_coarse(None, 256, 200) == ""
    assert too_coarse(Compression("JPEG", MIN_QUALITY, "4:4:4"), 256, 200) == ""
    assert too_coarse(Compression("JPEG", 100, "4:2:0"), 400, 200) == ""
    assert "chroma is subsampled (4:2:0) at 256 px" in too_coarse(Compression("JPEG", 100, "4:2:0"), 256, 200)
    assert "coarser than JPEG quality 95" in too_coarse(Compression("JPEG", 90, "4:4:4"), 4000, 200)
    # No quality to read: not trusted, said as it is (a quality-98 TIFF was "coarser than 95").
    for unread in (Compression("JPEG", None, "4:4:4"), Compression("WebP"), Compression("TIFF with JPEG")):
        for measured in ((None, None), ([(90, "4:4:4")], 100)):
            assert "its quality cannot be read from the file" in too_coarse(unread, 4000, 200, measured)


def test_a_category_knows_whether_its_photos_were_lossy(tmp_path) -> None:
    """From the training files' own encoding, or from what ``rpe-pad prepare`` wrote (its PNGs
    carry the compression of the photos they were made from); the bundle's camera records it."""
    import json
    import shutil
    from pathlib import Path

    from models.data import load_category

    lego = Path(__file__).parents[1] / "data" / "Lego"
    assert not load_category(lego, size=32, load_test=False).lossy_photos
    copy = shutil.copytree(lego, tmp_path / "Lego")
    first = sorted((copy / "train" / "good").glob("*.png"))[0]
    first.write_bytes(encoded(Image.open(first).convert("RGB"), format="JPEG", quality=90))  # one JPEG among PNGs
    assert load_category(copy, size=32, load_test=False).lossy_photos
    transforms = json.loads((copy / "train" / "transforms.json").read_text())
    transforms["camera"] = {"lossy": False}  # what prepare wrote wins over the files
    (copy / "train" / "transforms.json").write_text(json.dumps(transforms))
    assert not load_category(copy, size=32, load_test=False).lossy_photos


def test_a_bundles_own_measurement_decides() -> None:
    """A calibration that judged its held-out photos (400 px) as before at quality 100 and 95
    with full chroma (training/calibrate.py ``jpeg_tolerance``) takes a JPEG at least as fine as
    one of those and at least as wide, and refuses the rest, the fixed rule notwithstanding."""
    measured = ([(100, "4:4:4"), (95, "4:4:4")], 400)
    assert too_coarse(Compression("JPEG", 97, "4:4:4"), 400, 200, measured) == ""
    assert too_coarse(Compression("JPEG", 95, "4:4:4"), 4000, 200, measured) == ""
    assert "coarser than what the bundle's calibration took (quality 100 4:4:4, quality 95 4:4:4)" in too_coarse(
        Compression("JPEG", 95, "4:2:0"), 400, 200, measured)  # the fixed rule would take it at 2 x
    assert "under the 400 px" in too_coarse(Compression("JPEG", 100, "4:4:4"), 256, 200, measured)
    assert "its quality cannot be read" in too_coarse(Compression("WebP"), 400, 200, measured)
    subsampled = ([(95, "4:4:4"), (95, "4:2:0"), (85, "4:2:0")], 400)
    assert too_coarse(Compression("JPEG", 90, "4:2:2"), 400, 200, subsampled) == ""  # finer chroma than a step taken
    assert "no JPEG setting" in too_coarse(Compression("JPEG", 100, "4:4:4"), 400, 200, ([], 400))


def test_an_unknown_chroma_layout_counts_as_the_coarsest() -> None:
    odd = Compression("JPEG", 100, "subsampled")  # e.g. 4:1:1, which _chroma names "subsampled"
    measured = ([(95, "4:4:4"), (95, "4:2:0")], 400)
    assert "coarser than what the bundle's calibration took" in too_coarse(odd, 400, 200, measured)
    assert "chroma is subsampled (subsampled) at 256 px" in too_coarse(odd, 256, 200)
    assert "chroma is subsampled (unknown) at 256 px" in too_coarse(Compression("JPEG", 100, ""), 256, 200)
