"""Issue 22, session 24 (a measurement; it chooses nothing): how firmly the held-out views pin
each of ``either``'s normal levels, as `threshold_spread` says for the threshold. The
calibration stage's held-out evidence is rebuilt from a work folder (the calibration model, the
held-out views at the calibration's jittered poses, ECC-aligned; ``training.calibrate``'s
settings of the ``cpu`` preset), the scorer's normal statistics fitted on it, and each map's
image scores over the views resampled, the level read off each resample as the calibration
reads it (its ``LEVEL_QUANTILE``). The terms' scales stay those of all the views.

    python docs/results/issue22_level_spread.py WORK_DIR CATEGORY_DIR [OUT.json]
"""
import json
import math
import sys
from pathlib import Path

import torch

from models.calibration import threshold_spread
from models.camera import perturb_pose
from models.data import load_category
from models.inspector import align_references
from models.refine import RefineConfig
from models.scoring import EITHER_MAPS, LEVEL_QUANTILE, AnomalyScorer, _either_pres, blur_maps, colour_terms, fit_normal_stats
from training.calibrate import calibration_model
from training.evaluate import render_references
from training.pipeline import CALIBRATION
from training.splats import preset


def level_spread(work: Path, category_dir: Path) -> dict:
    cfg, splats = CALIBRATION["cpu"], preset("cpu")
    category = load_category(category_dir, size=splats.image_size)
    scene, held, _ = calibration_model(category, splats, cfg, work)
    images = torch.stack([v.image for v in held]).repeat_interleave(cfg.jitters, 0)
    Ks = torch.stack([v.K for v in held]).repeat_interleave(cfg.jitters, 0)
    poses = torch.stack([v.w2c for v in held]).repeat_interleave(cfg.jitters, 0)
    poses = perturb_pose(poses, cfg.jitter_px / (math.sqrt(2) * float(Ks[0, 0, 0])), 0.0,
                         torch.Generator().manual_seed(cfg.seed))
    scorer = AnomalyScorer(tolerance=cfg.tolerance, background=scene.background, colour=cfg.colour)
    parts = []  # (terms, silhouettes, edges) per batch
    for i in range(0, len(poses), cfg.batch):
        refs = render_references(scene, poses[i : i + cfg.batch], Ks[i : i + cfg.batch], images.shape[2], images.shape[1])
        refs = align_references(images[i : i + cfg.batch], refs.cpu(), RefineConfig())
        parts.append((*scorer.inputs(images[i : i + cfg.batch], refs), scorer.edges(refs)))
    terms, silhouettes, edges = (torch.cat(p) for p in zip(*parts))
    stats = fit_normal_stats(terms, silhouettes, edges, sigma=scorer.sigma, colours=colour_terms(scorer.colour))
    out = {"heldout_views": len(held), "levels": {}}
    for name, level, pre in zip(EITHER_MAPS, stats.levels, _either_pres(terms, stats, silhouettes, edges, len(EITHER_MAPS))):
        scores = blur_maps(pre, scorer.sigma).flatten(1).amax(1).double().numpy().reshape(len(held), -1)
        (lo, hi), _ = threshold_spread(scores, 1.0 - LEVEL_QUANTILE)
        out["levels"][name] = {"level": round(level, 4), "range": [round(lo, 4), round(hi, 4)],
                               "relative_width": round((hi - lo) / level, 3)}
    return out


if __name__ == "__main__":
    result = level_spread(Path(sys.argv[1]), Path(sys.argv[2]))
    print(json.dumps(result))
    if len(sys.argv) > 3:
        Path(sys.argv[3]).write_text(json.dumps(result, indent=1) + "\n")
