"""Issue 22 item 2 (a measurement on the test split; it chooses nothing): why Lego's Stains/001 and Burrs/001 are missed. Per query of the test split
(true poses, shipped model, references aligned as the refinement aligns them), the bundle's
scorer's map split into its terms: the image score, where it peaks, what each term adds there,
and the best each term reaches inside the defect's mask; then every image score again
with the blur at sigma 1, 2 and 4 (the product's).

Usage: python docs/results/issue22_why_missed.py BUNDLE CATEGORY_DIR OUT.json"""
import json, sys
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
from models.bundle import FILES, read_manifest
from models.calibration import Calibration
from models.data import GOOD, load_category
from models.inspector import align_references
from models.refine import RefineConfig
from models.scoring import AnomalyScorer, balanced, blur_maps
from models.splat.scene import GaussianScene
from training.evaluate import render_references

bundle, cat = Path(sys.argv[1]), Path(sys.argv[2])
torch.set_num_threads(2)
calib = Calibration.model_validate_json((bundle / FILES["calibration"]).read_text())
scorer = AnomalyScorer.from_config(calib.scorer)
scene = GaussianScene.load(bundle / FILES["scene"])
full = load_category(cat, size=read_manifest(bundle).camera.width)
views = [v for v in full.test if v.w2c is not None]
imgs = torch.stack([v.image for v in views])
refs = render_references(scene, torch.stack([v.w2c for v in views]), torch.stack([v.K for v in views]), full.width, full.height)
refs = align_references(imgs, refs.cpu(), RefineConfig())
terms, sil = scorer.inputs(imgs, refs)
scales = torch.tensor(scorer.stats.term_scales).view(1, -1, 1, 1)
parts = torch.cat([terms / scales, sil[:, None] * terms.shape[1]], 1)  # colour, L0..L3, silhouette
blurred = torch.stack([blur_maps(parts[:, k], scorer.sigma) for k in range(parts.shape[1])], 1)
total = blurred.sum(1)
names = ["colour", "L0", "L1", "L2", "L3", "silhouette"]
rows = []
for i, v in enumerate(views):
    m = F.interpolate(v.mask[None, None].float(), size=total.shape[-2:], mode="nearest")[0, 0] > 0.5
    s = float(total[i].max()); idx = int(total[i].argmax()); y, x = divmod(idx, total.shape[-1])
    row = {"view": f"{v.label}/{v.name}", "score": round(s, 2), "peak_yx": [y, x],
           "at_peak": {n: round(float(blurred[i, k, y, x]), 2) for k, n in enumerate(names)}}
    if m.any():
        row["in_mask_max"] = round(float(total[i][m].max()), 2)
        row["in_mask_term_max"] = {n: round(float(blurred[i, k][m].max()), 2) for k, n in enumerate(names)}
        row["peak_in_mask"] = bool(m[y, x])
    rows.append(row)
    print(json.dumps(row))
sigma = {s: {r["view"]: round(float(x), 2) for r, x in zip(rows, blur_maps(parts.sum(1), s).flatten(1).amax(1))}
         for s in (1.0, 2.0, 4.0)}
stain = [i for i, v in enumerate(views) if f"{v.label}/{v.name}".endswith("Stains/001")]
colour = {}
if stain:
    i = stain[0]
    m = F.interpolate(views[i].mask[None, None].float(), size=imgs.shape[1:3], mode="nearest")[0, 0] > 0.5
    colour = {"query_rgb": (imgs[i][m].mean(0) * 255).round().tolist(), "reference_rgb": (refs[i][m].mean(0) * 255).round().tolist()}
Path(sys.argv[3]).write_text(json.dumps({"threshold": calib.threshold, "terms": names, "queries": rows,
                                         "scores_by_sigma": sigma, "stains_001_mean_colour_in_mask": colour}, indent=1))
print(json.dumps(sigma, indent=1), colour)
