"""`rpe-pad evaluate BUNDLE_DIR CATEGORY_DIR --pose oracle`: score every test view.

Today's pose mode is ``oracle`` (render at the true pose from ``test/transforms.json``):
the upper bound of the pipeline, and the check that the Gaussian model and the scorer are
good enough. Metrics follow the peers' protocol: maps and masks at 224 x 224 (masks
nearest-resized), image AUROC over (label != good, max of the map), pixel AUROC, AUPRO up
to FPR 0.3, F1-max, and image AUROC per defect type (that type against the good views).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F

from models.data import GOOD, load_category
from models.metrics import aupro, auroc, f1_max, pixel_auroc
from models.scoring import AnomalyScorer
from models.splat.scene import GaussianScene, render
from models.viz import Cell, contact_sheet, mask_overlay

POSE_MODES = ("oracle",)


def heat(values: np.ndarray, vmax: float) -> np.ndarray:
    """Colour-map a [H, W] map to RGB with a fixed scale (0 .. vmax)."""
    return matplotlib.colormaps["jet"](np.clip(values / max(vmax, 1e-12), 0, 1))[..., :3].astype(np.float32)


def evaluate(bundle_dir: Path, category_dir: Path, pose: str = "oracle", out_dir: Path | None = None,
             eval_size: int = 224, batch: int = 8, tolerance: int = 0) -> dict:
    if pose not in POSE_MODES:
        raise ValueError(f"pose mode {pose!r} is not available yet; available: {list(POSE_MODES)}")
    scene = GaussianScene.load(bundle_dir / "splats" / "scene.safetensors")
    cfg = json.loads((bundle_dir / "splats" / "config.json").read_text())
    category = load_category(category_dir, size=cfg.get("image_size"))
    queries = [q for q in category.test if q.w2c is not None]
    if len(queries) < len(category.test):
        raise ValueError(f"{category_dir}: --pose oracle needs test/transforms.json poses for every test view")
    scorer = AnomalyScorer(tolerance=tolerance)
    maps, scores, renders = [], [], []
    timing = {"render": [], "score": []}
    for i in range(0, len(queries), batch):
        chunk = queries[i : i + batch]
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = render(scene, torch.stack([q.w2c for q in chunk]).float(), torch.stack([q.K for q in chunk]).float(),
                         category.width, category.height).colors.clamp(0, 1)
        t1 = time.perf_counter()
        m, s = scorer(torch.stack([q.image for q in chunk]), ref)
        t2 = time.perf_counter()
        timing["render"].append((t1 - t0) / len(chunk))
        timing["score"].append((t2 - t1) / len(chunk))
        maps.append(m)
        scores.append(s)
        renders.extend(ref)
    maps_t, scores_t = torch.cat(maps), torch.cat(scores)
    maps224 = F.interpolate(maps_t[:, None], size=(eval_size, eval_size), mode="bilinear", align_corners=False)[:, 0].numpy()
    masks224 = F.interpolate(torch.stack([q.mask for q in queries])[:, None].float(), size=(eval_size, eval_size),
                             mode="nearest")[:, 0].numpy() > 0.5
    labels = np.array([q.label != GOOD for q in queries])
    score_np = scores_t.numpy()
    per_type = {}
    for defect in category.defect_types:
        sel = np.array([q.label in (GOOD, defect) for q in queries])
        per_type[defect] = round(auroc(labels[sel], score_np[sel]), 4)
    metrics = {
        "category": category.name,
        "pose_mode": pose,
        "n_queries": len(queries),
        "image_auroc": round(auroc(labels, score_np), 4),
        "pixel_auroc": round(pixel_auroc(masks224, maps224), 4),
        "aupro": round(aupro(masks224, maps224), 4),
        "f1_max": round(f1_max(labels, score_np), 4),
        "image_auroc_per_defect": per_type,
        "eval_size": eval_size,
        "tolerance": tolerance,
        "timing_ms": {k: round(1000 * float(np.median(v)), 1) for k, v in timing.items()},
    }
    if out_dir is not None:
        _write_report(out_dir, metrics, queries, renders, maps_t, score_np)
    return metrics


def _write_report(out_dir: Path, metrics: dict, queries, renders, maps: torch.Tensor, scores: np.ndarray) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    rows = ["| metric | value |", "|---|---|"]
    for key in ("n_queries", "pose_mode", "image_auroc", "pixel_auroc", "aupro", "f1_max"):
        rows.append(f"| {key} | {metrics[key]} |")
    for defect, value in metrics["image_auroc_per_defect"].items():
        rows.append(f"| image_auroc {defect} | {value} |")
    (out_dir / "metrics.md").write_text("\n".join(rows) + "\n")
    vmax = float(maps.max())
    picks = []
    for label in sorted({q.label for q in queries}):
        picks += [i for i, q in enumerate(queries) if q.label == label][:2]
    sheet_rows = []
    for i in picks:
        q = queries[i]
        image = q.image.numpy()
        sheet_rows.append((q.name.split("/", 1)[-1], [
            Cell(mask_overlay(image, q.mask.numpy()), "query + true mask"),
            Cell(renders[i].numpy(), "rendered reference"),
            Cell(heat(maps[i].numpy(), vmax), f"map, score {scores[i]:.1f}"),
        ]))
    contact_sheet(sheet_rows, cell=160, title=f"{metrics['category']}: pose {metrics['pose_mode']}").save(out_dir / "overlays.png")
