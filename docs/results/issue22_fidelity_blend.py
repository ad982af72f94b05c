"""Issue 22, session 33 (a diagnosis on a test split; it chooses nothing): how much render
fidelity would the seeds' image-AUROC bar need? Session 22 measured the two ends: against the
Gaussian model's render the seeds rank 0.970 and 0.957 at true poses; against a perfect reference
(the ray-cast clean object) 1.000. Between them, each test query is scored by the bundle's scorer
against a blend of the two, ALPHA x perfect + (1 - ALPHA) x the Gaussian render (aligned as the
product aligns a query), both at the bundle's resolution: a render whose residue is (1 - ALPHA)
times the model's, everywhere at once. The good views' PSNR against the blend says what fidelity
each step stands for. A linear stand-in for a better fit: a real one would leave residue of
another shape, so read the PSNR it needs as an order of magnitude.

Each step reports the image AUROC, the misordered (defect, good view) pairs of 300, and the
defects found and good views rejected over the bundle's calibrated threshold (set for the
model's render, so at ALPHA > 0 it stands where a recalibration would not).

    python docs/results/issue22_fidelity_blend.py CATEGORY_DIR BUNDLE_OR_WORK_DIR SEED OUT.json
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from lab.workdir import open_inspector
from models.data import load_category
from models.images import resize_rgb
from models.inspector import InspectorConfig, align_references
from models.metrics import auroc
from models.refine import RefineConfig
from models.splat.scene import render
from training.splats import preset
from training.synth.generate import build_object, render as ray_cast

ALPHAS = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

cat, bundle, seed, out_path = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
full = load_category(cat)
small = load_category(cat, size=preset("cpu").image_size)
ins = open_inspector(bundle, InspectorConfig(pose="oracle"), device="cpu", camera=(small.width, small.height, small.K))
threshold = float(ins.calibration.threshold)
obj = build_object(np.random.default_rng(seed))
imgs, perfect, model = [], [], []
with torch.no_grad():
    for qf, qs in zip(full.test, small.test):
        clean, _, _ = ray_cast(obj.scene, qf.w2c.float(), qf.K.float(), full.width, 2)
        perfect.append(torch.from_numpy(np.clip(resize_rgb(clean.astype(np.float32), small.width, small.height), 0, 1)))
        imgs.append(qs.image.float())
    imgs, perfect = torch.stack(imgs), torch.stack(perfect)
    poses = torch.stack([q.w2c for q in small.test]).float()
    Ks = torch.stack([q.K for q in small.test]).float()
    for i in range(0, len(imgs), 8):
        refs = render(ins.scene, poses[i:i + 8], Ks[i:i + 8], small.width, small.height).colors.clamp(0, 1)
        model.append(align_references(imgs[i:i + 8], refs, RefineConfig()))
    model = torch.cat(model)
labels = np.array([q.label != "good" for q in small.test])
names = [q.name for q in small.test]
report = {"category": str(cat), "bundle": str(bundle), "threshold": threshold, "steps": []}
for alpha in ALPHAS:
    ref = alpha * perfect + (1 - alpha) * model
    with torch.no_grad():
        s = torch.cat([ins.scorer(imgs[i:i + 8], ref[i:i + 8])[1] for i in range(0, len(imgs), 8)]).numpy()
    mse = ((ref[~labels] - imgs[~labels]) ** 2).flatten(1).mean(1).numpy()
    good, bad = s[~labels], s[labels]
    step = {"alpha": alpha, "good_psnr": round(float(np.mean(-10 * np.log10(mse))), 2),
            "image_auroc": round(auroc(labels, s), 4), "misordered_pairs": int(sum((g >= d) for g in good for d in bad)),
            "found": f"{int((bad > threshold).sum())} of {len(bad)}", "rejected": f"{int((good > threshold).sum())} of {len(good)}",
            "good_scores_desc": [round(float(x), 3) for x in np.sort(good)[::-1]],
            "weakest_defects": [[n, round(float(v), 3)] for v, n in sorted(zip(bad, np.array(names)[labels]))[:3]]}
    report["steps"].append(step)
    print(f"alpha {alpha:.2f}: good PSNR {step['good_psnr']:.2f} dB, AUROC {step['image_auroc']:.4f} "
          f"(misordered {step['misordered_pairs']}), found {step['found']}, rejected {step['rejected']}, "
          f"good top {step['good_scores_desc'][:3]}, weakest {step['weakest_defects']}", flush=True)
out_path.write_text(json.dumps(report, indent=1) + "\n")
