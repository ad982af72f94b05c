"""Metrics against scikit-learn and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve, roc_auc_score

from models.metrics import MetricError, aupro, auroc, f1_max, pixel_auroc


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + labels * 0.3, 1)  # rounding makes many ties
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_extremes_and_errors() -> None:
    labels = np.array([0, 0, 1, 1])
    assert auroc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert auroc(labels, np.ones(4)) == 0.5
    with pytest.raises(MetricError):
        auroc(np.zeros(4), np.arange(4))


def test_pixel_auroc_flattens_all_images() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((3, 8, 8)) < 0.2
    maps = rng.random((3, 8, 8)) + masks
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))


def test_f1_max_matches_sklearn_curve() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(200) < 0.4
    scores = np.round(rng.random(200) + labels * 0.5, 2)
    p, r, _ = precision_recall_curve(labels, scores)
    ref = np.max(np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0))
    assert f1_max(labels, scores) == pytest.approx(ref)
    assert f1_max(np.array([0, 1, 1]), np.array([0.0, 1.0, 2.0])) == 1.0


def test_aupro_perfect_and_inverted() -> None:
    masks = np.zeros((2, 10, 10), bool)
    masks[0, 2:4, 2:4] = True
    masks[1, 5:9, 1:9] = True
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert aupro(masks, 1.0 - masks) == pytest.approx(0.0)


def test_aupro_weighs_regions_equally() -> None:
    """Two regions, 1 px and 16 px: detecting only the small one is worth half the PRO,
    whatever their areas (pixel AUROC would say otherwise)."""
    masks = np.zeros((1, 20, 20), bool)
    masks[0, 1, 1] = True  # region A: 1 pixel
    masks[0, 10:14, 10:14] = True  # region B: 16 pixels
    maps = np.zeros((1, 20, 20))
    maps[0, 1, 1] = 1.0  # only A is found; everything else ties at 0
    # Curve: (0, 0) -> (0, 0.5) at score 1, then (1, 1) when all pixels tie at 0.
    # PRO(fpr) = 0.5 + 0.5 fpr up to 0.3 -> area = 0.3 * 0.5 + 0.5 * 0.3^2 / 2 = 0.1725
    assert aupro(masks, maps) == pytest.approx(0.1725 / 0.3)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))


def test_aupro_merges_diagonal_neighbours_into_one_region() -> None:
    """A 1 px and a 3 px block touching only at a corner: one 4 px region under 8-connectivity
    (finding the single pixel is PRO 1/4), two regions under 4-connectivity (PRO 1/2)."""
    masks = np.zeros((1, 8, 8), bool)
    masks[0, 1, 1] = True
    masks[0, 2, 2:5] = True
    maps = np.zeros((1, 8, 8))
    maps[0, 1, 1] = 1.0
    # PRO: 0.25 at FPR 0, rising linearly to 1 at FPR 1.
    expected = (0.3 * 0.25 + 0.75 * 0.3**2 / 2) / 0.3
    assert aupro(masks, maps) == pytest.approx(expected)




def test_aupro_needs_anomalous_pixels() -> None:
    with pytest.raises(MetricError, match="anomalous pixel"):
        aupro(np.zeros((2, 4, 4), bool), np.random.rand(2, 4, 4))
