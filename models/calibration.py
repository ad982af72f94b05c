"""A category's decision rule: threshold, normalised score and normal statistics.

Rules (``Calibration.rule``):

- ``false_alarm`` (the ``cpu`` and ``paper`` presets): ``threshold = Q_(1 - r)(held-out
  scores)``, with r the stated false-alarm rate (``false_alarm_rate``, 0.02 by default) and
  the scores those of training photographs held out of a calibration model's fit, against
  its renders at jittered poses (``training/calibrate.py``): views no model saw, like a
  customer's queries. With it go the threshold's 90 % range and the false-alarm rate's over
  resamplings of those views (``threshold_spread``), so a customer sees how firmly a dozen or
  two views pin the operating point;
- ``quantile`` (the quick rule of the ``demo`` preset, needs normal views only): ``threshold = Q_q(normal scores) *
  (1 + margin)`` with q = 0.99 and margin = 0.10. The normal scores come from views the
  model has not been told are normal on purpose: training views scored against renders at
  slightly jittered poses (see ``training/calibrate.py``), so the threshold covers render
  error and a small residual pose error.
- ``f1``: with a labelled validation set, the threshold halfway between the two scores
  that bracket the F1-optimal cut.

Normalised score (the convention of the best-known anomaly detection library: 0.5 at the
threshold, clipped to [0, 1]):

    normalised = clip(0.5 + 0.5 * (raw - threshold) / (threshold - floor), 0, 1)

with ``floor`` the lowest normal image score (half the threshold if a validation set put
the threshold below it) (so the cleanest normal view maps to 0 and
twice the threshold's distance above it to 1). Anomaly maps use the same formula with the
lower of the median normal pixel value and half the score's floor as floor (``pixel_floor``,
``map_floor``), so a map pixel at 0.5 sits exactly at the decision
threshold and the decision mask is ``normalised map > 0.5``. A per-request threshold
override keeps the floors and moves the 0.5 point. With a map blurred apart from the score
(``models.scoring``, ``map_sigma``: the ``cpu`` and ``paper`` presets since session 31) the
map is scaled so that its threshold falls on the score's, and capped at the image's score: a part
under the threshold shows no pixel over it, and a few parts over it (0.7 % of the defects found on
a painted set) show none either, their evidence spread too thin at the map's finer blur.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

QUANTILE = 0.99
MARGIN = 0.10
PIXEL_QUANTILES = (0.5, 0.9, 0.99, 0.999, 1.0)
MAX_THRESHOLD = 1e9  # a threshold above it is refused: no score comes near, and 2 (t - floor) overflows near 1e308


class ScoreStats(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    n: int = Field(ge=1)
    min: float
    median: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, scores: np.ndarray) -> ScoreStats:
        s = np.asarray(scores, dtype=np.float64).ravel()
        if s.size == 0 or not np.isfinite(s).all():
            raise ValueError("normal scores must be a non-empty set of finite numbers")
        return cls(n=int(s.size), min=float(s.min()), median=float(np.median(s)),
                   p95=float(np.quantile(s, 0.95)), p99=float(np.quantile(s, 0.99)), max=float(s.max()))

    @model_validator(mode="after")
    def _in_order(self) -> ScoreStats:
        if not self.min <= self.median <= self.p95 <= self.p99 <= self.max:
            raise ValueError(f"normal score statistics must satisfy min <= median <= p95 <= p99 <= max, got {self}")
        return self


class Calibration(BaseModel):
    """What a bundle stores about its decision rule (``calibration.json``); every number finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    version: Literal[1] = 1
    rule: Literal["false_alarm", "quantile", "f1"]
    threshold: float = Field(gt=0, le=MAX_THRESHOLD)
    quantile: float = Field(QUANTILE, gt=0, le=1)
    margin: float = Field(MARGIN, ge=0)
    false_alarm_rate: float | None = Field(None, gt=0, lt=0.5)  # rule false_alarm: the share of good parts rejected
    # Rule false_alarm: the held-out scores were multiplied by this before the threshold was read
    # off: the shipped model's score over the calibration model's on the views both fitted (the
    # median ratio), because the calibration model is the less converged one (training/calibrate.py).
    heldout_scale: float | None = Field(None, gt=0)
    # Rule false_alarm: the threshold's 90 % range, and that of the false-alarm rate it gives, when
    # the held-out views are resampled (``threshold_spread``): how well so few views pin it down.
    threshold_range: tuple[float, float] | None = None
    false_alarm_range: tuple[float, float] | None = None
    # Rule false_alarm, photos lossless: the JPEG settings (quality, chroma) its held-out photos
    # were judged at without raising the false alarms past twice the rate, and their width; a
    # query at least that wide and at least as fine as one of them is taken, any other JPEG is
    # refused (models.compression, training/calibrate.py ``jpeg_tolerance``). None: not measured.
    jpeg_taken: list[tuple[Annotated[int, Field(ge=1, le=100)], Literal["4:4:4", "4:2:0"]]] | None = None
    jpeg_photo_width: int | None = Field(None, gt=0)
    score_floor: float = Field(ge=0)
    pixel_floor: float = Field(ge=0)
    normal_scores: ScoreStats
    normal_pixel_quantiles: dict[str, float]
    scorer: dict
    sources: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _floors_below_threshold(self) -> Calibration:
        ranges = (self.threshold_range, self.false_alarm_range)
        if (ranges[0] is None) != (ranges[1] is None) or (ranges[0] is not None and self.rule != "false_alarm"):
            raise ValueError("threshold_range and false_alarm_range go together, and only with rule false_alarm")
        for name, top in (("threshold_range", np.inf), ("false_alarm_range", 1.0)):
            lo, hi = getattr(self, name) or (0.0, 0.0)
            if not (np.isfinite([lo, hi]).all() and 0 <= lo <= hi <= top):
                raise ValueError(f"{name} must be two finite numbers, 0 <= low <= high (<= {top}), got {getattr(self, name)}")
        if self.score_floor >= self.threshold:
            raise ValueError(f"score_floor {self.score_floor} must lie below the threshold {self.threshold}")
        if self.pixel_floor >= self.threshold:
            raise ValueError(f"pixel_floor {self.pixel_floor} must lie below the threshold {self.threshold}")
        return self

    def resolve(self, threshold: float | None) -> float:
        """The threshold in force: the calibrated one or a caller's override (> floor)."""
        if threshold is None:
            return self.threshold
        if not np.isfinite(threshold) or not self.score_floor < threshold <= MAX_THRESHOLD:
            raise ValueError(f"threshold must be a number above {self.score_floor:.4g} (the lowest normal score) and at "
                             f"most {MAX_THRESHOLD:.0e}, got {threshold}")
        return float(threshold)

    def normalise(self, raw, threshold: float | None = None):
        """Normalised image score(s) in [0, 1]; 0.5 at the threshold in force."""
        return _normalise(raw, self.resolve(threshold), self.score_floor)

    @property
    def map_floor(self) -> float:
        """The raw value a normalised map shows as 0 (its 0.5 is the threshold)."""
        return min(self.pixel_floor, self.score_floor)

    def normalise_map(self, amap, threshold: float | None = None):
        """Normalised anomaly map in [0, 1]; ``> 0.5`` is the decision mask."""
        return _normalise(amap, self.resolve(threshold), self.map_floor)

    def decide(self, raw, threshold: float | None = None):
        """True where the raw score exceeds the threshold in force (``exceeds``)."""
        return exceeds(raw, self.resolve(threshold))


