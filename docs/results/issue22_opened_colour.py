"""Issue 22, session 20: `lab_either` (the product's `either`) against `lab_either_open3` and
`lab_either_open5`, which add a third map to its maximum: the grey-scale opening (3 x 3 or
5 x 5 square at 224 px) of the colour terms' balanced sum (L* and a*b*, each over its normal
99th percentile), blurred and over its level on the clean held-out views. The selection data
of `issue22_shared_edges.py` (the four self-checks plus small parts gone from inside).

    python docs/results/issue22_opened_colour.py OUT.json BUNDLES_DIR:CATEGORY_DIR [...]
"""
from pathlib import Path

import torch
import torch.nn.functional as F

from issue22_either import either_figures
from issue22_selection_terms import compare
from issue22_shared_edges import selection_with_inside, with_kinds
from models.scoring import quantile

SQUARES = (3, 5)
COLOUR_TERMS = 2  # L*, a*b*: the first two `lab` terms


def opening(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Grey-scale opening of ``maps [B, S, S]`` with a ``k`` x ``k`` square."""
    x = maps[:, None]
    eroded = -F.max_pool2d(-x, k, 1, k // 2)
    return F.max_pool2d(eroded, k, 1, k // 2)[:, 0]


def colour_sum(terms: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """The colour terms, each over its 99th percentile on the clean views, summed."""
    return sum(terms[:, t] / max(quantile(terms[clean, t], 0.99), 1e-6) for t in range(COLOUR_TERMS))


def measure(bundles: Path, category_dir: Path) -> dict:
    both, terms, ref_edges, _ = selection_with_inside(bundles, category_dir)
    colour = colour_sum(terms, torch.from_numpy(~both.labels))
    out = {"lab_either": either_figures(both, terms, ref_edges)}
    for k in SQUARES:
        out[f"lab_either_open{k}"] = either_figures(both, terms, ref_edges, (opening(colour, k),), f"lab_either_open{k}")
    return with_kinds(out, both)


if __name__ == "__main__":
    compare(measure, ("lab_either",) + tuple(f"lab_either_open{k}" for k in SQUARES))
