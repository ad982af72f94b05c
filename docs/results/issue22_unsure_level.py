"""Issue 22, session 46: the image score over how unsure the reference is at the query's pose (the rule is in
docs/RESULTS.md, session 46, written before the deciding figures).

A good view scores high where the shipped model's render is unreliable: on seed 2, the five calibration models'
disagreement at a good query's pose ranks with its score (Spearman 0.58 over 70 good views), and near-edge-on
views of the thin plates, between the capture's rings, carry most of the false alarms. ``unsure_level`` divides
the image score by ``u / u0``: ``u`` the mean, over the object's pixels, of session 38's field U (one value per
Gaussian of the shipped model: the five fold models' disagreement at novel poses, ``issue22_unsure.field``) as the
shipped model renders it at the pose; ``u0`` the median of ``u`` over the training views. The threshold is the
product's rule on the held-out copies so divided, each by ``u`` at its view's pose.

``field BUNDLE_DIR WORK_DIR CATEGORY_DIR OUT.safetensors``: U, from the work folder's fold models.

``levels BUNDLE_DIR CATEGORY_DIR FIELD.safetensors OUT.json [TAG=SPLIT_CATEGORY_DIR ...]``: ``u`` at every
training view's pose and at each split's test queries' true poses.

``diagnose WORK_DIR OUT.json TAG=SPLIT_CATEGORY_DIR=METRICS_JSON [...]`` (a diagnosis): each query's true
elevation, its score, the shipped model's PSNR on it and the five fold models' spread at its pose (the standard
deviation over their renders: its mean and 99th percentile over the object's pixels), with the good views'
Spearman correlations and the table by elevation band.

``explore CALIBRATION_JSON LEVELS.json TAG=METRICS_JSON [...]``: the six forms of the divisor written down
together (the form was chosen with it, on data already read).

``judge CALIBRATION_JSON LEVELS.json OUT.json TAG=METRICS_JSON [...]``: the product and ``unsure_level`` on each
split's ``rpe-pad lab evaluate`` figures (its scores, verdicts and labels): image AUROC, and defects found and
good views rejected at each arm's threshold (a query the product sent to ``review`` stays there, counted as
the evaluation counts it: flagged).

    PYTHONPATH=.:docs/results python docs/results/issue22_unsure_level.py field /tmp/m45/S2/synth_2 \\
        /tmp/m45/S2/.work/synth_2 /tmp/seeds/synth_2 /tmp/m46/U_S2.safetensors
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from issue22_unsure import _feature_render, field_of
from models.bundle import open_bundle
from models.data import load_category
from models.metrics import auroc
from models.splat.scene import GaussianScene
from training.evaluate import render_references
from training.splats import fold_offsets, fold_paths, holdout_indices

EVERY, FOLDS, ALPHA = 5, 5, 0.5  # the `cpu` preset's folds; a pixel is the object's where the render's alpha is over ALPHA


def _fold_models(work: Path) -> list[GaussianScene]:
    return [GaussianScene.load(fold_paths(work, EVERY, o)[0]) for o in fold_offsets(EVERY, FOLDS)]


def field(bundle: Path, work: Path, category_dir: Path, out: Path) -> None:
    """Session 38's U (``issue22_unsure.field``), its five models read from a work folder."""
    field_of(bundle, category_dir, _fold_models(work), out)


def unsure_levels(shipped: GaussianScene, U: torch.Tensor, w2cs: torch.Tensor, Ks: torch.Tensor, width: int,
                  height: int) -> list[float]:
    """``u`` at each pose: the mean over the object's pixels (alpha over ``ALPHA``) of U as ``shipped`` renders it,
    each pixel's blend normalised by its alpha."""
    out = []
    for i in range(0, len(w2cs), 8):
        with torch.no_grad():
            image, alpha = _feature_render_hw(shipped, U[:, None], w2cs[i:i + 8], Ks[i:i + 8], width, height)
        for img, a in zip(image[..., 0], alpha[..., 0]):
            fg = a > ALPHA
            out.append(float((img[fg] / a[fg]).mean()) if fg.any() else float("nan"))
    return out


def _feature_render_hw(scene, feature, w2cs, Ks, width, height):
    if width == height:
        return _feature_render(scene, feature, w2cs, Ks, width)
    raise SystemExit("a square bundle camera is assumed (the seeds and Lego are)")


