"""Issue 22, session 17: `structure` against the per-pixel maximum of the scaled terms (`max`, and
`max_flat` without the edge-decile division), on the four self-checks' selection data saved by
issue22_selection_terms.py as FOLDER/{lego,s0,s1,s2}_feats.pt. Thresholds: the 98th percentile
of each variant's clean held-out image scores (the product's rule).

    python docs/results/issue22_combination_max.py FOLDER   # writes FOLDER/combo.json
"""
import sys, numpy as np, torch
FOLDER = sys.argv[1]
from lab.scorer_study import Variant, Features, _figures, FALSE_ALARM
from models.scoring import fit_normal_stats, blur_maps, quantile, STRUCTURE_BINS
out = {}
for name in ["lego", "s0", "s1", "s2"]:
    d = torch.load(f"{FOLDER}/{name}_feats.pt")
    f = Features.__new__(Features)
    f.terms, f.silhouette, f.edges, f.chroma = d["terms"].float(), d["sil"].float(), d["edges"].float(), d["chroma"].float()
    labels = d["labels"].numpy().astype(bool); masks = d["masks"].numpy(); kinds = np.array(d["kinds"])
    clean = f.subset(~labels)
    res = {}
    v = Variant("structure", clean)
    maps = {"structure": v(f)}
    st = fit_normal_stats(clean.terms)  # term scales from the clean views
    sc = torch.tensor(st.term_scales).view(1, -1, 1, 1)
    T = f.terms.shape[1]
    def premax(ff):
        return torch.maximum((ff.terms / sc).amax(1), ff.silhouette * T)
    pc = premax(clean)
    bins = [quantile(clean.edges, float(q)) for q in torch.linspace(0, 1, STRUCTURE_BINS + 1)[1:-1]]
    tb = torch.tensor(bins)
    which = torch.bucketize(clean.edges.contiguous(), tb)
    scales = torch.tensor([max(quantile(pc[which == b], 0.99), 1e-6) if bool((which == b).any()) else 1.0 for b in range(STRUCTURE_BINS)])
    pm = premax(f)
    maps["max"] = blur_maps(pm / scales[torch.bucketize(f.edges.contiguous(), tb)], 4.0)
    maps["max_flat"] = blur_maps(pm, 4.0)
    for k, m in maps.items():
        thr = float(np.quantile(m[~labels].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM))
        r = _figures(m, labels, masks, thr)
        sc_ = m.flatten(1).amax(1).numpy()
        r["per_kind_found"] = {kd: int(((sc_ > thr) & (kinds == kd)).sum()) for kd in sorted(set(kinds)) if kd != "good"}
        res[k] = r
    out[name] = res
    for k, r in res.items():
        print(name, k, r["image_auroc"], r["recall"], r["found"], "/", r["of"], "FAR", r["false_alarm_rate"], "pix", r["pixel_auroc"], r["aupro"], r["per_kind_found"], flush=True)
import json; json.dump(out, open(f"{FOLDER}/combo.json", "w"), indent=1)
for k in ["structure", "max", "max_flat"]:
    print(k, "summed found", sum(out[n][k]["found"] for n in out), "mean AUROC", round(np.mean([out[n][k]["image_auroc"] for n in out]), 4))
