"""Issue 22, session 17 (exploration): a per-Gaussian expected residual ("where the model is
unsure, a residual means less") as the scorer's normaliser, 2-fold over the self-check's held-out
views. Each Gaussian's share of one fold's clean residual maps (the gradient of the rendered
residual-weighted image with respect to a per-Gaussian value: sum_x R(x) w_i(x) / sum_x w_i(x)) is
rendered at the other fold's query poses. The `silhouette` map is then divided by its clean 99th
percentile within deciles of that rendering (`unc`, as `structure` does with edge strength), or by
the rendering itself plus its clean median (`unc_div`). `structure` is measured in the same harness.

    python docs/results/issue22_gaussian_uncertainty.py BUNDLES_DIR CATEGORY_DIR OUT.json
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from issue22_selection_terms import selection
from lab.scorer_study import FALSE_ALARM
from models.scoring import STRUCTURE_BINS, blur_maps, combine, fit_normal_stats, quantile
from models.splat.render import rasterization

bundles, cat = Path(sys.argv[1]), Path(sys.argv[2])
sel = selection(bundles, cat)
scene, q, f, labels, masks, kinds, Ks = sel.scene, sel.q, sel.f, sel.labels, sel.masks, sel.kinds, sel.Ks
N = len(sel.images); W, H = sel.category.width, sel.category.height
names = np.array(q.names); views = sorted(set(names)); fold = np.array([views.index(n) % 2 for n in names])
p = scene.params()
means, quats, scales, opac = p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"])
G = means.shape[0]

def splat(values, idx):  # render per-Gaussian scalar values [G] at queries idx -> [n, H, W]
    out = []
    for i in range(0, len(idx), 8):
        j = idx[i:i + 8]
        c, a, _ = rasterization(means, quats, scales, opac, values[:, None], q.poses[j].float(), Ks[j].float(), W, H,
                                backgrounds=torch.zeros(len(j), 1))
        out.append(c[..., 0])
    return torch.cat(out)

def per_gaussian(resid224, idx):  # sum_x R w_i and sum_x w_i over the queries idx
    num = torch.zeros(G); den = torch.zeros(G)
    R = F.interpolate(resid224[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    for i in range(0, len(idx), 4):
        j = idx[i:i + 4]
        c = torch.zeros(G, 2, requires_grad=True)
        img, _, _ = rasterization(means, quats, scales, opac, c, q.poses[j].float(), Ks[j].float(), W, H,
                                  backgrounds=torch.zeros(len(j), 2))
        loss = (img[..., 0] * R[i:i + 4]).sum() + img[..., 1].sum()
        loss.backward()
        num += c.grad[:, 0]; den += c.grad[:, 1]
    return num, den

def decile_norm(pre, key, clean_mask):  # structure-style: divide by clean p99 within deciles of `key`
    bins = [quantile(key[clean_mask], float(t)) for t in torch.linspace(0, 1, STRUCTURE_BINS + 1)[1:-1]]
    tb = torch.tensor(bins)
    which_c = torch.bucketize(key[clean_mask].contiguous(), tb)
    pc = pre[clean_mask]
    sc = torch.tensor([max(quantile(pc[which_c == b], 0.99), 1e-6) if bool((which_c == b).any()) else 1.0 for b in range(STRUCTURE_BINS)])
    return pre / sc[torch.bucketize(key.contiguous(), tb)]

results = {"structure": [], "unc": [], "unc_div": []}
maps_all = {k: torch.zeros(N, 224, 224) for k in results}
for test_fold in (0, 1):
    A = np.where((fold != test_fold) & ~labels)[0]  # clean views of the other fold: the per-Gaussian residual
    B = np.where(fold == test_fold)[0]
    stA = fit_normal_stats(f.terms[A])
    preA = combine(f.terms[A], "silhouette", stA, f.silhouette[A])
    num, den = per_gaussian(preA, A)
    e = torch.where(den > 1e-3, num / den.clamp(min=1e-3), torch.full_like(num, float(preA.mean())))
    EB = splat(e.float(), B)
    EB = F.interpolate(EB[:, None], size=(224, 224), mode="bilinear", align_corners=False)[:, 0]
    EBb = blur_maps(EB, 4.0)
    tB = f.terms[B]; clean_B = torch.from_numpy(~labels[B])
    stB = fit_normal_stats(tB[clean_B])
    preB = combine(tB, "silhouette", stB, f.silhouette[B])
    maps_all["structure"][B] = blur_maps(decile_norm(preB, f.edges[B], clean_B), 4.0)
    maps_all["unc"][B] = blur_maps(decile_norm(preB, EBb, clean_B), 4.0)
    c0 = float(EBb[clean_B].median())
    maps_all["unc_div"][B] = blur_maps(preB / (EBb + c0), 4.0)
out = {}
for k, m in maps_all.items():
    # thresholds per fold on that fold's clean views, then pooled decisions
    found = 0; fp = 0; ofn = 0; nclean = 0; per_kind = {}
    scores = m.flatten(1).amax(1).numpy()
    for t in (0, 1):
        B = fold == t
        thr = float(np.quantile(scores[B & ~labels], 1 - FALSE_ALARM))
        found += int(((scores > thr) & B & labels).sum()); ofn += int((B & labels).sum())
        fp += int(((scores > thr) & B & ~labels).sum()); nclean += int((B & ~labels).sum())
        for kd in ("stain", "burr", "missing"):
            per_kind[kd] = per_kind.get(kd, 0) + int(((scores > thr) & B & (kinds == kd)).sum())
    from models.metrics import auroc, pixel_auroc, aupro
    out[k] = {"found": found, "of": ofn, "rejected": fp, "clean": nclean, "per_kind": per_kind,
              "image_auroc_pooled": round(auroc(labels, scores), 4),
              "pixel_auroc": round(pixel_auroc(masks, m.numpy()), 4)}
    print(cat.name, k, out[k], flush=True)
json.dump(out, open(sys.argv[3], "w"), indent=1)
