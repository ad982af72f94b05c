"""Query vs rendered reference -> anomaly map and image score (the peers' protocol).

Both images are clamped to [0, 1], resized to ``size`` x ``size`` (224 by default) and
normalised as the feature extractor expects. The map is the channel sum of the squared
difference of the normalised images plus, for each feature layer, the channel sum of the
squared feature difference, bilinearly upsampled to ``size``; plain sum, Gaussian blur
with ``sigma`` (4) at that resolution, then resized back to the query's size. The image
score is the map's maximum (at the scoring resolution).

``tolerance = r > 0`` is the misalignment-tolerant option: each query value is compared
with the best-matching reference value within ``r`` cells of the same map (per layer, and
per pixel for the colour term), so a reference that sits a little off the query does not
light up edges.

Combinations of the terms (``COMBINATIONS``; ``combine`` before the blur, ``anomaly_map`` with it):

- ``peers``: the plain sum above (the peers' scorer: the ``demo`` preset's, the benchmark
  tables', and the default of an ``AnomalyScorer``);
- ``silhouette`` (the ``cpu`` and ``paper`` presets): each term divided by its
  99th-percentile pixel value on normal views held out of the model's fit
  (``NormalStats.term_scales``), so the colour term weighs as much as a feature layer, plus
  the silhouette evidence (``silhouette_evidence``: the query shows the object more than
  1 px outside the reference's silhouette, or background more than 1 px inside it),
  weighted as all the terms together;
- ``structure`` (the ``cpu`` and ``paper`` presets' in sessions 15-17): the ``silhouette`` map
  divided, pixel by pixel, by its normal 99th percentile among pixels of the same
  reference-structure decile (``edge_strength``: the render's edge strength;
  ``NormalStats.edge_bins`` and ``edge_scales``), so a residual counts for less where renders
  of normal views are always off (studs, joints, the outline). Chosen twice by
  ``rpe-pad lab scorer-study``'s held-out rule over ``silhouette``, smaller blurs and the
  balanced sum (docs/SCORING.md, docs/RESULTS.md);
- ``either`` (the ``cpu`` and ``paper`` presets since session 18): the maps of
  ``EITHER_MAPS``, each blurred and divided by its normal level (``NormalStats.levels``: the
  ``LEVEL_QUANTILE`` quantile of its image scores on the held-out normal views), and the
  pixel-wise maximum of them (``either_map``). The maps are the ``structure`` and
  ``silhouette`` maps and, since session 20, the ``area3`` and ``area5`` maps
  (``area_evidence``: the grey-scale opening, with a 3 x 3 or 5 x 5 square, of the colour
  terms each over its normal scale). The decile division takes away the evidence of a small
  part gone from a studded surface with the render residue there; ``silhouette`` keeps it, and
  ``structure`` keeps what the division helps. An opening removes the thin residue that normal
  views leave along edges and keeps what fills an area at least as wide as its square: a stud
  gone (the 3 x 3 square), a stain over studded texture (the 5 x 5 one). Since session 21, the
  ``fine`` map too (``fine_evidence``: the two finest feature layers' terms, strides 2 and 4
  with the default extractor, each over its normal scale): in the other maps the deep layers'
  residue, spread over 8-16 pixels, outweighs a small part gone, which the fine layers see at
  its own size. Each was chosen by a held-out rule on painted defects of Lego and three seeds
  (docs/RESULTS.md, sessions 18, 20 and 21). A bundle calibrated before session 20 carries
  two levels and is scored with the first two maps, one calibrated in session 20 carries four
  and is scored with four, each as it was calibrated.

The returned map of an ``either`` scorer with ``map_sigma`` (the ``cpu`` and ``paper`` presets since
session 31): the image score and so the decision stay those of the maps blurred with ``sigma``
(4). The map a query gets back is the same five maps blurred with the finer ``map_sigma`` (2), each
over its own level (``NormalStats.map_levels``), joined by their maximum, times ``map_scale`` (the
threshold rule's quantile of the held-out image scores at ``sigma`` over the same quantile at
``map_sigma``, so the sharp map's threshold falls on the score's) and capped, pixel by pixel, at the
image's score (``sharp_map``): a part under the threshold shows no pixel over it, whatever threshold
a caller sets. A finer blur localises better (AUPRO up on all four categories of a fresh painted
set) but decides worse at the threshold; kept apart, each does what it does best (docs/RESULTS.md,
session 31). A few defects found (0.7 % there) show no pixel over the threshold: their evidence is
over it at sigma 4 and spread too thin to cross it at sigma 2.

The colour term (``COLOURS``): ``rgb``, the squared difference of the extractor-normalised
RGB images (the peers'), or ``lab`` (the ``cpu`` and ``paper`` presets since session 17):
two terms instead, the squared CIELAB L* difference and the squared a*b* difference
(``lab_terms``), each scaled by its own normal statistics. A stain changes chroma, and render
residue on fine structure is mostly lightness, so the a*b* term sees a stain above the
residue that the RGB term mixes in. Chosen by the held-out rule on the self-checks of Lego
and three synthetic seeds (docs/RESULTS.md, session 17).

The normal statistics are fitted by ``fit_normal_stats`` (the calibration stage) and travel
in the scorer's config, stored with the calibrated threshold.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import asdict, dataclass, field, fields

import kornia
import torch
import torch.nn.functional as F
from torch import nn

from models.features import FeatureExtractor
from models.verify import foreground

Tensor = torch.Tensor

# Comparison radius of the default scorer, chosen by measurement (docs/SCORING.md).
DEFAULT_TOLERANCE = 1
SCORE_SIZE = 224  # the scoring resolution of a new scorer (the peers'); a stored config keeps its own
COMBINATIONS = ("peers", "silhouette", "structure", "either")
EDGED = ("structure", "either")  # the combinations that read the references' edge strength
COLOURS = ("rgb", "lab")  # the colour term: normalised RGB (one term), or CIELAB L* and a*b* (two)
STRUCTURE_BINS = 10  # ``structure``: the deciles of the reference's edge strength
LEVEL_QUANTILE = 0.98  # ``either``: each map's normal level, this quantile of its held-out image scores
EITHER_MAPS = ("structure", "silhouette", "area3", "area5", "fine")  # ``either``'s maps, in the order of their levels
EITHER_COUNTS = (2, 4, 5)  # levels a bundle may carry (calibration methods 3, 4, 5): the first maps of EITHER_MAPS
AREA_SQUARES = {"area3": 3, "area5": 5}  # the openings' squares, pixels at the scoring resolution (docs/RESULTS.md, session 20)
FINE_LAYERS = 2  # ``fine``: the first feature layers after the colour terms (strides 2 and 4 with lite0; session 21)
FOREGROUND_TOL = 0.05  # a pixel shows the object when a channel differs from the background by more


def _to_bchw(images: Tensor) -> Tensor:
    """[B, H, W, 3] or [B, 3, H, W] -> [B, 3, H, W] float, clamped to [0, 1]."""
    if images.dim() != 4:
        raise ValueError(f"expected a batch of images [B, H, W, 3] or [B, 3, H, W], got {tuple(images.shape)}")
    if images.shape[1] != 3 and images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    return images.float().clamp(0.0, 1.0)


def squared_difference(a: Tensor, b: Tensor, tolerance: int = 0) -> Tensor:
    """Channel-summed squared difference [B, H, W] of [B, C, H, W] maps; with ``tolerance``
    r > 0, the minimum over reference shifts within r cells (replicated borders)."""
    if tolerance <= 0:
        return ((a - b) ** 2).sum(dim=1)
    r = tolerance
    padded = F.pad(b, (r, r, r, r), mode="replicate")
    h, w = a.shape[-2:]
    best = None
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            d = ((a - padded[..., dy : dy + h, dx : dx + w]) ** 2).sum(dim=1)
            best = d if best is None else torch.minimum(best, d)
    return best


def lab_terms(query: Tensor, reference: Tensor, tolerance: int = 0) -> Tensor:
    """``[B, 2, S, S]``: the squared CIELAB L* difference and the squared a*b* difference of
    two ``[B, 3, S, S]`` images in [0, 1] (``squared_difference``, with ``tolerance``)."""
    q, r = kornia.color.rgb_to_lab(query), kornia.color.rgb_to_lab(reference)
    return torch.stack([squared_difference(q[:, :1], r[:, :1], tolerance),
                        squared_difference(q[:, 1:], r[:, 1:], tolerance)], dim=1)


def blur_maps(maps: Tensor, sigma: float) -> Tensor:
    """``[B, S, S]`` smoothed with a Gaussian of ``sigma`` pixels (none when 0), truncated at
    4 sigma like scipy's gaussian_filter (the peers'), reflected at the borders."""
    if sigma <= 0:
        return maps
    k = 2 * math.ceil(4 * sigma) + 1
    return kornia.filters.gaussian_blur2d(maps[:, None], (k, k), (sigma, sigma), border_type="reflect")[:, 0]


def silhouette_evidence(query: Tensor, reference: Tensor, background: tuple[float, float, float]) -> Tensor:
    """``[B, S, S]``: 1 where ``query`` shows the object more than 1 px outside
    ``reference``'s silhouette, or background more than 1 px inside it (both ``[B, 3, S, S]``
    in [0, 1]); 0 elsewhere. A pose off by a pixel leaves none."""
    fq = foreground(query.permute(0, 2, 3, 1), background, FOREGROUND_TOL).float()[:, None]
    fr = foreground(reference.permute(0, 2, 3, 1), background, FOREGROUND_TOL).float()[:, None]
    grown = F.max_pool2d(fr, 3, 1, 1)
    shrunk = 1 - F.max_pool2d(1 - fr, 3, 1, 1)
    return (fq * (1 - grown) + (1 - fq) * shrunk)[:, 0]


def _square_extreme(maps: Tensor, k: int, op) -> Tensor:
    """``op`` (``torch.minimum`` or ``torch.maximum``) over the ``k`` x ``k`` square around each
    pixel of ``maps [B, S, S]``, pixels outside the map left out: separable, rows then columns
    (several times faster on CPU than a stride-1 ``max_pool2d``)."""
    r = k // 2
    fill = float("inf") if op is torch.minimum else float("-inf")
    out = maps
    for dim in (-1, -2):
        n = out.shape[dim]
        pad = (r, r) if dim == -1 else (0, 0, r, r)
        padded = F.pad(out, pad, value=fill)
        acc = padded.narrow(dim, 0, n)
        for shift in range(1, k):
            acc = op(acc, padded.narrow(dim, shift, n))
        out = acc
    return out


def opening(maps: Tensor, k: int) -> Tensor:
    """Grey-scale opening of ``maps [B, S, S]`` with a ``k`` x ``k`` square (``k`` odd): the
    erosion (the minimum over the square), then the dilation (the maximum). What is thinner
    than the square goes; what fills it stays at its level."""
    if k < 1 or k % 2 == 0:
        raise ValueError(f"the opening's square needs an odd side, got {k}")
    return _square_extreme(_square_extreme(maps, k, torch.minimum), k, torch.maximum)


def colour_terms(colour: str) -> int:
    """How many of a scorer's terms are colour terms, ahead of the feature layers."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colour term {colour!r}; choose from {list(COLOURS)}")
    return 2 if colour == "lab" else 1


