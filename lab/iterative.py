"""The peers' per-query pose optimisation (SplatPose / iNeRF style): the slow baseline.

From the retrieval pose, Adam on a 6-DoF correction of the camera through the
differentiable renderer, minimising L1 + (1 - SSIM) between the query and the render.
Pose mode ``iterative`` of ``rpe-pad lab evaluate`` and ``rpe-pad lab bench`` (lab/modes.py);
the product never runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia
import torch

from models.camera import camera_center, make_pose, so3_exp
from models.refine import resize_with_intrinsics
from models.splat.scene import GaussianScene, render

Tensor = torch.Tensor


@dataclass(frozen=True)
class IterativeConfig:
    """Per-query render-and-compare as the peers do it (SplatPose / iNeRF style), the
    baseline our one-shot pose is measured against (``iterative`` pose mode)."""

    steps: int = 175  # Adam steps
    lr: float = 0.01  # radians, and units of the camera's distance from the origin
    decay: float = 0.8  # learning rate times this ...
    decay_every: int = 100  # ... every this many steps
    ssim_weight: float = 1.0  # loss = L1 + ssim_weight * (1 - SSIM)
    ssim_window: int = 11
    size: int | None = None  # render width while optimising; None = the query's (full resolution)


def _optimise_pose(scene: GaussianScene, target: Tensor, K: Tensor, p0: Tensor, steps: int, lr: float, loss_fn,
                   schedule=None) -> Tensor:
    """Adam on a 6-DoF correction ``D`` of each pose (``P' = D P``: rotation about the camera
    centre in axis-angle radians, translation in units of the camera's distance from the
    origin) to minimise ``loss_fn(render [T, h, w, 3], target, step) -> [T]`` through the
    differentiable renderer. ``target [T, h, w, 3]``, ``K [T, 3, 3]`` at the render size,
    ``p0 [T, 4, 4]`` world-to-camera. ``schedule``: a torch LR scheduler factory. Returns
    the corrected poses ``[T, 4, 4]`` float64 (each query's loss is its own: batching is
    the same as optimising one at a time)."""
    h, w = target.shape[1:3]
    p0 = p0.double()
    dist = camera_center(p0).norm(dim=-1)[:, None]  # [T, 1]
    omega = torch.zeros(len(p0), 3, dtype=torch.float64, device=p0.device, requires_grad=True)
    tau = torch.zeros(len(p0), 3, dtype=torch.float64, device=p0.device, requires_grad=True)
    opt = torch.optim.Adam([omega, tau], lr=lr)
    sched = schedule(opt) if schedule is not None else None

    def corrected() -> Tensor:
        return make_pose(so3_exp(omega), tau * dist) @ p0

    with torch.enable_grad():
        for step in range(steps):
            out = render(scene, corrected().float(), K.float(), w, h).colors
            loss = loss_fn(out, target, step).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
    return corrected().detach()



def iterative_refine(scene: GaussianScene, images: Tensor, poses: Tensor, Ks: Tensor,
                     cfg: IterativeConfig | None = None) -> Tensor:
    """The peers' per-query pose optimisation: from ``poses`` (the retrieval pose), Adam on
    L1 + (1 - SSIM) between the query and the full scene's render, ``cfg.steps`` steps at
    ``cfg.lr`` decayed by ``cfg.decay`` every ``cfg.decay_every``; the final pose is taken
    as it is (no guard: the peers keep it). ``images [B, H, W, 3]`` in [0, 1]; returns
    ``[B, 4, 4]`` float64 world-to-camera."""
    cfg = cfg or IterativeConfig()
    h, w = images.shape[1:3]
    if cfg.size is None or cfg.size == w:
        target, K_s = images.float(), Ks.double()
    else:
        sh = max(1, round(cfg.size * h / w))
        target_np, K_s = resize_with_intrinsics(images, Ks, cfg.size, sh)
        target = torch.from_numpy(target_np)
    device = scene.means.device
    target, K_s = target.to(device), K_s.to(device)

    def l1_ssim(out: Tensor, tgt: Tensor, step: int) -> Tensor:
        x, y = out.permute(0, 3, 1, 2), tgt.permute(0, 3, 1, 2)
        ssim = kornia.metrics.ssim(x, y, cfg.ssim_window).mean(dim=(1, 2, 3))
        return (x - y).abs().mean(dim=(1, 2, 3)) + cfg.ssim_weight * (1 - ssim)

    def schedule(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.decay_every, gamma=cfg.decay)

    return _optimise_pose(scene, target, K_s, poses.double().to(device), cfg.steps, cfg.lr, l1_ssim, schedule).cpu()


