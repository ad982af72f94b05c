"""The field's metrics, implemented here: image/pixel AUROC, AUPRO (FPR <= 0.3), F1-max.

AUROC is the Mann-Whitney statistic with tied scores counted half (what scikit-learn's
``roc_auc_score`` computes). AUPRO follows the MVTec reference algorithm: connected
components of every ground-truth mask (8-connectivity); each normal pixel adds 1 to the
false-positive count and each pixel of region k adds 1/|k| to the overlap; scores sorted
descending and cumulated, the last point of each tied score kept, (0, 0) prepended; the
PRO curve is integrated by trapezoids up to FPR 0.3 (the end point interpolated) and
divided by 0.3.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata


class MetricError(ValueError):
    """The inputs do not allow the metric (e.g. a single class)."""


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = anomalous)."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise MetricError(f"labels {labels.shape} and scores {scores.shape} differ in size")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise MetricError("AUROC needs both normal and anomalous samples")
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """AUROC over every pixel of every image: masks [N, H, W] bool, maps [N, H, W]."""
    return auroc(np.asarray(masks), np.asarray(maps))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 over all thresholds ``score >= t``."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if not labels.any():
        raise MetricError("F1 needs at least one anomalous sample")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[s[1:] != s[:-1], True]  # thresholds between distinct scores
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / labels.sum()
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return float(f1.max())


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit``."""
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise MetricError(f"masks {masks.shape} and maps {maps.shape} must both be [N, H, W]")
    if not masks.any():
        raise MetricError("AUPRO needs at least one anomalous pixel")
    if masks.all():
        raise MetricError("AUPRO needs normal pixels")
    structure = np.ones((3, 3), dtype=bool)
    fp_weight = np.zeros(masks.shape, dtype=np.float64)
    overlap_weight = np.zeros(masks.shape, dtype=np.float64)
    n_regions = 0
    for i, mask in enumerate(masks):
        fp_weight[i][~mask] = 1.0
        labelled, count = ndimage.label(mask, structure=structure)
        if count:
            sizes = np.bincount(labelled.ravel())
            region = labelled > 0
            overlap_weight[i][region] = 1.0 / sizes[labelled[region]]
            n_regions += count
    order = np.argsort(-maps.ravel(), kind="mergesort")
    scores = maps.ravel()[order]
    fpr = np.cumsum(fp_weight.ravel()[order]) / (~masks).sum()
    pro = np.cumsum(overlap_weight.ravel()[order]) / n_regions
    last = np.r_[scores[1:] != scores[:-1], True]
    fpr = np.r_[0.0, fpr[last]]
    pro = np.r_[0.0, pro[last]]
    # Integrate up to fpr_limit, interpolating the end point.
    end = np.searchsorted(fpr, fpr_limit, side="right")
    x, y = fpr[:end], pro[:end]
    if end < len(fpr) and x[-1] < fpr_limit:
        x0, x1, y0, y1 = fpr[end - 1], fpr[end], pro[end - 1], pro[end]
        y_end = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0) if x1 > x0 else y1
        x, y = np.r_[x, fpr_limit], np.r_[y, y_end]
    return float(np.trapezoid(y, x) / fpr_limit)
