"""Issue 22, session 29: the rule's choice between the product's five maps and the memory of the
render's normal residue (`memory`, `either+memory`), on a fresh painted set (docs/RESULTS.md,
"a memory of the render's normal residue"; the rule is written there).

For each ``BUNDLES_DIR:CATEGORY_DIR``: the selection data painted with SEED
(`issue22_shared_edges.selection_with_inside`, cached as `issue22_interior_cache.py` caches it),
the memory built from the calibration model's fit views (jittered by the self-check's 1 px rms,
aligned as the product aligns), and each variant scored as the earlier rules scored
(`issue22_blur_explore.run`: each map over the 0.98 quantile of its clean image scores, the
threshold at the 98th percentile of the variant's clean image scores).

    python docs/results/issue22_memory_choice.py CACHE_DIR SEED OUT.json BUNDLES_DIR:CATEGORY_DIR [...]

``VARIANTS=product,memory+colour`` in the environment scores those instead of the default three
(`memory+colour`: the memory's map with the product's area maps, the second rule's challenger).

The exact nearest-neighbour search is faiss's (`pip install faiss-cpu`; a lab driver's need, not
the product's).
"""
import json
import math
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from issue22_blur_explore import run
from issue22_interior_cache import foregrounds
from issue22_interior_explore import maps
from issue22_residue_memory import descriptors
from issue22_shared_edges import selection_with_inside
from models.camera import perturb_pose
from models.inspector import align_references
from models.refine import RefineConfig
from training.evaluate import render_references
from training.selfcheck import heldout_views

MEMORY = 10_000  # cells kept by the greedy k-centre selection
PROJECTION = 64  # dimensions of the random projection the selection measures distances in


