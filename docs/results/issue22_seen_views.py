"""Issue 22, session 32 (a diagnosis; it chooses nothing): is the render's residue on good views
the price of views the Gaussian model never saw, or the fit's own? Three groups of good views
of a `rpe-pad synth` category, each at its true pose against the shipped model's render,
aligned as the product aligns a query (`align_references`), scored by the bundle's scorer:
- `seen`: training views fitted from the first step (every 3rd of those not held out);
- `held`: the views held out of the fit until the fold-in step (`training.splats.holdout_indices`);
- `test`: the test split's good views, never fitted;
and the test split's defects. Each of the five maps is reported over its level (blurred with
the scorer's sigma, its maximum), so the map that leads each view is read off too. At the
bundle's calibrated threshold each good group reports the views it would reject (its false-alarm
rate) and the defects the recall.

    python docs/results/issue22_seen_views.py BUNDLE_OR_WORK_DIR CATEGORY_DIR OUT.json
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from lab.workdir import open_inspector
from models.data import load_category
from models.inspector import InspectorConfig, align_references
from models.metrics import auroc
from models.refine import RefineConfig
from models.scoring import EITHER_MAPS, _either_pres, blur_maps, edge_strength, silhouette_evidence
from models.splat.scene import render
from training.pipeline import CALIBRATION
from training.splats import holdout_indices, preset

bundle, cat, out_path = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
c = load_category(cat, size=preset("cpu").image_size)
ins = open_inspector(bundle, InspectorConfig(pose="oracle"), device="cpu", camera=(c.width, c.height, c.K))
sc = ins.scorer
held = set(holdout_indices(len(c.train), CALIBRATION["cpu"].holdout_every))
views = ([("seen", v.name, v.image, v.w2c, v.K) for i, v in enumerate(c.train) if i not in held and i % 3 == 0]
         + [("held", v.name, v.image, v.w2c, v.K) for i, v in enumerate(c.train) if i in held]
         + [("test" if q.label == "good" else "defect", q.name, q.image, q.w2c, q.K) for q in c.test])
per = []
for i in range(0, len(views), 8):
    chunk = views[i:i + 8]
    imgs = torch.stack([v[2] for v in chunk]).float()
    poses = torch.stack([v[3] for v in chunk]).float()
    Ks = torch.stack([v[4] for v in chunk]).float()
    refs = render(ins.scene, poses, Ks, imgs.shape[2], imgs.shape[1]).colors.clamp(0, 1)
    refs = align_references(imgs, refs, RefineConfig())
    q224, r224 = sc._pair(imgs, refs)
    terms = sc._terms(q224, r224)
    pres = _either_pres(terms, sc.stats, silhouette_evidence(q224, r224, sc.background), edge_strength(r224),
                        len(sc.stats.levels))
    per.append(torch.stack([(blur_maps(p, sc.sigma) / lv).flatten(1).amax(1) for p, lv in zip(pres, sc.stats.levels)], 1))
per = torch.cat(per).numpy()
score = per.max(1)
threshold = ins.calibration.threshold
report = {"bundle": str(bundle), "category": str(cat), "maps": list(EITHER_MAPS), "threshold": threshold, "groups": {}}
defects = score[[i for i, v in enumerate(views) if v[0] == "defect"]]
for group in ("seen", "held", "test", "defect"):
    idx = [i for i, v in enumerate(views) if v[0] == group]
    s = score[idx]
    entry = {"views": len(idx), "score_min_median_max": [round(float(x), 3) for x in (s.min(), np.median(s), s.max())],
             "leading_map": dict(zip(EITHER_MAPS, np.bincount(per[idx].argmax(1), minlength=len(EITHER_MAPS)).tolist())),
             "per_map_median": [round(float(x), 3) for x in np.median(per[idx], 0)],
             "over_threshold": int((s > threshold).sum()),
             "scores": {views[i][1]: [round(float(x), 4) for x in per[i]] for i in idx}}
    if group != "defect":  # the image AUROC this group of good views would give against the test defects
        entry["image_auroc_against_test_defects"] = round(auroc(np.r_[np.zeros(len(s)), np.ones(len(defects))],
                                                                np.r_[s, defects]), 4)
    report["groups"][group] = entry
    print(f"{group:6s} {len(idx):3d} views, score {entry['score_min_median_max']}, leading {entry['leading_map']}, "
          f"AUROC vs defects {entry.get('image_auroc_against_test_defects', '-')}, over the threshold "
          f"{threshold:.4f}: {entry['over_threshold']} of {len(idx)}")
weakest = sorted((float(score[i]), views[i][1]) for i, v in enumerate(views) if v[0] == "defect")[:3]
report["weakest_defects"] = [[n, round(s, 3)] for s, n in weakest]
print("weakest defects", report["weakest_defects"])
out_path.write_text(json.dumps(report, indent=1) + "\n")
