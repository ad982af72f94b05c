"""Issue 22, session 26 (the `corrected` challenger's selection data): the seed's painted set of
`issue22_interior_cache.py`, with every reference passed through a correction CNN trained on the
calibration model's own fit views (`issue22_render_correction.fit_correction`, 4 layers of 16
channels). Saved as ``rc{SEED}_<category>.pt`` beside the product's ``sel{SEED}_*``; also prints
the correction's time for one reference at the bundle's size (median of 20).

    python docs/results/issue22_render_correction_cache.py CACHE_DIR SEED BUNDLES_DIR:CATEGORY_DIR [...]
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import issue22_selection_terms
import issue22_shared_edges
from issue22_interior_cache import write_caches
from issue22_render_correction import corrected, fit_correction, psnr, renders
from training.selfcheck import heldout_views

WIDTH, LAYERS = 16, 4
NET = {}


def corrected_references(scene, poses, Ks, width, height, batch=8):
    """``training.evaluate.render_references`` with the current correction applied."""
    rgb, alpha = renders(scene, poses.float(), Ks.float(), width, height)
    return corrected(NET["net"], rgb, alpha).permute(0, 2, 3, 1).contiguous()


def one_reference_ms(net, h, w) -> float:
    rgb, alpha = torch.rand(1, 3, h, w), torch.rand(1, 1, h, w)
    times = []
    with torch.no_grad():
        for _ in range(25):
            t = time.perf_counter()
            net(rgb, alpha)
            times.append(time.perf_counter() - t)
    return float(np.median(times[5:]) * 1000)


if __name__ == "__main__":
    cache, seed = Path(sys.argv[1]), int(sys.argv[2])
    issue22_selection_terms.render_references = corrected_references
    issue22_shared_edges.render_references = corrected_references
    log = {}
    for pair in sys.argv[3:]:
        b, c = pair.split(":")
        _, category, scene, held = heldout_views(Path(b), Path(c))
        names = {v.name for v in held}
        fit = [v for v in category.train if v.name not in names]
        photos = torch.stack([v.image for v in fit]).float().permute(0, 3, 1, 2).contiguous()
        t0 = time.perf_counter()
        rgb, alpha = renders(scene, torch.stack([v.w2c for v in fit]).float(),
                             category.K.float().expand(len(fit), 3, 3), category.width, category.height)
        NET["net"] = fit_correction(rgb, alpha, photos, width=WIDTH, layers=LAYERS, log=False)
        seconds = time.perf_counter() - t0
        fixed = corrected(NET["net"], rgb, alpha)
        log[category.name] = {"fit_views": len(fit), "train_seconds": round(seconds, 1),
                              "fit_views_psnr": [round(psnr(rgb, photos), 2), round(psnr(fixed, photos), 2)],
                              "one_reference_ms": round(one_reference_ms(NET["net"], category.height, category.width), 2)}
        print(category.name, json.dumps(log[category.name]), flush=True)
        write_caches(cache, seed, [pair], prefix="rc")
    print(json.dumps(log))
