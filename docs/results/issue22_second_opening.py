"""Issue 22, session 20: the product's `either` (`structure`, `silhouette` and `area`, the 3 x 3
opening of the colour terms) against `area35` (a fourth map, the 5 x 5 opening) and `area5`
(the 5 x 5 opening in place of the 3 x 3), on a fresh painted set: the selection data of
`issue22_shared_edges.py` painted and jittered with SEED instead of the self-check's seed.

    python docs/results/issue22_second_opening.py OUT.json BUNDLES_DIR:CATEGORY_DIR [...]
"""
from pathlib import Path

import torch

from issue22_either import either_figures
from issue22_opened_colour import colour_sum
from issue22_selection_terms import compare
from issue22_shared_edges import selection_with_inside, with_kinds
from models.scoring import opening

SEED = 7  # not the self-check's (1000): a set of painted defects no earlier study chose on


def measure(bundles: Path, category_dir: Path) -> dict:
    both, terms, ref_edges, _ = selection_with_inside(bundles, category_dir, SEED)
    colour = colour_sum(terms, torch.from_numpy(~both.labels))
    area3, area5 = opening(colour, 3), opening(colour, 5)
    out = {"product": either_figures(both, terms, ref_edges, (area3,), "product"),
           "area35": either_figures(both, terms, ref_edges, (area3, area5), "area35"),
           "area5": either_figures(both, terms, ref_edges, (area5,), "area5")}
    return with_kinds(out, both)


if __name__ == "__main__":
    compare(measure, ("product", "area35", "area5"))
