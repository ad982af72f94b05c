"""Issue 22: is the warped reference what lifts some good views? (a diagnosis)

The refinement applies a small last correction as a depth warp of its last render
(``models.refine.warp_to_pose``, no new render), and most queries end that way. The
calibration scores its held-out views against true renders (``compare_at_poses``). This
driver runs the default mode (``issue22_flow_corners.run``) as shipped and with one change,
``final-render``: where a query's refinement ended on a warp, its reference is rendered
again at the final pose before the ECC step. Each variant is reported as
``issue22_flow_corners.summary`` reports it, plus how many references were rendered again.

Usage: ``PYTHONPATH=.:docs/results python docs/results/issue22_final_render.py OUT.json
BUNDLE/CAT:CATEGORY_DIR ...`` (``VARIANTS=product,final-render``)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

import issue22_flow_corners as fc
from models import inspector as I
from models.splat.scene import render

_PRODUCT = I.gallery_pnp_refine
RENDERED: list[int] = []


def final_render(scene, gallery, images, poses, Ks, gallery_ids, cfg, cache=None):
    out = _PRODUCT(scene, gallery, images, poses, Ks, gallery_ids, cfg, cache=cache)
    ids = [i for i, p in enumerate(out.paths) if p.endswith("warp")]
    if ids:
        h, w = images.shape[1:3]
        dev = scene.means.device
        again = render(scene, out.poses[ids].float().to(dev), Ks[ids].float().to(dev), w, h)
        out.renders[ids] = again.colors.clamp(0, 1).cpu().numpy()
    RENDERED.append(len(ids))
    return out


VARIANTS = {"product": _PRODUCT, "final-render": final_render}


def main(out: str, pairs: list[str]) -> None:
    names = os.environ.get("VARIANTS", ",".join(VARIANTS)).split(",")
    result: dict = {}
    for pair in pairs:
        bundle, cat = pair.split(":")
        for name in names:
            I.gallery_pnp_refine = VARIANTS[name]
            RENDERED.clear()
            t0 = time.perf_counter()
            s = fc.summary(fc.run(Path(bundle), Path(cat), 1))
            s["rendered_again"] = sum(RENDERED)
            result.setdefault(cat, {})[name] = s
            print(f"{cat} {name}: AUROC {s['image_auroc']:.3f} pixel {s['pixel_auroc']:.4f} AUPRO {s['aupro']:.3f} "
                  f"recall {s['recall']:.3f} FAR {s['false_positive_rate']:.3f} median {s['reproj_px_median']:.3f} px, "
                  f"rendered again {s['rendered_again']}, refine {s['timing_ms']['refine']} ms "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            I.gallery_pnp_refine = _PRODUCT
            with open(out, "w") as fh:
                json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