def edge_strength(reference: Tensor) -> Tensor:
    """``[B, S, S]``: the edge strength of ``reference [B, 3, S, S]`` (the scorer's squares):
    the Sobel magnitude of its grey image, averaged over 5 x 5 pixels."""
    g = kornia.filters.sobel(reference.mean(1, keepdim=True))
    return F.avg_pool2d(g, 5, 1, 2)[:, 0]


@dataclass
class NormalStats:
    """What a scorer learned from normal views held out of the model's fit."""

    term_scales: list[float] = field(default_factory=list)  # 99th-percentile pixel value of each term
    edge_bins: list[float] = field(default_factory=list)  # structure: inner boundaries of the edge-strength deciles
    edge_scales: list[float] = field(default_factory=list)  # structure: the silhouette map's 99th percentile per decile
    levels: list[float] = field(default_factory=list)  # either: its maps' normal levels (EITHER_MAPS order)
    map_levels: list[float] = field(default_factory=list)  # either with map_sigma: the levels at the map's blur
    map_scale: float = 1.0  # either with map_sigma: the sharp map's factor (its threshold onto the score's)
    colours: int = 1  # how many of the terms, first, are colour terms (colour_terms): what the area maps read


def balanced(terms: Tensor, stats: NormalStats) -> Tensor:
    """``[B, S, S]``: the sum of ``terms [B, T, S, S]``, each over its normal scale."""
    if len(stats.term_scales) != terms.shape[1]:
        raise ValueError(f"the normal statistics have {len(stats.term_scales)} term scales, the scorer {terms.shape[1]} terms")
    scales = torch.tensor(stats.term_scales, dtype=terms.dtype, device=terms.device).view(1, -1, 1, 1)
    return (terms / scales).sum(1)


