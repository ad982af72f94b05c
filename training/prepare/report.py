"""The readiness report of a prepared category: figures, warnings and two pictures.

Every check has a stated rule (the constants below, docs/DATA.md). A warning names the
photos it is about and says what to do; ``ready`` is false when any warning is an error
(the category would train, but a bundle from it would not be worth trusting).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
from PIL import Image

from models.viz import Cell, contact_sheet, mask_overlay
from training.prepare.masks import MAX_BORDER_OBJECT, PLAIN_DELTA_E

MIN_VIEWS = 30  # registered views below which the model will have holes (MAD trains on 60+)
MAX_AZIMUTH_GAP_DEG = 45.0  # largest gap between neighbouring cameras' azimuths
MIN_ELEVATION_SPAN_DEG = 20.0  # views from one height only leave the top or the sides unseen
MAX_ELEVATION_GAP_DEG = 20.0  # widest band of elevation between the cameras with none in it: rings 22 degrees
# apart left seed 2's thin plates, seen edge-on from between them, to no photo, and most of its good parts
# rejected were photographed there; Lego's 9.5 degrees cost nothing. Set under the one spacing measured to
# hurt, not between the two (docs/RESULTS.md, sessions 46 and 47)
BLUR_RATIO = 0.35  # sharpness (variance of the Laplacian on the object) below this x the median
OVEREXPOSED = 0.02  # fraction of object pixels blown out to white (every channel at 254 or more)
INCONSISTENT_PX = 1.5  # per-view reprojection error above max(this, 3x the median): a view that does not fit
SCALE_RATIO = 1.6  # apparent object size x distance / focal outside median / this .. median * this
FOCAL_TOLERANCE = 0.10  # estimated vs EXIF focal length
MIN_JPEG_QUALITY = 75  # the IJG library's default; under it block artefacts show (quality 8 doubled the pose error)


@dataclass
class Flag:
    code: str
    message: str
    photos: list[str] = field(default_factory=list)
    error: bool = False  # the bundle would not be worth trusting until this is fixed


@dataclass
class PhotoStats:
    name: str
    file: str | None  # train/good/NNN.png when registered
    registered: bool
    reason: str | None
    reprojection_px: float | None = None
    silhouette: float | None = None  # share of the model's points inside this photo's mask (training/prepare/verify.py)
    placed_again: bool = False  # its first pose was refuted by the silhouette and another one found
    sharpness: float | None = None
    overexposed: float | None = None
    mask_area: float | None = None
    background_spread: float | None = None
    border_object: float | None = None
    apparent_size: float | None = None  # sqrt(mask area in px) * camera distance / focal (scene units)
    azimuth_deg: float | None = None
    elevation_deg: float | None = None
    jpeg_quality: int | None = None  # estimated from the file's quantization table (JPEG photos only)


def sharpness(rgb: np.ndarray, mask: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image over the (dilated) object."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    lap = cv2.Laplacian(grey, cv2.CV_32F)
    region = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    return float(lap[region].var()) if region.any() else 0.0


def overexposed(rgb: np.ndarray, mask: np.ndarray) -> float:
    return float((rgb[mask] >= 254).all(-1).mean()) if mask.any() else 0.0


def azimuth_gap(azimuths_deg: np.ndarray) -> float:
    """The largest gap (degrees) between neighbouring azimuths around the circle."""
    return gap_span(azimuths_deg)[1]


def gap_span(azimuths_deg: np.ndarray) -> tuple[float, float]:
    """Where the largest azimuth gap starts (degrees in [0, 360)) and how wide it is."""
    a = np.sort(np.mod(azimuths_deg, 360.0))
    if len(a) < 2:
        return (float(a[0]) if len(a) else 0.0), 360.0
    widths = np.append(np.diff(a), 360.0 - a[-1] + a[0])  # the last one wraps around
    i = int(np.argmax(widths))
    return float(a[i]), float(widths[i])


def elevation_gap(elevations_deg: np.ndarray) -> tuple[float, float]:
    """The widest band of elevation (its lower edge and width, degrees) between two cameras with
    none inside it; (lowest elevation, 0) for fewer than two distinct heights."""
    e = np.unique(np.round(np.asarray(elevations_deg, dtype=np.float64), 6))
    if len(e) < 2:
        return (float(e[0]) if len(e) else 0.0), 0.0
    widths = np.diff(e)
    i = int(np.argmax(widths))
    return float(e[i]), float(widths[i])


def warnings_for(stats: list[PhotoStats], skipped: list[tuple[str, str]], focal: float, exif_focal: float | None,
                 groups: int, given_focal: float | None = None, scale: float = 1.0) -> list[Flag]:
    """Every rule of the module docstring, applied to the per-photo figures (``focal``: the
    estimate, in pixels of the photos as structure-from-motion saw them, ``scale`` of those
    per pixel as stored; ``given_focal``: ``--focal``, in pixels as stored)."""
    out: list[Flag] = []
    stored = focal / scale
    if given_focal is not None and abs(stored / given_focal - 1) > FOCAL_TOLERANCE:
        out.append(Flag("focal_disagrees", f"the photos put the focal length at {stored:.0f} px, "
                           f"{abs(stored / given_focal - 1):.0%} off --focal {given_focal:.0f}, and the category was "
                           "built with the photos' value: check --focal (pixels of the photos as stored, not "
                           "millimetres), or leave it out to estimate it", error=True))
    reg = [s for s in stats if s.registered]
    if len(reg) < MIN_VIEWS:
        out.append(Flag("too_few_views", f"{len(reg)} views registered; at least {MIN_VIEWS} are needed for a "
                           "complete model (60 or more, all around the object, is best)", error=True))
    lost = [s for s in stats if not s.registered]
    if lost or skipped:
        out.append(Flag("not_registered", f"{len(lost) + len(skipped)} photo(s) not used; their reasons are in "
                           "photos[] and skipped[]", [s.name for s in lost] + [n for n, _ in skipped]))
    if groups > 1:
        out.append(Flag("separate_groups", f"the photos form {groups} groups that do not fit one rigid object: "
                           "did the object move on its stand, or are the views between the groups missing?",
                           [s.name for s in lost if s.reason and "separate group" in s.reason], error=True))
    if reg:
        az = np.array([s.azimuth_deg for s in reg])
        el = np.array([s.elevation_deg for s in reg])
        gap = azimuth_gap(az)
        if gap > MAX_AZIMUTH_GAP_DEG:
            out.append(Flag("coverage_gap", f"no camera covers {gap:.0f} degrees of azimuth (more than "
                               f"{MAX_AZIMUTH_GAP_DEG:.0f}): the object is unseen from that side; add photos there",
                               error=True))
        if el.max() - el.min() < MIN_ELEVATION_SPAN_DEG:
            out.append(Flag("one_height", f"cameras span only {el.max() - el.min():.0f} degrees of elevation "
                               f"({el.min():.0f} to {el.max():.0f}); add photos from higher and lower"))
        low, width = elevation_gap(el)
        if width > MAX_ELEVATION_GAP_DEG:
            out.append(Flag("elevation_gap", f"no camera between {low:.0f} and {low + width:.0f} degrees of elevation "
                               f"({width:.0f} degrees, more than {MAX_ELEVATION_GAP_DEG:.0f}): a part photographed from "
                               "that band is compared with a model no photo showed it from, and thin parts seen edge-on "
                               "there can read as defects, which the calibration cannot see (its held-out photos are "
                               f"all from the rings); add a ring of photos near {low + width / 2:.0f} degrees"))
        coarse = [s.name for s in reg if s.jpeg_quality is not None and s.jpeg_quality < MIN_JPEG_QUALITY]
        if coarse:
            lowest = min(s.jpeg_quality for s in reg if s.jpeg_quality is not None)
            out.append(Flag("coarse_jpeg", f"{len(coarse)} photo(s) saved as JPEG under quality {MIN_JPEG_QUALITY} "
                               f"(the lowest about {lowest}): their block artefacts blur the poses and the model, "
                               "and the bundle takes queries as coarse; save at 90 or more, or as PNG", coarse))
        sharp = np.array([s.sharpness for s in reg])
        blurred = [s.name for s in reg if s.sharpness < BLUR_RATIO * np.median(sharp)]
        if blurred:
            out.append(Flag("blurred", f"{len(blurred)} photo(s) much less sharp than the others (under "
                               f"{BLUR_RATIO:.0%} of the median): retake them in focus and without motion",
                               blurred))
        bright = [s.name for s in reg if s.overexposed > OVEREXPOSED]
        if bright:
            out.append(Flag("overexposed", f"{len(bright)} photo(s) with more than {OVEREXPOSED:.0%} of the object "
                               "clipped white: lower the exposure or soften the light", bright))
        plain = [s.name for s in reg if s.background_spread is not None and s.background_spread > PLAIN_DELTA_E]
        if plain:
            out.append(Flag("background_not_plain", f"{len(plain)} photo(s) whose background is not plain (its "
                               "colour varies along the border): the object mask may be wrong; use a plain, evenly "
                               "lit backdrop", plain))
        cut = [s.name for s in reg if s.border_object is not None and s.border_object > MAX_BORDER_OBJECT]
        if cut:
            out.append(Flag("touches_frame", f"{len(cut)} photo(s) where the object touches the frame: step back "
                               "so the whole object is in view", cut))
        again = [s.name for s in reg if s.placed_again]
        if again:
            out.append(Flag("placed_again", f"{len(again)} view(s) were first registered at a pose their silhouette "
                            "refutes (the object looks alike from elsewhere) and were placed again by their "
                            "matches alone; look at them in coverage.png", again))
        errors = np.array([s.reprojection_px for s in reg if not s.placed_again])
        limit = max(INCONSISTENT_PX, 3.0 * float(np.median(errors)))
        odd = [s.name for s in reg if s.reprojection_px > limit and not s.placed_again]
        if odd:
            out.append(Flag("inconsistent_views", f"{len(odd)} view(s) fit the others poorly (reprojection error "
                               f"over {limit:.2f} px): the object may have moved or changed while they were taken",
                               odd, error=len(odd) > 0.1 * len(reg)))
        sizes = np.array([s.apparent_size for s in reg])
        mid = float(np.median(sizes))
        off = [s.name for s in reg if not mid / SCALE_RATIO <= s.apparent_size <= mid * SCALE_RATIO]
        if off:
            out.append(Flag("scale_inconsistent", f"{len(off)} view(s) show the object at a size their distance "
                               f"does not explain (over {SCALE_RATIO}x off the median): a zoomed photo, or a mask "
                               "that caught the background", off))
    if exif_focal is not None and abs(focal / exif_focal - 1) > FOCAL_TOLERANCE:
        out.append(Flag("focal_mismatch", f"the estimated focal length ({focal:.0f} px) is "
                           f"{abs(focal / exif_focal - 1):.0%} off the photos' EXIF ({exif_focal:.0f} px): were the "
                           "photos zoomed or cropped? Pass --focal if you know it"))
    return out


def to_json(report: dict) -> dict:
    """JSON-ready copy (dataclasses to dicts, numpy to lists, NaN to None)."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if hasattr(value, "__dataclass_fields__"):
            return clean(asdict(value))
        if isinstance(value, np.ndarray):
            return clean(value.tolist())
        if isinstance(value, (np.floating, float)):
            return None if not math.isfinite(float(value)) else round(float(value), 5)
        if isinstance(value, np.integer):
            return int(value)
        return value
    return clean(report)


