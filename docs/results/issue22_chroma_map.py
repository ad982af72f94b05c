"""Issue 22, session 20: `lab_either` (the product's `either`) against two challengers that add
a third map to its maximum, each blurred and over its level on the clean held-out views:
`lab_either_ab`, the a*b* term as it is, and `lab_either_abd`, the a*b* term over its normal
99th percentile per decile of the render's edge strength. The selection data of
`issue22_shared_edges.py` (the four self-checks plus small parts gone from inside).

    python docs/results/issue22_chroma_map.py OUT.json BUNDLES_DIR:CATEGORY_DIR [...]
"""
from pathlib import Path

import torch

from issue22_either import either_figures
from issue22_selection_terms import compare
from issue22_shared_edges import selection_with_inside, with_kinds
from models.scoring import STRUCTURE_BINS, quantile

AB = 1  # the a*b* term's index among the `lab` terms: L*, a*b*, then the feature layers


def per_decile(term: torch.Tensor, edges: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``term [B, S, S]`` over its 99th percentile on the clean views among pixels of the same
    decile of ``edges`` (the deciles fitted on the clean views, as `structure`'s are)."""
    bins = torch.tensor([quantile(edges[clean], float(q)) for q in torch.linspace(0, 1, STRUCTURE_BINS + 1)[1:-1]])
    which = torch.bucketize(edges.contiguous(), bins)
    scales = torch.ones(STRUCTURE_BINS)
    for b in range(STRUCTURE_BINS):
        sel = (which == b) & clean[:, None, None]
        if bool(sel.any()):
            scales[b] = max(quantile(term[sel], 0.99), 1e-6)
    return term / scales[which]


def measure(bundles: Path, category_dir: Path) -> dict:
    both, terms, ref_edges, _ = selection_with_inside(bundles, category_dir)
    ab = terms[:, AB]
    clean = torch.from_numpy(~both.labels)
    out = {"lab_either": either_figures(both, terms, ref_edges),
           "lab_either_ab": either_figures(both, terms, ref_edges, (ab,), "lab_either_ab"),
           "lab_either_abd": either_figures(both, terms, ref_edges, (per_decile(ab, ref_edges, clean),),
                                            "lab_either_abd")}
    return with_kinds(out, both)


if __name__ == "__main__":
    compare(measure, ("lab_either", "lab_either_ab", "lab_either_abd"))