def combine(terms: Tensor, combination: str, stats: NormalStats | None = None, silhouette: Tensor | None = None,
            edges: Tensor | None = None) -> Tensor:
    """The pre-blur map ``[B, S, S]`` from ``terms [B, T, S, S]`` (and, for ``silhouette``,
    the silhouette evidence ``[B, S, S]`` and the normal statistics; for ``structure``, also
    the references' ``edge_strength`` ``[B, S, S]``)."""
    if combination == "peers":
        return terms.sum(1)
    if combination not in COMBINATIONS:
        raise ValueError(f"unknown combination {combination!r}; choose from {list(COMBINATIONS)}")
    if combination == "either":
        raise ValueError("combination 'either' blurs each of its maps before it combines them: use anomaly_map")
    if stats is None or silhouette is None:
        raise ValueError(f"combination {combination!r} needs the normal statistics of its terms and the silhouette evidence")
    pre = balanced(terms, stats) + silhouette * terms.shape[1]
    if combination == "silhouette":
        return pre
    if edges is None or len(stats.edge_scales) != STRUCTURE_BINS or len(stats.edge_bins) != STRUCTURE_BINS - 1:
        raise ValueError("combination 'structure' needs the references' edge strength and the normal statistics' "
                         f"{STRUCTURE_BINS} edge scales")
    bins = torch.tensor(stats.edge_bins, dtype=edges.dtype, device=edges.device)
    scales = torch.tensor(stats.edge_scales, dtype=pre.dtype, device=pre.device)
    return pre / scales[torch.bucketize(edges.contiguous(), bins)]


