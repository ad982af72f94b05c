"""Issue 22, session 32 (a diagnosis; it chooses nothing): can a Gaussian model remove the render's
residue on views it is fitted to, given far more capacity per view than the `cpu` preset has?

The shipped model of a bundle is fitted further to a handful of its own training views, those
that score highest (`issue22_seen_views.py`'s `seen` group, read from its JSON): STEPS more steps,
cycling over those views only, with densification on throughout the first 75 % of them and no
opacity reset. Every view is scored before and after at its true pose against the render,
aligned as the product aligns a query, by the bundle's scorer over its levels (the five maps'
maximum, the image score the threshold reads). The test split's weakest defect and the scores of
a perfect reference (`issue22_perfect_reference.py`) are the marks to read them against.

With `control`, the model is fitted to the next VIEWS views by score instead, and the same top
VIEWS views are scored before and after: how far a fit elsewhere moves their scores, the noise to
read the probe's drop against.

    PYTHONPATH=.:docs/results python docs/results/issue22_capacity_probe.py BUNDLE_DIR CATEGORY_DIR SEEN_VIEWS.json VIEWS STEPS OUT.json [control]
"""
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from issue22_probes import fit_step
from models.data import load_category
from models.inspector import Inspector, align_references
from models.refine import RefineConfig
from models.splat.scene import GaussianScene, render
from training.splats import ResettingStrategy, _optimizers, preset, psnr, scene_scale

bundle, cat, seen_json = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
n_views, steps, out_path = int(sys.argv[4]), int(sys.argv[5]), Path(sys.argv[6])
control = sys.argv[7:] == ["control"]
ins = Inspector.load(bundle, device="cpu")
cfg = preset("cpu")
c = load_category(cat, size=cfg.image_size)
seen = json.loads(seen_json.read_text())["groups"]["seen"]["scores"]
ranked = sorted(seen, key=lambda n: -max(seen[n]))
names = ranked[:n_views]
views = [v for v in c.train if v.name in names]  # the views scored
names = [v.name for v in views]
fit_names = ranked[n_views:2 * n_views] if control else names
fit_views = [v for v in c.train if v.name in fit_names]  # the views fitted
images, fit_images = (torch.stack([v.image for v in vs]).float() for vs in (views, fit_views))
poses, fit_poses = (torch.stack([v.w2c for v in vs]).float() for vs in (views, fit_views))
Ks, fit_Ks = (torch.stack([v.K for v in vs]).float() for vs in (views, fit_views))
height, width = images.shape[1:3]


def scores(scene: GaussianScene) -> tuple[list[float], list[float]]:
    with torch.no_grad():
        refs = render(scene, poses, Ks, width, height).colors.clamp(0, 1)
        aligned = align_references(images, refs, RefineConfig())
        _, s = ins.scorer(images, aligned)
    return [round(float(x), 4) for x in s], [round(psnr(r[None], i[None]), 2) for r, i in zip(refs, images)]


scene = ins.scene
before, psnr_before = scores(scene)
params = {k: torch.nn.Parameter(v.detach().clone().contiguous()) for k, v in scene.params().items()}
scale = scene_scale(c.train_poses())
optimizers = _optimizers(params, replace(cfg, lr_means=cfg.lr_means * 0.1), scale)
strategy = ResettingStrategy(prune_opa=cfg.prune_opa, grow_grad2d=cfg.grow_grad2d, refine_start_iter=0,
                             refine_stop_iter=int(0.75 * steps), refine_every=cfg.refine_every, reset_every=10**9)
strategy.check_sanity(params, optimizers)
state = strategy.initialize_state(scene_scale=scale)
bg = torch.tensor(c.background, dtype=torch.float32)
start = time.perf_counter()
for step in range(steps):
    i = step % len(fit_views)
    loss = fit_step(params, optimizers, cfg, bg, fit_poses[i:i + 1], fit_Ks[i:i + 1], fit_images[i:i + 1], strategy, state,
                    step)
    if step % 250 == 0:
        print(f"step {step} loss {loss:.4f} gaussians {len(params['means'])}", flush=True)
fitted = GaussianScene.from_params({k: v.detach() for k, v in params.items()}, sh_degree=scene.sh_degree,
                                   background=scene.background, normalization=scene.normalization)
after, psnr_after = scores(fitted)
report = {"bundle": str(bundle), "views": names, "fitted_views": [v.name for v in fit_views], "steps": steps, "seconds": round(time.perf_counter() - start, 1),
          "gaussians_before": scene.num_gaussians, "gaussians_after": fitted.num_gaussians,
          "score_before": before, "score_after": after, "psnr_before": psnr_before, "psnr_after": psnr_after,
          "threshold": ins.calibration.threshold}
for n, b, a, pb, pa in zip(names, before, after, psnr_before, psnr_after):
    print(f"{n}: score {b:.3f} -> {a:.3f}, PSNR {pb} -> {pa} dB")
print(f"Gaussians {scene.num_gaussians} -> {fitted.num_gaussians}, {report['seconds']} s")
out_path.write_text(json.dumps(report, indent=1) + "\n")
