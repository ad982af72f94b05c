"""Issue 22, session 22 (exploration, chose nothing): the five-map product against variants of
its `fine` map on the cached selection data of `issue22_interior_cache.py`:

* `in2`, `in4`: the fine map kept only at pixels at least 2 or 4 px (at 224) inside both the
  photograph's and the render's object (the outline is the silhouette map's to judge);
* `sh`: the fine map over its normal 99th percentile among pixels of the same decile of the
  shared edge strength (the pixel-wise minimum of the photograph's and the render's), so
  residue on structure both images show counts for less, and structure only the render shows
  (a part gone) keeps its weight.

    python docs/results/issue22_interior_explore.py CACHE_DIR SEED VARIANT[,VARIANT...]
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lab.scorer_study import FALSE_ALARM, _figures
from models.scoring import STRUCTURE_BINS, blur_maps, combine, fit_normal_stats, opening, quantile

CATEGORIES = ("Lego", "synth_0", "synth_1", "synth_2")


def scaled(terms, clean, idx):
    return sum(terms[:, t] / max(quantile(terms[clean, t], 0.99), 1e-6) for t in idx)


def interior(d, k):
    both = (d["fq"] & d["fr"]).float()[:, None]
    return (1 - F.max_pool2d(1 - both, 2 * k + 1, 1, k))[:, 0]


def by_decile(pre, edges, clean):
    """``pre`` over its clean 99th percentile among pixels of the same decile of ``edges``."""
    bins = torch.tensor([quantile(edges[clean], float(q)) for q in torch.linspace(0, 1, STRUCTURE_BINS + 1)[1:-1]])
    which = torch.bucketize(edges.contiguous(), bins)
    scales = torch.tensor([max(quantile(pre[clean][which[clean] == b], 0.99), 1e-6) if bool((which[clean] == b).any())
                           else 1.0 for b in range(STRUCTURE_BINS)])
    return pre / scales[which]


def maps(d, variant):
    clean = ~d["labels"]
    terms, sil, edges = d["terms"].float(), d["sil"].float(), d["edges"].float()
    stats = fit_normal_stats(terms[clean], sil[clean], edges[clean])
    col = scaled(terms, clean, range(2))
    fine = scaled(terms, clean, (2, 3))
    if variant.startswith("in"):
        fine = fine * interior(d, int(variant[2:]))
    elif variant == "sh":
        fine = by_decile(fine, torch.minimum(edges, d["qedges"].float()), clean)
    return [combine(terms, "structure", stats, sil, edges), combine(terms, "silhouette", stats, sil, edges),
            opening(col, 3), opening(col, 5), fine]


def run(d, variant):
    labels, clean = d["labels"].numpy(), ~d["labels"]
    out = None
    for pre in maps(d, variant):
        m = blur_maps(pre, d["sigma"])
        m = m / float(np.quantile(m[clean].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM))
        out = m if out is None else torch.maximum(out, m)
    thr = float(np.quantile(out[clean].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM))
    r = _figures(out, labels, d["masks"].numpy(), thr)
    sc, kinds = out.flatten(1).amax(1).numpy(), np.array(d["kinds"])
    r["by_kind"] = {str(k): int(((sc > thr) & (kinds == k)).sum()) for k in sorted(set(kinds)) if k != "good"}
    return r


if __name__ == "__main__":
    cache, seed, variants = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    total = {v: [0, 0, []] for v in variants}
    for c in CATEGORIES:
        path = cache / f"sel{seed}_{c}.pt"
        if not path.exists():
            continue
        d = torch.load(path, weights_only=False)
        for v in variants:
            r = run(d, v)
            total[v][0] += r["found"]
            total[v][1] += r["of"]
            total[v][2].append(r["image_auroc"])
            print(c, v, "found", r["found"], "/", r["of"], "auroc", round(r["image_auroc"], 4), "FAR",
                  round(r["false_alarm_rate"], 3), "pix", round(r["pixel_auroc"], 4), "aupro", round(r["aupro"], 4),
                  r["by_kind"], flush=True)
    for v in variants:
        print("TOTAL", v, total[v][0], "/", total[v][1], "mean auroc", round(float(np.mean(total[v][2])), 4))
