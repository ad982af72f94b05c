"""Issue 22, session 33 (a diagnosis on the test splits; it chooses nothing): a 3D field of the
render's normal residue. Session 32 found that the residue hiding the seeds' last defects is the
fit's own: views the model was fitted on leave as much as views it never saw. If it recurs at the
same places *on the object* (some bricks' edges, some outlines), the Gaussians that draw those
places can carry it, and a query's evidence can be read against the residue that its own
Gaussians always leave.

The field: each training view, at its true pose against the model's render aligned as the product
aligns a query, gives the bundle's five maps, each blurred with the scorer's sigma and over its
level (what the image score is the maximum of). Each map is carried back onto the Gaussians by the
rasterizer's own blending weights (the gradient of the rendered map with respect to a per-Gaussian
value): a Gaussian's value is the weighted mean of the map over the pixels it draws, in all
training views. A query's expected residue E_i is that field rendered at its pose.

Scored on the test split at true poses, aligned, beside the product's score (max over pixels and
maps of P_i):
- `minus`:     max over pixels and maps of P_i - E_i;
- `ratio-c`:   max of P_i * (c + m_i) / (c + E_i), m_i the median of E_i over the training views'
  object pixels (so that a place of typical residue keeps its evidence).
Where the render is transparent, E_i is filled with m_i in proportion (E + (1 - alpha) m), so
evidence off the object keeps its value under either.
No held-out views set a level for the variants, so no threshold: image AUROC only, with the good
views' highest scores and the weakest defects.

    python docs/results/issue22_residue_field.py BUNDLE_OR_WORK_DIR CATEGORY_DIR OUT.json
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lab.workdir import open_inspector
from models.data import load_category
from models.inspector import InspectorConfig, align_references
from models.metrics import auroc
from models.refine import RefineConfig
from models.scoring import EITHER_MAPS, _either_pres, blur_maps, edge_strength, silhouette_evidence
from models.splat.render import rasterization
from models.splat.scene import render
from training.splats import preset

RATIO_CS = (0.05, 0.1, 0.2, 0.5)


def maps_over_levels(ins, imgs: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """``[B, 5, S, S]``: the bundle's five maps, blurred with its sigma, each over its level."""
    sc = ins.scorer
    q224, r224 = sc._pair(imgs, refs)
    pres = _either_pres(sc._terms(q224, r224), sc.stats, silhouette_evidence(q224, r224, sc.background),
                        edge_strength(r224), len(sc.stats.levels))
    return torch.stack([blur_maps(p, sc.sigma) / lv for p, lv in zip(pres, sc.stats.levels)], 1)


def gaussians(scene):
    p = scene.params()
    return p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"])


def render_channels(scene, values: torch.Tensor, poses, Ks, width, height) -> torch.Tensor:
    """``values [N, D]`` per Gaussian, alpha-blended into ``[C, H, W, D]`` (background 0)."""
    means, quats, scales, opac = gaussians(scene)
    out, _, _ = rasterization(means, quats, scales, opac, values, poses, Ks, width, height,
                              backgrounds=values.new_zeros(len(poses), values.shape[1]))
    return out


