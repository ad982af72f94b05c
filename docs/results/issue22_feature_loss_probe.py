"""Issue 22, session 33 (a diagnosis; it chooses nothing): does a fit that sees what the scorer
sees leave less residue? The `cpu` fit minimises L1 and D-SSIM on pixels, but the residue that
hides the seeds' last defects is read by the scorer's features (its `fine` map leads on most good
views, session 32). This continues the shipped model of a bundle for STEPS more steps over all
its training views (the fit's own view order), every learning rate times FACTOR (the means' at
the fit's final, decayed rate, times FACTOR), no densification, with the fit's loss plus LAMBDA
times the scorer's own evidence: the mean over the 224 px square of its terms (the CIELAB colour
terms and the four feature layers of the render against the photograph), each over its normal
scale. The extractor is the bundle's, frozen. LAMBDA 0 is the control (the plain continuation).
The test split is scored at true poses, aligned as the product aligns, by the bundle's scorer and
levels, before and after, and read at the bundle's calibrated threshold.

    PYTHONPATH=.:docs/results python docs/results/issue22_feature_loss_probe.py BUNDLE_DIR CATEGORY_DIR STEPS FACTOR LAMBDA OUT.json
"""
import json
import sys
import time
from pathlib import Path

import torch

from issue22_probes import continuation, fit_step, score_split
from models.data import load_category
from models.inspector import Inspector
from models.splat.scene import GaussianScene
from training.splats import preset, view_at

bundle, cat = Path(sys.argv[1]), Path(sys.argv[2])
steps, factor, lam, out_path = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), Path(sys.argv[6])
ins = Inspector.load(bundle, device="cpu")
sc = ins.scorer
sc.extractor.requires_grad_(False)
scales = torch.tensor(sc.stats.term_scales, dtype=torch.float32)[None, :, None, None]
threshold = float(ins.calibration.threshold)
cfg = preset("cpu")
c = load_category(cat, size=cfg.image_size)
before = score_split(ins, ins.scene, c.test, threshold)
images, poses, Ks, params, optimizers, bg = continuation(ins.scene, c, cfg, factor)
feature_losses = []


def scorer_evidence(rendered: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    q224, r224 = sc._pair(target, rendered.clamp(0, 1))
    value = (sc._terms(q224, r224) / scales).mean()
    feature_losses.append(float(value.detach()))
    return lam * value


start = time.perf_counter()
losses = []
for step in range(steps):
    i = view_at(step, len(images), [], 0, 1)
    losses.append(fit_step(params, optimizers, cfg, bg, poses[i:i + 1], Ks[i:i + 1], images[i:i + 1],
                           extra=scorer_evidence if lam > 0 else None))
    if step % 100 == 0:
        print(f"step {step}: loss {losses[-1]:.4f}" + (f", scorer evidence {feature_losses[-1]:.4f}" if lam > 0 else ""),
              flush=True)
seconds = time.perf_counter() - start
fitted = GaussianScene.from_params({k: v.detach() for k, v in params.items()}, sh_degree=ins.scene.sh_degree,
                                   background=ins.scene.background, normalization=ins.scene.normalization)
after = score_split(ins, fitted, c.test, threshold)
report = {"bundle": str(bundle), "steps": steps, "factor": factor, "lambda": lam, "seconds": round(seconds, 1),
          "first_last_scorer_evidence": [round(x, 4) for x in feature_losses[:1] + feature_losses[-1:]],
          "before": before, "after": after}
for tag in ("before", "after"):
    print(tag, json.dumps(report[tag]))
out_path.write_text(json.dumps(report, indent=1) + "\n")
