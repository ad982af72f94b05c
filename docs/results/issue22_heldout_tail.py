"""Issue 22, session 37 (a diagnosis on training views; it chooses nothing): what sets the normal
levels and the threshold once five folds' held-out views calibrate, and why Lego's stain map lost
weight. Every subcommand reads the caches of ``issue22_kfold_eval.py cache`` (a painted set on the
held-out views of each of five folds, scored against that fold's calibration model:
``kf<SEED>_<category>_f<k>.pt``), pooled over the five folds as the calibration stage pools them.

``views CACHE SEED CATEGORY_DIR``: the product's statistics fitted on the five folds' clean copies;
for each of ``EITHER_MAPS``, its level, median and the held-out views with the highest image scores
(the mean over a view's jittered copies); and each map's level fitted on each fold alone.

``variants CACHE SEED CATEGORY_DIR [INSAMPLE.pt]``: the painted set judged at the 98th percentile of
the clean image scores (the product's rule, in sample), found by kind and image AUROC, for
- ``product``: the product's statistics;
- ``chroma``: ``area5`` opened from the CIELAB a*b* term alone (the L* term left to ``area3``);
- ``insample``: the five levels read off ``INSAMPLE.pt`` (the shipped model's own training views,
  ``insample`` below) instead of the held-out views, everything else the product's.

``insample BUNDLE_DIR CATEGORY_DIR OUT.pt``: the product's terms of the bundle's shipped model
against its own training views, each at one pose jittered by 1 px rms (seed 0) and aligned as the
calibration aligns.

``continue FOLDS_DIR CATEGORY_DIR OUT_DIR STEPS K[,K...]``: each fold model ``K`` (stopped at the
fold-in step) fitted STEPS more steps on its own fitted views (the fit's rates, the means' at their
final decayed value, no densification), saved with its view list, so that ``issue22_kfold_eval.py
cache`` can score the held-out views against it.

``size CACHE SEED FOLDS_DIR BUNDLE_DIR CATEGORY_DIR VIEW:FOLD[,...]``: is the model unsure where a view's blob
is, as the size of its Gaussians tells? Each named held-out view's peak (the maximum of its first jittered copy's
five maps over their levels, the product's statistics on the five folds' clean copies) is located, and the fold
model that lacked it and the shipped model each render a per-Gaussian feature at the view's true pose: the log
of the Gaussian's largest scale, alpha-normalised. Printed: the feature in a 9 x 9 window at the peak, its
percentile among the object's pixels (alpha > 0.5), and the object's median.

``disagreement BUNDLE_DIR WORK_DIR CATEGORY_DIR`` (a diagnosis on the test split at true poses; it chooses
nothing): do the five calibration models disagree where the good views' evidence peaks, and agree on the
defects? D is the per-pixel standard deviation over the five calibration models' renders (the work folder's
four fold models and the shipped fit's own), the mean over RGB. Each query is scored by the bundle's scorer as
the calibration scores (``compare_at_poses``, aligned); printed: D in a 9 x 9 window at the map's peak, its
percentile among the object's pixels, and for a defect, D's mean in its mask and that mean's percentile.

``distance CATEGORY_DIR``: the angle from each test view's camera to the nearest training camera,
and from each held-out view (five folds, every fifth view) to the nearest camera of its fold's
fitted views, both seen from the object's centre.
"""
import copy
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from issue22_probes import continuation, fit_step
from models.bundle import open_bundle
from models.camera import perturb_pose
from models.data import load_category
from models.inspector import align_references
from models.metrics import auroc
from models.refine import RefineConfig
from models.scoring import (EITHER_MAPS, LEVEL_QUANTILE, AnomalyScorer, _either_pres, blur_maps, either_map,
                            fit_normal_stats, opening)
from models.splat.scene import GaussianScene
from training.evaluate import render_references
from training.splats import holdout_indices, preset, view_at

FOLDS, COLOURS, SIGMA = 5, 2, 4.0


def _load(cache: Path, seed: int, name: str) -> list[dict]:
    return [torch.load(cache / f"kf{seed}_{name}_f{f}.pt", weights_only=False) for f in range(FOLDS)]


def _clean(data: list[dict]) -> tuple[list[torch.Tensor], torch.Tensor]:
    keep = [~d["labels"] for d in data]
    fold = torch.cat([torch.full((int(k.sum()),), f) for f, k in enumerate(keep)])
    return [torch.cat([d[x][k].float() for d, k in zip(data, keep)]) for x in ("terms", "sil", "edges")], fold


