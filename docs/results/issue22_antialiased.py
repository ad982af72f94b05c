"""Issue 22, session 46 (a diagnosis; it chooses nothing): does gsplat's ``antialiased`` rasterization draw the thin
plates right where a view sees them edge-on?

Seed 2's good views score highest between the capture's elevation rings, where the thin plates are seen nearly
edge-on (``issue22_unsure_level.py diagnose``); the render draws a plate's top there as a coloured strip. In the
``classic`` mode every splat's 2D covariance is widened by ``eps2d`` (0.3 px^2) at full opacity, so a flat splat
seen edge-on, no wider than a line, is drawn as a line about a pixel wide; the ``antialiased`` mode (Mip-Splatting's
2D filter, gsplat's ``rasterize_mode="antialiased"``) scales its opacity by the area the widening added, so it
fades as it turns edge-on. No training view is edge-on, so the fit never sees the difference.

The product renders every scene ``classic``; this driver draws in another mode by wrapping the one rasterization
call every render goes through (``models.splat.scene.rasterization``: the fit, the calibration, RVSS, the gallery,
the pose refinement and the scorer's reference alike), in this process only (``drawn``).

``train CATEGORY_DIR BUNDLES_DIR MODE``: ``rpe-pad train CATEGORY_DIR --out BUNDLES_DIR --preset cpu --quiet`` with
every render in ``MODE`` (``classic`` or ``antialiased``), all else the product's.

``evaluate MODE BUNDLE_DIR SPLIT_DIR OUT_DIR``: ``rpe-pad lab evaluate BUNDLE_DIR SPLIT_DIR --out OUT_DIR`` with every
render in ``MODE`` (a bundle built in a mode must be read in it).

``score BUNDLE_DIR OUT.json SCENE:MODE[,SCENE:MODE...] TAG=SPLIT_CATEGORY_DIR [...]``: each split's queries at true
poses against each model's render in its mode, aligned as the product aligns, by the bundle's scorer and levels:
image AUROC, defects found and good views rejected at the bundle's threshold, the good views' PSNR, and the good
views over the threshold by elevation band.

``judge OUT.json TAG=PRODUCT_METRICS_JSON,CANDIDATE_METRICS_JSON [...]``: the second rule's figures from two
``rpe-pad lab evaluate`` runs of each split: image AUROC on the queries neither bundle sends to ``review`` (and
on all), defects found and good views rejected at each bundle's own threshold (a ``review`` counted as flagged, as
``evaluate`` counts it), and the rule's three clauses.

    PYTHONPATH=.:docs/results python docs/results/issue22_antialiased.py train /tmp/seeds/synth_2 /tmp/m46/S2aa antialiased
"""
import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from issue22_probes import aligned_scores
from models.data import load_category
from models.inspector import Inspector
from models.metrics import auroc
from models.splat.scene import GaussianScene

BANDS = ((-90, -12), (-12, 4), (4, 25), (25, 90))  # degrees of elevation; rpe-pad synth's rings: -30, -8, 14, 36, 58, 80


@contextmanager
def drawn(mode: str):
    """Every render in this process in ``mode``, while the context lasts."""
    import models.splat.scene as scene_module

    plain = scene_module.rasterization
    scene_module.rasterization = lambda *args, **kwargs: plain(*args, **{**kwargs, "rasterize_mode": mode})
    try:
        yield
    finally:
        scene_module.rasterization = plain


def train(category_dir: Path, bundles: Path, mode: str) -> int:
    from rpe_pad.cli import main as rpe_pad

    start = time.perf_counter()
    with drawn(mode):
        rc = rpe_pad(["train", str(category_dir), "--out", str(bundles), "--preset", "cpu", "--quiet"])
    print(f"{mode}: rc {rc}, {time.perf_counter() - start:.0f} s", flush=True)
    return rc


def evaluate(mode: str, bundle: Path, split: Path, out: Path) -> int:
    from rpe_pad.cli import main as rpe_pad

    with drawn(mode):
        return rpe_pad(["lab", "evaluate", str(bundle), str(split), "--out", str(out)])


def elevation(w2c: torch.Tensor) -> float:
    c = -w2c[:3, :3].T @ w2c[:3, 3]
    return math.degrees(math.asin(float(c[2] / c.norm())))