def kcentre(x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``k`` rows of ``x`` chosen greedily, each the farthest from those already
    chosen (PatchCore's coreset), measured in a random projection to ``PROJECTION`` dimensions."""
    g = torch.Generator().manual_seed(seed)
    z = x @ (torch.randn(x.shape[1], PROJECTION, generator=g) / math.sqrt(PROJECTION))
    k = min(k, len(z))
    chosen = torch.empty(k, dtype=torch.long)
    i = int(torch.randint(len(z), (1,), generator=g))
    nearest = torch.full((len(z),), float("inf"))
    for j in range(k):
        chosen[j] = i
        nearest = torch.minimum(nearest, (z - z[i]).pow(2).sum(1))
        i = int(nearest.argmax())
    return chosen


def flat(desc, scales) -> torch.Tensor:
    """``[B, GRID, GRID, D]``: the descriptor groups, each over its scale, side by side."""
    return torch.cat([g / s for g, s in zip(desc, scales)], 1).permute(0, 2, 3, 1).contiguous()


def build_memory(bundles: Path, category_dir: Path, scorer, seed: int = 0):
    """The calibration model's memory: ``(faiss index, group scales, seconds)``."""
    _, category, scene, held = heldout_views(bundles, category_dir)
    names = {v.name for v in held}
    return memory_of(scene, [v for v in category.train if v.name not in names], category, scorer, seed)


def jittered_references(scene, views, category, seed: int = 0, copies: int = 1):
    """The photographs of ``views`` (each ``copies`` times) and ``scene``'s renders at their
    poses jittered by the self-check's 1 px rms, aligned as the product aligns."""
    images = torch.stack([v.image for v in views]).float().repeat_interleave(copies, 0)
    K = views[0].K
    poses = perturb_pose(torch.stack([v.w2c for v in views]).double().repeat_interleave(copies, 0),
                         1.0 / (math.sqrt(2) * float(K[0, 0])), 0.0, torch.Generator().manual_seed(seed))
    refs = render_references(scene, poses, K[None].expand(len(images), 3, 3), category.width, category.height)
    return images, align_references(images, refs.cpu(), RefineConfig()).cpu()


def memory_of(scene, fit, category, scorer, seed: int = 0):
    """The memory of ``scene``'s residue on its fit views ``fit``: ``(faiss index, group scales, seconds)``."""
    t0 = time.perf_counter()
    images, refs = jittered_references(scene, fit, category, seed)
    desc, on = descriptors(scorer, images, refs)
    scales = [float(g.permute(0, 2, 3, 1)[on].pow(2).sum(1).mean().sqrt()) + 1e-6 for g in desc]
    cells = flat(desc, scales)[on]
    keep = cells[kcentre(cells, MEMORY, seed)]
    index = faiss.IndexFlatL2(keep.shape[1])
    index.add(keep.numpy().astype(np.float32))
    print(category.name, "memory:", len(fit), "fit views,", len(cells), "object cells ->", len(keep),
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    return index, scales, time.perf_counter() - t0


def memory_map(index, scales, scorer, images, refs, batch: int = 32) -> torch.Tensor:
    """``[B, 224, 224]``: each cell's distance to its nearest memory cell, 0 off the object,
    upsampled (the unblurred map)."""
    out = []
    for i in range(0, len(images), batch):
        desc, on = descriptors(scorer, images[i:i + batch], refs[i:i + batch])
        x = flat(desc, scales)
        d = torch.zeros(on.shape)
        if bool(on.any()):
            dist, _ = index.search(x[on].numpy().astype(np.float32), 1)
            d[on] = torch.from_numpy(np.sqrt(np.maximum(dist[:, 0], 0)))
        out.append(F.interpolate(d[:, None], size=(scorer.size, scorer.size), mode="bilinear",
                                 align_corners=False)[:, 0])
    return torch.cat(out)


def main():
    cache, seed, out_path, pairs = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
    faiss.omp_set_num_threads(torch.get_num_threads())
    variants = os.environ.get("VARIANTS", "product,memory,either+memory").split(",")
    rows = {v: {} for v in variants}
    for pair in pairs:
        b, c = (Path(p) for p in pair.split(":"))
        both, terms, edges, qedges = selection_with_inside(b, c, seed)
        bg = both.category.background
        d = {"terms": terms, "sil": both.f.silhouette, "edges": edges, "qedges": qedges,
             "fq": foregrounds(both.scorer, both.images, bg), "fr": foregrounds(both.scorer, both.refs, bg),
             "labels": torch.from_numpy(both.labels), "kinds": list(both.kinds),
             "masks": torch.from_numpy(both.masks), "sigma": both.scorer.sigma}
        torch.save(d, cache / f"sel{seed}_{c.name}.pt")
        index, scales, build_s = build_memory(b, c, both.scorer)
        mem = memory_map(index, scales, both.scorer, both.images, both.refs)
        pres = maps(d, "product")
        offered = {"product": pres, "memory": [mem], "either+memory": pres + [mem],
                   "memory+colour": [mem, pres[2], pres[3]]}  # pres: structure, silhouette, area3, area5, fine
        for name, variant in ((v, offered[v]) for v in variants):
            r = run(d, variant, 4.0)
            rows[name][c.name] = {k: r[k] for k in ("found", "of", "image_auroc", "pixel_auroc", "aupro",
                                                    "false_alarm_rate", "by_kind", "clean_top5", "clean_median")}
            if name != "product":
                rows[name][c.name]["memory_build_seconds"] = round(build_s, 1)
            print(c.name, name, "found", r["found"], "/", r["of"], "auroc", round(r["image_auroc"], 4), "FAR",
                  round(r["false_alarm_rate"], 3), "pix", round(r["pixel_auroc"], 4), "aupro", round(r["aupro"], 4),
                  r["by_kind"], flush=True)
    for name, per in rows.items():
        print("TOTAL", name, sum(r["found"] for r in per.values()), "/", sum(r["of"] for r in per.values()), flush=True)
    out_path.write_text(json.dumps({"seed": seed, "memory": MEMORY, "variants": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