def colour_sum(terms: Tensor, stats: NormalStats) -> Tensor:
    """``[B, S, S]``: the first ``stats.colours`` terms of ``terms [B, T, S, S]`` (the colour
    terms), each over its normal scale, summed."""
    if not 1 <= stats.colours <= min(len(stats.term_scales), terms.shape[1]):
        raise ValueError(f"the normal statistics name {stats.colours} colour terms, for {len(stats.term_scales)} term "
                         f"scales and {terms.shape[1]} terms")
    return _scaled_sum(terms, stats, range(stats.colours))


def _scaled_sum(terms: Tensor, stats: NormalStats, which: range) -> Tensor:
    """``[B, S, S]``: the terms ``which`` of ``terms [B, T, S, S]``, each over its normal scale, summed."""
    return sum(terms[:, t] / stats.term_scales[t] for t in which)


def area_evidence(terms: Tensor, stats: NormalStats, square: int) -> Tensor:
    """``[B, S, S]``: the ``opening`` with a ``square`` x ``square`` square of ``colour_sum``."""
    return opening(colour_sum(terms, stats), square)


def fine_evidence(terms: Tensor, stats: NormalStats) -> Tensor:
    """``[B, S, S]``: the ``FINE_LAYERS`` feature terms after the colour terms (the finest
    layers the scorer extracts), each over its normal scale, summed."""
    first, last = stats.colours, stats.colours + FINE_LAYERS
    have = min(len(stats.term_scales), terms.shape[1])
    if first < 1 or last > have:
        raise ValueError(f"the fine map needs {FINE_LAYERS} feature terms after the {stats.colours} colour terms, "
                         f"for {len(stats.term_scales)} term scales and {terms.shape[1]} terms")
    return _scaled_sum(terms, stats, range(first, last))


def _either_pres(terms: Tensor, stats: NormalStats, silhouette: Tensor, edges: Tensor, count: int):
    """The first ``count`` of ``EITHER_MAPS``, before the blur (the colour sum computed once)."""
    colour = None
    for name in EITHER_MAPS[:count]:
        if name in AREA_SQUARES:
            colour = colour_sum(terms, stats) if colour is None else colour
            yield opening(colour, AREA_SQUARES[name])
        elif name == "fine":
            yield fine_evidence(terms, stats)
        else:
            yield combine(terms, name, stats, silhouette, edges)


def either_map(terms: Tensor, stats: NormalStats, silhouette: Tensor, edges: Tensor, sigma: float) -> Tensor:
    """``either``'s blurred map ``[B, S, S]``: the pixel-wise maximum of the maps of
    ``EITHER_MAPS`` (the first as many as ``stats`` has levels: 2 before session 20, 4 in it,
    5 since session 21), each blurred with ``sigma`` and divided by its normal level."""
    return either_maps(terms, stats, silhouette, edges, sigma)[0]


def either_maps(terms: Tensor, stats: NormalStats, silhouette: Tensor, edges: Tensor, sigma: float,
                map_sigma: float | None = None) -> tuple[Tensor, Tensor | None]:
    """``either_map`` and, with ``map_sigma``, the same maps blurred with ``map_sigma``, each over
    its ``stats.map_levels`` entry, joined by their maximum (unscaled, uncapped: ``sharp_map``
    makes the returned map of it). The maps before the blur are computed once for both."""
    if stats is None or len(stats.levels) not in EITHER_COUNTS:
        raise ValueError("combination 'either' needs the normal levels of its maps: rerun the calibration stage")
    if map_sigma is not None and len(stats.map_levels) != len(stats.levels):
        raise ValueError("a map blur of its own needs the normal levels at that blur: rerun the calibration stage")
    pres = _either_pres(terms, stats, silhouette, edges, len(stats.levels))
    if map_sigma is None:  # the path of every bundle before session 31, as it was
        out = None
        for pre, level in zip(pres, stats.levels):
            m = blur_maps(pre, sigma) / level
            out = m if out is None else torch.maximum(out, m)
        return out, None
    stacked = torch.stack(list(pres))  # [M, B, S, S]

    def joined(s: float, levels: list[float]) -> Tensor:  # one blur call for all the maps: cheaper than one each
        blurred = blur_maps(stacked.flatten(0, 1), s).view_as(stacked)
        return (blurred / torch.tensor(levels, dtype=stacked.dtype, device=stacked.device).view(-1, 1, 1, 1)).amax(0)

    return joined(sigma, stats.levels), joined(map_sigma, stats.map_levels)


