"""Issue 22, session 23 (exploration): `issue22_interior_cache.py`'s selection data with every
reference aligned as the product aligns a query after its pose, not by ECC alone: each jittered
render is polished by the refinement's PnP rounds against the photograph (SIFT, then dense
flow; ``models.refine.gallery_pnp_refine`` with its gallery step off), then warped by ECC. The
clean copies stand for the calibration's held-out views, the painted ones for defects, both
aligned that way.

    python docs/results/issue22_polish_cache.py CACHE_DIR SEED BUNDLES_DIR:CATEGORY_DIR [...]

Writes ``polish{SEED}_<category>.pt`` in CACHE_DIR, in the layout `issue22_blur_explore.py`
reads (give it the prefix with ``POLISH=1``).
"""
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

import issue22_selection_terms
import issue22_shared_edges
from issue22_interior_cache import write_caches
from models.inspector import align_references as ecc_references
from models.refine import RefineConfig, gallery_pnp_refine
from training.evaluate import render_references as plain_renders

POLISH = replace(RefineConfig(), gallery_views=0)  # the product's polish, from the given (jittered) pose
_last: dict = {}


def renders(scene, poses, Ks, width, height, batch=8):
    """The plain renders, remembering what the polish needs."""
    _last.update(scene=scene, poses=poses, Ks=Ks)
    return plain_renders(scene, poses, Ks, width, height, batch)


def polished(images, references, cfg):
    """Each reference polished against its image from the pose it was rendered at, then ECC."""
    scene, poses, Ks = _last["scene"], _last["poses"], _last["Ks"]
    out = []
    for i in range(0, len(images), 8):
        sl = slice(i, i + 8)
        b, h, w = images[sl].shape[:3]
        stub = SimpleNamespace(images=torch.zeros(1, h, w, 3), K=Ks[0])  # no gallery view is read
        res = gallery_pnp_refine(scene, stub, images[sl], poses[sl].double(), Ks[sl].double(),
                                 torch.zeros(b, 1, dtype=torch.long), POLISH)
        out.append(torch.from_numpy(res.renders))
    return ecc_references(images, torch.cat(out), cfg)


for module in (issue22_selection_terms, issue22_shared_edges):
    module.render_references, module.align_references = renders, polished

if __name__ == "__main__":
    write_caches(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:], prefix="polish")