def levels(bundle: Path, category_dir: Path, field_path: Path, out: Path, splits: list[str]) -> None:
    t0 = time.time()
    cam = open_bundle(bundle).camera
    category = load_category(category_dir, size=cam.width, load_test=False)
    shipped = GaussianScene.load(bundle / "splats" / "scene.safetensors")
    U = load_file(str(field_path))["unsure"]
    poses = torch.stack([v.w2c for v in category.train]).double()
    Ks = torch.stack([v.K for v in category.train]).float()
    result = {"train": dict(zip([v.name for v in category.train],
                                unsure_levels(shipped, U, poses, Ks, cam.width, cam.height))), "splits": {}}
    for spec in splits:
        tag, path = spec.split("=", 1)
        split = load_category(path, size=cam.width).test
        P = torch.stack([q.w2c for q in split]).double()
        K = torch.stack([q.K for q in split]).float()
        result["splits"][tag] = dict(zip([q.name for q in split], unsure_levels(shipped, U, P, K, cam.width, cam.height)))
    out.write_text(json.dumps(result, indent=1))
    print(f"{category_dir.name}: u at {len(result['train'])} training views and "
          f"{sum(len(v) for v in result['splits'].values())} queries; {time.time() - t0:.0f} s", flush=True)


def heldout_levels(train: dict, n_copies: int, jitters: int) -> np.ndarray:
    """``u`` of each held-out copy, in the calibration report's order (the folds of ``fold_offsets``, each fold's
    views of ``holdout_indices``, a view's jitters together)."""
    names = list(train)
    order = [names[i] for o in fold_offsets(EVERY, FOLDS) for i in holdout_indices(len(names), EVERY, o)]
    u = np.repeat([train[n] for n in order], jitters)
    if len(u) != n_copies:
        raise SystemExit(f"{len(u)} copies from the folds' views for {n_copies} in the report")
    return u


def diagnose(work: Path, out: Path, specs: list[str]) -> None:
    import math

    from scipy.stats import spearmanr

    models, shipped = _fold_models(work), GaussianScene.load(work / "splats" / "scene.safetensors")
    rows = []
    for spec in specs:
        tag, cat_dir, metrics = spec.split("=", 2)
        scores = {r["query"]: r["score"] for r in json.loads(Path(metrics).read_text())["per_query"]}
        test = load_category(cat_dir).test  # at the photographs' own size
        P, K = torch.stack([q.w2c for q in test]), torch.stack([q.K for q in test])
        width = test[0].image.shape[1]
        R = torch.stack([render_references(m, P, K, width, width) for m in models])
        S = render_references(shipped, P, K, width, width)
        D, fg = R.std(0).mean(-1), (R.mean(0) - 1).abs().amax(-1) > 0.05  # the object: off the white background
        for i, q in enumerate(test):
            d = D[i][fg[i]]
            c = -q.w2c[:3, :3].T @ q.w2c[:3, 3]
            rows.append({"split": tag, "query": q.name, "label": q.label, "score": scores[q.name],
                         "elevation_deg": round(math.degrees(math.asin(float(c[2] / c.norm()))), 2),
                         "spread_mean": float(d.mean()), "spread_p99": float(d.quantile(0.99)),
                         "psnr": -10 * math.log10(max(float(((S[i] - q.image) ** 2).mean()), 1e-10))})
    good = [r for r in rows if r["label"] == "good"]
    corr = {k: round(float(spearmanr([r[k] for r in good], [r["score"] for r in good]).statistic), 3)
            for k in ("spread_p99", "spread_mean", "psnr", "elevation_deg")}
    threshold = json.loads((work / "reports" / "calibration.json").read_text())["threshold"]
    bands = []
    for lo, hi in ((-90, -12), (-12, 4), (4, 25), (25, 90)):
        sel = [r for r in rows if lo <= r["elevation_deg"] < hi]
        g, d = [r for r in sel if r["label"] == "good"], [r for r in sel if r["label"] != "good"]
        bands.append({"elevation_deg": [lo, hi], "good": len(g), "good_over_threshold": sum(r["score"] > threshold for r in g),
                      "defects": len(d), "defects_under_threshold": sum(r["score"] <= threshold for r in d)})
    out.write_text(json.dumps({"threshold": threshold, "spearman_good": corr, "bands": bands, "rows": rows}, indent=1))
    print(json.dumps({"threshold": threshold, "spearman_good": corr, "bands": bands}, indent=1))


FORMS = {"none": lambda r: np.ones_like(r), "ratio": lambda r: r, "floor1": lambda r: np.maximum(1, r),
         "floor1_squared": lambda r: np.maximum(1, r) ** 2, "sqrt": lambda r: np.sqrt(r)}