def _map_scores(terms, sil, edges, stats) -> torch.Tensor:
    """[N, 5]: each map's image score (its blurred maximum) before its level."""
    return torch.stack([torch.cat([blur_maps(p[i:i + 64], SIGMA).flatten(1).amax(1) for i in range(0, len(p), 64)])
                        for p in _either_pres(terms, stats, sil, edges, len(EITHER_MAPS))], 1)


def views(cache: Path, seed: int, category_dir: Path) -> None:
    name = category_dir.name
    (terms, sil, edges), fold = _clean(_load(cache, seed, name))
    stats = fit_normal_stats(terms, sil, edges, sigma=SIGMA, colours=COLOURS)
    scores = _map_scores(terms, sil, edges, stats)
    n_train = len(load_category(category_dir, size=32, load_test=False).train)
    held = [i for f in range(FOLDS) for i in holdout_indices(n_train, FOLDS, f)]  # the caches' order
    per_view = scores.view(len(held), -1, len(EITHER_MAPS)).mean(1)  # each view's jittered copies together
    for m, map_name in enumerate(EITHER_MAPS):
        top = torch.argsort(per_view[:, m], descending=True)[:4]
        print(f"{name} {map_name}: level {stats.levels[m]:.2f}, median {float(scores[:, m].median()):.2f}; highest views",
              [(f"train/{held[int(i)]:03d}", round(float(per_view[i, m]), 2)) for i in top])
    for f in range(FOLDS):
        print(f"{name} levels off fold {f} alone:", [round(float(scores[fold == f, m].quantile(LEVEL_QUANTILE)), 2)
                                                     for m in range(len(EITHER_MAPS))])


def _judge(data: list[dict], stats) -> dict:
    scores, labels, kinds = [], [], []
    for d in data:
        t, s, e = d["terms"], d["sil"], d["edges"]
        scores.append(torch.cat([either_map(t[i:i + 64].float(), stats, s[i:i + 64].float(), e[i:i + 64].float(), SIGMA)
                                 .flatten(1).amax(1) for i in range(0, len(t), 64)]).numpy())
        labels.append(d["labels"].numpy()), kinds.extend(d["kinds"])
    scores, labels, kinds = np.concatenate(scores), np.concatenate(labels), np.array(kinds)
    threshold = float(np.quantile(scores[~labels], 0.98))
    return {"found": int((scores[labels] > threshold).sum()), "of": int(labels.sum()),
            "by_kind": {str(k): int((scores[kinds == k] > threshold).sum()) for k in sorted(set(kinds) - {"good"})},
            "image_auroc": round(float(auroc(labels, scores)), 4), "levels": [round(v, 2) for v in stats.levels]}


def variants(cache: Path, seed: int, category_dir: Path, insample: Path | None) -> None:
    import models.scoring as scoring
    name = category_dir.name
    data = _load(cache, seed, name)
    (terms, sil, edges), _ = _clean(data)
    stats = fit_normal_stats(terms, sil, edges, sigma=SIGMA, colours=COLOURS)
    rows = {"product": _judge(data, stats)}
    product_pres = scoring._either_pres

    def chroma_pres(terms, stats, silhouette, edges, count):
        for map_name, pre in zip(EITHER_MAPS[:count], product_pres(terms, stats, silhouette, edges, count)):
            yield opening(terms[:, 1] / stats.term_scales[1], 5) if map_name == "area5" else pre

    scoring._either_pres = chroma_pres
    try:
        rows["chroma"] = _judge(data, fit_normal_stats(terms, sil, edges, sigma=SIGMA, colours=COLOURS))
    finally:
        scoring._either_pres = product_pres
    if insample is not None:
        own = torch.load(insample)
        own_scores = _map_scores(own["terms"].float(), own["sil"].float(), own["edges"].float(), stats)
        moved = copy.deepcopy(stats)
        moved.levels = [max(float(own_scores[:, m].quantile(LEVEL_QUANTILE)), 1e-6) for m in range(len(EITHER_MAPS))]
        rows["insample"] = _judge(data, moved)
    for variant, row in rows.items():
        print(name, variant, json.dumps(row))


