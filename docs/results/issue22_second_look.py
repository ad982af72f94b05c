"""Issue 22, session 47: a second look at the queries the pose check sends to ``review`` (the rule is in
docs/RESULTS.md, session 47, written before the deciding figures).

The default pose fuses the pair head's ``k`` candidates (one per gallery match) by a weighted quaternion average,
then refines the fused pose. When one candidate is far off, the average is off too, and the refinement cannot
bring it back: seed 2's validation split 4 sent ``good/007`` to review 3906 px off, while its first candidate alone
refines to 0.19 px. ``explore`` measures, for each query a split's evaluation sent to review, what each
candidate refines to alone: whether the pose check verifies it, what it measures, and its true alignment error
(pixels at 224, as ``rpe-pad lab evaluate`` reads it).

``explore BUNDLE_DIR SPLIT_CATEGORY_DIR METRICS_JSON OUT.json [MATCHES]``: the first ``MATCHES`` (default: the
bundle's ``k``) gallery matches' candidates, each refined alone with its gallery view first for the gallery PnP.

``judge OUT.json TAG=PRODUCT_METRICS_JSON,CANDIDATE_METRICS_JSON [...]``: the rule's figures from two ``rpe-pad lab
evaluate`` runs of each split: queries sent to review, the pose check's bar (every query over 5 px flagged, at most
3 % of those within 1 px), defects and good views flagged (over the threshold, or review), and image AUROC.

    PYTHONPATH=.:docs/results python docs/results/issue22_second_look.py explore /tmp/m45/S2/synth_2 \\
        /tmp/m46/val4/synth_2 /tmp/m46/eval_val4_S2/metrics.json OUT.json 8
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models.camera import reprojection_error_px, scale_intrinsics
from models.data import load_category
from models.inspector import Inspector, Refine, Verify
from models.metrics import auroc
from models.pose import Matches
from training.evaluate import ALIGNED_PX, MISALIGNED_PX, object_points


def explore(bundle: Path, split: Path, metrics: Path, out: Path, matches: int | None) -> None:
    ins = Inspector.load(bundle, device="cpu")
    est, k = ins.estimator, ins.config.k
    n = matches or k
    m = json.loads(metrics.read_text())
    queries = {q.name: q for q in load_category(split, size=ins.width).test}
    points = object_points(ins.scene.to("cpu"))
    K_eval = scale_intrinsics(ins.K.double(), 224 / ins.width, 224 / ins.height)
    refine = Refine(ins.scene, est.gallery, ins.config.refine)
    check = Verify(ins.scene.background, ins.config.verify, ins.config.refine.ecc_size)

    def error(pose: torch.Tensor, q) -> float:
        return round(float(reprojection_error_px(pose[None].double(), q.w2c[None].double(), K_eval, points)[0]), 2)

    rows = []
    for r, px in zip(m["per_query"], m["per_query_reproj_px"]):
        if r["verdict"] != "review":
            continue
        q = queries[r["query"]]
        t0 = time.perf_counter()
        est.k = n
        found = est.match(q.image[None].float())
        est.k = k
        _, cands = est.relative(found)
        tried = []
        for j in range(n):
            order = [j] + [i for i in range(n) if i != j]
            b = ins.start(q.image[None].float())
            b.poses = cands[:, j].double()
            b.matched = Matches(found.features, found.gallery_ids[:, order][:, :k], found.similarities[:, order][:, :k])
            refine(b)
            check(b)
            v = b.verification[0]
            tried.append({"candidate": j, "verified": v.verified, "misalignment_px": v.misalignment_px,
                          "silhouette_iou": v.silhouette_iou, "true_px": error(b.poses[0], q),
                          "candidate_true_px": error(cands[0, j], q)})
        ok = [t for t in tried if t["verified"]]
        chosen = min(ok, key=lambda t: t["misalignment_px"]) if ok else None
        rows.append({"query": r["query"], "product_true_px": px, "seconds": round(time.perf_counter() - t0, 2),
                     "tried": tried, "chosen": chosen})
        print(r["query"], f"product {px:.2f} px;", "chosen:", json.dumps(chosen), flush=True)
    out.write_text(json.dumps({"bundle": str(bundle), "split": str(split), "matches": n, "queries": rows}, indent=1))


def _read(path: str) -> dict:
    m = json.loads(Path(path).read_text())
    return {"threshold": m["decision"]["threshold"], "auroc": m["image_auroc"], "rows": m["per_query"],
            "px": m["per_query_reproj_px"]}


def judge(out: Path, specs: list[str]) -> None:
    result, totals = {"splits": {}}, {a: {"review": 0, "defects_flagged": 0, "good_flagged": 0, "auroc": []}
                                      for a in ("product", "candidate")}
    bar_holds = True
    for spec in specs:
        tag, paths = spec.split("=", 1)
        arms = dict(zip(("product", "candidate"), (_read(p) for p in paths.split(","))))
        if [r["query"] for r in arms["product"]["rows"]] != [r["query"] for r in arms["candidate"]["rows"]]:
            raise SystemExit(f"{tag}: the two evaluations read different queries")
        split = {}
        for name, arm in arms.items():
            rows, px = arm["rows"], np.array(arm["px"])
            review = np.array([r["verdict"] == "review" for r in rows])
            flagged = review | np.array([r["score"] > arm["threshold"] for r in rows])
            bad = np.array([r["label"] != "good" for r in rows])
            fig = {"review": int(review.sum()), "defects_flagged": int(flagged[bad].sum()), "defects": int(bad.sum()),
                   "good_flagged": int(flagged[~bad].sum()), "good": int((~bad).sum()),
                   "found_over_threshold": int((~review & flagged & bad).sum()),
                   "misaligned": int((px > MISALIGNED_PX).sum()), "misaligned_flagged": int((review & (px > MISALIGNED_PX)).sum()),
                   "aligned": int((px <= ALIGNED_PX).sum()), "aligned_flagged": int((review & (px <= ALIGNED_PX)).sum()),
                   "image_auroc": arm["auroc"],
                   "image_auroc_check": round(auroc(bad, np.array([r["score"] for r in rows])), 4),
                   "review_queries": {r["query"]: round(float(p), 2) for r, p, v in zip(rows, px, review) if v}}
            split[name] = fig
            for key in ("review", "defects_flagged", "good_flagged"):
                totals[name][key] += fig[key]
            totals[name]["auroc"].append(arm["auroc"])
        c = split["candidate"]
        split["bar_holds_candidate"] = (c["misaligned_flagged"] == c["misaligned"]
                                        and c["aligned_flagged"] <= 0.03 * c["aligned"])
        bar_holds &= split["bar_holds_candidate"]
        result["splits"][tag] = split
        print(tag, json.dumps({a: {k: v for k, v in f.items() if k != "review_queries"} for a, f in split.items()
                               if isinstance(f, dict)}), flush=True)
    p, c = totals["product"], totals["candidate"]
    mean = [float(np.mean(p["auroc"])), float(np.mean(c["auroc"]))]
    clauses = {"1_fewer_review": c["review"] < p["review"], "2_pose_bar_each_split": bool(bar_holds),
               "3_defects_flagged_at_most_2_fewer": c["defects_flagged"] >= p["defects_flagged"] - 2,
               "3_good_flagged_not_more": c["good_flagged"] <= p["good_flagged"],
               "4_mean_auroc_not_down_0.002": mean[1] >= mean[0] - 0.002 - 1e-9}
    result.update(totals={a: {k: v for k, v in t.items() if k != "auroc"} for a, t in totals.items()},
                  mean_auroc=[round(x, 4) for x in mean], clauses=clauses, clauses_hold=all(clauses.values()))
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "splits"}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "explore":
        explore(Path(args[0]), Path(args[1]), Path(args[2]), Path(args[3]), int(args[4]) if len(args) > 4 else None)
    elif cmd == "judge":
        judge(Path(args[0]), args[1:])
    else:
        raise SystemExit(__doc__)