def exceeds(raw, threshold: float):
    """The decision, the one place it is made: a score (or map value) is anomalous when it is
    strictly over the threshold; one equal to it is normal (its normalised score is 0.5)."""
    return raw > threshold


def _normalise(values, threshold: float, floor: float):
    scale = 2.0 * (threshold - floor)
    if isinstance(values, torch.Tensor):
        return (0.5 + (values - threshold) / scale).clamp(0.0, 1.0)
    return np.clip(0.5 + (np.asarray(values, dtype=np.float64) - threshold) / scale, 0.0, 1.0)


SPREAD_DRAWS = 2000  # resamplings behind a threshold's range (threshold_spread)
SPREAD_MIN_VIEWS = 5  # fewer held-out views give no range: resampling one or two views says nothing


def threshold_spread(scores: np.ndarray, false_alarm_rate: float, draws: int = SPREAD_DRAWS,
                     seed: int = 0) -> tuple[tuple[float, float], tuple[float, float]]:
    """How well a rule ``false_alarm`` threshold is pinned down by its held-out views.

    ``scores [V, J]``: each held-out view's ``J`` (jittered) scores, kept together. The views are
    drawn with replacement ``draws`` times (the bootstrap), the threshold is read off each
    resample as the calibration reads it (the ``1 - false_alarm_rate`` quantile), and each
    resampled threshold's false-alarm rate is taken on all the scores. Returns the 5th and 95th
    percentiles of both: ``(threshold_low, threshold_high), (rate_low, rate_high)``. A wide range
    says the views are too few, or one of them scores far above the rest (docs/SCORING.md)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.size == 0 or not np.isfinite(s).all():
        raise ValueError(f"need a [views, draws] array of finite scores, got shape {s.shape}")
    if len(s) < SPREAD_MIN_VIEWS:
        raise ValueError(f"{len(s)} held-out views are too few to resample (at least {SPREAD_MIN_VIEWS})")
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(s), size=(draws, len(s)))
    thresholds = np.quantile(s[picks].reshape(draws, -1), 1.0 - false_alarm_rate, axis=1)
    rates = exceeds(s.reshape(1, -1), thresholds[:, None]).mean(axis=1)
    (t_lo, t_hi), (r_lo, r_hi) = np.quantile(thresholds, [0.05, 0.95]), np.quantile(rates, [0.05, 0.95])
    return (float(t_lo), float(t_hi)), (float(r_lo), float(r_hi))


def quantile_threshold(normal_scores: np.ndarray, quantile: float = QUANTILE, margin: float = MARGIN) -> float:
    """``Q_quantile(normal scores) * (1 + margin)``."""
    s = np.asarray(normal_scores, dtype=np.float64).ravel()
    if s.size == 0 or not np.isfinite(s).all():
        raise ValueError("normal scores must be a non-empty set of finite numbers")
    if not 0 < quantile <= 1 or margin < 0:
        raise ValueError(f"need 0 < quantile <= 1 and margin >= 0, got {quantile}, {margin}")
    return float(np.quantile(s, quantile) * (1.0 + margin))


def f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The F1-optimal threshold of a labelled set (decision ``score > threshold``): halfway
    between the lowest score flagged and the highest score below it."""
    y = np.asarray(labels, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.size != s.size or not y.any() or y.all():
        raise ValueError("a labelled validation set needs both normal and anomalous views, one score each")
    cuts = np.unique(s)  # candidate: flag every score >= cut
    best, best_f1 = cuts[0], -1.0
    for cut in cuts:
        flagged = s >= cut
        tp = np.sum(flagged & y)
        f1 = 2 * tp / (flagged.sum() + y.sum())
        if f1 > best_f1:
            best, best_f1 = cut, f1
    below = s[s < best]
    # When flagging everything is optimal, the threshold sits just under the lowest score.
    return float(0.5 * (best + below.max())) if below.size else float(np.nextafter(best, -np.inf))


def pixel_quantiles(maps: np.ndarray) -> dict[str, float]:
    values = np.asarray(maps, dtype=np.float64).ravel()
    return {f"q{q:g}": float(np.quantile(values, q)) for q in PIXEL_QUANTILES}
