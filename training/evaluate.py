"""`rpe-pad evaluate BUNDLE_DIR CATEGORY_DIR --pose MODE`: score every test view.

Modes: the Inspector's pose modes (``models.inspector.POSE_MODES``: ``rpe+refine`` the
default, ``rpe``, ``retrieval``, ``iterative`` the peers' per-query optimisation,
``oracle`` the true pose from ``test/transforms.json``: the upper bound, and the check
that the Gaussian model and the scorer are good enough), all through the one inspection
pipeline; and ``patchcore``, the 2D baseline that ignores pose (``models.patchcore``).
With true poses available, the pose errors are reported too (``pose_report``). Metrics follow the peers' protocol: maps and masks at 224 x 224 (masks
nearest-resized), image AUROC over (label != good, max of the map), pixel AUROC, AUPRO up
to FPR 0.3, F1-max, and image AUROC per defect type (that type against the good views).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models.bundle import read_manifest
from models.calibration import Calibration
from models.camera import pose_errors, reprojection_error_px, scale_intrinsics
from models.data import GOOD, load_category
from models.inspector import (
    DEFAULT_POSE,
    POSE_MODES,
    Inspection,
    Inspector,
    InspectorConfig,
    resolve_device,
)
from models.metrics import aupro, auroc, f1_max, pixel_auroc
from models.patchcore import PatchCore, PatchCoreConfig
from models.pose import DEFAULT_K
from models.refine import IterativeConfig, RefineConfig
from models.splat.scene import GaussianScene, render
from models.viz import Cell, anomaly_overlay, contact_sheet, heat, mask_overlay

BASELINE_2D = "patchcore"  # the 2D baseline that ignores pose
EVAL_MODES = (*POSE_MODES, BASELINE_2D)


def decision_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Confusion counts and rates of ``score > threshold`` against the labels."""
    flagged = scores > threshold
    tp, fp = int(np.sum(flagged & labels)), int(np.sum(flagged & ~labels))
    fn, tn = int(np.sum(~flagged & labels)), int(np.sum(~flagged & ~labels))
    return {"threshold": round(threshold, 4), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "accuracy": round((tp + tn) / len(labels), 4),
            "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / (tp + fn), 4) if tp + fn else None,
            "false_positive_rate": round(fp / (fp + tn), 4) if fp + tn else None}


@torch.no_grad()
def render_references(scene: GaussianScene, poses: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
                      batch: int = 8) -> torch.Tensor:
    """Renders [V, H, W, 3] in [0, 1] of the normal object at world-to-camera ``poses``."""
    out = [render(scene, poses[i : i + batch].float(), Ks[i : i + batch].float(), width, height).colors.clamp(0, 1)
           for i in range(0, len(poses), batch)]
    return torch.cat(out)


