"""Issue 22, session 17: the scorer study's selection data for one category, shared by the
session's scripts: the self-check's painted and clean held-out queries, the calibration model's
renders at their jittered poses (aligned as the product aligns), and the scorer's unblurred terms
(RGB colour term and EfficientNet-Lite0's four layers), silhouette evidence and edge strength.
Run alone, it saves them for offline comparisons of how the terms are combined.

    python docs/results/issue22_selection_terms.py BUNDLES_DIR CATEGORY_DIR OUT.pt
"""
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from lab.scorer_study import FALSE_ALARM, Features, _figures, _masks224
from models.bundle import FILES
from models.calibration import Calibration
from models.inspector import align_references
from models.refine import RefineConfig
from models.scoring import AnomalyScorer
from training.evaluate import render_references
from training.selfcheck import SelfCheckConfig, heldout_views, painted_queries


def selection(bundles: Path, category_dir: Path, seed: int = SelfCheckConfig.seed) -> SimpleNamespace:
    """The selection data; ``seed``: the painter's and the jitter's (the default is the
    self-check's own set; another gives a fresh set of painted defects and jitters)."""
    bundle, category, scene, held = heldout_views(Path(bundles), Path(category_dir))
    calib = Calibration.model_validate_json((bundle / FILES["calibration"]).read_text())
    s0 = AnomalyScorer.from_config(calib.scorer)
    q = painted_queries(held, category.background, SelfCheckConfig(seed=seed))
    images = torch.from_numpy(np.stack(q.images))
    Ks = q.K[None].expand(len(images), 3, 3)
    refs = render_references(scene, q.poses, Ks, category.width, category.height)
    refs = align_references(images, refs.cpu(), RefineConfig()).cpu()
    scorer = AnomalyScorer(s0.extractor, s0.size, s0.sigma, s0.tolerance, background=tuple(category.background),
                           colour="rgb")
    return SimpleNamespace(category=category, scene=scene, q=q, images=images, Ks=Ks, refs=refs, scorer=scorer,
                           f=Features(scorer, images, refs), labels=np.asarray(q.labels, bool),
                           masks=_masks224(q.masks), kinds=np.array(q.kinds))


def structure_figures(name: str, s: SimpleNamespace, terms: torch.Tensor, edges: torch.Tensor) -> dict:
    """``structure`` over ``terms`` with ``edges``, fitted on the clean views and thresholded at
    the 98th percentile of their image scores (the product's rule): the figures, printed."""
    from models.scoring import blur_maps, combine, fit_normal_stats

    clean = ~s.labels
    stats = fit_normal_stats(terms[clean], s.f.silhouette[clean], edges[clean])
    maps = blur_maps(combine(terms, "structure", stats, s.f.silhouette, edges), s.scorer.sigma)
    thr = float(np.quantile(maps[clean].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM))
    r = _figures(maps, s.labels, s.masks, thr)
    sc = maps.flatten(1).amax(1).numpy()
    r["found_by_kind"] = {str(k): int(((sc > thr) & (s.kinds == k)).sum()) for k in sorted(set(s.kinds)) if k != "good"}
    print(s.category.name, name, r["image_auroc"], r["recall"], f"{r['found']}/{r['of']}", "FAR", r["false_alarm_rate"],
          "pixel", r["pixel_auroc"], r["aupro"], r["found_by_kind"], flush=True)
    return r


def compare(measure, variants: tuple[str, ...]) -> None:
    """``python SCRIPT OUT.json BUNDLES_DIR:CATEGORY_DIR [...]``: ``measure`` on each category,
    the summed defects found and mean image AUROC of each variant, and the figures in OUT.json."""
    import json

    results = {}
    for pair in sys.argv[2:]:
        b, c = pair.split(":")
        results[Path(c).name] = measure(Path(b), Path(c))
    for name in variants:
        print(name, "summed found", sum(r[name]["found"] for r in results.values()),
              "mean image AUROC", round(float(np.mean([r[name]["image_auroc"] for r in results.values()])), 4))
    Path(sys.argv[1]).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    s = selection(Path(sys.argv[1]), Path(sys.argv[2]))
    torch.save({"terms": s.f.terms.half(), "sil": s.f.silhouette.half(), "edges": s.f.edges.half(),
                "chroma": s.f.chroma.half(), "labels": torch.from_numpy(s.labels), "kinds": list(s.kinds),
                "masks": torch.from_numpy(s.masks)}, sys.argv[3])
    print("saved", s.f.terms.shape)
