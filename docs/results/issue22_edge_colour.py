"""Issue 22, session 17: `lab` (the `cpu` preset's scorer) against `lab_rgbedge`, the same with
`structure`'s edge strength taken as the largest of the three RGB channels' Sobel magnitudes
(averaged over 5 x 5) instead of the grey image's, on the four self-checks' selection data
(with the stains' visibility floor). Thresholds: the 98th percentile of each variant's clean
held-out image scores (the product's rule).

    python docs/results/issue22_edge_colour.py OUT.json BUNDLES_DIR:CATEGORY_DIR [...]
"""
import json
import sys
from pathlib import Path

import kornia
import numpy as np
import torch
import torch.nn.functional as F

from issue22_selection_terms import selection
from lab.scorer_study import FALSE_ALARM, _figures
from models.scoring import blur_maps, combine, fit_normal_stats, lab_terms


def rgb_edge_strength(reference: torch.Tensor) -> torch.Tensor:
    """[B, S, S]: the largest channel's Sobel magnitude of ``reference [B, 3, S, S]``, averaged over 5 x 5."""
    return F.avg_pool2d(kornia.filters.sobel(reference).amax(1, keepdim=True), 5, 1, 2)[:, 0]


def measure(bundles: Path, category_dir: Path) -> dict:
    s = selection(bundles, category_dir)
    scorer, f, labels, masks, kinds = s.scorer, s.f, s.labels, s.masks, s.kinds
    lab, rgb_edges = [], []
    for i in range(0, len(s.images), 16):
        q, r = scorer.squares(s.images[i:i + 16]), scorer.squares(s.refs[i:i + 16])
        lab.append(lab_terms(q, r, scorer.tolerance)), rgb_edges.append(rgb_edge_strength(r))
    terms = torch.cat([torch.cat(lab), f.terms[:, 1:]], 1)
    out = {}
    for name, edges in (("lab", f.edges), ("lab_rgbedge", torch.cat(rgb_edges))):
        clean = ~labels
        stats = fit_normal_stats(terms[clean], f.silhouette[clean], edges[clean])
        maps = blur_maps(combine(terms, "structure", stats, f.silhouette, edges), scorer.sigma)
        thr = float(np.quantile(maps[clean].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM))
        r = _figures(maps, labels, masks, thr)
        sc = maps.flatten(1).amax(1).numpy()
        r["found_by_kind"] = {str(k): int(((sc > thr) & (kinds == k)).sum()) for k in sorted(set(kinds)) if k != "good"}
        out[name] = r
        print(s.category.name, name, r["image_auroc"], r["recall"], f"{r['found']}/{r['of']}", "FAR",
              r["false_alarm_rate"], "pixel", r["pixel_auroc"], r["aupro"], r["found_by_kind"], flush=True)
    return out


if __name__ == "__main__":
    results = {}
    for pair in sys.argv[2:]:
        b, c = pair.split(":")
        results[Path(c).name] = measure(Path(b), Path(c))
    for name in ("lab", "lab_rgbedge"):
        print(name, "summed found", sum(r[name]["found"] for r in results.values()),
              "mean image AUROC", round(float(np.mean([r[name]["image_auroc"] for r in results.values()])), 4))
    Path(sys.argv[1]).write_text(json.dumps(results, indent=1) + "\n")
