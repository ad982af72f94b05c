"""Issue 22, session 17: `lab` (the `cpu` preset's scorer) against `lab_rgbedge`, the same with
`structure`'s edge strength taken as the largest of the three RGB channels' Sobel magnitudes
(averaged over 5 x 5) instead of the grey image's, on the four self-checks' selection data
(with the stains' visibility floor). Thresholds: the 98th percentile of each variant's clean
held-out image scores (the product's rule).

    python docs/results/issue22_edge_colour.py OUT.json BUNDLES_DIR:CATEGORY_DIR [...]
"""
from pathlib import Path

import kornia
import torch
import torch.nn.functional as F

from issue22_selection_terms import compare, selection, structure_figures
from models.scoring import lab_terms


def rgb_edge_strength(reference: torch.Tensor) -> torch.Tensor:
    """[B, S, S]: the largest channel's Sobel magnitude of ``reference [B, 3, S, S]``, averaged over 5 x 5."""
    return F.avg_pool2d(kornia.filters.sobel(reference).amax(1, keepdim=True), 5, 1, 2)[:, 0]


def measure(bundles: Path, category_dir: Path) -> dict:
    s = selection(bundles, category_dir)
    lab, rgb_edges = [], []
    for i in range(0, len(s.images), 16):
        q, r = s.scorer.squares(s.images[i:i + 16]), s.scorer.squares(s.refs[i:i + 16])
        lab.append(lab_terms(q, r, s.scorer.tolerance)), rgb_edges.append(rgb_edge_strength(r))
    terms = torch.cat([torch.cat(lab), s.f.terms[:, 1:]], 1)
    return {"lab": structure_figures("lab", s, terms, s.f.edges),
            "lab_rgbedge": structure_figures("lab_rgbedge", s, terms, torch.cat(rgb_edges))}


if __name__ == "__main__":
    compare(measure, ("lab", "lab_rgbedge"))
