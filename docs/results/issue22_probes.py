"""Issue 22, session 32: what the render-residue probes share (`issue22_capacity_probe.py`,
`issue22_cooldown_probe.py`, `issue22_denser_fit.py`): one fitting step of the `cpu` preset's
loss, and a test split scored at true poses against a model's render, aligned as the product
aligns a query, by a bundle's scorer and levels."""
import numpy as np
import torch

from models.inspector import Inspector, align_references
from models.metrics import auroc
from models.refine import RefineConfig
from models.splat.scene import GaussianScene, render
from training.splats import SplatConfig, _optimizers, _ssim, psnr, scene_scale


def fit_step(params: dict, optimizers: dict, cfg: SplatConfig, background: torch.Tensor, pose: torch.Tensor,
             K: torch.Tensor, target: torch.Tensor, strategy=None, state=None, step: int = 0, extra=None) -> float:
    """One step on one view (``pose [1, 4, 4]``, ``K [1, 3, 3]``, ``target [1, H, W, 3]``) with the
    fit's loss, plus ``extra(render, target)`` when given; with ``strategy``, its densification
    around the step. Returns the loss."""
    height, width = target.shape[1:3]
    out = render(params, pose, K, width, height, background=background, sh_degree=cfg.sh_degree)
    if strategy is not None:
        strategy.step_pre_backward(params, optimizers, state, step, out.meta)
    loss = (1 - cfg.ssim_lambda) * (out.colors - target).abs().mean() + cfg.ssim_lambda * (1 - _ssim(out.colors, target))
    if extra is not None:
        loss = loss + extra(out.colors, target)
    loss.backward()
    for opt in optimizers.values():
        opt.step()
        opt.zero_grad(set_to_none=True)
    if strategy is not None:
        strategy.step_post_backward(params, optimizers, state, step, out.meta)
    return float(loss.detach())


def aligned_scores(ins: Inspector, scene: GaussianScene, views: list) -> tuple[np.ndarray, list[float]]:
    """Each view (``image``, ``w2c``, ``K``) against ``scene``'s render at that pose, aligned as
    the product aligns, by ``ins``'s scorer: the scores ``[V]`` and the renders' PSNRs."""
    out, ps = [], []
    with torch.no_grad():
        for i in range(0, len(views), 8):
            chunk = views[i:i + 8]
            imgs = torch.stack([v.image for v in chunk]).float()
            refs = render(scene, torch.stack([v.w2c for v in chunk]).float(), torch.stack([v.K for v in chunk]).float(),
                          imgs.shape[2], imgs.shape[1]).colors.clamp(0, 1)
            out.append(ins.scorer(imgs, align_references(imgs, refs, RefineConfig()))[1])
            ps += [psnr(r[None], x[None]) for r, x in zip(refs, imgs)]
    return torch.cat(out).numpy(), ps


def score_split(ins: Inspector, scene: GaussianScene, queries: list, threshold: float | None = None) -> dict:
    """The test ``queries`` against ``scene``'s render at their true poses, by ``ins``'s scorer:
    the image AUROC, the good views' mean PSNR and scores, the three weakest defects; with
    ``threshold``, the defects found and the good views rejected over it."""
    labels = np.array([q.label != "good" for q in queries])
    s, ps = aligned_scores(ins, scene, queries)
    ps = [p for p, bad in zip(ps, labels) if not bad]
    weakest = sorted((float(v), q.name) for v, q, bad in zip(s, queries, labels) if bad)[:3]
    result = {"gaussians": scene.num_gaussians, "image_auroc": round(auroc(labels, s), 4),
              "test_good_psnr": round(float(np.mean(ps)), 2),
              "good_scores_desc": [round(float(x), 3) for x in np.sort(s[~labels])[::-1]],
              "weakest_defects": [[n, round(v, 3)] for v, n in weakest]}
    if threshold is not None:
        result.update(threshold=threshold, found=f"{int((s[labels] > threshold).sum())} of {int(labels.sum())}",
                      rejected=f"{int((s[~labels] > threshold).sum())} of {int((~labels).sum())}")
    return result


def continuation(scene: GaussianScene, category, cfg: SplatConfig, factor: float):
    """What continuing a shipped model's fit needs: the training views (images, poses, Ks), its
    parameters as leaves, the fit's optimizers with every rate times ``factor`` (the means' at
    the fit's final, decayed 1 %), and the background."""
    images = category.train_images().float()
    poses = category.train_poses().float()
    Ks = torch.stack([v.K for v in category.train]).float()
    params = {k: torch.nn.Parameter(v.detach().clone().contiguous()) for k, v in scene.params().items()}
    optimizers = _optimizers(params, cfg, scene_scale(category.train_poses()))
    for name, opt in optimizers.items():
        for group in opt.param_groups:
            group["lr"] *= factor * (0.01 if name == "means" else 1.0)
    return images, poses, Ks, params, optimizers, torch.tensor(category.background, dtype=torch.float32)

