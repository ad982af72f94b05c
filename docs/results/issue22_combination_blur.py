"""Issue 22, session 17: `structure` at the product's blur (sigma 4) against `structure_s2` and
`structure_s1` (sigma 2 and 1), on the four self-checks' selection data saved by
issue22_selection_terms.py as FOLDER/{lego,s0,s1,s2}_feats.pt (painted with the visibility floor).
Thresholds: the 98th percentile of each variant's clean held-out image scores (the product's rule).

    python docs/results/issue22_combination_blur.py FOLDER   # writes FOLDER/blur.json
"""
import json
import sys

import numpy as np
import torch

from lab.scorer_study import FALSE_ALARM, Features, Variant, _figures
from models.scoring import blur_maps

FOLDER = sys.argv[1]
SIGMAS = {"structure": 4.0, "structure_s2": 2.0, "structure_s1": 1.0}
out = {}
for name in ["lego", "s0", "s1", "s2"]:
    d = torch.load(f"{FOLDER}/{name}_feats.pt")
    f = Features.__new__(Features)
    f.terms, f.silhouette, f.edges, f.chroma = d["terms"].float(), d["sil"].float(), d["edges"].float(), d["chroma"].float()
    labels, masks, kinds = d["labels"].numpy().astype(bool), d["masks"].numpy(), np.array(d["kinds"])
    pre = Variant("structure", f.subset(~labels)).pre(f)
    out[name] = {}
    for variant, sigma in SIGMAS.items():
        m = blur_maps(pre, sigma)
        thr = float(np.quantile(m[~labels].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM))
        r = _figures(m, labels, masks, thr)
        s = m.flatten(1).amax(1).numpy()
        r["found_by_kind"] = {str(k): int(((s > thr) & (kinds == k)).sum()) for k in sorted(set(kinds)) if k != "good"}
        out[name][variant] = r
        print(name, variant, r["image_auroc"], r["recall"], f"{r['found']}/{r['of']}", "FAR", r["false_alarm_rate"],
              "pixel", r["pixel_auroc"], r["aupro"], r["found_by_kind"], flush=True)
for variant in SIGMAS:
    print(variant, "summed found", sum(out[n][variant]["found"] for n in out),
          "mean image AUROC", round(float(np.mean([out[n][variant]["image_auroc"] for n in out])), 4))
json.dump(out, open(f"{FOLDER}/blur.json", "w"), indent=1)
