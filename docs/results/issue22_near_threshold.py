"""Issue 22, session 42: a threshold matched to the queries' distance from the training cameras (variant ``near``).

Computed from a bundle's calibration report alone (no render): each held-out copy's score is scaled
towards the shipped model's in-sample score by how much nearer to a fitted camera a query is than the
held-out view was (the rule is in docs/RESULTS.md, session 42). With evaluation reports (``rpe-pad lab
evaluate``'s metrics.json), each is read at the product's threshold and at ``near``'s.

    PYTHONPATH=.:docs/results python docs/results/issue22_near_threshold.py BUNDLE/CAT CATEGORY_DIR OUT.json \
        [NAME=EVALUATION/metrics.json ...]
"""
import json
import sys
from pathlib import Path

import numpy as np

from models.data import load_category
from training.splats import fold_offsets, holdout_indices

DIRECTIONS, SEED, RATE = 20_000, 0, 0.02


def unit_centres(w2cs) -> np.ndarray:
    """Each camera's centre as a direction from the world origin."""
    centres = np.array([(-w[:3, :3].T @ w[:3, 3]).numpy() for w in w2cs])
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def nearest_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(a @ b.T, -1.0, 1.0))).min(1)


def query_distance(train: np.ndarray) -> float:
    """d_q: the median angle from a random viewing direction to its nearest training camera, over the
    directions the capture covers (nearest angle at most the widest nearest-neighbour angle of the cameras)."""
    pairwise = np.degrees(np.arccos(np.clip(train @ train.T, -1.0, 1.0)))
    np.fill_diagonal(pairwise, np.inf)
    widest = pairwise.min(1).max()
    dirs = np.random.default_rng(SEED).normal(size=(DIRECTIONS, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    near = nearest_deg(dirs, train)
    return float(np.median(near[near <= widest]))


def near_threshold(bundle: Path, category_dir: Path) -> dict:
    report = json.loads((bundle / "reports" / "calibration.json").read_text())
    scores, scale = report["scores"], report["heldout_scale"]
    every, folds = report["key"]["config"]["holdout_every"], report["key"]["config"]["folds"]
    category = load_category(category_dir, size=32, load_test=False)
    train = unit_centres([v.w2c for v in category.train])
    n = len(train)
    order = [i for offset in fold_offsets(every, folds) for i in holdout_indices(n, every, offset)]
    d_ho = np.concatenate([nearest_deg(train[holdout_indices(n, every, o)],
                                       train[sorted(set(range(n)) - set(holdout_indices(n, every, o)))])
                           for o in fold_offsets(every, folds)])
    d_q = query_distance(train)
    copies = np.asarray(scores["heldout"]).reshape(len(order), -1) * scale
    b = np.asarray(scores["heldout_own"]) * scale
    a = np.asarray(scores["in_sample"])[order]
    w = np.minimum(1.0, d_q / d_ho)
    factor = np.minimum(1.0, (1 - w) * a / b + w)
    product = float(np.quantile(copies, 1 - RATE))
    near = float(np.quantile(copies * factor[:, None], 1 - RATE))
    return {"bundle": str(bundle), "product_threshold": round(product, 4),
            "report_threshold": report["threshold"], "near_threshold": round(near, 4),
            "d_q_deg": round(d_q, 2), "d_ho_deg_median": round(float(np.median(d_ho)), 2),
            "d_ho_deg_max": round(float(d_ho.max()), 2), "w_median": round(float(np.median(w)), 3),
            "factor_median": round(float(np.median(factor)), 3), "factor_min": round(float(factor.min()), 3),
            "in_sample_over_heldout_median": round(float(np.median(a / b)), 3)}


def read_at(metrics: Path, thresholds: dict[str, float]) -> dict:
    per_query = json.loads(metrics.read_text())["per_query"]
    labels = np.array([q["label"] != "good" for q in per_query])
    s = np.array([q["score"] for q in per_query])
    out = {"defects": int(labels.sum()), "good": int((~labels).sum()),
           "good_q0.98": round(float(np.quantile(s[~labels], 1 - RATE)), 4), "good_max": round(float(s[~labels].max()), 4)}
    for name, t in thresholds.items():
        out[name] = {"threshold": t, "found": int((s[labels] > t).sum()), "rejected": int((s[~labels] > t).sum()),
                     "recall": round(float((s[labels] > t).mean()), 4),
                     "false_alarm_rate": round(float((s[~labels] > t).mean()), 4)}
    return out


def main() -> None:
    bundle, category_dir, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    result = near_threshold(bundle, category_dir)
    thresholds = {"product": result["report_threshold"], "near": result["near_threshold"]}
    for arg in sys.argv[4:]:
        name, path = arg.split("=", 1)
        result[name] = read_at(Path(path), thresholds)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
