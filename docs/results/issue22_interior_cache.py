"""Issue 22, session 22 (exploration, chose nothing): cache the selection data of
`issue22_shared_edges.py` painted with SEED, one file per category, as
`issue22_fine_explore_cache.py` does, plus what the interior and shared-edge maps read: the
photographs' and the renders' foreground and the photographs' edge strength at the scoring
resolution.

    python docs/results/issue22_interior_cache.py CACHE_DIR SEED BUNDLES_DIR:CATEGORY_DIR [...]
"""
import sys
from pathlib import Path

import torch

from issue22_shared_edges import selection_with_inside
from models.scoring import FOREGROUND_TOL
from models.verify import foreground


def foregrounds(scorer, images: torch.Tensor, background) -> torch.Tensor:
    """``[B, S, S]`` bool: the object's pixels of ``images`` at the scoring resolution."""
    out = []
    for i in range(0, len(images), 32):
        sq = scorer.squares(images[i:i + 32])
        out.append(foreground(sq.permute(0, 2, 3, 1), tuple(background), FOREGROUND_TOL))
    return torch.cat(out)


def write_caches(cache: Path, seed: int, pairs: list[str], prefix: str = "sel") -> None:
    """``{prefix}{seed}_<category>.pt`` in ``cache`` for each ``BUNDLES_DIR:CATEGORY_DIR``."""
    for pair in pairs:
        b, c = pair.split(":")
        both, terms, edges, qedges = selection_with_inside(Path(b), Path(c), seed)
        bg = both.category.background
        torch.save({"terms": terms, "sil": both.f.silhouette, "edges": edges, "qedges": qedges,
                    "fq": foregrounds(both.scorer, both.images, bg), "fr": foregrounds(both.scorer, both.refs, bg),
                    "labels": torch.from_numpy(both.labels), "kinds": list(both.kinds),
                    "masks": torch.from_numpy(both.masks), "sigma": both.scorer.sigma},
                   cache / f"{prefix}{seed}_{Path(c).name}.pt")
        print("saved", Path(c).name, terms.shape, flush=True)


if __name__ == "__main__":
    write_caches(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
