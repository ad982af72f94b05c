"""Synthetic defects of the three MAD kinds, painted on a normal photograph with an exact mask.

The self-check (``training/selfcheck.py``) paints them on training photographs held out of
the calibration model's fit, so it can tell how well a bundle finds defects on the
customer's own object from normal photographs alone. Each painter takes an RGB float image
``[H, W, 3]`` in [0, 1] of the object on its uniform ``background`` and returns the defective
image and the mask of the pixels it changed (``True`` = defect).

Sizes are stated as fractions of the image width, so they mean the same at any resolution.
They were fixed from the MAD papers' description of the defect kinds (small, local, on the
object) before any self-check figure was seen, not fitted to a test set:

- ``stain``: an ellipse on the object (diameter 4-8 % of the width), a colour change with
  the shape intact, of one of two kinds, with equal odds: *paint*, blended towards a random
  colour (strength 0.45-0.85), or a *translucent film* (session 15, after Lego's real stain
  measured as one: docs/RESULTS.md), feathered over the ellipse's outer third, which
  multiplies the photograph by a transmittance ``1 - a (1 - tint)`` (``tint`` a random colour,
  ``a`` in [0.2, 0.6]), so the structure under it shows through. A stain is redrawn until
  it can be seen: the mean per-pixel colour difference inside its mask, painted against
  clean, is at least ``STAIN_MIN_DELTA_E`` = 10 CIE76 Delta E*ab (session 17; a dark film
  over black tracks, or paint of about the colour beneath, is no defect an inspector
  would label: docs/RESULTS.md);
- ``burr``: 2-4 thin strokes (1-2 px at 200 px, 5-15 % of the width long) growing out of
  the silhouette's border into the background, in a colour taken from the object: a thin
  protrusion that changes the outline;
- ``missing``: a disc at the silhouette's border (diameter 5-9 % of the width) replaced by
  the background: a chunk of the object gone (what would show behind it is taken to be the
  background, the one simplification).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from models.images import to_lab

KINDS = ("stain", "burr", "missing")
MIN_PIXELS = 4  # a painted defect must change at least this many pixels
STAIN_MIN_DELTA_E = 10.0  # a stain's mean CIE76 colour difference inside its mask (visible at a glance)
TRIES = {"stain": 50, "burr": 10, "missing": 10}  # draws before ``paint`` gives up


def delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel CIE76 colour difference (Delta E*ab, D65) of two RGB images ``[..., 3]`` in [0, 1]."""
    return np.linalg.norm(to_lab(a) - to_lab(b), axis=-1)


def foreground(image: np.ndarray, background: tuple[float, float, float], tol: float = 0.05) -> np.ndarray:
    """The object's pixels [H, W] bool: those differing from the background by more than ``tol``."""
    return np.abs(image - np.asarray(background, dtype=np.float32)).max(-1) > tol


def _border(image: np.ndarray, background, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The object's mask [H, W] and the pixels on its silhouette's border [N, 2] as (y, x)."""
    fg = foreground(image, background)
    eroded = cv2.erode(fg.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    border = np.argwhere(fg & ~eroded)
    if len(border) == 0:
        raise ValueError(f"no silhouette to {what}")
    return fg, border


def stain(image: np.ndarray, background, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    fg = foreground(image, background)
    inner = np.argwhere(cv2.erode(fg.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool))
    if len(inner) == 0:
        raise ValueError("no object to stain")
    cy, cx = inner[rng.integers(len(inner))]
    axes = (max(1, int(rng.uniform(0.02, 0.04) * w)), max(1, int(rng.uniform(0.02, 0.04) * w)))
    blob = np.zeros((h, w), np.uint8)
    cv2.ellipse(blob, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    mask = blob.astype(bool) & fg
    colour = rng.uniform(0, 1, 3).astype(np.float32)
    out = image.copy()
    if rng.random() < 0.5:  # paint
        strength = rng.uniform(0.45, 0.85)
        out[mask] = (1 - strength) * image[mask] + strength * colour
        return out, mask & (np.abs(out - image).max(-1) > 1e-3)
    # A translucent film: full strength inside, falling to 0 over the ellipse's outer third.
    inside = cv2.distanceTransform(blob, cv2.DIST_L2, 3)
    weight = np.clip(inside / max(1.0, min(axes) / 3), 0.0, 1.0)[mask, None]
    a = rng.uniform(0.2, 0.6)
    out[mask] = image[mask] * (1 - a * weight * (1 - colour))
    return out, mask & (np.abs(out - image).max(-1) > 2 / 255)


def burr(image: np.ndarray, background, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    fg, border = _border(image, background, "grow burrs from")
    centre = np.argwhere(fg).mean(0)
    canvas = (image * 255).round().astype(np.uint8)
    drawn = np.zeros((h, w), np.uint8)
    thickness = max(1, round(w / 200 * rng.choice([1, 2])))
    obj = image[fg]
    for _ in range(int(rng.integers(2, 5))):
        y, x = border[rng.integers(len(border))]
        outward = np.array([y, x], float) - centre
        angle = np.arctan2(outward[0], outward[1]) + rng.uniform(-0.6, 0.6)
        length = rng.uniform(0.05, 0.15) * w
        end = (int(round(x + length * np.cos(angle))), int(round(y + length * np.sin(angle))))
        colour = tuple(int(c) for c in (obj[rng.integers(len(obj))] * 255).round())
        cv2.line(canvas, (int(x), int(y)), end, colour, thickness, cv2.LINE_AA)
        cv2.line(drawn, (int(x), int(y)), end, 1, thickness + 1, cv2.LINE_8)
    out = canvas.astype(np.float32) / 255.0
    return out, drawn.astype(bool) & (np.abs(out - image).max(-1) > 2 / 255)


def missing(image: np.ndarray, background, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    fg, border = _border(image, background, "cut from")
    y, x = border[rng.integers(len(border))]
    disc = np.zeros((h, w), np.uint8)
    cv2.circle(disc, (int(x), int(y)), max(1, int(rng.uniform(0.025, 0.045) * w)), 1, -1)
    mask = disc.astype(bool) & fg
    out = image.copy()
    out[mask] = np.asarray(background, dtype=np.float32)
    return out, mask


PAINTERS: dict[str, Callable] = {"stain": stain, "burr": burr, "missing": missing}


def visible(kind: str, image: np.ndarray, out: np.ndarray, mask: np.ndarray) -> bool:
    """Whether a painted defect counts: it changes at least ``MIN_PIXELS`` pixels and, for a
    stain, differs from the clean photograph by ``STAIN_MIN_DELTA_E`` on average inside its mask."""
    if mask.sum() < MIN_PIXELS:
        return False
    return kind != "stain" or float(delta_e(out[mask], image[mask]).mean()) >= STAIN_MIN_DELTA_E


def paint(image: np.ndarray, kind: str, background, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with one defect of ``kind`` and its mask; retried (new draws, at most
    ``TRIES[kind]``) until the defect is ``visible`` (``ValueError`` if it never is)."""
    if kind not in PAINTERS:
        raise ValueError(f"unknown defect kind {kind!r}; choose from {list(KINDS)}")
    image = np.asarray(image, dtype=np.float32)
    for _ in range(TRIES[kind]):
        out, mask = PAINTERS[kind](image, background, rng)
        if visible(kind, image, out, mask):
            return out, mask
    detail = f" and differs by {STAIN_MIN_DELTA_E:g} Delta E on average" if kind == "stain" else ""
    raise ValueError(f"could not paint a {kind} that changes {MIN_PIXELS} pixels{detail} on this image")