def insample(bundle: Path, category_dir: Path, out: Path) -> None:
    width = open_bundle(bundle).camera.width
    category = load_category(category_dir, size=width, load_test=False)
    scene = GaussianScene.load(bundle / "splats" / "scene.safetensors")
    scorer = AnomalyScorer(tolerance=1, background=scene.background, colour="lab")
    poses = torch.stack([v.w2c for v in category.train])
    Ks = torch.stack([v.K for v in category.train])
    images = torch.stack([v.image for v in category.train])
    jittered = perturb_pose(poses, 1.0 / (math.sqrt(2) * float(Ks[0, 0, 0])), 0.0, torch.Generator().manual_seed(0))
    terms, sil, edges = [], [], []
    for i in range(0, len(images), 8):
        refs = render_references(scene, jittered[i:i + 8], Ks[i:i + 8], width, width)
        refs = align_references(images[i:i + 8], refs, RefineConfig())
        t, s = scorer.inputs(images[i:i + 8], refs)
        terms.append(t.half()), sil.append(s.half()), edges.append(scorer.edges(refs).half())
    torch.save({"terms": torch.cat(terms), "sil": torch.cat(sil), "edges": torch.cat(edges)}, out)
    print(out, len(images), "views")


def continue_folds(folds: Path, category_dir: Path, out: Path, steps: int, which: list[int]) -> None:
    cfg = preset("cpu")
    out.mkdir(parents=True, exist_ok=True)
    category = load_category(category_dir, size=cfg.image_size, load_test=False)
    for k in which:
        scene = GaussianScene.load(folds / f"fold{k}.safetensors")
        fitted = set(json.loads((folds / f"fold{k}.json").read_text())["views"])
        own = dataclasses.replace(category, train=[v for v in category.train if v.name in fitted])
        images, poses, Ks, params, optimizers, background = continuation(scene, own, cfg, 1.0)
        start = time.perf_counter()
        for step in range(steps):
            i = view_at(step, len(images), [], 0, 1)
            loss = fit_step(params, optimizers, cfg, background, poses[i:i + 1], Ks[i:i + 1], images[i:i + 1])
        GaussianScene.from_params({n: v.detach() for n, v in params.items()}, sh_degree=scene.sh_degree,
                                  background=scene.background,
                                  normalization=scene.normalization).save(out / f"fold{k}.safetensors")
        shutil.copy(folds / f"fold{k}.json", out / f"fold{k}.json")
        print(f"fold {k}: {len(own.train)} views, {steps} steps in {time.perf_counter() - start:.0f} s, last loss {loss:.4f}")


def size(cache: Path, seed: int, folds: Path, bundle: Path, category_dir: Path, pairs: list[tuple[str, int]]) -> None:
    from models.splat.render import rasterization

    data = _load(cache, seed, category_dir.name)
    (terms, sil, edges), fold = _clean(data)
    stats = fit_normal_stats(terms, sil, edges, sigma=SIGMA, colours=COLOURS)
    width = open_bundle(bundle).camera.width
    category = load_category(category_dir, size=width, load_test=False)
    n_train, copies = len(category.train), int((fold == 0).sum()) // len(holdout_indices(len(category.train), FOLDS, 0))
    shipped = GaussianScene.load(bundle / "splats" / "scene.safetensors")

    def log_size(scene: GaussianScene, view) -> tuple[torch.Tensor, torch.Tensor]:
        p = scene.params()
        scales = torch.exp(p["scales"])
        feature = scales.max(1).values.log()[:, None].contiguous()
        image, alpha, _ = rasterization(p["means"], p["quats"], scales, torch.sigmoid(p["opacities"]), feature,
                                        view.w2c[None].float(), view.K[None].float(), width, width,
                                        backgrounds=torch.zeros(1, 1))
        return image[0, ..., 0] / alpha[0, ..., 0].clamp_min(1e-3), alpha[0, ..., 0]

    for name, f in pairs:
        index = category.train.index(next(v for v in category.train if v.name == name))
        held = holdout_indices(n_train, FOLDS, f)
        i = int(torch.nonzero(fold == f)[0]) + held.index(index) * copies  # its first jittered copy
        maps = [blur_maps(p, SIGMA)[0] / level for p, level in
                zip(_either_pres(terms[i:i + 1], stats, sil[i:i + 1], edges[i:i + 1], len(EITHER_MAPS)), stats.levels)]
        peak = torch.stack(maps).amax(0)
        y, x = np.unravel_index(int(peak.argmax()), peak.shape)
        y, x = int(y * width / peak.shape[0]), int(x * width / peak.shape[1])
        row = [f"{name} (fold {f}): peak {float(peak.max()):.2f} at ({y}, {x})"]
        for tag, scene in (("fold model", GaussianScene.load(folds / f"fold{f}.safetensors")), ("shipped", shipped)):
            feature, alpha = log_size(scene, category.train[index])
            on_object = feature[alpha > 0.5]
            at_peak = float(feature[max(0, y - 4):y + 5, max(0, x - 4):x + 5].mean())
            row.append(f"{tag}: {at_peak:.2f} at the peak, percentile {float((on_object < at_peak).float().mean()):.2f}, "
                       f"object median {float(on_object.median()):.2f}")
        print(" | ".join(row), flush=True)


