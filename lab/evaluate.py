"""`rpe-pad lab evaluate BUNDLE_DIR CATEGORY_DIR --pose MODE`: score every test view.

Modes: every registered pose mode (``models.registry``: the product's ``rpe+refine`` and
``rpe``, and the lab's ``oracle``, ``retrieval``, ``iterative``), all through the one
inspection pipeline (``training.evaluate.evaluate_inspector``); and ``patchcore``, the 2D
baseline that ignores pose (``lab.patchcore``). A bundle or a training work folder
(``lab.workdir``) can be evaluated.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

import lab  # noqa: F401 (registers the evaluation-only pose modes)
from lab.patchcore import PatchCore, PatchCoreConfig
from lab.workdir import open_inspector
from models.data import load_category
from models.inspector import InspectorConfig, resolve_device
from models.registry import DEFAULT_POSE, pose_modes
from training.evaluate import detection_metrics, evaluate_inspector, image_size, subset, write_report

BASELINE_2D = "patchcore"  # the 2D baseline that ignores pose


def eval_modes() -> tuple[str, ...]:
    return (*pose_modes(lab=True), BASELINE_2D)


def evaluate(bundle_dir: Path, category_dir: Path, pose: str = DEFAULT_POSE, out_dir: Path | None = None,
             eval_size: int = 224, batch: int = 8, k: int | None = None, device: str = "auto",
             iterative_steps: int | None = None, progress: bool = False, limit: int | None = None) -> dict:
    """Inspect the test views of ``category_dir`` with the bundle (or work folder) at
    ``bundle_dir`` in pose mode ``pose`` and report the metrics. ``limit``: about that many
    test views, each label keeping its share (``training.evaluate.subset``; for the slow
    modes). ``k``: gallery matches per query (default: the bundle's)."""
    if pose not in eval_modes():
        raise ValueError(f"pose mode {pose!r} is not available; available: {list(eval_modes())}")
    category = load_category(category_dir, size=image_size(bundle_dir))
    queries = list(category.test)
    if pose == "oracle" and any(q.w2c is None for q in queries):
        raise ValueError(f"{category_dir}: --pose oracle needs test/transforms.json poses for every test view")
    if not queries:
        raise ValueError(f"{category_dir}: no test views to evaluate")
    queries = subset(queries, limit)
    if pose == BASELINE_2D:
        return _evaluate_patchcore(category, queries, eval_size, batch, device, out_dir)
    options = {"steps": iterative_steps} if pose == "iterative" and iterative_steps else {}
    config = InspectorConfig(pose=pose, pose_options=options)
    inspector = open_inspector(bundle_dir, config, device=device, camera=(category.width, category.height, category.K),
                               k=k)
    metrics = evaluate_inspector(inspector, category, queries, out_dir, eval_size, batch, progress,
                                 given_poses=pose == "oracle")
    if pose == "iterative":
        metrics["iterative"] = dict(inspector.locate.cfg.__dict__)
    return metrics


def _evaluate_patchcore(category, queries, eval_size: int, batch: int, device: str, out_dir: Path | None,
                        cfg: PatchCoreConfig | None = None) -> dict:
    """The 2D baseline (``lab.patchcore``): bank from the category's training views, no pose."""
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
        write_report(out_dir, metrics, queries, refs, maps_t, score_np, None, "no reference (2D baseline)")
    return metrics
