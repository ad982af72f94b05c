"""Issue 22, session 17: `structure` against two CIELAB colour challengers, on the self-check's
painted and clean held-out queries (with the stains' visibility floor) of each category:

- `ab`: `structure` with a sixth term, the squared a*b* difference (tolerance 1) of the 224 px images;
- `lab`: `structure` with the RGB colour term replaced by the squared L* and a*b* differences.

Thresholds: the 98th percentile of each variant's clean held-out image scores (the product's rule).

    python docs/results/issue22_combination_lab.py OUT.json BUNDLES_DIR:CATEGORY_DIR [...]
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from issue22_selection_terms import selection
from lab.scorer_study import FALSE_ALARM, _figures
from models.scoring import blur_maps, combine, fit_normal_stats, lab_terms


def measure(bundles: Path, category_dir: Path) -> dict:
    s = selection(bundles, category_dir)
    category, scorer, f, labels, masks, kinds = s.category, s.scorer, s.f, s.labels, s.masks, s.kinds
    lab = torch.cat([lab_terms(scorer.squares(s.images[i:i + 16]), scorer.squares(s.refs[i:i + 16]), scorer.tolerance)
                     for i in range(0, len(s.images), 16)])
    variants = {"structure": f.terms, "ab": torch.cat([f.terms, lab[:, 1:]], 1),
                "lab": torch.cat([lab, f.terms[:, 1:]], 1)}
    out = {}
    for name, terms in variants.items():
        clean = ~labels
        stats = fit_normal_stats(terms[clean], f.silhouette[clean], f.edges[clean])
        maps = blur_maps(combine(terms, "structure", stats, f.silhouette, f.edges), scorer.sigma)
        thr = float(np.quantile(maps[clean].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM))
        r = _figures(maps, labels, masks, thr)
        s = maps.flatten(1).amax(1).numpy()
        r["found_by_kind"] = {str(k): int(((s > thr) & (kinds == k)).sum()) for k in sorted(set(kinds)) if k != "good"}
        out[name] = r
        print(category.name, name, r["image_auroc"], r["recall"], f"{r['found']}/{r['of']}", "FAR",
              r["false_alarm_rate"], "pixel", r["pixel_auroc"], r["aupro"], r["found_by_kind"], flush=True)
    return out


if __name__ == "__main__":
    results = {}
    for pair in sys.argv[2:]:
        b, c = pair.split(":")
        results[Path(c).name] = measure(Path(b), Path(c))
    for name in ("structure", "ab", "lab"):
        print(name, "summed found", sum(r[name]["found"] for r in results.values()),
              "mean image AUROC", round(float(np.mean([r[name]["image_auroc"] for r in results.values()])), 4))
    Path(sys.argv[1]).write_text(json.dumps(results, indent=1) + "\n")