def sharp_map(sharp: Tensor, scale: float, scores: Tensor) -> Tensor:
    """The map returned with a map blur of its own: ``sharp [B, S, S]`` times ``scale``, capped
    pixel by pixel at each image's score (``scores [B]``)."""
    return torch.minimum(sharp * scale, scores.view(-1, 1, 1))


def fit_map_scale(scores: Tensor, sharp_scores: Tensor, false_alarm_rate: float) -> float:
    """``map_scale``: the ``1 - false_alarm_rate`` quantile of the normal image ``scores`` over
    the same quantile of the sharp map's (``sharp_scores``, the maxima of ``either_maps``' second
    map), each read as the threshold rule reads it, so the sharp map's threshold falls on the
    score's. The calibration fits it under rule ``false_alarm``; under rule ``f1`` (a labelled
    validation set) the threshold is not such a quantile, so only the cap ties the map to it."""
    q = 1.0 - false_alarm_rate
    top, bottom = float(torch.quantile(sharp_scores.double(), q)), float(torch.quantile(scores.double(), q))
    return bottom / top if top > 0 and bottom > 0 else 1.0  # no evidence at all: leave the map as it is


def anomaly_map(terms: Tensor, combination: str, stats: NormalStats | None = None, silhouette: Tensor | None = None,
                edges: Tensor | None = None, sigma: float = 4.0) -> Tensor:
    """The blurred map ``[B, S, S]`` of ``terms [B, T, S, S]`` under ``combination``: the
    blurred ``combine`` of the terms, or ``either_map``."""
    if combination == "either":
        return either_map(terms, stats, silhouette, edges, sigma)
    return blur_maps(combine(terms, combination, stats, silhouette, edges), sigma)


