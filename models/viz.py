"""Pictures for people: contact sheets, mask and anomaly-map overlays.

PIL, OpenCV for contours and matplotlib's colour maps only (no plotting backend)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from models.images import to_uint8

MASK_COLOUR = (1.0, 0.1, 0.1)


@dataclass
class Cell:
    image: np.ndarray  # [H, W, 3] float in [0, 1] or [H, W] bool/float
    caption: str = ""


def mask_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45, colour=MASK_COLOUR) -> np.ndarray:
    """Tint the masked pixels of ``image`` [H, W, 3] (red by default; ``alpha`` 0: no tint) and
    outline the mask's border."""
    out = image.astype(np.float32).copy()
    mask = mask.astype(bool)
    colour = np.asarray(colour, dtype=np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * colour
    border = mask & ~_erode(mask)
    out[border] = colour
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, constant_values=False)
    out = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out &= padded[1 + dy : 1 + dy + mask.shape[0], 1 + dx : 1 + dx + mask.shape[1]]
    return out


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image.astype(np.float32)[..., None], 3, axis=-1)
    return image


def contact_sheet(rows: Sequence[tuple[str, Sequence[Cell]]], cell: int = 160, title: str = "",
                  label_width: int = 110) -> Image.Image:
    """A grid of captioned images, one labelled row per entry of ``rows``."""
    font = ImageFont.load_default()
    label_w, caption_h, title_h = label_width, 16, 22 if title else 0
    n_cols = max((len(cells) for _, cells in rows), default=1)
    sheet = Image.new("RGB", (label_w + n_cols * (cell + 4), title_h + len(rows) * (cell + caption_h + 6)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((6, 4), title, fill=(0, 0, 0), font=font)
    for r, (label, cells) in enumerate(rows):
        y = title_h + r * (cell + caption_h + 6)
        draw.text((6, y + cell // 2), label, fill=(0, 0, 0), font=font)
        for c, item in enumerate(cells):
            x = label_w + c * (cell + 4)
            thumb = Image.fromarray(to_uint8(_as_rgb(item.image)))
            scale = cell / max(thumb.width, thumb.height)
            size = (max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale)))
            thumb = thumb.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST)
            sheet.paste(thumb, (x, y))
            draw.rectangle([x, y, x + thumb.width - 1, y + thumb.height - 1], outline=(200, 200, 200))
            if item.caption:
                draw.text((x + 2, y + cell + 2), item.caption[: max(8, cell // 6)], fill=(40, 40, 40), font=font)
    return sheet


def heat(values: np.ndarray, vmax: float = 1.0) -> np.ndarray:
    """Colour-map a [H, W] map to RGB [H, W, 3] with a fixed scale (0 .. vmax), jet."""
    return matplotlib.colormaps["jet"](np.clip(np.asarray(values) / max(vmax, 1e-12), 0, 1))[..., :3].astype(np.float32)


def decision_contour(image: np.ndarray, mask: np.ndarray, colour=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Draw the outline of a boolean decision ``mask`` [H, W] on ``image`` [H, W, 3]."""
    out = np.ascontiguousarray(image, dtype=np.float32).copy()
    contours, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(mask.shape) / 200))
    # A dark rim under the line, so a white contour shows on the white background too.
    cv2.drawContours(out, contours, -1, tuple(0.15 * float(c) for c in colour), thickness=thickness + 2)
    cv2.drawContours(out, contours, -1, tuple(float(c) for c in colour), thickness=thickness)
    return out


def peak_ring(image: np.ndarray, yx: Sequence[int], colour=(1.0, 1.0, 1.0)) -> np.ndarray:
    """A ring around pixel ``yx`` (row, column) of ``image`` [H, W, 3], radius a twelfth of its
    larger side, drawn like ``decision_contour`` (a dark rim under the line): points a reader
    at a small peak on a whole view."""
    out = np.ascontiguousarray(image, dtype=np.float32).copy()
    size = max(out.shape[:2])
    radius, thickness = max(3, round(size / 12)), max(1, round(size / 200))
    centre = (int(yx[1]), int(yx[0]))
    cv2.circle(out, centre, radius, tuple(0.15 * float(c) for c in colour), thickness=thickness + 2)
    cv2.circle(out, centre, radius, tuple(float(c) for c in colour), thickness=thickness)
    return out


def anomaly_overlay(image: np.ndarray, norm_map: np.ndarray, alpha: float = 0.5, level: float = 0.5) -> np.ndarray:
    """A normalised anomaly map [H, W] in [0, 1] colour-mapped over the query [H, W, 3]
    (transparent at 0, ``alpha`` from the threshold ``level`` up), with the contour of the decision mask (``norm_map > level``) drawn in white."""
    norm_map = np.asarray(norm_map, dtype=np.float32)
    # Opacity grows with the map up to the threshold: quiet regions show the query as is.
    weight = alpha * np.clip(norm_map / level, 0.0, 1.0)[..., None]
    blended = (1 - weight) * np.asarray(image, dtype=np.float32) + weight * heat(norm_map)
    return decision_contour(blended, norm_map > level)


def figure(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, without an exponent (a score of 0.66 reads
    0.66, not 1; one of 5931 reads 5931)."""
    if not math.isfinite(value) or value == 0:
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def inspection_figure(query: np.ndarray, reference: np.ndarray, norm_map: np.ndarray, verdict: str, score: float,
                      threshold: float, title: str = "") -> Image.Image:
    """One inspection's figure: query | rendered reference | anomaly overlay with the decision
    contour, captioned with the verdict and the score against the threshold (raw units). The
    live answer (``Inspector.figure``) and a stored record's overlay (``service.records``) are
    both drawn by this function."""
    caption = f"{verdict.upper()}: score {figure(score)} / threshold {figure(threshold)}"
    return side_by_side(query, reference, norm_map, title=title, captions=("query", "rendered reference", caption))


def side_by_side(query: np.ndarray, reference: np.ndarray, norm_map: np.ndarray, title: str = "",
                 captions: tuple[str, str, str] = ("query", "rendered reference", "anomaly map"),
                 cell: int = 256) -> Image.Image:
    """query | rendered reference | anomaly overlay with the decision contour, one row."""
    cells = [Cell(query, captions[0]), Cell(reference, captions[1]), Cell(anomaly_overlay(query, norm_map), captions[2])]
    return contact_sheet([("", cells)], cell=cell, title=title, label_width=4)
