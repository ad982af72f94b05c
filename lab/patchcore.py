"""The 2D baseline that ignores pose: nearest-neighbour patch features (PatchCore-like).

The field's non-3D reference (Roth et al. 2022, "Towards total recall in industrial
anomaly detection"), built on the same frozen extractor as our scorer so that the
comparison isolates what pose buys:

- features at the extractor's stride-8 and stride-16 layers of every training view
  (``size`` px input), each averaged over its 3 x 3 neighbourhood (local context), the
  stride-16 map bilinearly upsampled to stride 8, concatenated: one vector per patch;
- memory bank: all training patches, reduced by greedy k-centre coreset selection to
  ``coreset`` of them (distances measured in a fixed random projection to
  ``projection_dim``, as PatchCore does for speed);
- a query's anomaly map: each patch's Euclidean distance to its nearest bank patch,
  upsampled to the image size and smoothed with a Gaussian (``sigma`` px at ``size``);
  the image score is the map's maximum.

No library offers this without a training framework around it (anomalib brings
Lightning and its own data layer), so the ~100 lines are ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models.features import DEFAULT_BACKBONE, FeatureExtractor
from models.scoring import blur_maps

Tensor = torch.Tensor


@dataclass(frozen=True)
class PatchCoreConfig:
    backbone: str = DEFAULT_BACKBONE  # timm name (models.features)
    weights: str = "imagenet"  # or a local file, or "random" (tests)
    size: int = 224  # extractor input, px
    coreset: float = 0.1  # fraction of training patches kept in the bank (1.0 = all)
    projection_dim: int = 128  # random projection for the coreset's distances
    sigma: float = 4.0  # Gaussian smoothing of the map, px at ``size``
    batch: int = 16
    seed: int = 0


def greedy_coreset(features: Tensor, n: int, projection_dim: int = 128, seed: int = 0) -> Tensor:
    """Indices of ``n`` rows of ``features [N, D]`` chosen by greedy k-centre selection
    (each pick is the row farthest from those already picked), with distances taken in a
    Gaussian random projection to ``projection_dim`` dimensions."""
    total = len(features)
    if n >= total:
        return torch.arange(total)
    gen = torch.Generator().manual_seed(seed)
    if features.shape[1] > projection_dim:
        proj = torch.randn(features.shape[1], projection_dim, generator=gen) / math.sqrt(projection_dim)
        x = features @ proj
    else:
        x = features
    picked = torch.empty(n, dtype=torch.long)
    picked[0] = int(torch.randint(total, (1,), generator=gen))
    nearest = (x - x[picked[0]]).norm(dim=1)
    for i in range(1, n):
        picked[i] = int(nearest.argmax())
        nearest = torch.minimum(nearest, (x - x[picked[i]]).norm(dim=1))
    return picked


class PatchCore(torch.nn.Module):
    """Fit on normal images, then score queries: ``fit(images)``, ``forward(queries)``."""

    def __init__(self, cfg: PatchCoreConfig | None = None, extractor: FeatureExtractor | None = None):
        super().__init__()
        cfg = cfg or PatchCoreConfig()
        self.cfg = cfg
        self.extractor = extractor or FeatureExtractor(cfg.backbone, weights=cfg.weights)
        strides = self.extractor.strides
        self.levels = [strides.index(8), strides.index(16)]  # the mid-level layers PatchCore uses
        self.register_buffer("bank", torch.zeros(0))

    def patches(self, images: Tensor) -> Tensor:
        """``images [B, H, W, 3]`` in [0, 1] -> patch features ``[B, h, w, D]`` (stride 8)."""
        x = F.interpolate(images.permute(0, 3, 1, 2).float(), size=(self.cfg.size, self.cfg.size), mode="bilinear",
                          antialias=True, align_corners=False)
        feats = self.extractor(x.to(self.bank.device))
        low, high = (F.avg_pool2d(feats[i], 3, stride=1, padding=1) for i in self.levels)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([low, high], dim=1).permute(0, 2, 3, 1)

    @torch.no_grad()
    def fit(self, images: Tensor, progress: bool = False) -> PatchCore:
        """Build the memory bank from normal ``images [N, H, W, 3]``."""
        chunks = [self.patches(images[i : i + self.cfg.batch]).flatten(0, 2).cpu()
                  for i in tqdm(range(0, len(images), self.cfg.batch), desc="patchcore: features", disable=not progress)]
        feats = torch.cat(chunks)
        n = max(1, round(self.cfg.coreset * len(feats)))
        keep = greedy_coreset(feats, n, self.cfg.projection_dim, self.cfg.seed)
        self.bank = feats[keep].to(self.bank.device)
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images [B, H, W, 3]`` -> (maps ``[B, H, W]``, scores ``[B]``): nearest-bank-patch distances."""
        if not len(self.bank):
            raise RuntimeError("PatchCore.fit has not been called")
        b, h, w = images.shape[:3]
        feats = self.patches(images)
        ph, pw = feats.shape[1:3]
        flat = feats.flatten(0, 2)
        dist = torch.cat([torch.cdist(flat[i : i + 4096], self.bank).min(dim=1).values
                          for i in range(0, len(flat), 4096)])
        amap = dist.view(b, 1, ph, pw)
        amap = F.interpolate(amap, size=(self.cfg.size, self.cfg.size), mode="bilinear", align_corners=False)
        amap = blur_maps(amap[:, 0], self.cfg.sigma)[:, None]
        amap = F.interpolate(amap, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        return amap.cpu(), amap.flatten(1).max(dim=1).values.cpu()