def disagreement(bundle: Path, work: Path, category_dir: Path) -> None:
    from models.bundle import WORK_FILES
    from models.inspector import Inspector, compare_at_poses

    inspector = Inspector.load(bundle, device="cpu")
    width = open_bundle(bundle).camera.width
    category = load_category(category_dir, size=width, load_test=True)
    models = [GaussianScene.load(p) for p in sorted((work / "calibration" / "folds").glob("fold*.safetensors"))]
    models.append(GaussianScene.load(work / WORK_FILES["calibration_scene"]))
    queries = category.test
    images, poses, Ks = (torch.stack([getattr(q, k) for q in queries]) for k in ("image", "w2c", "K"))
    maps, scores = compare_at_poses(inspector.scene, inspector.scorer, images, poses, Ks, RefineConfig())
    renders = torch.stack([render_references(m, poses.float(), Ks.float(), width, width) for m in models])
    spread = renders.std(0).mean(-1)  # [Q, H, W]
    background = torch.tensor(inspector.scene.background).float()
    for i, q in enumerate(queries):
        amap = torch.nn.functional.interpolate(maps[i][None, None].float(), size=(width, width), mode="bilinear")[0, 0]
        on_object = (renders.mean(0)[i] - background).abs().max(-1).values > 0.05
        y, x = np.unravel_index(int(amap.argmax()), amap.shape)
        at_peak = float(spread[i, max(0, y - 4):y + 5, max(0, x - 4):x + 5].mean())
        pct = lambda v: float((spread[i][on_object] < v).float().mean())  # noqa: E731
        row = (f"{q.name}: score {float(scores[i]):.3f}; D at the peak {at_peak:.4f} (percentile {pct(at_peak):.2f}), "
               f"object median {float(spread[i][on_object].median()):.4f}")
        if q.label != "good":
            mask = torch.nn.functional.interpolate(q.mask[None, None].float(), size=(width, width))[0, 0] > 0.5
            in_mask = float(spread[i][mask].mean())
            row += f"; D in the defect's mask {in_mask:.4f} (percentile {pct(in_mask):.2f})"
        print(row, flush=True)


def distance(category_dir: Path) -> None:
    category = load_category(category_dir, size=32, load_test=True)

    def directions(w2cs) -> np.ndarray:
        centres = np.array([(-w[:3, :3].T @ w[:3, 3]).numpy() for w in w2cs])
        return centres / np.linalg.norm(centres, axis=1, keepdims=True)

    def nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.degrees(np.arccos(np.clip(a @ b.T, -1, 1))).min(1)

    train = directions([v.w2c for v in category.train])
    test = nearest(directions([q.w2c for q in category.test if q.w2c is not None]), train)
    n = len(train)
    held = np.concatenate([nearest(train[holdout_indices(n, FOLDS, f)],
                                   train[sorted(set(range(n)) - set(holdout_indices(n, FOLDS, f)))])
                           for f in range(FOLDS)])
    print(f"{category_dir.name}: test view to nearest training camera: median {np.median(test):.1f} deg, "
          f"max {test.max():.1f}; held-out view to nearest fitted camera: median {np.median(held):.1f} deg, "
          f"max {held.max():.1f}")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "views":
        views(Path(args[0]), int(args[1]), Path(args[2]))
    elif command == "variants":
        variants(Path(args[0]), int(args[1]), Path(args[2]), Path(args[3]) if len(args) > 3 else None)
    elif command == "insample":
        insample(Path(args[0]), Path(args[1]), Path(args[2]))
    elif command == "continue":
        continue_folds(Path(args[0]), Path(args[1]), Path(args[2]), int(args[3]), [int(k) for k in args[4].split(",")])
    elif command == "size":
        size(Path(args[0]), int(args[1]), Path(args[2]), Path(args[3]), Path(args[4]),
             [(name, int(f)) for name, f in (pair.rsplit(":", 1) for pair in args[5].split(","))])
    elif command == "disagreement":
        disagreement(Path(args[0]), Path(args[1]), Path(args[2]))
    elif command == "distance":
        distance(Path(args[0]))
    else:
        raise SystemExit(__doc__)
