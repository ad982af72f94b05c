"""Issue 22, session 20: `lab_either` (the product's `either`) against `lab_either_ab2` and
`lab_either_ab3`, the same scorer with the a*b* term compared within a radius of 2 or 3 pixels
at 224 px instead of 1. The selection data of `issue22_shared_edges.py` (the four self-checks
plus small parts gone from inside).

    python docs/results/issue22_chroma_radius.py OUT.json BUNDLES_DIR:CATEGORY_DIR [...]
"""
from pathlib import Path

import torch

from issue22_chroma_map import AB
from issue22_either import either_figures
from issue22_selection_terms import compare
from issue22_shared_edges import selection_with_inside, with_kinds
from models.scoring import lab_terms

RADII = (2, 3)


def ab_term(scorer, images: torch.Tensor, refs: torch.Tensor, radius: int) -> torch.Tensor:
    """``[B, S, S]``: the squared a*b* difference within ``radius`` pixels at the scorer's size."""
    out = [lab_terms(scorer.squares(images[i:i + 16]), scorer.squares(refs[i:i + 16]), radius)[:, AB]
           for i in range(0, len(images), 16)]
    return torch.cat(out)


def measure(bundles: Path, category_dir: Path) -> dict:
    both, terms, ref_edges, _ = selection_with_inside(bundles, category_dir)
    out = {"lab_either": either_figures(both, terms, ref_edges)}
    for r in RADII:
        wider = terms.clone()
        wider[:, AB] = ab_term(both.scorer, both.images, both.refs, r)
        out[f"lab_either_ab{r}"] = either_figures(both, wider, ref_edges, name=f"lab_either_ab{r}")
    return with_kinds(out, both)


if __name__ == "__main__":
    compare(measure, ("lab_either",) + tuple(f"lab_either_ab{r}" for r in RADII))