def image_labels_and_masks(queries, eval_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image labels (True = defective) and masks nearest-resized to ``eval_size`` (peers' protocol)."""
    labels = np.array([q.label != GOOD for q in queries])
    masks = F.interpolate(torch.stack([q.mask for q in queries])[:, None].float(), size=(eval_size, eval_size),
                          mode="nearest")[:, 0].numpy() > 0.5
    return labels, masks


def resize_maps(maps: torch.Tensor, eval_size: int) -> np.ndarray:
    return F.interpolate(maps[:, None], size=(eval_size, eval_size), mode="bilinear", align_corners=False)[:, 0].numpy()


def object_points(scene: GaussianScene) -> torch.Tensor:
    """The object's points for alignment errors: Gaussian centres with opacity > 0.5 (the
    4000 most opaque when a barely fitted model has none)."""
    confident = torch.sigmoid(scene.opacities) > 0.5
    if int(confident.sum()) >= 10:
        return scene.means[confident].double()
    return scene.means[scene.opacities.topk(min(4000, scene.num_gaussians)).indices].double()


def pose_report(estimated: torch.Tensor, true: torch.Tensor, K: torch.Tensor, width: int, height: int,
                scene: GaussianScene, eval_size: int) -> dict:
    """Pose errors of estimated vs true query poses: rotation (deg), camera centre (relative
    to its distance from the origin), and the alignment error the scorer sees: the mean
    image-space displacement at ``eval_size`` of the object's points (``object_points``)
    between the true and the estimated pose, per view; medians over views."""
    points = object_points(scene)
    K_eval = scale_intrinsics(K.double(), eval_size / width, eval_size / height)  # the 224 x 224 protocol
    reproj = reprojection_error_px(estimated.double(), true.double(), K_eval, points)
    err = pose_errors(estimated.double(), true.double())
    rot = err["rot_deg"]
    return {
        "pose_reproj_err_px_median": round(float(reproj.median()), 3),
        "pose_reproj_err_px_mean": round(float(reproj.mean()), 3),
        "pose_reproj_within_1px": round(float((reproj <= 1).double().mean()), 4),
        "pose_reproj_within_2px": round(float((reproj <= 2).double().mean()), 4),
        "pose_rot_err_deg_median": round(float(rot.median()), 3),
        "pose_rot_err_deg_max": round(float(rot.max()), 3),
        "pose_center_err_rel_median": round(float(err["center_rel"].median()), 4),
        "per_query_reproj_px": [round(float(v), 3) for v in reproj],
    }


def subset(queries: list, limit: int | None) -> list:
    """About ``limit`` of ``queries``, stratified: each label keeps its share (at least
    one view each), evenly spaced within the label, in the original order (all of them
    when ``limit`` is None or not smaller)."""
    if limit is None or limit >= len(queries):
        return queries
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    by_label: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        by_label.setdefault(q.label, []).append(i)
    keep: list[int] = []
    for idx in by_label.values():
        n = max(1, round(limit * len(idx) / len(queries)))
        keep += [idx[j] for j in np.unique(np.linspace(0, len(idx) - 1, n).round().astype(int))]
    return [queries[i] for i in sorted(keep)]


def _labels(queries) -> np.ndarray:
    return np.array([q.label != GOOD for q in queries])


def detection_metrics(category, queries, maps: torch.Tensor, scores: np.ndarray, eval_size: int) -> dict:
    """The peers' protocol on maps ``[V, H, W]`` and image scores ``[V]``: image AUROC,
    pixel AUROC and AUPRO at ``eval_size``, F1-max, image AUROC per defect type."""
    maps224 = resize_maps(maps, eval_size)
    labels, masks224 = image_labels_and_masks(queries, eval_size)
    if labels.all() or not labels.any():
        raise ValueError("the evaluated views need both normal and defective ones (AUROC is undefined otherwise)")
    per_type = {}
    for defect in category.defect_types:
        sel = np.array([q.label in (GOOD, defect) for q in queries])
        if labels[sel].any():  # a subset (--limit) may lack a type
            per_type[defect] = round(auroc(labels[sel], scores[sel]), 4)
    return {
        "category": category.name,
        "n_queries": len(queries),
        "n_test_views": len(category.test),
        "image_auroc": round(auroc(labels, scores), 4),
        "pixel_auroc": round(pixel_auroc(masks224, maps224), 4),
        "aupro": round(aupro(masks224, maps224), 4),
        "f1_max": round(f1_max(labels, scores), 4),
        "image_auroc_per_defect": per_type,
        "eval_size": eval_size,
    }


def _evaluate_patchcore(category, queries, eval_size: int, batch: int, device: str, out_dir: Path | None,
                        cfg: PatchCoreConfig | None = None) -> dict:
    """The 2D baseline (``models.patchcore``): bank from the category's training views, no pose."""
    cfg = cfg or PatchCoreConfig()
    dev = resolve_device(device)
    start = time.perf_counter()
    model = PatchCore(cfg).to(dev)
    model.fit(torch.stack([v.image for v in category.train]))
    fit_s = time.perf_counter() - start
    maps, scores, per_query = [], [], []
    for i in range(0, len(queries), batch):
        images = torch.stack([q.image for q in queries[i : i + batch]])
        t0 = time.perf_counter()
        m, s = model(images)
        per_query.append(1000 * (time.perf_counter() - t0) / len(images))
        maps.append(m)
        scores.append(s)
    maps_t, score_np = torch.cat(maps), torch.cat(scores).numpy()
    metrics = {**detection_metrics(category, queries, maps_t, score_np, eval_size), "pose_mode": BASELINE_2D,
               "decision": None, "timing_ms": {"score": round(float(np.median(per_query)), 1),
                                               "total": round(float(np.median(per_query)), 1)},
               "device": str(dev), "patchcore": {**cfg.__dict__, "bank_patches": len(model.bank),
                                                 "fit_seconds": round(fit_s, 1)}}
    if out_dir is not None:
        refs = [torch.ones_like(q.image) for q in queries]  # no reference view: a 2D method compares with a bank
        _write_report(out_dir, metrics, queries, refs, maps_t, score_np, None, "no reference (2D baseline)")
    return metrics


def image_size(path: Path) -> int | None:
    """The width a bundle (its manifest) or a training folder (its splats config) works at."""
    manifest = path / "manifest.json"
    if manifest.is_file():
        return read_manifest(path).camera.width
    config = path / "splats" / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{path}: neither a bundle (manifest.json) nor a training folder (splats/config.json)")
    return json.loads(config.read_text()).get("image_size")


def evaluate(bundle_dir: Path, category_dir: Path, pose: str = DEFAULT_POSE, out_dir: Path | None = None,
             eval_size: int = 224, batch: int = 8, tolerance: int | None = None, fusion: str = "mean",
             backend: str = "auto", k: int = DEFAULT_K, refine: str = RefineConfig().method, refine_rounds: int = 2,
             device: str = "auto", photometric: bool = False, iterative: IterativeConfig | None = None,
             progress: bool = False, limit: int | None = None) -> dict:
    """Inspect every test view of ``category_dir`` with the bundle (or training folder) at
    ``bundle_dir`` through ``models.inspector.Inspector`` and report the metrics.

    ``pose``: ``oracle`` (the true pose from ``test/transforms.json``), ``retrieval``,
    ``rpe`` (IRPRN, ``fusion`` of the top ``k``), ``rpe+refine`` (the default: then the
    ``refine`` variant of ``models/refine.py``), ``iterative`` (the peers' per-query
    render-and-compare from the retrieval pose, ``iterative`` config), or ``patchcore``
    (the 2D baseline of ``models/patchcore.py``: no pose, no bundle model but its image
    size). ``limit``: evaluate about that many test views, each label keeping its share
    (``subset``; for the slow modes; ``n_queries`` vs ``n_test_views`` in the report). ``tolerance`` overrides the calibrated
    scorer's comparison radius (the calibrated threshold then no longer applies and no
    decision is reported)."""
    if pose not in EVAL_MODES:
        raise ValueError(f"pose mode {pose!r} is not available; available: {list(EVAL_MODES)}")
    category = load_category(category_dir, size=image_size(bundle_dir))
    queries = [q for q in category.test if q.w2c is not None]
    if pose == "oracle" and len(queries) < len(category.test):
        raise ValueError(f"{category_dir}: --pose oracle needs test/transforms.json poses for every test view")
    if pose != "oracle":
        queries = list(category.test)
    if not queries:
        raise ValueError(f"{category_dir}: no test views to evaluate")
    queries = subset(queries, limit)
    if pose == BASELINE_2D:
        return _evaluate_patchcore(category, queries, eval_size, batch, device, out_dir)
    config = InspectorConfig(pose=pose, refine=RefineConfig(method=refine, rounds=refine_rounds, photometric=photometric),
                             fusion=fusion, k=k, backend=backend, tolerance=tolerance,
                             iterative=iterative or IterativeConfig())
    inspector = Inspector.open(bundle_dir, config, device=device,
                               camera=(category.width, category.height, category.K))
    if (inspector.width, inspector.height) != (category.width, category.height):
        raise ValueError(f"{category_dir}: test views load at {category.width} x {category.height}, the bundle works "
                         f"at {inspector.width} x {inspector.height}")
    scene, calib = inspector.scene, inspector.calibration
    results: list[Inspection] = []
    for i in tqdm(range(0, len(queries), batch), desc=f"evaluate {pose}", unit="batch", disable=not progress):
        chunk = queries[i : i + batch]
        images = torch.stack([q.image for q in chunk])
        true = torch.stack([q.w2c for q in chunk]) if pose == "oracle" else None
        results += inspector.inspect(images, true_poses=true)
    maps_t = torch.stack([torch.from_numpy(r.anomaly_map) for r in results])
    score_np = np.array([r.score for r in results])
    timing_keys = results[0].timings_ms.keys()
    metrics = {
        **detection_metrics(category, queries, maps_t, score_np, eval_size),
        "pose_mode": pose,
        "tolerance": inspector.scorer.tolerance,
        "decision": decision_metrics(_labels(queries), score_np, calib.threshold) if calib is not None else None,
        # Per query: each batch's stage time over its size; the median over batches.
        "timing_ms": {key: round(float(np.median([r.timings_ms[key] for r in results])), 1) for key in timing_keys},
        "device": str(inspector.device),
        "bundle": "verified bundle" if inspector.manifest is not None else "training folder (not verified)",
    }
    if pose == "iterative":
        metrics["iterative"] = dict(config.iterative.__dict__)
    if pose == "rpe+refine" and refine != "none":
        info = [r.refine for r in results]
        pnp_acc = [d["pnp_accepted"] for d in info if "pnp_accepted" in d]
        ecc_acc = [d["ecc_accepted"] for d in info if "ecc_accepted" in d]
        metrics["refine"] = {
            "method": refine,
            "rounds": refine_rounds,
            "pnp_accepted_fraction": round(float(np.mean(pnp_acc)), 4) if pnp_acc else None,
            "pnp_inliers_median": float(np.median([d["pnp_inliers"] for d in info if "pnp_inliers" in d])) if pnp_acc else None,
            "pnp_rejections": sorted({d["pnp_reason"] for d in info if d.get("pnp_reason", "ok") != "ok"}),
            "pnp_paths": dict(Counter(d["pnp_path"] for d in info if "pnp_path" in d)) or None,  # gpnp: how poses were reached
            "ecc_accepted_fraction": round(float(np.mean(ecc_acc)), 4) if ecc_acc else None,
            "ecc_shift_px_median": float(np.median([d["ecc_shift_px"] for d in info if "ecc_shift_px" in d])) if ecc_acc else None,
            "photometric": photometric,
            "photo_accepted": sum(bool(d.get("photo_accepted")) for d in info) if photometric else None,
        }
    if pose != "oracle":
        metrics["pose_backend"] = getattr(inspector.estimator, "providers", ["torch"])
        metrics["fusion"], metrics["k"] = fusion, k
    if pose != "oracle" and all(q.w2c is not None for q in queries):
        metrics.update(pose_report(torch.from_numpy(np.stack([r.pose for r in results])),
                                   torch.stack([q.w2c for q in queries]), torch.stack([q.K for q in queries]),
                                   category.width, category.height, scene.to("cpu"), eval_size))
    if out_dir is not None:
        renders = [torch.from_numpy(r.reference) for r in results]
        _write_report(out_dir, metrics, queries, renders, maps_t, score_np, calib)
    return metrics


def _write_report(out_dir: Path, metrics: dict, queries, renders, maps: torch.Tensor, scores: np.ndarray,
                  calib: Calibration | None, reference_caption: str = "rendered reference") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    rows = ["| metric | value |", "|---|---|"]
    for key in ("n_queries", "n_test_views", "pose_mode", "image_auroc", "pixel_auroc", "aupro", "f1_max", "pose_reproj_err_px_median",
                "pose_rot_err_deg_median", "pose_center_err_rel_median"):
        if key in metrics:
            rows.append(f"| {key} | {metrics[key]} |")
    for key, value in metrics["timing_ms"].items():
        rows.append(f"| time per query: {key} (ms) | {value} |")
    for defect, value in metrics["image_auroc_per_defect"].items():
        rows.append(f"| image_auroc {defect} | {value} |")
    if metrics["decision"] is not None:
        d = metrics["decision"]
        rows.append(f"| threshold (calibrated) | {d['threshold']} |")
        rows.append(f"| accuracy / precision / recall at threshold | {d['accuracy']} / {d['precision']} / {d['recall']} |")
    (out_dir / "metrics.md").write_text("\n".join(rows) + "\n")
    vmax = float(maps.max())
    picks = []
    for label in sorted({q.label for q in queries}):
        picks += [i for i, q in enumerate(queries) if q.label == label][:2]
    sheet_rows = []
    for i in picks:
        q = queries[i]
        image = q.image.numpy()
        if calib is not None:
            norm = calib.normalise_map(maps[i].numpy())
            verdict = "ANOMALOUS" if calib.decide(scores[i]) else "normal"
            shown = Cell(anomaly_overlay(image, norm), f"{verdict} {float(calib.normalise(scores[i])):.2f}")
        else:
            shown = Cell(heat(maps[i].numpy(), vmax), f"map, score {scores[i]:.1f}")
        sheet_rows.append((q.name.split("/", 1)[-1], [
            Cell(mask_overlay(image, q.mask.numpy()), "query + true mask"),
            Cell(renders[i].numpy(), reference_caption),
            shown,
        ]))
    contact_sheet(sheet_rows, cell=160, title=f"{metrics['category']}: pose {metrics['pose_mode']}").save(out_dir / "overlays.png")
