"""Issue 22, session 29 (a diagnosis on the test splits; it chooses nothing): is the render's
residue on normal views a *recurring pattern* that a memory of normal residue can explain,
while a defect's residue is not?

The scorer compares a photograph with the Gaussian render and counts every difference. The
residue that hides the seeds' last defects lines the edges of every view (sessions 22-25).
Here each patch of a query is described by what the render shows there and how the photograph
differs from it: lite0's stride-4 and stride-8 features of the render, their differences from
the photograph's, and the CIELAB colour of the render and its difference, pooled over 3 x 3
cells of the 56 x 56 grid. The memory holds those descriptors from the bundle's own training
views (the final model's render at the true pose, aligned as the product aligns a query, against
the photograph; the fit underfits, so its residue there is like its residue on new views). A
test patch scores its distance to the nearest patch in the memory: a residue seen on normal
views next to the same kind of render scores low. The map is blurred as the product's (sigma 4
at 224) and the image score is its maximum.

The test split is scored at its true poses, aligned as the product aligns a query, and reported
by image AUROC (and pixel AUROC / AUPRO) beside the product's scorer on the same references.
No threshold is set here: the memory's threshold would need held-out views that it did not use.

    python docs/results/issue22_residue_memory.py BUNDLE_DIR CATEGORY_DIR OUT.json [BANK_SIZE]
"""
import json
import sys
import time
from pathlib import Path

import kornia
import numpy as np
import torch
import torch.nn.functional as F

from models.data import load_category
from models.inspector import Inspector, align_references
from models.metrics import aupro, auroc, pixel_auroc
from models.refine import RefineConfig
from models.scoring import blur_maps
from models.splat.scene import render
from training.splats import preset

GRID = 56  # the stride-4 grid at the scorer's 224 px


def renders(scene, poses, Ks, w, h):
    out = []
    for i in range(0, len(poses), 8):
        out.append(render(scene, poses[i:i + 8], Ks[i:i + 8], w, h).colors.clamp(0, 1))
    return torch.cat(out)


@torch.no_grad()
def descriptors(scorer, images, refs):
    """``[B, 6 + 2 * (24 + 40), GRID, GRID]`` groups: render colour, colour difference, then per
    layer the render's feature and the difference; and the object mask ``[B, GRID, GRID]``."""
    q, r = scorer._pair(images, refs)
    fq, fr = [], []
    for i in range(0, len(q), 8):
        both = scorer.extractor(torch.cat([q[i:i + 8], r[i:i + 8]]))
        n = len(q[i:i + 8])
        fq.append([t[:n] for t in both])
        fr.append([t[n:] for t in both])
    fq = [torch.cat([b[k] for b in fq]) for k in range(len(fq[0]))]
    fr = [torch.cat([b[k] for b in fr]) for k in range(len(fr[0]))]
    lq, lr = kornia.color.rgb_to_lab(q), kornia.color.rgb_to_lab(r)
    pool = lambda t: F.adaptive_avg_pool2d(t, GRID)
    groups = [pool(lr) / 30.0, pool(lq - lr) / 10.0]
    for k in (1, 2):  # strides 4 and 8
        up = lambda t: F.interpolate(t, size=(GRID, GRID), mode="bilinear", align_corners=False)
        groups += [up(fr[k]), up(fq[k] - fr[k])]
    desc = [F.avg_pool2d(g, 3, 1, 1, count_include_pad=False) for g in groups]
    on = (pool((1 - r).abs().amax(1, keepdim=True)) > 0.02) | (pool((1 - q).abs().amax(1, keepdim=True)) > 0.02)
    on = F.max_pool2d(on.float(), 5, 1, 2)[:, 0] > 0
    return desc, on


def flatten(desc, scales, weights):
    return torch.cat([g / s * w for g, s, w in zip(desc, scales, weights)], 1).permute(0, 2, 3, 1)


