"""Timing benchmarks (`rpe-pad bench-render`): medians of repeated runs, with the machine."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch

from models import camera
from models.splat.scene import GaussianScene, render


def machine() -> dict:
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def random_scene(n: int, seed: int = 0, radius: float = 0.8) -> GaussianScene:
    """``n`` Gaussians in a ball of ``radius`` (object-sized, as a fitted MAD scene)."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(n, 3, generator=gen)
    means = direction / direction.norm(dim=-1, keepdim=True) * radius * torch.rand(n, 1, generator=gen) ** (1 / 3)
    return GaussianScene(
        means=means,
        scales=torch.log(torch.rand(n, 3, generator=gen) * 0.02 + 0.004),
        quats=torch.randn(n, 4, generator=gen),
        opacities=torch.logit(torch.rand(n, generator=gen) * 0.9 + 0.05),
        sh0=torch.randn(n, 1, 3, generator=gen) * 0.5,
        shN=torch.zeros(n, 0, 3),
    )


def bench_render(
    scene: GaussianScene, size: int = 256, repeats: int = 10, devices: list[str] | None = None, backward: bool = True
) -> dict:
    """Median forward (and forward+backward) time of one view at ``size`` x ``size``."""
    devices = devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    eye = torch.tensor([[3.2, 1.4, 1.9]], dtype=torch.float64)
    viewmat = camera.look_at(eye, torch.zeros_like(eye), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).float()
    K = camera.intrinsics_from_fov(0.6911112070083618, size, size)[None].float()
    results = {"num_gaussians": scene.num_gaussians, "size": size, "repeats": repeats, "machine": machine()}
    for device in devices:
        sc = scene.to(device)
        vm, Kd = viewmat.to(device), K.to(device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        with torch.no_grad():
            render(sc, vm, Kd, size, size)  # warm-up (CUDA: kernel build/load)
            times = []
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                render(sc, vm, Kd, size, size)
                sync()
                times.append(time.perf_counter() - start)
        entry = {"forward_s_median": statistics.median(times), "forward_s_min": min(times)}
        if backward:
            params = {k: v.detach().clone().requires_grad_(True) for k, v in sc.params().items()}
            times = []
            for _ in range(max(3, repeats // 2)):
                sync()
                start = time.perf_counter()
                render(params, vm, Kd, size, size, sh_degree=sc.sh_degree).colors.sum().backward()
                sync()
                times.append(time.perf_counter() - start)
            entry["forward_backward_s_median"] = statistics.median(times)
        results[device] = entry
    return results


def load_or_random(scene_path: Path | None, gaussians: int) -> GaussianScene:
    return GaussianScene.load(scene_path) if scene_path else random_scene(gaussians)
