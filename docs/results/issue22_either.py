"""Issue 22, session 18: `lab` (the `cpu` preset's scorer) against `lab_either`, the pixel-wise
maximum of the `structure` and `silhouette` maps (blurred), each over the 98th percentile of its
own clean held-out image scores, on the selection data of `issue22_shared_edges.py` (the four
self-checks plus small parts gone from inside). Thresholds: the 98th percentile of each
variant's clean held-out image scores (the product's rule).

    python docs/results/issue22_either.py OUT.json BUNDLES_DIR:CATEGORY_DIR [...]
"""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from issue22_selection_terms import compare, structure_figures
from issue22_shared_edges import selection_with_inside
from lab.scorer_study import FALSE_ALARM, _figures
from models.scoring import blur_maps, combine, fit_normal_stats


def either_figures(s: SimpleNamespace, terms: torch.Tensor, edges: torch.Tensor, extra: tuple = (),
                   name: str = "lab_either") -> dict:
    """The pixel-wise maximum of the `structure` and `silhouette` maps and of any ``extra``
    pre-blur maps ``[B, S, S]``, each blurred and over its level on the clean views."""
    clean = ~s.labels
    stats = fit_normal_stats(terms[clean], s.f.silhouette[clean], edges[clean])
    out = None
    pre = [combine(terms, c, stats, s.f.silhouette, edges) for c in ("structure", "silhouette")] + list(extra)
    for p in pre:
        m = blur_maps(p, s.scorer.sigma)
        level = float(np.quantile(m[clean].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM))
        m = m / level
        out = m if out is None else torch.maximum(out, m)
    thr = float(np.quantile(out[clean].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM))
    r = _figures(out, s.labels, s.masks, thr)
    sc = out.flatten(1).amax(1).numpy()
    r["found_by_kind"] = {str(k): int(((sc > thr) & (s.kinds == k)).sum()) for k in sorted(set(s.kinds)) if k != "good"}
    print(s.category.name, name, r["image_auroc"], r["recall"], f"{r['found']}/{r['of']}", "FAR",
          r["false_alarm_rate"], "pixel", r["pixel_auroc"], r["aupro"], r["found_by_kind"], flush=True)
    return r


def measure(bundles: Path, category_dir: Path) -> dict:
    both, terms, edges, _ = selection_with_inside(bundles, category_dir)
    return {"lab": structure_figures("lab", both, terms, edges), "lab_either": either_figures(both, terms, edges)}

if __name__ == "__main__":
    compare(measure, ("lab", "lab_either"))