def coverage_figure(centres: np.ndarray, stats: list[PhotoStats], title: str,
                    flagged: frozenset[str] = frozenset()) -> Image.Image:
    """Camera positions: on the viewing sphere (3D) and as azimuth / elevation, coloured by
    reprojection error; the largest azimuth gap shaded (split where it wraps past +-180), and
    the ``flagged`` photos ringed in red with their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reg = [s for s in stats if s.registered]
    errors = np.array([s.reprojection_px for s in reg])
    fig = plt.figure(figsize=(11, 4.8), dpi=100)
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    u, v = np.mgrid[0:2 * np.pi:30j, 0:np.pi:15j]
    r = float(np.median(np.linalg.norm(centres, axis=1))) if len(centres) else 1.0
    ax.plot_wireframe(r * np.cos(u) * np.sin(v), r * np.sin(u) * np.sin(v), r * np.cos(v), color="0.85", lw=0.4)
    sc = ax.scatter(centres[:, 0], centres[:, 1], centres[:, 2], c=errors, cmap="viridis", s=18)
    ax.scatter([0], [0], [0], c="red", s=30, marker="x")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("z (up)")
    ax.set_box_aspect((1, 1, 1))
    ax.set_title("cameras on the viewing sphere (x: object)")
    ax2 = fig.add_subplot(1, 2, 2)
    start, width = gap_span(np.array([s.azimuth_deg for s in reg]))
    for lo, hi in _unwrapped(start, start + width):
        ax2.axvspan(lo, hi, color="0.9", zorder=0)
    ax2.text(((start + width / 2 + 180) % 360) - 180, 80, f"largest gap {width:.0f} deg", ha="center", fontsize=8,
             color="0.35")
    ax2.scatter([s.azimuth_deg for s in reg], [s.elevation_deg for s in reg], c=errors, cmap="viridis", s=22)
    for s in (s for s in reg if s.name in flagged):
        ax2.scatter([s.azimuth_deg], [s.elevation_deg], s=90, facecolors="none", edgecolors="red", linewidths=1.2)
        ax2.annotate(_short(s.name), (s.azimuth_deg, s.elevation_deg), xytext=(5, 5), textcoords="offset points",
                     fontsize=7, color="red")
    ax2.set_xlim(-180, 180)
    ax2.set_ylim(-90, 90)
    ax2.set_xlabel("azimuth (degrees)")
    ax2.set_ylabel("elevation (degrees)")
    ax2.grid(alpha=0.3)
    ax2.set_title("coverage (empty regions are unseen)")
    fig.colorbar(sc, ax=ax2, label="mean reprojection error (px)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.canvas.draw()
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return image


def mask_sheet(cells: list[tuple[str, np.ndarray, np.ndarray, str | None]], title: str, per_row: int = 10,
               cell: int = 120) -> Image.Image:
    """Each photo, labelled by its file name, with its background tinted red (what the mask
    removes); those with a note first, marked ``x`` (not registered) or ``!`` (flagged)."""
    ordered = sorted(cells, key=lambda c: (c[3] is None, c[3] != "not registered"))
    marks = {"not registered": "x ", None: ""}
    tiles = [Cell(mask_overlay(rgb.astype(np.float32) / 255.0, ~mask), marks.get(note, "! ") + _short(name))
             for name, rgb, mask, note in ordered]
    rows = [(f"{i + 1}-{min(i + per_row, len(tiles))}", tiles[i:i + per_row]) for i in range(0, len(tiles), per_row)]
    return contact_sheet(rows, cell=cell, title=title, label_width=50)


def _unwrapped(lo: float, hi: float) -> list[tuple[float, float]]:
    """An azimuth interval (degrees, ``lo`` in [0, 360)) as spans of the plot's -180..180 axis."""
    lo, hi = ((lo + 180) % 360) - 180, ((lo + 180) % 360) - 180 + (hi - lo)
    return [(lo, min(hi, 180.0))] + ([(-180.0, hi - 360.0)] if hi > 180 else [])


def _short(name: str, most: int = 18) -> str:
    """A file name that fits under a tile: its start and its end."""
    return name if len(name) <= most else f"{name[:most - 9]}...{name[-6:]}"