@torch.no_grad()
def nn_distance(x, bank, chunk=4096):
    out = torch.empty(len(x))
    b2 = (bank ** 2).sum(1)
    for i in range(0, len(x), chunk):
        xi = x[i:i + chunk]
        d = (xi ** 2).sum(1, keepdim=True) + b2[None] - 2 * xi @ bank.T
        out[i:i + chunk] = d.amin(1).clamp_min(0).sqrt()
    return out


def main():
    bundle, cat_dir, out_path = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    bank_size = int(sys.argv[4]) if len(sys.argv) > 4 else 40000
    torch.manual_seed(0)
    ins = Inspector.load(bundle, device="cpu")
    c = load_category(cat_dir, size=preset("cpu").image_size)
    w, h = c.width, c.height
    align = RefineConfig()
    t0 = time.perf_counter()
    tr_img = torch.stack([v.image for v in c.train]).float()
    tr_pose = torch.stack([v.w2c for v in c.train]).float()
    tr_ref = align_references(tr_img, renders(ins.scene, tr_pose, c.K.float().expand(len(tr_pose), 3, 3), w, h),
                              align)
    bank_desc, bank_on = descriptors(ins.scorer, tr_img, tr_ref)
    qs = c.test
    imgs = torch.stack([q.image for q in qs]).float()
    refs = align_references(imgs, renders(ins.scene, torch.stack([q.w2c for q in qs]).float(),
                                          torch.stack([q.K for q in qs]).float(), w, h), align)
    test_desc, test_on = descriptors(ins.scorer, imgs, refs)
    # Each group weighs alike: its root-mean-square norm over the memory's object patches.
    scales = [float(g.permute(0, 2, 3, 1)[bank_on].pow(2).sum(1).mean().sqrt()) + 1e-6 for g in bank_desc]
    lab = np.array([q.label != "good" for q in qs])
    masks = torch.stack([q.mask for q in qs])
    masks224 = F.interpolate(masks[:, None].float(), size=(224, 224), mode="nearest")[:, 0] > 0.5
    _, product_scores = ins.scorer(imgs, refs)
    product_maps = ins.scorer.forward(imgs, refs)[0]
    report = {"bundle": str(bundle), "bank_views": len(tr_img), "bank_patches_on_object": int(bank_on.sum()),
              "bank_size": bank_size, "group_scales": scales,
              "product": {"image_auroc": round(float(auroc(lab, product_scores.numpy())), 4),
                          "good_top": [round(float(v), 3) for v in np.sort(product_scores.numpy()[~lab])[::-1][:3]]}}
    variants = {"memory": (1, 1, 1, 1, 1, 1), "residue_only": (0, 1, 0, 1, 0, 1),
                "memory_cond_half": (0.5, 1, 0.5, 1, 0.5, 1)}
    for name, weights in variants.items():
        bank = flatten(bank_desc, scales, weights)[bank_on]
        if len(bank) > bank_size:
            bank = bank[torch.randperm(len(bank))[:bank_size]]
        x = flatten(test_desc, scales, weights)
        d = torch.zeros(test_on.shape)
        d[test_on] = nn_distance(x[test_on], bank)
        m = F.interpolate(d[:, None], size=(224, 224), mode="bilinear", align_corners=False)[:, 0]
        m = blur_maps(m, 4.0)
        s = m.flatten(1).amax(1).numpy()
        weak = sorted((float(v), q.name) for v, q, l in zip(s, qs, lab) if l)[:3]
        full = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        report[name] = {"image_auroc": round(float(auroc(lab, s)), 4),
                        "pixel_auroc": round(float(pixel_auroc(masks.numpy(), full.numpy())), 4),
                        "aupro": round(float(aupro(masks.numpy(), full.numpy())), 4),
                        "good_top": [round(float(v), 3) for v in np.sort(s[~lab])[::-1][:3]],
                        "weakest": [(round(v, 3), n) for v, n in weak], "bank": len(bank)}
        print(name, json.dumps(report[name]), flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print("product", json.dumps(report["product"]), "seconds", report["seconds"], flush=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
