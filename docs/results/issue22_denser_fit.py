"""Issue 22, session 32 (a diagnosis; it chooses nothing): more Gaussians, the same steps.

Fits a `rpe-pad synth` category's training views from scratch with the `cpu` preset's fit but
the densification's gradient threshold GROW (the preset's is 2e-4; lower grows more Gaussians),
no view held out, then scores the test split at true poses, aligned as the product aligns, by the
bundle's scorer and levels, against the bundle's own model and against the new one.

    PYTHONPATH=.:docs/results python docs/results/issue22_denser_fit.py BUNDLE_DIR CATEGORY_DIR GROW WORK_DIR OUT.json
"""
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from issue22_probes import score_split
from models.data import load_category
from models.inspector import Inspector
from training.splats import fit_splats, preset

bundle, cat, grow, work, out_path = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5])
ins = Inspector.load(bundle, device="cpu")
cfg = replace(preset("cpu"), grow_grad2d=grow)
c = load_category(cat, size=cfg.image_size)
report = {"bundle": str(bundle), "grow_grad2d": grow, "bundle_model": score_split(ins, ins.scene, c.test)}
print("bundle's model", json.dumps(report["bundle_model"]), flush=True)
start = time.perf_counter()
fit = fit_splats(c, cfg, work, progress=False, device=torch.device("cpu"))
report["fit_seconds"] = round(time.perf_counter() - start, 1)
report["denser_model"] = score_split(ins, fit.scene, c.test)
print("denser model", json.dumps(report["denser_model"]), report["fit_seconds"], "s")
out_path.write_text(json.dumps(report, indent=1) + "\n")