def quantile(values: Tensor, q: float, most: int = 2_000_000) -> float:
    """``torch.quantile`` of up to ``most`` evenly spaced values (its input limit is 2^24)."""
    flat = values.flatten().float()
    return float(torch.quantile(flat[:: max(1, flat.numel() // most)], q))


def fit_normal_stats(terms: Tensor, silhouette: Tensor | None = None, edges: Tensor | None = None,
                     sigma: float | None = None, colours: int = 1, map_sigma: float | None = None) -> NormalStats:
    """Each term's 99th-percentile pixel value over normal views' ``terms [B, T, S, S]``; with
    their silhouette evidence and references' ``edges`` ``[B, S, S]``, also ``structure``'s
    statistics: the deciles of the edge strength, and the ``silhouette`` map's 99th
    percentile among the pixels of each; with the blur's ``sigma`` too, ``either``'s levels:
    the ``LEVEL_QUANTILE`` quantile of the image scores of each of ``EITHER_MAPS``
    (``colours``: how many of the terms, first, are colour terms, kept for the area maps); with
    ``map_sigma`` too, the same levels at that blur (``map_levels``; ``map_scale`` is the
    calibration's, ``fit_map_scale``)."""
    if not 1 <= colours <= terms.shape[1]:
        raise ValueError(f"colours must name 1 to {terms.shape[1]} leading terms, got {colours}")
    stats = NormalStats(term_scales=[max(quantile(terms[:, t], 0.99), 1e-6) for t in range(terms.shape[1])],
                        colours=colours)
    if edges is None:
        return stats
    if silhouette is None:
        raise ValueError("structure's statistics need the silhouette evidence too")
    pre = combine(terms, "silhouette", stats, silhouette)
    stats.edge_bins = [quantile(edges, float(q)) for q in torch.linspace(0, 1, STRUCTURE_BINS + 1)[1:-1]]
    which = torch.bucketize(edges.contiguous(), torch.tensor(stats.edge_bins, dtype=edges.dtype, device=edges.device))
    stats.edge_scales = [max(quantile(pre[which == b], 0.99), 1e-6) if bool((which == b).any()) else 1.0
                         for b in range(STRUCTURE_BINS)]
    if sigma is not None:
        level = lambda pre, s: max(quantile(blur_maps(pre, s).flatten(1).amax(1), LEVEL_QUANTILE), 1e-6)  # noqa: E731
        for pre in _either_pres(terms, stats, silhouette, edges, len(EITHER_MAPS)):  # one map at a time in memory
            stats.levels.append(level(pre, sigma))
            if map_sigma is not None:
                stats.map_levels.append(level(pre, map_sigma))
    elif map_sigma is not None:
        raise ValueError("the map's levels need the score's blur (sigma) too")
    return stats


# What a stored config (a bundle's, ``check_config``) may ask for: the scoring resolution, and the
# comparison radius (each cell more costs (2 r + 1)^2 comparisons per term: 4 is 81, 1 the default).
SIZES = (32, 1024)
MAX_TOLERANCE = 4
STORED_WEIGHTS = ("imagenet", "random")  # a bundle names no weights file outside itself


def check_config(config: dict) -> dict:
    """``config`` (``AnomalyScorer.config``'s form, read from a bundle) when this version can
    score with it, else ``ValueError`` naming the field: a bad number must refuse the bundle,
    not score every query wrong."""
    missing = sorted({"extractor", "weights", "layers", "size", "sigma", "tolerance"} - set(config))
    if missing:
        raise ValueError(f"the scorer config lacks {missing}")
    size, sigma, tolerance, layers = config["size"], config["sigma"], config["tolerance"], config["layers"]
    if not isinstance(config["extractor"], str) or config["weights"] not in STORED_WEIGHTS:
        raise ValueError(f"scorer.extractor must be a backbone name and scorer.weights one of "
                         f"{list(STORED_WEIGHTS)}, got {config['extractor']!r}, {config['weights']!r}")
    if not (_is_int(size) and SIZES[0] <= size <= SIZES[1]):
        raise ValueError(f"scorer.size must be an integer from {SIZES[0]} to {SIZES[1]}, got {size!r}")
    if not (_is_number(sigma) and 0 <= sigma <= size / 8):  # the blur's 4 sigma each side stays within the map
        raise ValueError(f"scorer.sigma must be a number from 0 to size / 8 = {size / 8:g}, got {sigma!r}")
    map_sigma = config.get("map_sigma")
    if map_sigma is not None and not (_is_number(map_sigma) and 0 < map_sigma <= size / 8):
        raise ValueError(f"scorer.map_sigma must be a number above 0 and at most size / 8 = {size / 8:g}, "
                         f"got {map_sigma!r}")
    if map_sigma is not None and config.get("combination") != "either":
        raise ValueError(f"scorer.map_sigma needs the 'either' combination, got {config.get('combination', 'peers')!r}")
    if not (_is_int(tolerance) and 0 <= tolerance <= MAX_TOLERANCE):
        raise ValueError(f"scorer.tolerance must be an integer from 0 to {MAX_TOLERANCE}, got {tolerance!r}")
    if not (isinstance(layers, list) and layers and all(_is_int(i) and i >= 0 for i in layers)
            and layers == sorted(set(layers))):
        raise ValueError(f"scorer.layers must be feature layer indices in increasing order, got {layers!r}")
    background = config.get("background", [1.0, 1.0, 1.0])
    if not (isinstance(background, list | tuple) and len(background) == 3
            and all(_is_number(v) and 0 <= v <= 1 for v in background)):
        raise ValueError(f"scorer.background must be 3 numbers in [0, 1], got {background!r}")
    colour_terms(config.get("colour", "rgb"))  # ValueError naming the choices
    if config.get("combination", "peers") != "peers" and not config.get("stats"):
        raise ValueError(f"combination {config['combination']!r} needs the normal statistics (scorer.stats): rerun the "
                         "calibration stage")
    return config


def check_stats(stats: NormalStats, terms: int) -> NormalStats:
    """``stats`` when they fit a scorer of ``terms`` terms (colour terms, then one per feature
    layer), else ``ValueError`` naming the field. Scales and levels divide the maps: one of 0
    or below, or an infinite one, would score every defect 0."""
    _check_numbers("scorer.stats.term_scales", stats.term_scales, (terms,), positive=True)
    _check_numbers("scorer.stats.edge_bins", stats.edge_bins, (0, STRUCTURE_BINS - 1))
    _check_numbers("scorer.stats.edge_scales", stats.edge_scales, (0, STRUCTURE_BINS), positive=True)
    if bool(stats.edge_bins) != bool(stats.edge_scales):
        raise ValueError("scorer.stats.edge_bins and scorer.stats.edge_scales go together (both or neither)")
    if stats.edge_bins != sorted(stats.edge_bins):
        raise ValueError(f"scorer.stats.edge_bins must be in non-decreasing order, got {reprlib.repr(stats.edge_bins)}")
    _check_numbers("scorer.stats.levels", stats.levels, (0, *EITHER_COUNTS), positive=True)
    _check_numbers("scorer.stats.map_levels", stats.map_levels, (0, len(stats.levels)), positive=True)
    if not (_is_number(stats.map_scale) and stats.map_scale > 0):
        raise ValueError(f"scorer.stats.map_scale must be a finite number > 0, got {stats.map_scale!r}")
    if not (_is_int(stats.colours) and 1 <= stats.colours <= terms):
        raise ValueError(f"scorer.stats.colours must be an integer from 1 to {terms}, got {stats.colours!r}")
    return stats


def _check_numbers(name: str, values, counts: tuple[int, ...], positive: bool = False) -> None:
    """``ValueError`` unless ``values`` is a list of ``counts`` finite numbers (each > 0 if ``positive``)."""
    if not (isinstance(values, list) and len(values) in counts
            and all(_is_number(v) and (v > 0 or not positive) for v in values)):
        raise ValueError(f"{name} must be a list of {' or '.join(map(str, counts))} finite numbers"
                         f"{' > 0' if positive else ''}, got {reprlib.repr(values)}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class AnomalyScorer(nn.Module):
    """Anomaly maps and scores of query images against their rendered references."""

    def __init__(self, extractor: FeatureExtractor | None = None, size: int = SCORE_SIZE, sigma: float = 4.0,
                 tolerance: int = DEFAULT_TOLERANCE, combination: str = "peers", stats: NormalStats | None = None,
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0), colour: str = "rgb",
                 map_sigma: float | None = None):
        super().__init__()
        if combination not in COMBINATIONS:
            raise ValueError(f"unknown combination {combination!r}; choose from {list(COMBINATIONS)}")
        if colour not in COLOURS:
            raise ValueError(f"unknown colour term {colour!r}; choose from {list(COLOURS)}")
        if combination in EDGED and (stats is None or len(stats.edge_scales) != STRUCTURE_BINS):
            raise ValueError(f"combination {combination!r} needs normal statistics with {STRUCTURE_BINS} edge scales: "
                             "rerun the calibration stage")
        if combination == "either" and len(stats.levels) not in EITHER_COUNTS:
            raise ValueError("combination 'either' needs the normal levels of its maps: rerun the calibration stage")
        if combination == "either" and len(stats.levels) > 2 and stats.colours != colour_terms(colour):
            raise ValueError(f"the normal statistics were fitted with {stats.colours} colour terms, the {colour!r} "
                             f"colour term has {colour_terms(colour)}: rerun the calibration stage")
        if map_sigma is not None and (combination != "either" or len(stats.map_levels) != len(stats.levels)):
            raise ValueError("a map blur of its own (map_sigma) needs the 'either' combination and its maps' levels at "
                             "that blur: rerun the calibration stage")
        self.extractor = extractor if extractor is not None else FeatureExtractor()
        self.size = size
        self.sigma = sigma
        self.tolerance = tolerance
        self.combination = combination
        self.stats = stats
        self.background = tuple(float(v) for v in background)
        self.colour = colour
        self.map_sigma = map_sigma

    def config(self) -> dict:
        """Everything that defines the scores (stored with a calibrated threshold)."""
        fx = self.extractor
        out = {"extractor": fx.name, "weights": fx.weights, "layers": list(fx.layers), "size": self.size,
               "sigma": self.sigma, "tolerance": self.tolerance}
        if self.combination != "peers":  # a peers' config reads as it did before combinations existed
            out.update(combination=self.combination, stats=asdict(self.stats) if self.stats else None,
                       background=list(self.background))
        if self.colour != "rgb":  # and an RGB one as it did before the colour term had a choice
            out["colour"] = self.colour
        if self.map_sigma is not None:  # and one whose map is the score's as it did before session 31
            out["map_sigma"] = self.map_sigma
        return out

    @classmethod
    def from_config(cls, config: dict) -> AnomalyScorer:
        """The scorer a stored ``config`` describes, after ``check_config`` and ``check_stats``."""
        check_config(config)
        stats = None
        if config.get("stats"):
            unknown = sorted(set(config["stats"]) - {f.name for f in fields(NormalStats)})
            if unknown:
                raise ValueError(f"the scorer's normal statistics carry fields this version does not know ({unknown}): "
                                 "rerun the calibration stage")
            terms = colour_terms(config.get("colour", "rgb")) + len(config["layers"])
            stats = check_stats(NormalStats(**config["stats"]), terms)
        try:
            extractor = FeatureExtractor(config["extractor"], layers=config["layers"], weights=config["weights"])
        except IndexError as exc:  # timm's, for an index past the backbone's stages
            raise ValueError(f"scorer.layers {config['layers']} are not all feature layers of "
                             f"{config['extractor']}") from exc
        return cls(extractor, size=config["size"], sigma=config["sigma"], tolerance=config["tolerance"],
                   combination=config.get("combination", "peers"), stats=stats,
                   background=tuple(config.get("background", (1.0, 1.0, 1.0))), colour=config.get("colour", "rgb"),
                   map_sigma=config.get("map_sigma"))

    def with_stats(self, stats: NormalStats, combination: str | None = None, map_sigma: float | None | str = "same"
                   ) -> AnomalyScorer:
        """The same scorer (shared extractor) combining its terms with ``stats``; ``map_sigma``:
        the returned map's own blur (``sharp_map``), ``None`` for the score's, by default this
        scorer's."""
        own = self.map_sigma if map_sigma == "same" else map_sigma
        return AnomalyScorer(self.extractor, self.size, self.sigma, self.tolerance, combination or self.combination,
                             stats, self.background, self.colour, own)

    def squares(self, images: Tensor) -> Tensor:
        """``[B, 3, size, size]`` in [0, 1]: what the scorer compares (antialiased bilinear)."""
        return F.interpolate(_to_bchw(images), size=(self.size, self.size), mode="bilinear", antialias=True,
                             align_corners=False)

    @torch.no_grad()
    def inputs(self, query: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
        """The terms ``[B, T, S, S]`` and the silhouette evidence ``[B, S, S]``."""
        q224, r224 = self._pair(query, reference)
        return self._terms(q224, r224), silhouette_evidence(q224, r224, self.background)

    @torch.no_grad()
    def edges(self, reference: Tensor) -> Tensor:
        """``[B, S, S]``: the references' ``edge_strength`` at the scoring resolution."""
        return edge_strength(self.squares(reference))

    def _pair(self, query: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
        q, r = _to_bchw(query), _to_bchw(reference)
        if q.shape != r.shape:
            raise ValueError(f"query {tuple(q.shape)} and reference {tuple(r.shape)} differ")
        return self.squares(q), self.squares(r)

    @torch.no_grad()
    def terms(self, query: Tensor, reference: Tensor) -> Tensor:
        """The map's unblurred terms ``[B, C + L, size, size]``: the colour term (C = 1) or
        terms (``lab``: C = 2), then each feature layer's (upsampled to ``size``)."""
        return self._terms(*self._pair(query, reference))

    def _terms(self, q224: Tensor, r224: Tensor) -> Tensor:
        fx = self.extractor
        if self.colour == "lab":
            out = list(lab_terms(q224, r224, self.tolerance).unbind(1))
        else:
            out = [squared_difference(fx.normalize(q224), fx.normalize(r224), self.tolerance)]
        b = len(q224)
        for both in fx(torch.cat([q224, r224])):  # one backbone call for queries and references
            fq, fr = both[:b], both[b:]
            d = squared_difference(fq, fr, self.tolerance)[:, None]
            out.append(F.interpolate(d, size=(self.size, self.size), mode="bilinear", align_corners=False)[:, 0])
        return torch.stack(out, dim=1)

    def blur(self, maps: Tensor) -> Tensor:
        """``[B, S, S]`` smoothed with the scorer's Gaussian (``blur_maps``)."""
        return blur_maps(maps, self.sigma)

    @torch.no_grad()
    def forward(self, query: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
        """``query``, ``reference``: [B, H, W, 3] (or [B, 3, H, W]) in [0, 1], same size.

        Returns maps [B, H, W] at the query's size and image scores [B] (the maximum of the map
        blurred with ``sigma``; with ``map_sigma``, the map returned is ``sharp_map``'s).
        """
        height, width = _to_bchw(query).shape[-2:]
        sharp = None
        if self.combination == "peers":
            amap = self.blur(self.terms(query, reference).sum(dim=1))
        else:
            q224, r224 = self._pair(query, reference)
            edges = edge_strength(r224) if self.combination in EDGED else None
            terms, sil = self._terms(q224, r224), silhouette_evidence(q224, r224, self.background)
            if self.map_sigma is not None:
                amap, sharp = either_maps(terms, self.stats, sil, edges, self.sigma, self.map_sigma)
            else:
                amap = anomaly_map(terms, self.combination, self.stats, sil, edges, self.sigma)
        scores = amap.flatten(1).amax(dim=1)
        if sharp is not None:
            amap = sharp_map(sharp, self.stats.map_scale, scores)
        full = F.interpolate(amap[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        return full, scores