def main() -> None:
    bundle, cat, out_path = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    c = load_category(cat, size=preset("cpu").image_size)
    ins = open_inspector(bundle, InspectorConfig(pose="oracle"), device="cpu", camera=(c.width, c.height, c.K))
    scene = ins.scene
    n = scene.num_gaussians
    t0 = time.time()
    num = torch.zeros(n, len(EITHER_MAPS))
    den = torch.zeros(n)
    obj_fields = []
    for i in range(0, len(c.train), 4):
        chunk = c.train[i:i + 4]
        imgs = torch.stack([v.image for v in chunk]).float()
        poses = torch.stack([v.w2c for v in chunk]).float()
        Ks = torch.stack([v.K for v in chunk]).float()
        with torch.no_grad():
            refs = render(scene, poses, Ks, imgs.shape[2], imgs.shape[1]).colors.clamp(0, 1)
            refs = align_references(imgs, refs, RefineConfig())
            m = maps_over_levels(ins, imgs, refs)
            m = F.interpolate(m, size=imgs.shape[1:3], mode="bilinear", antialias=True, align_corners=False)
        x = torch.zeros(n, len(EITHER_MAPS) + 1, requires_grad=True)
        out = render_channels(scene, x, poses, Ks, imgs.shape[2], imgs.shape[1])  # [C, H, W, 6]
        loss = (out[..., :-1] * m.permute(0, 2, 3, 1)).sum() + out[..., -1].sum()
        loss.backward()
        num += x.grad[:, :-1]
        den += x.grad[:, -1]
    seen = den > 1e-3
    field = torch.where(seen[:, None], num / den.clamp(min=1e-3)[:, None], torch.zeros(()))
    field[~seen] = field[seen].median(0).values
    t_field = time.time() - t0
    # The medians of the rendered field over the training views' object pixels.
    with torch.no_grad():
        for i in range(0, len(c.train), 8):
            chunk = c.train[i:i + 8]
            poses = torch.stack([v.w2c for v in chunk]).float()
            Ks = torch.stack([v.K for v in chunk]).float()
            e = render_channels(scene, torch.cat([field, torch.ones(n, 1)], 1), poses, Ks, c.width, c.height)
            obj = e[..., -1] > 0.5
            obj_fields.append(e[..., :-1][obj])
    med = torch.cat(obj_fields).median(0).values
    print(f"field from {len(c.train)} views in {t_field:.0f} s; {int(seen.sum())} of {n} Gaussians seen; "
          f"median per map {[round(float(v), 3) for v in med]}")

    labels, scores = [], {"product": [], "minus": [], **{f"ratio-{cc}": [] for cc in RATIO_CS}}
    names = []
    with torch.no_grad():
        for i in range(0, len(c.test), 8):
            chunk = c.test[i:i + 8]
            imgs = torch.stack([q.image for q in chunk]).float()
            poses = torch.stack([q.w2c for q in chunk]).float()
            Ks = torch.stack([q.K for q in chunk]).float()
            refs = render(scene, poses, Ks, imgs.shape[2], imgs.shape[1]).colors.clamp(0, 1)
            refs = align_references(imgs, refs, RefineConfig())
            p = maps_over_levels(ins, imgs, refs)  # [B, 5, S, S]
            e = render_channels(scene, torch.cat([field, torch.ones(n, 1)], 1), poses, Ks, imgs.shape[2], imgs.shape[1])
            e = (e[..., :-1] + (1 - e[..., -1:]).clamp(min=0) * med).permute(0, 3, 1, 2)  # off the object: typical
            e = F.interpolate(e, size=p.shape[-2:], mode="bilinear", align_corners=False)
            scores["product"].append(p.flatten(1).amax(1))
            scores["minus"].append((p - e).flatten(1).amax(1))
            for cc in RATIO_CS:
                scores[f"ratio-{cc}"].append((p * (cc + med[None, :, None, None]) / (cc + e)).flatten(1).amax(1))
            labels += [q.label != "good" for q in chunk]
            names += [q.name for q in chunk]
    labels = np.array(labels)
    report = {"bundle": str(bundle), "category": str(cat), "field_seconds": round(t_field, 1),
              "gaussians": n, "gaussians_seen": int(seen.sum()),
              "field_median_per_map": dict(zip(EITHER_MAPS, [round(float(v), 4) for v in med])), "variants": {}}
    for name, parts in scores.items():
        s = torch.cat(parts).numpy()
        weakest = sorted((float(v), nm) for v, nm, bad in zip(s, names, labels) if bad)[:3]
        good = np.sort(s[~labels])[::-1]
        entry = {"image_auroc": round(auroc(labels, s), 4),
                 "misordered_pairs": int(sum((g >= d) for g in s[~labels] for d in s[labels])),
                 "good_scores_desc": [round(float(v), 3) for v in good],
                 "weakest_defects": [[nm, round(v, 3)] for v, nm in weakest],
                 "scores": {nm: round(float(v), 4) for nm, v in zip(names, s)}}
        report["variants"][name] = entry
        print(f"{name:10s} AUROC {entry['image_auroc']:.4f} misordered {entry['misordered_pairs']:3d}  "
              f"good {entry['good_scores_desc'][:3]}  weakest {entry['weakest_defects']}")
    out_path.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
