"""The decision rule: thresholds, the normalised score and the stored calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from models.calibration import (
    Calibration,
    ScoreStats,
    f1_threshold,
    pixel_quantiles,
    quantile_threshold,
    threshold_spread,
)


def _calibration(**overrides) -> Calibration:
    fields = dict(rule="quantile", threshold=10.0, score_floor=4.0, pixel_floor=1.0,
                  normal_scores=ScoreStats.of(np.array([4.0, 5.0, 6.0, 9.0])),
                  normal_pixel_quantiles={"q0.5": 1.0}, scorer={"tolerance": 0})
    return Calibration(**{**fields, **overrides})


def test_quantile_threshold_is_the_quantile_plus_margin() -> None:
    scores = np.arange(1, 101, dtype=float)  # Q_0.99 = 99.01 with linear interpolation
    assert quantile_threshold(scores, 0.99, 0.10) == pytest.approx(99.01 * 1.1)
    assert quantile_threshold(scores, 1.0, 0.0) == 100.0
    with pytest.raises(ValueError, match="non-empty"):
        quantile_threshold(np.array([]))
    with pytest.raises(ValueError, match="finite"):
        quantile_threshold(np.array([1.0, np.nan]))


def test_f1_threshold_separates_a_separable_set_halfway() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([1.0, 2.0, 3.0, 5.0, 9.0])
    assert f1_threshold(labels, scores) == 4.0


def test_f1_threshold_trades_off_an_overlap() -> None:
    # Flagging >= 3 gives tp 2, fp 1 (F1 0.8); >= 4 gives tp 1 (F1 0.67); >= 2 gives F1 0.67.
    labels = np.array([0, 0, 1, 0, 1])
    scores = np.array([1.0, 2.0, 3.0, 3.5, 4.0])
    t = f1_threshold(labels, scores)
    assert t == 2.5
    flagged = scores > t
    assert flagged.tolist() == [False, False, True, True, True]


def test_f1_threshold_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both normal and anomalous"):
        f1_threshold(np.array([0, 0]), np.array([1.0, 2.0]))


def test_normalised_score_is_half_at_the_threshold_and_clipped() -> None:
    c = _calibration()
    assert c.normalise(10.0) == pytest.approx(0.5)
    assert c.normalise(4.0) == pytest.approx(0.0)  # the floor
    assert c.normalise(16.0) == pytest.approx(1.0)
    assert c.normalise(7.0) == pytest.approx(0.25)
    assert c.normalise(100.0) == 1.0 and c.normalise(0.0) == 0.0
    assert torch.allclose(c.normalise(torch.tensor([4.0, 10.0, 16.0])), torch.tensor([0.0, 0.5, 1.0]))
    assert c.decide(10.5) and not c.decide(10.0)


def test_threshold_override_moves_the_half_point() -> None:
    c = _calibration()
    assert c.normalise(8.0, threshold=8.0) == pytest.approx(0.5)
    assert c.decide(9.0, threshold=8.0) and not c.decide(9.0)
    with pytest.raises(ValueError, match="above"):
        c.normalise(5.0, threshold=3.0)  # below the lowest normal score
    with pytest.raises(ValueError, match="above"):
        c.resolve(float("nan"))


def test_map_normalisation_uses_the_pixel_floor() -> None:
    c = _calibration()
    amap = np.array([[1.0, 10.0], [19.0, 0.0]])
    np.testing.assert_allclose(c.normalise_map(amap), [[0.0, 0.5], [1.0, 0.0]])
    assert (c.normalise_map(amap) > 0.5).sum() == 1


def test_calibration_validates_and_round_trips() -> None:
    c = _calibration()
    assert Calibration.model_validate_json(c.model_dump_json()) == c
    with pytest.raises(ValidationError, match="below the threshold"):
        _calibration(score_floor=12.0)
    with pytest.raises(ValidationError):
        _calibration(threshold=-1.0)
    with pytest.raises(ValidationError):
        Calibration.model_validate({**c.model_dump(), "version": 2})
    with pytest.raises(ValidationError):
        Calibration.model_validate({**c.model_dump(), "surprise": 1})


def test_pixel_quantiles() -> None:
    q = pixel_quantiles(np.arange(11, dtype=float))
    assert q["q0.5"] == 5.0 and q["q1"] == 10.0


def test_threshold_spread_says_how_firmly_the_views_pin_the_threshold() -> None:
    """The bootstrap over held-out views: deterministic, brackets the threshold, widens when one
    view scores far above the rest, narrows with more views; its false-alarm rates are those of
    the resampled thresholds on all the scores."""
    rng = np.random.default_rng(3)
    scores = rng.normal(0.6, 0.05, size=(12, 4))
    t = float(np.quantile(scores, 0.98))
    (lo, hi), (r_lo, r_hi) = threshold_spread(scores, 0.02)
    assert threshold_spread(scores, 0.02) == ((lo, hi), (r_lo, r_hi))
    assert lo <= t <= hi and 0 <= r_lo <= r_hi <= 1
    assert r_hi == pytest.approx(np.mean(scores > lo), abs=1 / scores.size)  # the lowest threshold, the most alarms
    outlier = scores.copy()
    outlier[2, 2] = 1.6  # one jitter draw of one view far off, as session 23 found on Lego and seed 0
    (o_lo, o_hi), _ = threshold_spread(outlier, 0.02)
    assert o_hi == pytest.approx(1.6) and o_hi - o_lo > 3 * (hi - lo)
    more = np.concatenate([scores, rng.normal(0.6, 0.05, size=(36, 4))])
    (m_lo, m_hi), _ = threshold_spread(more, 0.02)
    assert m_hi - m_lo < hi - lo
    with pytest.raises(ValueError, match="views, draws"):
        threshold_spread(scores.ravel(), 0.02)
    with pytest.raises(ValueError, match="too few"):  # one view resampled is always itself: no range, not a firm one
        threshold_spread(scores[:4], 0.02)
    with pytest.raises(ValueError, match="finite"):
        threshold_spread(np.full((3, 2), np.nan), 0.02)


def test_calibration_refuses_a_range_upside_down_or_out_of_place() -> None:
    held = dict(rule="false_alarm", false_alarm_rate=0.02)
    c = _calibration(**held, threshold_range=(9.0, 13.0), false_alarm_range=(0.0, 0.06))
    assert Calibration.model_validate_json(c.model_dump_json()) == c
    for bad in ({"threshold_range": (13.0, 9.0)}, {"false_alarm_range": (-0.1, 0.2)}, {"false_alarm_range": (0.0, 1.5)},
                {"threshold_range": (9.0, float("inf"))}):
        with pytest.raises(ValidationError, match="range"):
            _calibration(**{**held, "threshold_range": (9.0, 13.0), "false_alarm_range": (0.0, 0.06), **bad})
    with pytest.raises(ValidationError, match="go together"):
        _calibration(**held, threshold_range=(9.0, 13.0))
    with pytest.raises(ValidationError, match="only with rule false_alarm"):
        _calibration(threshold_range=(9.0, 13.0), false_alarm_range=(0.0, 0.06))


@pytest.mark.parametrize("changes, problem", [
    ({"threshold": float("inf")}, "threshold"),
    ({"threshold": float("nan")}, "threshold"),
    ({"threshold": 1e300}, "threshold"),
    ({"threshold": -1.0}, "threshold"),
    ({"rule": "false_alarm", "false_alarm_rate": 1.5}, "false_alarm_rate"),
    ({"rule": "false_alarm", "false_alarm_rate": 0.02, "threshold_range": (13.0, 11.0),
      "false_alarm_range": (0.0, 0.06)}, "low <= high"),
    ({"normal_scores": {"n": 4, "min": float("nan"), "median": 5.0, "p95": 8.0, "p99": 9.0, "max": 9.0}}, "normal_scores.min"),
    ({"normal_scores": {"n": 4, "min": 4.0, "median": -7.0, "p95": 8.0, "p99": 9.0, "max": 9.0}}, "min <= median"),
    ({"normal_pixel_quantiles": {"q0.5": float("inf")}}, "normal_pixel_quantiles"),
    ({"heldout_scale": float("inf")}, "heldout_scale"),
])
def test_a_stored_calibration_with_a_bad_number_is_refused(changes: dict, problem: str) -> None:
    """calibration.json comes from outside (a bundle): an infinite, NaN or inconsistent number is
    refused as it is read, naming the field, rather than deciding every query with it."""
    stored = json.dumps({**_calibration().model_dump(), **changes})  # json writes NaN and Infinity
    with pytest.raises(ValidationError, match=problem):
        Calibration.model_validate_json(stored)