def explore(calibration: Path, levels_path: Path, specs: list[str]) -> None:
    report, lv = json.loads(calibration.read_text()), json.loads(levels_path.read_text())
    rate, copies = report["false_alarm_rate"], np.asarray(report["scores"]["heldout"]) * report["scores"]["heldout_scale"]
    uh = heldout_levels(lv["train"], len(copies), report["key"]["config"]["jitters"])
    u0 = float(np.median(list(lv["train"].values())))
    q75 = float(np.quantile(uh / u0, 0.75))
    forms = dict(FORMS, floor1_over_q75=lambda r: np.maximum(1, r / q75))
    total = {name: [0, 0, []] for name in forms}
    for spec in specs:
        tag, path = spec.split("=", 1)
        rows = json.loads(Path(path).read_text())["per_query"]
        u = np.array([lv["splits"][tag][r["query"]] for r in rows]) / u0
        s, labels = np.array([r["score"] for r in rows]), np.array([r["label"] != "good" for r in rows])
        review = np.array([r["verdict"] == "review" for r in rows])
        for name, f in forms.items():
            fig = _figures(s / f(u), labels, review, float(np.quantile(copies / f(uh / u0), 1 - rate)))
            print(tag, name, json.dumps(fig))
            total[name][0] += fig["found"]
            total[name][1] += fig["rejected"]
            total[name][2].append(fig["image_auroc"])
    for name, (found, rejected, aurocs) in total.items():
        print(f"all {name}: found {found}, rejected {rejected}, mean image AUROC {np.mean(aurocs):.4f}")


def _figures(scores: np.ndarray, labels: np.ndarray, review: np.ndarray, threshold: float) -> dict:
    flagged = review | (scores > threshold)
    return {"image_auroc": round(float(auroc(labels, scores)), 4), "threshold": round(threshold, 4),
            "found": int((flagged & labels).sum()), "defects": int(labels.sum()),
            "rejected": int((flagged & ~labels).sum()), "good": int((~labels).sum())}


def judge(calibration: Path, levels_path: Path, out: Path, specs: list[str]) -> None:
    report = json.loads(calibration.read_text())
    lv = json.loads(levels_path.read_text())
    rate, scale = report["false_alarm_rate"], report["scores"]["heldout_scale"]
    copies = np.asarray(report["scores"]["heldout"]) * scale
    jitters = report["key"]["config"]["jitters"]
    u_held = heldout_levels(lv["train"], len(copies), jitters)
    u0 = float(np.median(list(lv["train"].values())))
    product_thr = float(np.quantile(copies, 1 - rate))
    arm = FORMS["floor1"]  # the rule's form: max(1, u / u0)
    arm_thr = float(np.quantile(copies / arm(u_held / u0), 1 - rate))
    result = {"u0": round(u0, 5), "product_threshold_check": [round(product_thr, 4), report["threshold"]],
              "spearman_heldout_u_vs_score": None, "splits": {}}
    view_max = copies.reshape(-1, jitters).max(1)
    from scipy.stats import spearmanr
    result["spearman_heldout_u_vs_score"] = round(float(spearmanr(u_held[::jitters], view_max).statistic), 3)
    for spec in specs:
        tag, path = spec.split("=", 1)
        rows = json.loads(Path(path).read_text())["per_query"]
        u = np.array([lv["splits"][tag][r["query"]] for r in rows])
        s = np.array([r["score"] for r in rows])
        labels = np.array([r["label"] != "good" for r in rows])
        review = np.array([r["verdict"] == "review" for r in rows])
        result["splits"][tag] = {"product": _figures(s, labels, review, product_thr),
                                 "unsure_level": _figures(s / arm(u / u0), labels, review, arm_thr),
                                 "u_good_median": round(float(np.median(u[~labels])), 5),
                                 "u_defect_median": round(float(np.median(u[labels])), 5)}
        print(tag, json.dumps(result["splits"][tag]), flush=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "splits"}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "field":
        field(Path(args[0]), Path(args[1]), Path(args[2]), Path(args[3]))
    elif cmd == "levels":
        levels(Path(args[0]), Path(args[1]), Path(args[2]), Path(args[3]), args[4:])
    elif cmd == "diagnose":
        diagnose(Path(args[0]), Path(args[1]), args[2:])
    elif cmd == "explore":
        explore(Path(args[0]), Path(args[1]), args[2:])
    elif cmd == "judge":
        judge(Path(args[0]), Path(args[1]), Path(args[2]), args[3:])
    else:
        raise SystemExit(__doc__)
