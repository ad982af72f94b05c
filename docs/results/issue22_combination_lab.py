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

import kornia
import numpy as np
import torch

from lab.scorer_study import FALSE_ALARM, Features, _figures, _masks224
from models.bundle import FILES
from models.calibration import Calibration
from models.inspector import align_references
from models.refine import RefineConfig
from models.scoring import AnomalyScorer, blur_maps, combine, fit_normal_stats, squared_difference
from training.evaluate import render_references
from training.selfcheck import SelfCheckConfig, heldout_views, painted_queries


def lab_terms(scorer: AnomalyScorer, queries: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """[B, 2, S, S]: the squared L* and a*b* differences (tolerance as the scorer's)."""
    q, r = (kornia.color.rgb_to_lab(scorer.squares(x)) for x in (queries, references))
    return torch.stack([squared_difference(q[:, :1], r[:, :1], scorer.tolerance),
                        squared_difference(q[:, 1:], r[:, 1:], scorer.tolerance)], dim=1)


def measure(bundles: Path, category_dir: Path) -> dict:
    bundle, category, cal_scene, held = heldout_views(bundles, category_dir)
    calib = Calibration.model_validate_json((bundle / FILES["calibration"]).read_text())
    s0 = AnomalyScorer.from_config(calib.scorer)
    q = painted_queries(held, category.background, SelfCheckConfig())
    images = torch.from_numpy(np.stack(q.images))
    refs = render_references(cal_scene, q.poses, q.K[None].expand(len(images), 3, 3), category.width, category.height)
    refs = align_references(images, refs.cpu(), RefineConfig()).cpu()
    scorer = AnomalyScorer(s0.extractor, s0.size, s0.sigma, s0.tolerance, background=tuple(category.background))
    f = Features(scorer, images, refs)
    lab = torch.cat([lab_terms(scorer, images[i:i + 16], refs[i:i + 16]) for i in range(0, len(images), 16)])
    labels, masks, kinds = np.asarray(q.labels, bool), _masks224(q.masks), np.array(q.kinds)
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
