"""Issue 22, session 21 (exploration, chose nothing): cache the selection data of
`issue22_shared_edges.py` painted with SEED, one file per category, for `issue22_fine_explore.py`.

    python docs/results/issue22_fine_explore_cache.py CACHE_DIR SEED BUNDLES_DIR:CATEGORY_DIR [...]
"""
import sys, torch, numpy as np
from pathlib import Path
from issue22_shared_edges import selection_with_inside
cache, seed = Path(sys.argv[1]), int(sys.argv[2])
for pair in sys.argv[3:]:
    b, c = pair.split(":")
    both, terms, edges, _ = selection_with_inside(Path(b), Path(c), seed)
    torch.save({"terms": terms, "sil": both.f.silhouette, "edges": edges, "labels": torch.from_numpy(both.labels),
                "kinds": list(both.kinds), "masks": torch.from_numpy(both.masks), "sigma": both.scorer.sigma},
               cache / f"sel{seed}_{Path(c).name}.pt")
    print("saved", Path(c).name, terms.shape, flush=True)
