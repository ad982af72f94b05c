"""Issue 22, session 21: the product's `either` (`structure`, `silhouette`, `area3`, `area5`)
against `fine` (a fifth map: the two finest feature layers' terms, strides 2 and 4, each over
its normal 99th percentile, summed) and `fine3` (that sum opened with a 3 x 3 square), on a
fresh painted set: the selection data of `issue22_shared_edges.py` painted and jittered with
SEED (neither the self-check's seed nor session 20's seed 7).

    python docs/results/issue22_fine_features.py OUT.json BUNDLES_DIR:CATEGORY_DIR [...]

The diagnosis that led here scored each test query's four maps apart (the product's
references, `models.scoring._either_pres`, each map blurred and over its level): seed 1's
Burrs/007 and seed 2's Missing/005 and 008 score 0.37-0.41 on their best map, under good
views at 0.6-1.0 on each map.
"""
from pathlib import Path

import torch

from issue22_either import either_figures
from issue22_opened_colour import COLOUR_TERMS, colour_sum
from issue22_selection_terms import compare
from issue22_shared_edges import selection_with_inside, with_kinds
from models.scoring import opening, quantile

SEED = 11  # a set of painted defects no earlier study chose on
FINE_LAYERS = (0, 1)  # the feature layers of strides 2 and 4, after the colour terms


def fine_sum(terms: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """The finest feature layers' terms, each over its 99th percentile on the clean views, summed."""
    idx = [COLOUR_TERMS + k for k in FINE_LAYERS]
    return sum(terms[:, t] / max(quantile(terms[clean, t], 0.99), 1e-6) for t in idx)


def measure(bundles: Path, category_dir: Path) -> dict:
    both, terms, ref_edges, _ = selection_with_inside(bundles, category_dir, SEED)
    clean = torch.from_numpy(~both.labels)
    colour = colour_sum(terms, clean)
    areas = (opening(colour, 3), opening(colour, 5))
    fine = fine_sum(terms, clean)
    out = {"product": either_figures(both, terms, ref_edges, areas, "product"),
           "fine": either_figures(both, terms, ref_edges, areas + (fine,), "fine"),
           "fine3": either_figures(both, terms, ref_edges, areas + (opening(fine, 3),), "fine3")}
    return with_kinds(out, both)


if __name__ == "__main__":
    compare(measure, ("product", "fine", "fine3"))
