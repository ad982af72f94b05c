"""Object masks for photos on a plain background, and composites on the pipeline's white.

Method (documented in docs/DATA.md, "Onboarding from photographs"):

1. The background colour is the median of a strip along the photo's border (2 % of the
   short side, at least 2 px), in CIELAB.
2. Each pixel's colour distance to it (CIE76 delta E) is compared with a threshold: the
   larger of ``MIN_DELTA_E`` and 3x the border's own 95th-percentile distance (its noise).
3. Clean-up: components smaller than 0.05 % of the image are dropped, holes smaller than
   that are filled (gaps through the object, where the background shows, stay open).
4. Alpha: 1 inside the mask, ramping with the distance in a 2-px band around its edge (the
   anti-aliased rim), 0 elsewhere; the composite is ``alpha * photo + (1 - alpha) * white``.

A photo with transparency (an RGBA PNG cut out by another tool) needs none of this: its
alpha is the mask (``from_alpha``), so a dark part on a transparent black is never taken for
background.

A photo's background is "not plain" when the border's 95th-percentile distance exceeds
``PLAIN_DELTA_E`` (texture, gradient or clutter), and the object "touches the frame" when
more than ``MAX_BORDER_OBJECT`` of the border strip is object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from models.images import to_lab

MIN_DELTA_E = 4.0  # a pixel this close to the background colour is background (8-bit noise is ~1)
PLAIN_DELTA_E = 6.0  # the border's 95th-percentile spread above which a background is not plain
MAX_BORDER_OBJECT = 0.02  # fraction of the border strip that may be object before warning
MIN_PART = 5e-4  # components and holes smaller than this fraction of the image are cleaned up


@dataclass(frozen=True)
class Mask:
    alpha: np.ndarray  # [H, W] float32 in [0, 1]
    background: tuple[float, float, float]  # sRGB in [0, 1]
    border_spread: float  # 95th-percentile delta E of the border strip from the background colour
    border_object: float  # fraction of the border strip inside the mask
    threshold: float  # delta E

    @property
    def binary(self) -> np.ndarray:
        return self.alpha >= 0.5

    @property
    def plain(self) -> bool:
        return self.border_spread <= PLAIN_DELTA_E

    @property
    def area(self) -> float:
        return float(self.binary.mean())


def border_strip(height: int, width: int) -> np.ndarray:
    """[H, W] bool, True on the strip along the image border."""
    band = max(2, round(0.02 * min(height, width)))
    strip = np.zeros((height, width), bool)
    strip[:band], strip[-band:], strip[:, :band], strip[:, -band:] = True, True, True, True
    return strip


def object_mask(rgb: np.ndarray) -> Mask:
    """The mask of the object in ``rgb`` ([H, W, 3] uint8) on a plain background."""
    lab = to_lab(rgb.astype(np.float32) / 255.0)
    strip = border_strip(*rgb.shape[:2])
    background_lab = np.median(lab[strip], axis=0)
    distance = np.linalg.norm(lab - background_lab, axis=-1)
    spread = float(np.percentile(distance[strip], 95))
    threshold = max(MIN_DELTA_E, 3.0 * spread)
    binary = distance > threshold
    min_size = MIN_PART * binary.size
    binary = _drop_small(binary, min_size)
    binary = ~_drop_small(~binary, min_size)  # fill small holes
    rim = ndimage.binary_dilation(binary, iterations=2) & ~ndimage.binary_erosion(binary, iterations=2)
    alpha = binary.astype(np.float32)
    alpha[rim] = np.clip(distance[rim] / (2.0 * threshold), 0.0, 1.0)
    background_rgb = np.median(rgb[strip].astype(np.float32) / 255.0, axis=0)
    return Mask(alpha, tuple(float(v) for v in background_rgb), spread, float(binary[strip].mean()), threshold)


def from_alpha(alpha: np.ndarray) -> Mask:
    """The mask a photo's own transparency gives (``alpha`` [H, W] in [0, 1]): exact, on a
    white background by construction (``training.prepare.photos``)."""
    alpha = np.clip(np.asarray(alpha, dtype=np.float32), 0.0, 1.0)
    strip = border_strip(*alpha.shape)
    return Mask(alpha, (1.0, 1.0, 1.0), 0.0, float((alpha[strip] >= 0.5).mean()), 0.0)


def _drop_small(mask: np.ndarray, min_size: float) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The photo on the pipeline's white background: [H, W, 3] uint8."""
    a = alpha[..., None].astype(np.float32)
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
