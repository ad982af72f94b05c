"""Issue 22, the pose's last pixels: does the flow polish's choice of correspondences bias it?

The refinement's flow polish (``models.refine.flow_matches``) takes DIS optical flow at every
second pixel of the reference. On plain surfaces the flow is not pinned by the image, and
its smoothness prior reads "no motion", which pulls the PnP towards the pose it started from.
This driver runs the product's default mode (``training.evaluate.evaluate``) with the polish's
correspondences taken otherwise, and reports the pose errors and the operating point:

- ``product``: as shipped;
- ``dis-corners``: the same DIS flow, read only at Shi-Tomasi corners of the reference
  (``cv2.goodFeaturesToTrack``: quality 0.01 of the strongest, 2 px apart);
- ``klt``: those corners tracked into the query by pyramidal Lucas-Kanade
  (``cv2.calcOpticalFlowPyrLK``) and back, kept where the return is within the polish's
  consistency bound;
- ``product-2``, ``klt-2``: the same with two flow rounds instead of one.

Usage: ``PYTHONPATH=.:docs/results python docs/results/issue22_flow_corners.py OUT.json
BUNDLE/CAT:CATEGORY_DIR ...`` (``VARIANTS=product,klt`` to choose)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from models import refine as R
from models.data import load_category
from models.inspector import Inspector
from training.evaluate import evaluate_inspector, image_size

_PRODUCT = R.flow_matches


def _corners(gray: np.ndarray) -> np.ndarray:
    pts = cv2.goodFeaturesToTrack(gray, maxCorners=4000, qualityLevel=0.01, minDistance=2, blockSize=5)
    return np.zeros((0, 2), np.float32) if pts is None else pts.reshape(-1, 2)


def dis_corners(reference: np.ndarray, query: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    r, q = R._gray(reference), R._gray(query)
    fwd, bwd = dis.calc(r, q, None), dis.calc(q, r, None)
    h, w = r.shape
    c = _corners(r)
    xs, ys = c[:, 0], c[:, 1]
    f = R._remap_points(fwd, xs, ys) if len(c) else np.zeros((0, 2))
    tx, ty = (xs + f[:, 0]).astype(np.float32), (ys + f[:, 1]).astype(np.float32)
    back = R._remap_points(bwd, tx, ty) if len(c) else np.zeros((0, 2))
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    ok = inside & (np.linalg.norm(f + back, axis=1) < cfg.flow_consistency_px)
    return (np.stack([tx, ty], axis=1)[ok].astype(np.float64) + 0.5,
            np.stack([xs, ys], axis=1)[ok].astype(np.float64) + 0.5)


def klt(reference: np.ndarray, query: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    r, q = R._gray(reference), R._gray(query)
    c = _corners(r)
    if not len(c):
        return np.zeros((0, 2)), np.zeros((0, 2))
    lk = dict(winSize=(11, 11), maxLevel=3, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 40, 0.01))
    fw, st1, _ = cv2.calcOpticalFlowPyrLK(r, q, c[:, None], None, **lk)
    bw, st2, _ = cv2.calcOpticalFlowPyrLK(q, r, fw, None, **lk)
    fw, bw = fw.reshape(-1, 2), bw.reshape(-1, 2)
    h, w = r.shape
    ok = ((st1[:, 0] == 1) & (st2[:, 0] == 1) & (np.linalg.norm(bw - c, axis=1) < cfg.flow_consistency_px)
          & (fw[:, 0] >= 0) & (fw[:, 0] <= w - 1) & (fw[:, 1] >= 0) & (fw[:, 1] <= h - 1))
    return fw[ok].astype(np.float64) + 0.5, c[ok].astype(np.float64) + 0.5


VARIANTS = {"product": (_PRODUCT, 1), "dis-corners": (dis_corners, 1), "klt": (klt, 1), "product-2": (_PRODUCT, 2),
            "klt-2": (klt, 2)}  # the correspondences, and the flow polish's rounds


def run(bundle: Path, cat: Path, flow_rounds: int) -> dict:
    """``training.evaluate.evaluate`` with the bundle's refinement, less ``flow_rounds``."""
    category = load_category(cat, size=image_size(bundle))
    settings = Inspector.load(bundle).config.refine
    inspector = Inspector.load(bundle, refine=dataclasses.replace(settings, flow_rounds=flow_rounds))
    return evaluate_inspector(inspector, category, list(category.test))


