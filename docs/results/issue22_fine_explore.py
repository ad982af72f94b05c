"""Issue 22, session 21 (exploration, chose nothing): `either` with changed or added maps on
the cached selection data of `issue22_fine_explore_cache.py` (session 20's seed-7 set).
Its `fine` and `fine_o3` add the colour terms and the two finest layers together (open
3 x 3); `l01` and `l01_o3` (the two finest layers alone) became the challengers `fine` and `fine3` of `issue22_fine_features.py`.

    python docs/results/issue22_fine_explore.py CACHE_DIR SEED VARIANT[,VARIANT...]

(`VARIANT@Q`: the maps' levels at the quantile Q of their clean image scores, not 0.98.)
"""
from pathlib import Path
import sys, torch, numpy as np
from lab.scorer_study import FALSE_ALARM, _figures
from models.scoring import blur_maps, combine, fit_normal_stats, opening, quantile
cache, seed, variants = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
cats = ["Lego", "synth_0", "synth_1", "synth_2"]
tot = {v: [0, 0, []] for v in variants}
def colour_sum(terms, clean):
    return sum(terms[:, t] / max(quantile(terms[clean, t], 0.99), 1e-6) for t in range(2))
def bal(terms, stats, idx):
    return sum(terms[:, t] / stats.term_scales[t] for t in idx)
def tol_fine(d, clean, key):
    """The two finest layers' terms compared at another tolerance (``issue22_fine_explore_tol.py``'s cache)."""
    t = d[key].float()
    return sum(t[:, k] / max(quantile(t[clean, k], 0.99), 1e-6) for k in range(2))
def run(d, spec, level_q=1 - FALSE_ALARM):
    labels = d["labels"].numpy(); clean = ~d["labels"]; terms = d["terms"].float(); sil = d["sil"].float(); edges = d["edges"].float()
    stats = fit_normal_stats(terms[clean], sil[clean], edges[clean])
    col = colour_sum(terms, clean)
    pres = {"structure": lambda: combine(terms, "structure", stats, sil, edges),
            "silhouette": lambda: combine(terms, "silhouette", stats, sil, edges),
            "area3": lambda: opening(col, 3),
            "fine": lambda: bal(terms, stats, [0,1,2,3]), "fine_o3": lambda: opening(bal(terms, stats, [0,1,2,3]), 3),
            "l01_o3": lambda: opening(bal(terms, stats, [2,3]), 3), "all_o3": lambda: opening(bal(terms, stats, range(6)), 3),
            "all_o5": lambda: opening(bal(terms, stats, range(6)), 5), "l01": lambda: bal(terms, stats, [2,3]),
            "l0": lambda: bal(terms, stats, [2]), "l1": lambda: bal(terms, stats, [3]), "l2": lambda: bal(terms, stats, [4]),
            "l012": lambda: bal(terms, stats, [2,3,4]),
            "l01_t0": lambda: tol_fine(d, clean, "t0"), "l01_t2": lambda: tol_fine(d, clean, "t2"), "area5": lambda: opening(col, 5)}
    out = None
    for item in spec:
        name, sg = item
        m = blur_maps(pres[name](), sg)
        level = float(np.quantile(m[clean].flatten(1).amax(1).numpy(), level_q))
        m = m / level
        out = m if out is None else torch.maximum(out, m)
    thr = float(np.quantile(out[clean].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM))
    r = _figures(out, labels, d["masks"].numpy(), thr)
    sc = out.flatten(1).amax(1).numpy(); kinds = np.array(d["kinds"])
    r["by_kind"] = {str(k): int(((sc > thr) & (kinds == k)).sum()) for k in sorted(set(kinds)) if k != "good"}
    return r
P = [("structure",4),("silhouette",4),("area3",4),("area5",4)]
SPECS = {
 "fine": P + [("fine",4)], "fine_o3": P + [("fine_o3",4)], "l01_o3": P + [("l01_o3",4)], "all_o3": P + [("all_o3",4)],
 "all_o5": P + [("all_o5",4)], "l01": P + [("l01",4)],
 "product5": P + [("l01",4)], "l0_l1": P + [("l0",4),("l1",4)], "five_l2": P + [("l01",4),("l2",4)], "l012": P + [("l012",4)],
 "l01_s2": P + [("l01",2)], "l01_t0": P + [("l01_t0",4)], "l01_t2": P + [("l01_t2",4)], "l01_s3": P + [("l01",3)],
 "product": [("structure",4),("silhouette",4),("area3",4),("area5",4)],
 "area_s2": [("structure",4),("silhouette",4),("area3",2),("area5",2)],
 "area_s3": [("structure",4),("silhouette",4),("area3",3),("area5",3)],
}
for c in cats:
    d = torch.load(cache / f"sel{seed}_{c}.pt", weights_only=False)
    if (cache / f"tol{seed}_{c}.pt").exists():
        d.update(torch.load(cache / f"tol{seed}_{c}.pt"))
    for v in variants:
        r = run(d, SPECS[v.split('@')[0]], float(v.split('@')[1]) if '@' in v else 1 - FALSE_ALARM)
        tot[v][0] += r["found"]; tot[v][1] += r["of"]; tot[v][2].append(r["image_auroc"])
        print(c, v, "found", r["found"], "/", r["of"], "auroc", round(r["image_auroc"],4), "FAR", round(r["false_alarm_rate"],3), "pix", round(r["pixel_auroc"],4), "aupro", round(r["aupro"],4), r["by_kind"], flush=True)
for v in variants:
    print("TOTAL", v, tot[v][0], "/", tot[v][1], "mean auroc", round(float(np.mean(tot[v][2])),4))
