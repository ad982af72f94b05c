"""Issue 22, session 36: one calibration fold against four, cross-fitted on training views (the
rule is in docs/RESULTS.md, session 36, written before these figures).

``cache``: for each fold's calibration model (``issue22_kfold_fit.py``) and the training views it
did not see, the painted set of SEED (the self-check's painter plus small parts gone from inside:
``issue22_shared_edges.selection_with_inside``), scored into the product's terms and cached as
``kf<SEED>_<category>_f<offset>.pt`` (the format of ``issue22_interior_cache.write_caches``).

``compare``: for each evaluation fold f, the product's statistics, five levels and threshold (the
98th percentile of the clean image scores) are fitted (A) on the clean copies of each other fold g
in turn, (B) on those of the four other folds together, with the product's own functions
(``models.scoring.fit_normal_stats``, ``either_map``), and fold f's painted and clean copies are
judged: the false-alarm rate and the defects found at that threshold, image AUROC, and the
defects found at fold f's own 2 % point (the same cut for A and B).

    python docs/results/issue22_kfold_eval.py cache CACHE_DIR SEED FOLDS_DIR:BUNDLES_DIR:CATEGORY_DIR [...]
    python docs/results/issue22_kfold_eval.py compare CACHE_DIR SEED OUT.json CATEGORY [...]
"""
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import issue22_selection_terms
import training.selfcheck
from issue22_interior_cache import write_caches
from models.data import load_category
from models.bundle import open_bundle
from models.metrics import auroc
from models.scoring import LEVEL_QUANTILE, either_map, fit_normal_stats
from models.splat.scene import GaussianScene

FOLDS, RATE, COLOURS = 5, 0.02, 2  # five folds; the presets' false-alarm rate; CIELAB's two colour terms


def cache(cache_dir: Path, seed: int, triples: list[str]) -> None:
    for triple in triples:
        folds, bundles, category_dir = (Path(p) for p in triple.split(":"))
        bundle = bundles / category_dir.name
        category = load_category(category_dir, size=open_bundle(bundle).camera.width, load_test=False)
        for f in range(FOLDS):
            out = cache_dir / f"kf{seed}_{category_dir.name}_f{f}.pt"
            if out.exists():
                continue
            scene = GaussianScene.load(folds / f"fold{f}.safetensors")
            fitted = set(json.loads((folds / f"fold{f}.json").read_text())["views"])
            held = [v for v in category.train if v.name not in fitted]
            views = lambda *_a, **_k: (bundle, category, scene, held)  # noqa: E731 - fold f in the bundle's own place
            issue22_selection_terms.heldout_views = training.selfcheck.heldout_views = views
            write_caches(cache_dir, seed, [f"{bundles}:{category_dir}"], prefix="kf")
            (cache_dir / f"kf{seed}_{category_dir.name}.pt").rename(out)


def _clean(d: dict) -> SimpleNamespace:
    c = ~d["labels"]
    return SimpleNamespace(terms=d["terms"][c].float(), sil=d["sil"][c].float(), edges=d["edges"][c].float())


def judge(cal: list[SimpleNamespace], d: dict, sigma: float) -> dict:
    """Fit on the clean copies ``cal`` as the calibration stage does; judge the evaluation fold ``d``."""
    terms, sil, edges = (torch.cat([getattr(c, k) for c in cal]) for k in ("terms", "sil", "edges"))
    stats = fit_normal_stats(terms, sil, edges, sigma=sigma, colours=COLOURS)
    normal = torch.cat([either_map(terms[i:i + 64], stats, sil[i:i + 64], edges[i:i + 64], sigma).flatten(1).amax(1)
                        for i in range(0, len(terms), 64)]).numpy()
    threshold = float(np.quantile(normal, 1.0 - RATE))
    scores = torch.cat([either_map(d["terms"][i:i + 64].float(), stats, d["sil"][i:i + 64].float(),
                                   d["edges"][i:i + 64].float(), sigma).flatten(1).amax(1)
                        for i in range(0, len(d["terms"]), 64)]).numpy()
    labels = d["labels"].numpy()
    own = float(np.quantile(scores[~labels], 1.0 - RATE))
    return {"threshold": threshold, "levels": [round(v, 4) for v in stats.levels],
            "false_alarm_rate": float(np.mean(scores[~labels] > threshold)), "good": int((~labels).sum()),
            "found": int(np.sum(scores[labels] > threshold)), "of": int(labels.sum()),
            "found_at_own_2pct": int(np.sum(scores[labels] > own)), "image_auroc": float(auroc(labels, scores))}


