"""Issue 22, session 29: the second rule's part (b), on the test split of a fresh category
(docs/RESULTS.md, "a second rule: the memory for shape, the area maps for colour").

The test split is scored at its true poses, aligned as the product aligns, against the final
model's render, by:
- the product (the bundle's scorer, levels and all);
- `memory`: the final model's memory (all training views, jittered by 1 px rms and aligned),
  blurred with the scorer's sigma, over its level: the 0.98 quantile of the image scores of the
  held-out views (4 jitters each, aligned) against the calibration model and its own memory
  (its fit views), as the product sets its maps' levels;
- `memory+colour`: the pixel-wise maximum of that map and the product's `area3` and `area5` maps
  over the bundle's levels.
It reports image AUROC, the misordered (defect, good view) pairs, pixel AUROC and AUPRO.

    python docs/results/issue22_memory_fresh.py BUNDLES_DIR CATEGORY_DIR OUT.json

The exact nearest-neighbour search is faiss's (`pip install faiss-cpu`; a lab driver's need, not
the product's).
"""
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from issue22_memory_choice import jittered_references, memory_map, memory_of
from models.data import load_category
from models.inspector import Inspector, align_references
from models.metrics import aupro, auroc, pixel_auroc
from models.refine import RefineConfig
from models.scoring import LEVEL_QUANTILE, _either_pres, blur_maps, quantile
from training.evaluate import render_references
from training.selfcheck import heldout_views


def misordered(labels: np.ndarray, scores: np.ndarray) -> float:
    """(defect, good) pairs the scores put the wrong way round (a tie counts a half)."""
    d, g = scores[labels][:, None], scores[~labels][None]
    return float((d < g).sum() + 0.5 * (d == g).sum())


@torch.no_grad()
def main():
    bundles, cat_dir, out_path = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    faiss.omp_set_num_threads(torch.get_num_threads())
    t0 = time.perf_counter()
    ins = Inspector.load(bundles / cat_dir.name, device="cpu")
    scorer, stats = ins.scorer, ins.scorer.stats
    _, category, cal_scene, held = heldout_views(bundles, cat_dir)
    names = {v.name for v in held}
    index_c, scales_c, _ = memory_of(cal_scene, [v for v in category.train if v.name not in names], category, scorer)
    h_images, h_refs = jittered_references(cal_scene, held, category, copies=4)
    h_maps = blur_maps(memory_map(index_c, scales_c, scorer, h_images, h_refs), scorer.sigma)
    level = quantile(h_maps.flatten(1).amax(1), LEVEL_QUANTILE)
    index_f, scales_f, _ = memory_of(ins.scene, category.train, category, scorer)
    c = load_category(cat_dir, size=category.width)
    qs = c.test
    images = torch.stack([q.image for q in qs]).float()
    refs = render_references(ins.scene, torch.stack([q.w2c for q in qs]), torch.stack([q.K for q in qs]), c.width,
                             c.height)
    refs = align_references(images, refs, RefineConfig()).cpu()
    product_maps, product_scores = scorer(images, refs)
    terms, sil = scorer.inputs(images, refs)
    pres = list(_either_pres(terms, stats, sil, scorer.edges(refs), len(stats.levels)))
    area = [blur_maps(pres[k], scorer.sigma) / stats.levels[k] for k in (2, 3)]
    mem = blur_maps(memory_map(index_f, scales_f, scorer, images, refs), scorer.sigma) / level
    labels = np.array([q.label != "good" for q in qs])
    masks = torch.stack([q.mask for q in qs]).numpy()
    full = lambda m: F.interpolate(m[:, None], size=(c.height, c.width), mode="bilinear", align_corners=False)[:, 0]
    report = {"category": c.name, "memory_level": level, "bundle_levels": list(stats.levels)}
    for name, maps in (("product", product_maps), ("memory", full(mem)),
                       ("memory+colour", full(torch.maximum(mem, torch.maximum(*area))))):
        s = product_scores.numpy() if name == "product" else maps.flatten(1).amax(1).numpy()
        weak = sorted((float(v), q.name) for v, q, lab in zip(s, qs, labels) if lab)[:3]
        report[name] = {"image_auroc": round(float(auroc(labels, s)), 4), "misordered_pairs": misordered(labels, s),
                        "pairs": int(labels.sum() * (~labels).sum()),
                        "pixel_auroc": round(float(pixel_auroc(masks, maps.numpy())), 4),
                        "aupro": round(float(aupro(masks, maps.numpy())), 4),
                        "good_top": [round(float(v), 3) for v in np.sort(s[~labels])[::-1][:3]],
                        "weakest": [(round(v, 3), n) for v, n in weak]}
        print(c.name, name, json.dumps(report[name]), flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    out_path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
