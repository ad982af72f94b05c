"""What lossy compression a photograph carries, read from its encoded bytes (headers only), and
whether a bundle trained on lossless photographs can judge it.

The scorer compares a query with a render to the last few grey levels and the colour's
chroma, and its levels were set on the training photographs. JPEG's compression error reads
as residue: on seed 1's normal views, quality 85 with 4:2:0 chroma at 256 px rejected 10 of
10 good parts where the PNGs rejected none (docs/RESULTS.md, session 33). So a bundle trained
on lossless photographs refuses a query whose compression is coarser than what its own
calibration found harmless on its held-out photos (``too_coarse``; bundles calibrated before
session 33: a fixed rule measured on seed 1), with the reason and what to send instead.

- A JPEG's quality is estimated from its luminance quantization table: the IJG quality
  (libjpeg's scaling of the standard table of ITU-T T.81 Annex K) whose table is nearest.
  Encoders with tables of their own get the nearest IJG quality, an estimate.
- Its chroma subsampling comes from the frame header: the components' sampling factors.
- A WebP is lossy when its RIFF holds a ``VP8 `` chunk (lossless WebP holds ``VP8L``).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, JpegImagePlugin

# ITU-T T.81 Annex K, Table K.1: the luminance quantization table, row by row.
_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
                  14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
                  18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                  49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
_SAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
_COARSENESS = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}  # chroma subsampling, finest first; others (unknown) after

MIN_QUALITY = 95  # JPEG quality at least this, else refused by a bundle trained on lossless photos
MIN_SUBSAMPLED_SCALE = 2.0  # subsampled chroma: the photo at least this many times the bundle's width


def ijg_table(quality: int) -> np.ndarray:
    """The luminance table libjpeg writes at ``quality`` (1-100), baseline (entries 1-255)."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return np.clip((_LUMA * scale + 50) // 100, 1, 255)


_TABLES = np.stack([ijg_table(q) for q in range(1, 101)])


@dataclass(frozen=True)
class Compression:
    """A lossy encoding: ``format`` (JPEG, WebP, TIFF with JPEG ...), the estimated ``quality`` (JPEG; None for
    WebP, whose bytes do not say) and the ``chroma`` subsampling (JPEG; "" when unknown)."""

    format: str
    quality: int | None = None
    chroma: str = ""

    def describe(self) -> str:
        parts = [f"quality about {self.quality}" if self.quality is not None else "lossy", self.chroma]
        return f"{self.format} ({', '.join(p for p in parts if p)})"


def jpeg_quality(image: JpegImagePlugin.JpegImageFile) -> int | None:
    """The IJG quality whose luminance table is nearest the image's (None without tables)."""
    tables = getattr(image, "quantization", None) or {}
    if 0 not in tables or len(tables[0]) != 64:
        return None
    table = np.asarray(list(tables[0]), dtype=np.int64)
    return int(np.abs(_TABLES - table).sum(1).argmin()) + 1


def _chroma(image: JpegImagePlugin.JpegImageFile) -> str:
    """"4:4:4" when every component is sampled alike (CMYK too), else the subsampling's name
    ("4:2:0", "4:2:2", or "subsampled" for other layouts)."""
    factors = {(h, v) for _, h, v, _ in getattr(image, "layer", None) or []}
    if len(factors) <= 1:
        return "4:4:4" if factors else ""
    return _SAMPLING.get(JpegImagePlugin.get_sampling(image), "subsampled")


def _webp_lossy(data: bytes) -> bool:
    """Whether a WebP's RIFF chunks hold lossy image data (``VP8 ``), walking the chunk list."""
    pos = 12
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if tag == b"VP8 ":
            return True
        if tag == b"VP8L":
            return False
        pos += 8 + size + (size & 1)
    return False


def compression_of(data: bytes) -> Compression | None:
    """The lossy compression of an encoded photo, or None (lossless, or unreadable: decoding
    reports those). Reads headers only."""
    try:
        image = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - not an image: the decoder names the problem
        return None
    if image.format in ("JPEG", "MPO"):
        return Compression("JPEG", jpeg_quality(image), _chroma(image))
    if image.format == "WEBP" and _webp_lossy(data):
        return Compression("WebP")
    if image.format == "TIFF":  # a TIFF's strips may hold JPEG (or another lossy codec's) data
        codec = TIFF_LOSSY.get(getattr(image, "tag_v2", {}).get(TIFF_COMPRESSION))
        if codec is not None:
            return Compression(f"TIFF with {codec}")
    return None


TIFF_COMPRESSION = 259  # the TIFF tag naming the codec of the image data
# The lossy codes of that tag (the TIFF 6.0 and Adobe DNG specifications, libtiff's tiff.h): a
# photo so stored has the same block artefacts as the plain format, whatever its container.
TIFF_LOSSY = {6: "JPEG", 7: "JPEG", 34892: "JPEG", 33003: "JPEG 2000", 33005: "JPEG 2000", 34712: "JPEG 2000",
              50001: "WebP"}


def too_coarse(compression: Compression | None, width: int, bundle_width: int,
               measured: tuple[list[tuple[int, str]] | None, int | None] = (None, None)) -> str:
    """Why a bundle trained on lossless photos at ``bundle_width`` cannot judge a photo
    ``width`` pixels wide with ``compression``, or "" when it can.

    With ``measured`` (the calibration's ``jpeg_taken`` and ``jpeg_photo_width``: the JPEG
    settings its own held-out photos were judged at without more false alarms,
    training/calibrate.py), that measurement decides: a JPEG at least as wide as those photos
    and at least as fine as one setting taken (its quality at least that one's, and its chroma
    full or that one's subsampled) is taken, any other lossy photo refused. Without it (bundles
    calibrated before session 33), the fixed rule measured on seed 1 (docs/RESULTS.md, session
    33): JPEG at quality ``MIN_QUALITY`` or more, with full chroma or at least
    ``MIN_SUBSAMPLED_SCALE`` times the bundle's width."""
    if compression is None:
        return ""
    if compression.format != "JPEG" or compression.quality is None:
        return (f"it is {compression.format}, lossy, and its quality cannot be read from the file, so no bundle "
                "setting can vouch for it")
    taken, photo_width = measured
    if taken is not None and photo_width is not None:
        if not taken:
            return "its calibration found no JPEG setting that left its false alarms as they were"
        finest_needed = ", ".join(f"quality {q} {c}" for q, c in taken)
        if width < photo_width:
            return f"it is {width} px wide, under the {photo_width} px of the photos the bundle's calibration measured"
        if not any(compression.quality >= q and _COARSENESS.get(compression.chroma, 3) <= _COARSENESS[c] for q, c in taken):
            return f"it is coarser than what the bundle's calibration took ({finest_needed})"
        return ""
    if compression.quality >= MIN_QUALITY:
        if compression.chroma == "4:4:4" or width >= MIN_SUBSAMPLED_SCALE * bundle_width:
            return ""
        return (f"its chroma is subsampled ({compression.chroma or 'unknown'}) at {width} px wide, under "
                f"{MIN_SUBSAMPLED_SCALE:g} x the bundle's {bundle_width} px")
    return f"its compression is coarser than JPEG quality {MIN_QUALITY}"
