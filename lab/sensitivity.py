"""`rpe-pad lab sensitivity`: how the scorer degrades when the reference is misaligned.

Every test view is scored against the bundle's render at its true pose (the oracle
reference), then against the same reference shifted horizontally by s pixels or rotated
in-plane by a degrees about the image centre (borders replicated), for each comparison
mode (``tolerance`` 0 = the peers' exact comparison, r > 0 = best match within r cells).
Shifts are in pixels of the image size the views are scored at (``size``), so a row
reads "the render sits s px off the query". Image and pixel AUROC per row, metrics at
224 x 224 like ``rpe-pad lab evaluate``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import kornia.geometry.transform as KT
import numpy as np
import torch
from tqdm.auto import tqdm

from models.calibration import Calibration
from models.data import load_category
from models.features import FeatureExtractor
from models.metrics import auroc, pixel_auroc
from models.scoring import AnomalyScorer
from models.splat.scene import GaussianScene
from training.evaluate import (
    decision_metrics,
    image_labels_and_masks,
    image_size,
    render_references,
    resize_maps,
)

SHIFTS_PX = (0, 1, 2, 4, 8)
ROTATIONS_DEG = (1, 2)
TOLERANCES = (0, 1)


def misalign(images: torch.Tensor, shift_px: float = 0.0, rotation_deg: float = 0.0) -> torch.Tensor:
    """Shift [B, H, W, 3] images right by ``shift_px`` and rotate them by ``rotation_deg``
    (counter-clockwise on screen) about the image centre; borders replicated."""
    x = images.permute(0, 3, 1, 2)
    if shift_px:
        x = KT.translate(x, torch.tensor([[float(shift_px), 0.0]]).expand(len(x), 2), padding_mode="border",
                         align_corners=False)
    if rotation_deg:
        x = KT.rotate(x, torch.full((len(x),), float(rotation_deg)), padding_mode="border")
    return x.permute(0, 2, 3, 1).contiguous()


def sensitivity(bundle_dir: Path, category_dir: Path, size: int | None = None, shifts=SHIFTS_PX,
                rotations=ROTATIONS_DEG, tolerances=TOLERANCES, eval_size: int = 224, batch: int = 8,
                progress: bool = True) -> dict:
    """Image/pixel AUROC per (mode, misalignment); see the module docstring."""
    scene = GaussianScene.load(bundle_dir / "splats" / "scene.safetensors")
    own_size = image_size(bundle_dir)  # a bundle's manifest or a training folder's splats config
    size = own_size if size is None else size
    calib_path = bundle_dir / "calibration" / "calibration.json"
    calib = Calibration.model_validate_json(calib_path.read_text()) if calib_path.is_file() else None
    category = load_category(category_dir, size=size)
    queries = [q for q in category.test if q.w2c is not None]
    if len(queries) < len(category.test) or not queries:
        raise ValueError(f"{category_dir}: the sensitivity study needs true poses for every test view")
    labels, masks = image_labels_and_masks(queries, eval_size)
    if labels.all() or not labels.any():
        raise ValueError(f"{category_dir}: the test split needs both good and defective views")
    images = torch.stack([q.image for q in queries])
    refs = render_references(scene, torch.stack([q.w2c for q in queries]), torch.stack([q.K for q in queries]),
                             category.width, category.height, batch)
    cases = [("shift_px", s) for s in shifts] + [("rotation_deg", a) for a in rotations]
    rows = []
    bar = tqdm(total=len(cases) * len(tolerances), desc="sensitivity", disable=not progress)
    extractor = FeatureExtractor()  # one backbone for every comparison mode
    for tol in tolerances:
        scorer = AnomalyScorer(extractor, tolerance=tol)
        for kind, amount in cases:
            t0 = time.perf_counter()
            moved = misalign(refs, **{kind: amount})
            maps, scores = [], []
            for i in range(0, len(images), batch):
                m, s = scorer(images[i : i + batch], moved[i : i + batch])
                maps.append(m)
                scores.append(s)
            maps_t, scores_np = torch.cat(maps), torch.cat(scores).numpy()
            rows.append({
                "tolerance": tol, "kind": kind, "amount": amount,
                "image_auroc": round(auroc(labels, scores_np), 4),
                "pixel_auroc": round(pixel_auroc(masks, resize_maps(maps_t, eval_size)), 4),
                "good_score_median": round(float(np.median(scores_np[~labels])), 2),
                # The calibrated threshold applies where the comparison is the one it was set for.
                **({"recall": d["recall"], "false_alarm_rate": d["false_positive_rate"]}
                   if (d := _decision(calib, tol, size == own_size, labels, scores_np)) else {}),
                "score_ms": round(1000 * (time.perf_counter() - t0) / len(images), 1),
            })
            bar.update()
    bar.close()
    return {"category": category.name, "image_size": [category.width, category.height], "n_queries": len(queries),
            "n_defective": int(labels.sum()), "eval_size": eval_size, "rows": rows}


def _decision(calib: Calibration | None, tolerance: int, same_size: bool, labels, scores) -> dict | None:
    if calib is None or not same_size or calib.scorer.get("tolerance") != tolerance:
        return None
    return decision_metrics(labels, scores, calib.threshold)


def markdown(result: dict) -> str:
    """One table: a row per misalignment, image / pixel AUROC per comparison mode."""
    tols = sorted({r["tolerance"] for r in result["rows"]})
    head = "| misalignment | " + " | ".join(f"tol {t}: image / pixel AUROC" for t in tols) + " |"
    intro = (f"{result['category']}: {result['n_queries']} queries ({result['n_defective']} defective), "
             f"images {result['image_size'][0]} px, metrics at {result['eval_size']}")
    lines = [intro, "", head,
             "|---|" + "---|" * len(tols)]
    cases = list(dict.fromkeys((r["kind"], r["amount"]) for r in result["rows"]))
    for kind, amount in cases:
        label = f"{amount} px shift" if kind == "shift_px" else f"{amount} deg rotation"
        cells = []
        for t in tols:
            r = next(r for r in result["rows"] if r["tolerance"] == t and r["kind"] == kind and r["amount"] == amount)
            cell = f"{r['image_auroc']:.3f} / {r['pixel_auroc']:.4f}"
            if "recall" in r:
                cell += f" (recall {r['recall']}, false alarms {r['false_alarm_rate']})"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sensitivity.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "sensitivity.md").write_text(markdown(result))

