"""Issue 22, session 18: why seed 0's good/004 is rejected. The product's inspection of one test
view (default pose mode), its `either` map split into each term's blurred contribution (in units
of the term's normal 99th percentile) at the map's peak, and the same view scored at its true
pose; saves query | reference | map at the estimated pose as a PNG.

    python docs/results/issue22_seed0_good004.py BUNDLE_DIR CATEGORY_DIR QUERY OUT.png
    e.g. /tmp/seeds/E0/synth_0 /tmp/seeds/synth_0 test/good/004 docs/images/seed0_good004_session18.png
"""
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.data import load_category
from models.inspector import Inspector
from models.scoring import anomaly_map, blur_maps, edge_strength, silhouette_evidence

bundle, category, name, out = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
insp = Inspector.load(bundle, device="cpu")
view = next(q for q in load_category(category, size=insp.width).test if q.name == name)
sc, stats = insp.scorer, insp.scorer.stats


def parts(reference):
    q224, r224 = sc._pair(view.image[None], reference)
    terms, sil = sc._terms(q224, r224), silhouette_evidence(q224, r224, sc.background)
    return q224, r224, terms, sil, anomaly_map(terms, sc.combination, stats, sil, edge_strength(r224), sc.sigma)


batch = insp.start(view.image[None])
insp.locate(batch)
insp.render_stage(batch)
q224, r224, terms, sil, amap = parts(batch.references.cpu())
y, x = divmod(int(amap.flatten().argmax()), amap.shape[-1])
print(f"{name}: score {float(amap.max()):.2f} at the estimated pose, threshold {insp.calibration.threshold:.3f}; peak at ({y}, {x})")
names = ["L*", "a*b*", "layer 1", "layer 2", "layer 3", "layer 4"] if sc.colour == "lab" else ["rgb", "layer 1", "layer 2", "layer 3", "layer 4"]
for t, n in enumerate(names):
    b = blur_maps(terms[:, t] / stats.term_scales[t], sc.sigma)
    print(f"  {n}: {float(b[0, y, x]):.2f} at the peak")
oracle = insp.start(view.image[None])
oracle.poses = view.w2c[None].double()  # as the lab's oracle pose mode sets them
insp.render_stage(oracle)
print(f"  at the true pose: score {float(parts(oracle.references.cpu())[4].max()):.2f}")
rgb = [(t[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8) for t in (q224, r224)]
m = amap[0].numpy()
rgb.append(np.repeat((np.clip(m / m.max(), 0, 1) * 255).astype(np.uint8)[..., None], 3, -1))
Image.fromarray(np.concatenate(rgb, 1)).save(out)