def score(bundle: Path, out: Path, models: str, specs: list[str]) -> None:
    ins = Inspector.load(bundle, device="cpu")
    width = ins.width  # the bundle camera's, as the product scores
    threshold = float(json.loads((bundle / "calibration" / "calibration.json").read_text())["threshold"])
    arms = [(m.split(":")[0], m.split(":")[1]) for m in models.split(",")]
    result = {"bundle": str(bundle), "threshold": threshold, "splits": {}}
    for spec in specs:
        tag, path = spec.split("=", 1)
        test = load_category(path, size=width).test
        labels = np.array([q.label != "good" for q in test])
        els = np.array([elevation(q.w2c) for q in test])
        split = {}
        for scene_path, mode in arms:
            scene = ins.scene if scene_path == "bundle" else GaussianScene.load(scene_path)
            with drawn(mode):
                s, ps = aligned_scores(ins, scene, test)
            bands = {f"{lo}..{hi}": int(((els >= lo) & (els < hi) & ~labels & (s > threshold)).sum()) for lo, hi in BANDS}
            split[f"{scene_path}:{mode}"] = {
                "image_auroc": round(auroc(labels, s), 4), "found": int((s[labels] > threshold).sum()),
                "defects": int(labels.sum()), "rejected": int((s[~labels] > threshold).sum()), "good": int((~labels).sum()),
                "good_psnr": round(float(np.mean([p for p, b in zip(ps, labels) if not b])), 2),
                "good_rejected_by_elevation": bands,
                "scores": {q.name: round(float(v), 4) for q, v in zip(test, s)}}
            print(tag, scene_path, mode, json.dumps({k: v for k, v in split[f"{scene_path}:{mode}"].items() if k != "scores"}),
                  flush=True)
        result["splits"][tag] = {"elevations": {q.name: round(float(e), 2) for q, e in zip(test, els)}, **split}
    out.write_text(json.dumps(result, indent=1))


def _read(path: str) -> dict:
    m = json.loads(Path(path).read_text())
    return {"threshold": m["decision"]["threshold"], "rows": {r["query"]: r for r in m["per_query"]}}


def _counts(rows: dict, threshold: float) -> tuple[int, int]:
    flagged = {q: r["verdict"] == "review" or r["score"] > threshold for q, r in rows.items()}
    return (sum(f for q, f in flagged.items() if rows[q]["label"] != "good"),
            sum(f for q, f in flagged.items() if rows[q]["label"] == "good"))


def judge(out: Path, specs: list[str]) -> None:
    result, found, rejected, aurocs = {"splits": {}}, [0, 0], [0, 0], [[], []]
    for spec in specs:
        tag, paths = spec.split("=", 1)
        arms = [_read(p) for p in paths.split(",")]
        if set(arms[0]["rows"]) != set(arms[1]["rows"]):
            raise SystemExit(f"{tag}: the two evaluations read different queries")
        both = [q for q in arms[0]["rows"] if all(a["rows"][q]["verdict"] != "review" for a in arms)]
        split = {"queries": len(arms[0]["rows"]), "neither_review": len(both)}
        for i, (name, arm) in enumerate(zip(("product", "candidate"), arms)):
            rows = arm["rows"]
            labels = np.array([rows[q]["label"] != "good" for q in both])
            f, r = _counts(rows, arm["threshold"])
            all_labels = np.array([r_["label"] != "good" for r_ in rows.values()])
            split[name] = {"threshold": arm["threshold"], "image_auroc_neither_review":
                           round(auroc(labels, np.array([rows[q]["score"] for q in both])), 4),
                           "image_auroc_all": round(auroc(all_labels, np.array([r_["score"] for r_ in rows.values()])), 4),
                           "found": f, "defects": int(all_labels.sum()), "rejected": r, "good": int((~all_labels).sum()),
                           "review": sum(r_["verdict"] == "review" for r_ in rows.values())}
            found[i] += f
            rejected[i] += r
            aurocs[i].append(split[name]["image_auroc_neither_review"])
        result["splits"][tag] = split
        print(tag, json.dumps(split), flush=True)
    mean = [float(np.mean(a)) for a in aurocs]
    clauses = {"1_mean_auroc_up_0.005_none_down_0.002": mean[1] - mean[0] >= 0.005 - 1e-9 and
               all(c - p >= -0.002 - 1e-9 for p, c in zip(*aurocs)),
               "2_found_not_fewer": found[1] >= found[0], "3_rejected_at_most_plus_1": rejected[1] <= rejected[0] + 1}
    result.update(mean_auroc=[round(m, 4) for m in mean], found=found, rejected=rejected, clauses=clauses,
                  adopted=all(clauses.values()))
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "splits"}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "train":
        sys.exit(train(Path(args[0]), Path(args[1]), args[2]))
    elif cmd == "evaluate":
        sys.exit(evaluate(args[0], Path(args[1]), Path(args[2]), Path(args[3])))
    elif cmd == "judge":
        judge(Path(args[0]), args[1:])
    elif cmd == "score":
        score(Path(args[0]), Path(args[1]), args[2], args[3:])
    else:
        raise SystemExit(__doc__)
