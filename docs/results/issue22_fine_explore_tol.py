"""Issue 22, session 21 (exploration, chose nothing): the two finest feature layers' terms of the
selection data painted with SEED, compared at tolerance 0 and 2 (the product: 1), cached beside
`issue22_fine_explore_cache.py`'s files for `issue22_fine_explore.py`'s `l01_t0` and `l01_t2`.

    python docs/results/issue22_fine_explore_tol.py CACHE_DIR SEED BUNDLES_DIR:CATEGORY_DIR [...]
"""
import sys, torch
from pathlib import Path
from issue22_shared_edges import selection_with_inside
from models.scoring import AnomalyScorer
cache, seed = Path(sys.argv[1]), int(sys.argv[2])
for pair in sys.argv[3:]:
    b, c = pair.split(":")
    both, terms, edges, _ = selection_with_inside(Path(b), Path(c), seed)
    sc = both.scorer
    out = {}
    for tol in (0, 2):
        s2 = AnomalyScorer(sc.extractor, sc.size, sc.sigma, tol, sc.combination, sc.stats, sc.background, sc.colour)
        parts = [s2.terms(both.images[i:i + 8], both.refs[i:i + 8])[:, 2:4] for i in range(0, len(both.images), 8)]
        out[f"t{tol}"] = torch.cat(parts)
    torch.save(out, cache / f"tol{seed}_{Path(c).name}.pt")
    print("saved", Path(c).name, flush=True)
