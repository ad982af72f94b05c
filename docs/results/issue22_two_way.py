"""Issue 22, session 35: the comparison tolerance both ways (`two-way`; the rule is in
docs/RESULTS.md, session 35, written before this set's figures).

The product compares each query cell with the best-matching reference cell within 1 cell
(``models.scoring.squared_difference``): one way. A structure the reference has and the query
lacks (a stud gone, whose outline the render draws) leaves the query's plain surface there,
and the reference's plain surface lies within a cell of each of the outline's pixels, so the
tolerance erases most of that evidence. `two-way` also compares each reference cell with the
best-matching query cell within the radius, and keeps the larger of the two differences.

The painted set (the self-check's painter plus small parts gone from inside, painted with SEED)
is cached twice per category, once with the product's terms (prefix ``sel``) and once with the
two-way terms (prefix ``tw``), and each is scored as the product scores: the five maps fitted
on the clean views, each over its 0.98 level, their maximum at sigma 4, and the threshold at
the 98th percentile of the clean image scores (``issue22_interior_explore.run``).

    python docs/results/issue22_two_way.py CACHE_DIR SEED OUT.json BUNDLES_DIR:CATEGORY_DIR [...]

Part (b), the fresh category's test split at true poses: any ``rpe-pad`` command run with the
two-way terms (the calibration stage to refit a copy of the bundle, then ``lab evaluate``):

    python docs/results/issue22_two_way.py rpe-pad train CAT --out COPY --preset cpu --stages calibration,bundle
    python docs/results/issue22_two_way.py rpe-pad lab evaluate COPY/CAT CAT --pose oracle --out DIR
"""
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import models.scoring
from issue22_interior_cache import write_caches
from issue22_interior_explore import run

Tensor = torch.Tensor
ONE_WAY = models.scoring.squared_difference


def two_way_difference(a: Tensor, b: Tensor, tolerance: int = 0) -> Tensor:
    """``[B, H, W]``: the larger of the one-way tolerant difference of ``a`` against ``b``
    (``models.scoring.squared_difference``) and of ``b`` against ``a``. With ``D_e(x) = |a(x) -
    b(x + e)|^2`` the reverse is ``min_e D_e(x - e)``, so each shift's channel sum serves both
    directions and only the ``[B, H, W]`` sums are shifted back (shifts from outside the map
    are left out)."""
    if tolerance <= 0:
        return ONE_WAY(a, b, 0)
    r = tolerance
    padded = F.pad(b, (r, r, r, r), mode="replicate")
    h, w = a.shape[-2:]
    forward = backward = None
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            d = ((a - padded[..., dy : dy + h, dx : dx + w]) ** 2).sum(dim=1)
            forward = d if forward is None else torch.minimum(forward, d)
            back = F.pad(d, (r, r, r, r), value=float("inf"))[..., 2 * r - dy : 2 * r - dy + h, 2 * r - dx : 2 * r - dx + w]
            backward = back if backward is None else torch.minimum(backward, back)
    return torch.maximum(forward, backward)


def check(seed: int = 0) -> None:
    """The shifted reverse equals the reverse computed directly, away from the borders."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(2, 5, 20, 24, generator=g), torch.rand(2, 5, 20, 24, generator=g)
    got = two_way_difference(a, b, 1)
    direct = torch.maximum(ONE_WAY(a, b, 1), ONE_WAY(b, a, 1))
    assert torch.allclose(got[:, 1:-1, 1:-1], direct[:, 1:-1, 1:-1], atol=1e-6), "two-way differs from its definition"


if __name__ == "__main__":
    check()
    if sys.argv[1] == "rpe-pad":
        from rpe_pad.cli import main

        models.scoring.squared_difference = two_way_difference
        sys.exit(main(sys.argv[2:]))
    cache, seed, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    pairs = sys.argv[4:]
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    write_caches(cache, seed, pairs, prefix="sel")
    models.scoring.squared_difference = two_way_difference  # what lab_terms and AnomalyScorer._terms call
    write_caches(cache, seed, pairs, prefix="tw")
    models.scoring.squared_difference = ONE_WAY
    rows = {}
    for pair in pairs:
        c = Path(pair.split(":")[1]).name
        rows[c] = {}
        for prefix, name in (("sel", "product"), ("tw", "two-way")):
            d = torch.load(cache / f"{prefix}{seed}_{c}.pt", weights_only=False)
            rows[c][name] = run(d, "product")
            print(c, name, rows[c][name], flush=True)
    out.write_text(json.dumps({"seed": seed, "seconds": round(time.time() - t0), "categories": rows}, indent=1) + "\n")