def compare(cache_dir: Path, seed: int, out: Path, categories: list[str]) -> None:
    t0 = time.time()
    rows = {}
    for name in categories:
        data = [torch.load(cache_dir / f"kf{seed}_{name}_f{f}.pt", weights_only=False) for f in range(FOLDS)]
        sigma, cleans = data[0]["sigma"], [_clean(d) for d in data]
        rows[name] = []
        for f in range(FOLDS):
            others = [g for g in range(FOLDS) if g != f]
            for g in others:
                rows[name].append({"eval": f, "cal": [g], **judge([cleans[g]], data[f], sigma)})
            rows[name].append({"eval": f, "cal": others, **judge([cleans[g] for g in others], data[f], sigma)})
            print(name, "f", f, [(r["cal"], round(r["false_alarm_rate"], 3), r["found"], r["found_at_own_2pct"])
                                 for r in rows[name][-FOLDS:]], flush=True)
    summary = {}
    for arm, n_cal in (("A_one_fold", 1), ("B_four_folds", FOLDS - 1)):
        rs = [r for name in categories for r in rows[name] if len(r["cal"]) == n_cal]
        weight = 1.0 / (FOLDS - 1) if n_cal == 1 else 1.0  # A: the mean over each evaluation fold's four pairings
        summary[arm] = {
            "cases": len(rs),
            "mean_abs_far_minus_rate": float(np.mean([abs(r["false_alarm_rate"] - RATE) for r in rs])),
            "mean_far": float(np.mean([r["false_alarm_rate"] for r in rs])),
            "far_range": [float(min(r["false_alarm_rate"] for r in rs)), float(max(r["false_alarm_rate"] for r in rs))],
            "found_at_threshold": weight * sum(r["found"] for r in rs),
            "found_at_own_2pct": weight * sum(r["found_at_own_2pct"] for r in rs),
            "of": int(sum(r["of"] for r in rs) * weight),
            "mean_recall_at_threshold": float(np.mean([r["found"] / r["of"] for r in rs])),
            "recall_range": [float(min(r["found"] / r["of"] for r in rs)), float(max(r["found"] / r["of"] for r in rs))],
            "mean_image_auroc": float(np.mean([r["image_auroc"] for r in rs])),
            "by_category": {name: {
                "mean_far": float(np.mean([r["false_alarm_rate"] for r in rows[name] if len(r["cal"]) == n_cal])),
                "mean_abs_far_minus_rate": float(np.mean([abs(r["false_alarm_rate"] - RATE) for r in rows[name]
                                                          if len(r["cal"]) == n_cal])),
                "found_at_threshold": weight * sum(r["found"] for r in rows[name] if len(r["cal"]) == n_cal),
                "found_at_own_2pct": weight * sum(r["found_at_own_2pct"] for r in rows[name] if len(r["cal"]) == n_cal),
                "mean_image_auroc": float(np.mean([r["image_auroc"] for r in rows[name] if len(r["cal"]) == n_cal])),
            } for name in categories},
        }
        print(arm, json.dumps(summary[arm]), flush=True)
    out.write_text(json.dumps({"seed": seed, "level_quantile": LEVEL_QUANTILE, "seconds": round(time.time() - t0),
                               "summary": summary, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "cache":
        cache(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
    else:
        compare(Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5:])
