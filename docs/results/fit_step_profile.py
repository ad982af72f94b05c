"""Where one step of the Gaussian fit spends its time on CPU (a diagnosis; session 40): a fitted model's
parameters, the `cpu` preset's loss (0.8 L1 + 0.2 (1 - SSIM)) on one training view, the backward pass and Adam,
timed over 20 steps and profiled over 10 with ``torch.profiler``; then the SH colour's own cost.

    PYTHONPATH=. python docs/results/fit_step_profile.py ../shared/data/Lego BUNDLE/Lego/splats/scene.safetensors
"""
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from models.data import load_category
from models.splat.render import eval_sh
from models.splat.scene import GaussianScene, render
from training.splats import _ssim, preset


def main(category_dir: Path, scene_path: Path) -> None:
    cfg = preset("cpu")
    category = load_category(category_dir, size=cfg.image_size, load_test=False)
    scene = GaussianScene.load(scene_path)
    params = {k: torch.nn.Parameter(v.detach().clone()) for k, v in scene.params().items()}
    optimizers = {k: torch.optim.Adam([p], lr=1e-3, eps=1e-15) for k, p in params.items()}
    images = category.train_images()
    poses = category.train_poses().float()
    Ks = torch.stack([v.K for v in category.train]).float()
    height, width = images.shape[1:3]
    background = torch.tensor(category.background, dtype=torch.float32)
    print(f"{len(params['means'])} Gaussians, SH degree {scene.sh_degree}, {width}x{height} px")

    def step(view: int) -> None:
        out = render(params, poses[view : view + 1], Ks[view : view + 1], width, height, background=background,
                     sh_degree=scene.sh_degree)
        target = images[view : view + 1]
        loss = (1 - cfg.ssim_lambda) * (out.colors - target).abs().mean() + cfg.ssim_lambda * (1 - _ssim(out.colors, target))
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)

    for view in range(3):
        step(view)
    t0 = time.perf_counter()
    for view in range(20):
        step(view % len(images))
    print(f"{(time.perf_counter() - t0) / 20 * 1000:.1f} ms per step")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for view in range(10):
            step(view % len(images))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    sh_cost(len(params["means"]))


def sh_cost(n: int) -> None:
    """The SH colour of n Gaussians, forward and backward, at degree 1 and 3."""
    gen = torch.Generator().manual_seed(0)
    dirs = torch.randn(1, n, 3, generator=gen)
    for degree in (1, 3):
        coeffs = torch.randn(n, (degree + 1) ** 2, 3, generator=gen, requires_grad=True)
        times = []
        for i in range(23):
            t0 = time.perf_counter()
            eval_sh(degree, dirs, coeffs[None]).sum().backward()
            times.append(time.perf_counter() - t0)
        print(f"SH degree {degree}: {sum(times[3:]) / 20 * 1000:.1f} ms forward and backward")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