def summary(m: dict) -> dict:
    px = np.array(m.get("per_query_reproj_px", []), dtype=float)
    d, v = m["decision"], m["verification"]
    return {"image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"], "aupro": m["aupro"],
            "threshold": d["threshold"], "recall": d["recall"], "false_positive_rate": d["false_positive_rate"],
            "tp": d["tp"], "fp": d["fp"], "verdicts": v.get("verdicts"), "flagged": v.get("flagged"),
            **{k: v.get(k) for k in ("misaligned", "misaligned_flagged", "aligned", "aligned_flagged")},
            "reproj_px_median": float(np.median(px)) if len(px) else None,
            "over_1px": int((px > 1).sum()), "over_2px": int((px > 2).sum()), "over_5px": int((px > 5).sum()),
            "reproj_px": [round(float(x), 3) for x in px], "timing_ms": m["timing_ms"],
            "per_query": m["per_query"]}


def compare(out: str, pairs: list[str], variants: dict, patched) -> dict:
    """Each variant named in ``VARIANTS`` (default: all of ``variants``) on each
    ``BUNDLE/CAT:CATEGORY_DIR`` pair, summarised and written to ``out`` as it goes.
    ``patched(name)``: a context manager that puts the variant in place and yields its flow
    rounds and a function of the extra fields to report."""
    names = os.environ.get("VARIANTS", ",".join(variants)).split(",")
    result: dict = {}
    for pair in pairs:
        bundle, cat = pair.split(":")
        for name in names:
            t0 = time.perf_counter()
            with patched(name) as (rounds, extras):
                s = summary(run(Path(bundle), Path(cat), rounds))
                s.update(extras())
            result.setdefault(cat, {})[name] = s
            more = "".join(f", {k} {v}" for k, v in extras().items())
            print(f"{cat} {name}: AUROC {s['image_auroc']:.3f} pixel {s['pixel_auroc']:.4f} AUPRO {s['aupro']:.3f} "
                  f"recall {s['recall']:.3f} FAR {s['false_positive_rate']:.3f} median {s['reproj_px_median']:.3f} px, "
                  f">1 {s['over_1px']} >2 {s['over_2px']} >5 {s['over_5px']}, flagged {s['flagged']} (>5 px "
                  f"{s['misaligned_flagged']} of {s['misaligned']}, <=1 px {s['aligned_flagged']} of {s['aligned']}), "
                  f"refine {s['timing_ms'].get('refine')} ms{more} ({time.perf_counter() - t0:.0f} s)", flush=True)
            with open(out, "w") as fh:
                json.dump(result, fh, indent=1)
    return result


def refine_variants(variants: dict, counts: list, key: str):
    """``compare``'s ``patched`` for variants of the Inspector's ``gallery_pnp_refine``: each
    appends to ``counts``, reported as ``key`` (their sum); one flow round, as shipped."""
    from models import inspector

    @contextlib.contextmanager
    def patched(name: str):
        shipped = inspector.gallery_pnp_refine
        inspector.gallery_pnp_refine = variants[name]
        counts.clear()
        try:
            yield 1, lambda: {key: sum(counts)}
        finally:
            inspector.gallery_pnp_refine = shipped

    return patched


@contextlib.contextmanager
def _flow(name: str):
    R.flow_matches, rounds = VARIANTS[name]
    try:
        yield rounds, dict
    finally:
        R.flow_matches = _PRODUCT


def main(out: str, pairs: list[str]) -> None:
    compare(out, pairs, VARIANTS, _flow)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
