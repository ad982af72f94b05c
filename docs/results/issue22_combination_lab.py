"""Issue 22, session 17: `structure` against two CIELAB colour challengers, on the self-check's
painted and clean held-out queries (with the stains' visibility floor) of each category:

- `ab`: `structure` with a sixth term, the squared a*b* difference (tolerance 1) of the 224 px images;
- `lab`: `structure` with the RGB colour term replaced by the squared L* and a*b* differences.

Thresholds: the 98th percentile of each variant's clean held-out image scores (the product's rule).

    python docs/results/issue22_combination_lab.py OUT.json BUNDLES_DIR:CATEGORY_DIR [...]
"""
from pathlib import Path

import torch

from issue22_selection_terms import compare, selection, structure_figures
from models.scoring import lab_terms


def measure(bundles: Path, category_dir: Path) -> dict:
    s = selection(bundles, category_dir)
    lab = torch.cat([lab_terms(s.scorer.squares(s.images[i:i + 16]), s.scorer.squares(s.refs[i:i + 16]),
                               s.scorer.tolerance) for i in range(0, len(s.images), 16)])
    variants = {"structure": s.f.terms, "ab": torch.cat([s.f.terms, lab[:, 1:]], 1),
                "lab": torch.cat([lab, s.f.terms[:, 1:]], 1)}
    return {name: structure_figures(name, s, terms, s.f.edges) for name, terms in variants.items()}


if __name__ == "__main__":
    compare(measure, ("structure", "ab", "lab"))
