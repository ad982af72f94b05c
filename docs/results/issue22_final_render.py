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

import sys

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
    fc.compare(out, pairs, VARIANTS, fc.refine_variants(VARIANTS, RENDERED, "rendered_again"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
