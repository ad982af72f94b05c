"""Issue 22: polish from IRPRN's own pose where the gallery's correction is dropped.

When no polish confirms the gallery PnP's correction and the render at IRPRN's pose matches
the query better, the refinement keeps IRPRN's pose and nothing more (``pnp_path`` ``none``);
such queries were 4-9 px off on the fresh categories (``issue22_unconfirmed.py``). The
challenger ``polish-from-irprn`` runs those queries through the refinement again with no
gallery PnP (``gallery_views`` 0), so its polish (SIFT rounds, then the flow round) starts
from IRPRN's pose, and keeps the result when a polish was accepted. Each variant is reported
as ``issue22_flow_corners.summary`` reports it, plus the queries run again.

Usage: ``PYTHONPATH=.:docs/results python docs/results/issue22_polish_from_irprn.py OUT.json
BUNDLE/CAT:CATEGORY_DIR ...`` (``VARIANTS=product,polish-from-irprn``)."""

from __future__ import annotations

import copy
import sys

import issue22_flow_corners as fc
from models import inspector as I

_PRODUCT = I.gallery_pnp_refine
_DROPPED = "unconfirmed gallery correction"
AGAIN: list[int] = []


def polish_from_irprn(scene, gallery, images, poses, Ks, gallery_ids, cfg, cache=None):
    out = _PRODUCT(scene, gallery, images, poses, Ks, gallery_ids, cfg, cache=cache)
    ids = [i for i, (p, r) in enumerate(zip(out.paths, out.reasons)) if p == "none" and r.startswith(_DROPPED)]
    AGAIN.append(len(ids))
    if not ids:
        return out
    no_gallery = copy.copy(cfg)
    object.__setattr__(no_gallery, "gallery_views", 0)  # below RefineConfig's floor: a driver's setting only
    again = _PRODUCT(scene, gallery, images[ids], poses[ids], Ks[ids], gallery_ids[ids], no_gallery, cache=cache)
    for j, i in enumerate(ids):
        if again.paths[j] == "none":
            continue
        out.poses[i], out.renders[i] = again.poses[j], again.renders[j]
        out.accepted[i], out.flow_inliers[i] = again.accepted[j], again.flow_inliers[j]
        out.reasons[i], out.paths[i] = "ok", "irprn+" + again.paths[j]
    return out


VARIANTS = {"product": _PRODUCT, "polish-from-irprn": polish_from_irprn}


def main(out: str, pairs: list[str]) -> None:
    fc.compare(out, pairs, VARIANTS, fc.refine_variants(VARIANTS, AGAIN, "run_again"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
