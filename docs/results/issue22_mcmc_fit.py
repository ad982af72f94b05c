"""Issue 22, session 34 (a diagnosis; it chooses nothing): the `cpu` fit's steps and loss with
gsplat's MCMC strategy (3DGS as Markov chain Monte Carlo: dead Gaussians relocated onto live
ones, 5 % more every 100 steps up to CAP, noise on the means) in place of densification.

gsplat 1.5.3 computes the relocation's new opacities and scales (the paper's Eq. 9) with a CUDA
kernel and the noise's covariances with another; on this CPU both are computed here in tensor
operations, from the paper's formulas. The loss adds gsplat's MCMC regularisers (0.01 x mean
opacity, 0.01 x mean scale) as its trainer does. No view is held out. The test split is scored as
`issue22_fit_variant.py` scores.

    PYTHONPATH=.:docs/results python docs/results/issue22_mcmc_fit.py BUNDLE_DIR CATEGORY_DIR CAP OUT.json
"""
import json
import math
import sys
import time
from pathlib import Path

import gsplat.strategy.ops as ops
import torch
from gsplat.strategy import MCMCStrategy

from issue22_probes import score_split
from models.data import load_category
from models.inspector import Inspector
from models.splat.projection import quat_scale_to_covar
from models.splat.scene import render
from training.splats import _optimizers, _scene, _ssim, init_params, init_points, preset, scene_scale, view_at


def relocation(opacities, scales, ratios, binoms):
    """The paper's Eq. 9: N copies of a Gaussian of opacity o keep its look with opacity
    1 - (1 - o)^(1/N) and scales times o / sum_{i=1..N} sum_{k<i} C(i-1, k) (-1)^k o'^(k+1) / sqrt(k+1)."""
    n_max = binoms.shape[0]
    ratios = ratios.clamp(1, n_max).long()
    new_o = 1.0 - (1.0 - opacities) ** (1.0 / ratios)
    k = torch.arange(n_max, dtype=opacities.dtype)
    sign = torch.where(k % 2 == 0, 1.0, -1.0) / torch.sqrt(k + 1)
    term = binoms[:, :].to(opacities.dtype)[None] * sign[None, None] * new_o[:, None, None] ** (k + 1)[None, None]
    rows = (torch.arange(n_max)[None, :] < ratios[:, None]).to(opacities.dtype)  # i - 1 in 0..N-1
    denom = (term.sum(-1) * rows).sum(-1)
    return new_o, scales * (opacities / denom)[:, None]


def covar_preci(quats, scales, compute_covar=True, compute_preci=False, triu=False):
    return quat_scale_to_covar(quats, scales), None


ops.compute_relocation = relocation
ops.quat_scale_to_covar_preci = covar_preci

bundle, cat, cap, out_path = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
cfg = preset("cpu")
ins = Inspector.load(bundle, device="cpu")
threshold = float(json.loads((bundle / "calibration" / "calibration.json").read_text())["threshold"])
c = load_category(cat, size=cfg.image_size)
torch.manual_seed(cfg.seed)
images = c.train_images()
Ks64 = torch.stack([v.K for v in c.train])
Ks = Ks64.float()
poses = c.train_poses().float()
scale = scene_scale(c.train_poses())
means, colours, _ = init_points(c, images, Ks64, cfg)
params = {k: torch.nn.Parameter(v.detach()) for k, v in init_params(means, colours, cfg.sh_degree).items()}
with torch.no_grad():
    params["opacities"].fill_(math.log(0.5 / 0.5))  # MCMC's trainer starts at opacity 0.5
optimizers = _optimizers(params, cfg, scale)
strategy = MCMCStrategy(cap_max=cap, refine_start_iter=cfg.refine_start, refine_stop_iter=cfg.refine_stop,
                        refine_every=cfg.refine_every)
state = strategy.initialize_state()
gamma = 0.01 ** (1.0 / cfg.iterations)
bg = torch.ones(3)
start = time.perf_counter()
for step in range(cfg.iterations):
    view = view_at(step, len(c.train), [], 0, cfg.seed)
    height, width = images.shape[1:3]
    out = render(params, poses[view:view + 1], Ks[view:view + 1], width, height, background=bg,
                 sh_degree=min(step // cfg.sh_degree_interval, cfg.sh_degree))
    target = images[view:view + 1]
    loss = (1 - cfg.ssim_lambda) * (out.colors - target).abs().mean() + cfg.ssim_lambda * (1 - _ssim(out.colors, target))
    loss = loss + 0.01 * torch.sigmoid(params["opacities"]).mean() + 0.01 * torch.exp(params["scales"]).mean()
    loss.backward()
    for opt in optimizers.values():
        opt.step()
        opt.zero_grad(set_to_none=True)
    lr = optimizers["means"].param_groups[0]["lr"]
    for group in optimizers["means"].param_groups:
        group["lr"] *= gamma
    strategy.step_post_backward(params, optimizers, state, step, out.meta, lr=lr)
fit_seconds = round(time.perf_counter() - start, 1)
scene = _scene(params, cfg, c, scale)
report = {"bundle": str(bundle), "cap": cap, "fit_seconds": fit_seconds,
          "bundle_model": score_split(ins, ins.scene, c.test, threshold),
          "mcmc_model": score_split(ins, scene, c.test, threshold)}
print(json.dumps(report["mcmc_model"]), fit_seconds, "s", flush=True)
out_path.write_text(json.dumps(report, indent=1) + "\n")
