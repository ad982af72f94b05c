"""Evaluation of a bundle on a labelled category: every test view through the Inspector.

``evaluate`` runs a bundle in its own pose mode (the demo calls it; the lab's
``rpe-pad lab evaluate`` adds the evaluation-only modes and the 2D baseline on top of
``evaluate_inspector``). Metrics follow the peers' protocol: maps and masks at 224 x 224
(masks nearest-resized), image AUROC over (label != good, the image score: the max of the map at the score's blur), pixel AUROC
(on the map returned, which the ``cpu`` and ``paper`` presets blur finer),
AUPRO up to FPR 0.3, F1-max, image AUROC per defect type (that type against the good
views), and the operating point: defects found and good parts rejected at the calibrated
threshold (``decision_metrics``). With true poses available, the pose errors are reported
too (``pose_report``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models.bundle import read_manifest
from models.calibration import Calibration, exceeds
from models.camera import pose_errors, reprojection_error_px, scale_intrinsics
from models.data import GOOD, load_category
from models.inspector import Inspection, Inspector
from models.metrics import aupro, auroc, f1_max, pixel_auroc
from models.splat.scene import GaussianScene, render
from models.viz import Cell, anomaly_overlay, contact_sheet, figure, heat, mask_overlay

MISALIGNED_PX = 5.0  # a pose this far off (alignment error at 224) is a failure the check must flag
ALIGNED_PX = 1.0  # a pose this close is right, and the check should let it through


def verification_report(results: list[Inspection], labels: np.ndarray, reproj_px: list[float] | None = None) -> dict:
    """How many queries the pose check flagged (verdict ``review``), the verdicts by label,
    and, where the true alignment errors ``reproj_px`` are known, how many truly misaligned
    queries (> 5 px) were flagged and how many aligned ones (<= 1 px) were flagged anyway."""
    flagged = np.array([not r.verification.verified for r in results])
    verdicts = {name: dict(Counter(r.verdict for r, y in zip(results, labels) if y == want))
                for name, want in (("good", False), ("defective", True))}
    out = {"flagged": int(flagged.sum()), "n_queries": len(results), "verdicts": verdicts,
           "misalignment_px_median": round(float(np.median([r.verification.misalignment_px or np.inf for r in results])), 3),
           "reasons": sorted({r.verification.reason for r in results if r.verification.reason})}
    if reproj_px is not None:
        err = np.asarray(reproj_px, dtype=np.float64)
        bad, good = err > MISALIGNED_PX, err <= ALIGNED_PX
        out.update(misaligned=int(bad.sum()), misaligned_flagged=int((bad & flagged).sum()),
                   aligned=int(good.sum()), aligned_flagged=int((good & flagged).sum()))
    return out


def decision_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Confusion counts and rates of ``score > threshold`` against the labels."""
    flagged = exceeds(scores, threshold)
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
    """Renders [V, H, W, 3] in [0, 1] of the normal object at world-to-camera ``poses``, on the
    scene's device (gsplat on CUDA), returned on the CPU."""
    out = [render(scene, poses[i : i + batch].float(), Ks[i : i + batch].float(), width, height).colors.clamp(0, 1).cpu()
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


def image_size(path: Path) -> int | None:
    """The width a bundle (its manifest) or a training folder (its splats config) works at."""
    manifest = path / "manifest.json"
    if manifest.is_file():
        return read_manifest(path).camera.width
    config = path / "splats" / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{path}: neither a bundle (manifest.json) nor a training folder (splats/config.json)")
    return json.loads(config.read_text()).get("image_size")


def evaluate(bundle_dir: Path, category_dir: Path, out_dir: Path | None = None, eval_size: int = 224, batch: int = 8,
             device: str = "auto", progress: bool = False) -> dict:
    """Inspect every test view of ``category_dir`` with the bundle at ``bundle_dir`` in its
    own pose mode (``models.inspector.Inspector``) and report the metrics (``inspect_all``)."""
    category = load_category(category_dir, size=image_size(bundle_dir))
    if not category.test:
        raise ValueError(f"{category_dir}: no test views to evaluate")
    inspector = Inspector.load(bundle_dir, device)
    return evaluate_inspector(inspector, category, list(category.test), out_dir, eval_size, batch, progress)


def evaluate_inspector(inspector: Inspector, category, queries: list, out_dir: Path | None = None, eval_size: int = 224,
                       batch: int = 8, progress: bool = False, given_poses: bool = False) -> dict:
    """Every query through ``inspector`` in batches, then the metrics: detection
    (``detection_metrics``), the decision at the calibrated threshold (``decision_metrics``),
    time per stage, and the pose errors where the true poses are known (``pose_report``).
    ``given_poses``: the queries' true poses are handed to the pose mode (the lab's oracle)."""
    if (inspector.width, inspector.height) != (category.width, category.height):
        raise ValueError(f"{category.root}: test views load at {category.width} x {category.height}, the bundle works "
                         f"at {inspector.width} x {inspector.height}")
    mode = inspector.config.pose
    results: list[Inspection] = []
    for i in tqdm(range(0, len(queries), batch), desc=f"evaluate {mode}", unit="batch", disable=not progress):
        chunk = queries[i : i + batch]
        run = inspector.start(torch.stack([q.image for q in chunk]))
        if given_poses:
            run.given_poses = torch.stack([q.w2c for q in chunk])
        results += inspector.run(run)
    maps_t = torch.stack([torch.from_numpy(r.anomaly_map) for r in results])
    score_np = np.array([r.score for r in results])
    metrics = {
        **detection_metrics(category, queries, maps_t, score_np, eval_size),
        "pose_mode": mode,
        "decision": decision_metrics(_labels(queries), score_np, inspector.calibration.threshold),
        # Per query: each batch's stage time over its size; the median over batches.
        "timing_ms": {key: round(float(np.median([r.timings_ms[key] for r in results])), 1)
                      for key in results[0].timings_ms},
        "device": str(inspector.device),
        "bundle": "verified bundle" if inspector.manifest is not None else "training folder (not verified)",
    }
    if mode == "rpe+refine":
        info = [r.refine for r in results]
        metrics["refine"] = {
            "pnp_accepted_fraction": round(float(np.mean([d["pnp_accepted"] for d in info])), 4),
            "pnp_inliers_median": float(np.median([d["pnp_inliers"] for d in info])),
            "pnp_rejections": sorted({d["pnp_reason"] for d in info if d["pnp_reason"] != "ok"}),
            "pnp_paths": dict(Counter(d["pnp_path"] for d in info)),
            "ecc_accepted_fraction": round(float(np.mean([d["ecc_accepted"] for d in info])), 4),
            "ecc_shift_px_median": float(np.median([d["ecc_shift_px"] for d in info])),
        }
    if inspector.estimator is not None:
        metrics["pose_backend"], metrics["k"] = inspector.estimator.providers, inspector.config.k
    if not given_poses and all(q.w2c is not None for q in queries):
        metrics.update(pose_report(torch.from_numpy(np.stack([r.pose_matrix for r in results])),
                                   torch.stack([q.w2c for q in queries]), torch.stack([q.K for q in queries]),
                                   category.width, category.height, inspector.scene.to("cpu"), eval_size))
    metrics["verification"] = verification_report(results, _labels(queries), metrics.get("per_query_reproj_px"))
    # Each query's score and verdict, so that any other threshold's operating point can be read off.
    metrics["per_query"] = [{"query": q.name, "label": q.label, "score": round(float(r.score), 4), "verdict": r.verdict}
                            for q, r in zip(queries, results)]
    if out_dir is not None:
        renders = [torch.from_numpy(r.reference) for r in results]
        write_report(out_dir, metrics, queries, renders, maps_t, score_np, inspector.calibration,
                     verdicts=[r.verdict for r in results])
    return metrics


def write_report(out_dir: Path, metrics: dict, queries, renders, maps: torch.Tensor, scores: np.ndarray,
                 calib: Calibration | None, reference_caption: str = "rendered reference",
                 verdicts: list[str] | None = None) -> None:
    """``metrics.json``, ``metrics.md`` and ``overlays.png`` (two views of each label: the
    query with its true mask, the reference, the decision overlay) in ``out_dir``."""
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
        rows.append(f"| defects found / good parts rejected | {d['tp']} of {d['tp'] + d['fn']} / {d['fp']} of "
                    f"{d['fp'] + d['tn']} (false-alarm rate {d['false_positive_rate']}) |")
    if "verification" in metrics:
        v = metrics["verification"]
        line = f"{v['flagged']} of {v['n_queries']}"
        if "misaligned" in v:
            line += (f"; truly misaligned (> {MISALIGNED_PX:g} px): {v['misaligned_flagged']} of {v['misaligned']} flagged; "
                     f"aligned (<= {ALIGNED_PX:g} px): {v['aligned_flagged']} of {v['aligned']} flagged")
        rows.append(f"| pose check: flagged for review | {line} |")
        # What an operator sees: the score's decision above counts a flagged query by its score.
        good, bad = (v["verdicts"][k] for k in ("good", "defective"))
        rows.append(f"| verdicts, defects: anomalous / review / normal | {bad.get('anomalous', 0)} / "
                    f"{bad.get('review', 0)} / {bad.get('normal', 0)} |")
        rows.append(f"| verdicts, good parts: normal / review / anomalous | {good.get('normal', 0)} / "
                    f"{good.get('review', 0)} / {good.get('anomalous', 0)} |")
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
            verdict = verdicts[i].upper() if verdicts else "ANOMALOUS" if calib.decide(scores[i]) else "normal"
            # Raw score against the threshold, as the inspect figure and the page show it (a
            # normalised score saturates at 1.00 and hides how strong a defect is).
            shown = Cell(anomaly_overlay(image, norm), f"{verdict} {figure(float(scores[i]))} / {figure(calib.threshold)}")
        else:
            shown = Cell(heat(maps[i].numpy(), vmax), f"map, score {scores[i]:.1f}")
        sheet_rows.append((q.name.split("/", 1)[-1], [
            Cell(mask_overlay(image, q.mask.numpy()), "query + true mask" if bool(q.mask.any()) else "query"),
            Cell(renders[i].numpy(), reference_caption),
            shown,
        ]))
    contact_sheet(sheet_rows, cell=160, title=f"{metrics['category']}: pose {metrics['pose_mode']}").save(out_dir / "overlays.png")
