"""Issue 22, session 24 (a diagnosis on a test split; it chooses nothing): would a second
reference take the render's residue away? Each test view at its true pose, prepared as the
product prepares a query, against the bundle's render (ECC-aligned) and against the nearest
training photographs warped by the render's depth (`issue22_residue_looks.py`). The colour
residual of each, and their per-pixel minimum, are blurred (sigma 3.6 px at 200, the scorer's 4
at 224) and maxed into an image score: a colour-only proxy of the scorer, ranked by AUROC.

    python docs/results/issue22_ibr_min.py CATEGORY_DIR BUNDLE_DIR
"""
import sys
from pathlib import Path

import kornia
import numpy as np
import torch

from issue22_residue_looks import renders, sources, warped_photos
from models.data import GOOD, load_category
from models.inspector import Inspector, align_references
from models.metrics import auroc
from models.refine import RefineConfig

SIGMA = 3.6


def image_scores(residual: torch.Tensor) -> np.ndarray:
    k = 2 * round(3 * SIGMA) + 1
    return kornia.filters.gaussian_blur2d(residual[:, None], (k, k), (SIGMA, SIGMA))[:, 0].flatten(1).amax(1).numpy()


def main(category_dir: Path, bundle: Path) -> dict:
    ins = Inspector.load(bundle, device="cpu")
    c = load_category(category_dir)
    prep, size, K_at, train = sources(ins, c)
    x = torch.stack([prep(q.image) for q in c.test]).float()
    poses, Ks = torch.stack([q.w2c.double() for q in c.test]), torch.stack([K_at(q.K) for q in c.test])
    colour, alpha, depth = renders(ins.scene, poses, Ks, size)
    aligned = align_references(x, colour, RefineConfig())
    warped = torch.stack([warped_photos(train, poses[i], Ks[i], aligned[i], alpha[i], depth[i]) for i in range(len(x))])
    r_render, r_photos = ((x - aligned) ** 2).sum(-1), ((x - warped) ** 2).sum(-1)
    y = np.array([q.label != GOOD for q in c.test])
    out = {}
    for name, r in (("render", r_render), ("warped photographs", r_photos), ("minimum", torch.minimum(r_render, r_photos))):
        s = image_scores(r)
        out[name] = {"image_auroc_colour_only": round(float(auroc(y, s)), 4),
                     "good_top3": [round(float(v), 5) for v in np.sort(s[~y])[::-1][:3]],
                     "defect_low3": [round(float(v), 5) for v in np.sort(s[y])[:3]]}
        print(name, out[name])
    return out


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
