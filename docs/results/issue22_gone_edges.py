"""Issue 22, session 19: `lab_either` (the product's `either`) against `lab_either3`, the
maximum over three maps: `structure`, `silhouette` and `gone`, the structure the render shows
and the photograph lacks (max(0, the render's edge strength minus the 3 x 3 maximum of the
photograph's)), each blurred and over its level on the clean held-out views. The selection
data of `issue22_shared_edges.py` (the four self-checks plus small parts gone from inside).

    python docs/results/issue22_gone_edges.py OUT.json BUNDLES_DIR:CATEGORY_DIR [...]
"""
from pathlib import Path

import torch
import torch.nn.functional as F

from issue22_either import either_figures
from issue22_selection_terms import compare
from issue22_shared_edges import selection_with_inside


def gone(ref_edges: torch.Tensor, query_edges: torch.Tensor) -> torch.Tensor:
    """``[B, S, S]``: render edge strength with no photograph edge as strong within a pixel."""
    near = F.max_pool2d(query_edges[:, None], 3, 1, 1)[:, 0]
    return (ref_edges - near).clamp_min(0)


def measure(bundles: Path, category_dir: Path) -> dict:
    both, terms, ref_edges, query_edges = selection_with_inside(bundles, category_dir)
    out = {"lab_either": either_figures(both, terms, ref_edges),
           "lab_either3": either_figures(both, terms, ref_edges, (gone(ref_edges, query_edges),), "lab_either3")}
    of_kind = {str(k): int((both.kinds == k).sum()) for k in sorted(set(both.kinds)) if k != "good"}
    for r in out.values():
        r["of_by_kind"] = of_kind
    return out


if __name__ == "__main__":
    compare(measure, ("lab_either", "lab_either3"))
