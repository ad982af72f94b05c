"""Issue 22, session 32 (a diagnosis; it chooses nothing): is the `cpu` fit's last state noisy?

Its colour, opacity, scale and rotation learning rates stay constant to the last step, one view
a step, so the model ends wherever the last views pulled it. This continues the shipped model of
a bundle for STEPS more steps over all its training views (the fit's own view order, seed 1),
with every learning rate times FACTOR (the means' at the fit's final, decayed rate, times FACTOR)
and no densification, then scores the test split at true poses, aligned as the product aligns,
by the bundle's scorer and levels, before and after. The levels and threshold are the bundle's,
so the good views' scores are read against the defects', not against the threshold.

    PYTHONPATH=.:docs/results python docs/results/issue22_cooldown_probe.py BUNDLE_DIR CATEGORY_DIR STEPS FACTOR OUT.json
"""
import json
import sys
import time
from pathlib import Path

from issue22_probes import continuation, fit_step, score_split
from models.data import load_category
from models.inspector import Inspector
from models.splat.scene import GaussianScene
from training.splats import preset, view_at

bundle, cat = Path(sys.argv[1]), Path(sys.argv[2])
steps, factor, out_path = int(sys.argv[3]), float(sys.argv[4]), Path(sys.argv[5])
ins = Inspector.load(bundle, device="cpu")
cfg = preset("cpu")
c = load_category(cat, size=cfg.image_size)
before = score_split(ins, ins.scene, c.test)
images, poses, Ks, params, optimizers, bg = continuation(ins.scene, c, cfg, factor)
start = time.perf_counter()
for step in range(steps):
    i = view_at(step, len(images), [], 0, 1)
    fit_step(params, optimizers, cfg, bg, poses[i:i + 1], Ks[i:i + 1], images[i:i + 1])
seconds = time.perf_counter() - start
fitted = GaussianScene.from_params({k: v.detach() for k, v in params.items()}, sh_degree=ins.scene.sh_degree,
                                   background=ins.scene.background, normalization=ins.scene.normalization)
after = score_split(ins, fitted, c.test)
report = {"bundle": str(bundle), "steps": steps, "factor": factor, "seconds": round(seconds, 1),
          "before": before, "after": after}
for tag in ("before", "after"):
    print(tag, json.dumps(report[tag]))
out_path.write_text(json.dumps(report, indent=1) + "\n")
