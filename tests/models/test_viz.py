"""Overlays: the decision contour sits on the edge of ``map > 0.5`` and nowhere else."""

from __future__ import annotations

import numpy as np

from models.viz import anomaly_overlay, decision_contour, figure, side_by_side


def test_decision_contour_outlines_the_mask() -> None:
    image = np.zeros((40, 40, 3), np.float32)
    mask = np.zeros((40, 40), bool)
    mask[10:20, 15:30] = True
    out = decision_contour(image, mask)
    drawn = out.max(-1) > 0.5
    border = mask & ~np.pad(mask, 1)[2:, 1:-1] | mask & ~np.pad(mask, 1)[:-2, 1:-1] \
        | mask & ~np.pad(mask, 1)[1:-1, 2:] | mask & ~np.pad(mask, 1)[1:-1, :-2]
    assert drawn[border].all()
    assert not drawn[~mask].any()
    assert not drawn[12:18, 17:28].any()  # the inside stays untouched


def test_overlay_without_anomaly_has_no_contour() -> None:
    image = np.full((32, 32, 3), 0.5, np.float32)
    quiet = anomaly_overlay(image, np.full((32, 32), 0.3, np.float32))
    assert not (quiet == 1.0).all(-1).any()
    np.testing.assert_allclose(anomaly_overlay(image, np.zeros((32, 32), np.float32)), image)  # transparent at 0
    hot = np.full((32, 32), 0.3, np.float32)
    hot[8:16, 8:16] = 0.9
    loud = anomaly_overlay(image, hot)
    assert (loud == 1.0).all(-1).sum() >= 4 * 7  # a white outline around the hot square


def test_side_by_side_has_three_panels() -> None:
    img = np.random.default_rng(0).random((50, 60, 3)).astype(np.float32)
    sheet = side_by_side(img, img, np.zeros((50, 60), np.float32), title="t", cell=100)
    assert sheet.width >= 3 * 100 and sheet.height > 100
    # The panels hold what they say: a red query, a blue reference, then the query under a quiet map.
    red, blue = np.zeros((50, 60, 3), np.float32), np.zeros((50, 60, 3), np.float32)
    red[..., 0], blue[..., 2] = 1.0, 1.0
    arr = np.asarray(side_by_side(red, blue, np.zeros((50, 60), np.float32), cell=100).convert("RGB")).astype(int)
    is_red = (arr[..., 0] > 200) & (arr[..., 1] < 50) & (arr[..., 2] < 50)
    is_blue = (arr[..., 2] > 200) & (arr[..., 0] < 50) & (arr[..., 1] < 50)
    red_cols, blue_cols = np.flatnonzero(is_red.sum(0) > 40), np.flatnonzero(is_blue.sum(0) > 40)
    assert len(blue_cols) >= 90 and len(red_cols) >= 2 * 90
    assert red_cols.min() < blue_cols.min() and red_cols.max() > blue_cols.max()  # red | blue | red


def test_figures_keep_three_significant_digits() -> None:
    """The overlay's caption: a score of 0.66 against 0.3 must not read "1 / 0"."""
    assert [figure(v) for v in (0.66, 0.3, 1.0173, 150.82, 5931.2, 0.0004567)] == \
        ["0.660", "0.300", "1.02", "151", "5931", "0.000457"]
    assert figure(0.0) == "0" and figure(float("inf")) == "inf"


def test_the_peak_ring_circles_the_pixel_and_leaves_it_visible() -> None:
    """The calibration sheet's marker: a white ring of radius size / 12 around (row, column), the
    peak itself and the far corner untouched."""
    from models.viz import peak_ring

    image = np.zeros((96, 120, 3), np.float32)
    out = peak_ring(image, (40, 70))
    white = (out > 0.99).all(-1)
    rows, cols = np.nonzero(white)
    dist = np.hypot(rows - 40, cols - 70)
    assert white.sum() > 40 and np.abs(dist - 10).max() <= 1.5  # on the circle of radius 120 / 12
    assert (out[40, 70] == 0).all() and (out[0, 0] == 0).all()
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (30, 50, 60, 80)  # all the way round
