"""Query vs rendered reference -> anomaly map and image score (the peers' protocol).

Both images are clamped to [0, 1], resized to ``size`` x ``size`` (224 by default) and
normalised as the feature extractor expects. The map is the channel sum of the squared
difference of the normalised images plus, for each feature layer, the channel sum of the
squared feature difference, bilinearly upsampled to ``size``; plain sum, Gaussian blur
with ``sigma`` (4) at that resolution, then resized back to the query's size. The image
score is the map's maximum (at the scoring resolution).

``tolerance = r > 0`` is the misalignment-tolerant option: each query value is compared
with the best-matching reference value within ``r`` cells of the same map (per layer, and
per pixel for the colour term), so a reference that sits a little off the query does not
light up edges.
"""

from __future__ import annotations

import math

import kornia
import torch
import torch.nn.functional as F
from torch import nn

from models.features import FeatureExtractor

Tensor = torch.Tensor

# Comparison radius of the default scorer, chosen by measurement (docs/SCORING.md).
DEFAULT_TOLERANCE = 1


def _to_bchw(images: Tensor) -> Tensor:
    """[B, H, W, 3] or [B, 3, H, W] -> [B, 3, H, W] float, clamped to [0, 1]."""
    if images.dim() != 4:
        raise ValueError(f"expected a batch of images [B, H, W, 3] or [B, 3, H, W], got {tuple(images.shape)}")
    if images.shape[1] != 3 and images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    return images.float().clamp(0.0, 1.0)


def squared_difference(a: Tensor, b: Tensor, tolerance: int = 0) -> Tensor:
    """Channel-summed squared difference [B, H, W] of [B, C, H, W] maps; with ``tolerance``
    r > 0, the minimum over reference shifts within r cells (replicated borders)."""
    if tolerance <= 0:
        return ((a - b) ** 2).sum(dim=1)
    r = tolerance
    padded = F.pad(b, (r, r, r, r), mode="replicate")
    h, w = a.shape[-2:]
    best = None
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            d = ((a - padded[..., dy : dy + h, dx : dx + w]) ** 2).sum(dim=1)
            best = d if best is None else torch.minimum(best, d)
    return best


def blur_maps(maps: Tensor, sigma: float) -> Tensor:
    """``[B, S, S]`` smoothed with a Gaussian of ``sigma`` pixels (none when 0), truncated at
    4 sigma like scipy's gaussian_filter (the peers'), reflected at the borders."""
    if sigma <= 0:
        return maps
    k = 2 * math.ceil(4 * sigma) + 1
    return kornia.filters.gaussian_blur2d(maps[:, None], (k, k), (sigma, sigma), border_type="reflect")[:, 0]


class AnomalyScorer(nn.Module):
    """Anomaly maps and scores of query images against their rendered references."""

    def __init__(self, extractor: FeatureExtractor | None = None, size: int = 224, sigma: float = 4.0,
                 tolerance: int = DEFAULT_TOLERANCE):
        super().__init__()
        self.extractor = extractor if extractor is not None else FeatureExtractor()
        self.size = size
        self.sigma = sigma
        self.tolerance = tolerance

    def config(self) -> dict:
        """Everything that defines the scores (stored with a calibrated threshold)."""
        fx = self.extractor
        return {"extractor": fx.name, "weights": fx.weights, "layers": list(fx.layers), "size": self.size,
                "sigma": self.sigma, "tolerance": self.tolerance}

    @classmethod
    def from_config(cls, config: dict) -> AnomalyScorer:
        extractor = FeatureExtractor(config["extractor"], layers=config["layers"], weights=config["weights"])
        return cls(extractor, size=config["size"], sigma=config["sigma"], tolerance=config["tolerance"])

    @torch.no_grad()
    def terms(self, query: Tensor, reference: Tensor) -> Tensor:
        """The map's unblurred terms ``[B, 1 + L, size, size]``: the colour term, then each
        feature layer's (upsampled to ``size``). ``forward`` blurs their plain sum."""
        q, r = _to_bchw(query), _to_bchw(reference)
        if q.shape != r.shape:
            raise ValueError(f"query {tuple(q.shape)} and reference {tuple(r.shape)} differ")
        q224 = F.interpolate(q, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        r224 = F.interpolate(r, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        fx = self.extractor
        out = [squared_difference(fx.normalize(q224), fx.normalize(r224), self.tolerance)]
        for fq, fr in zip(fx(q224), fx(r224)):
            d = squared_difference(fq, fr, self.tolerance)[:, None]
            out.append(F.interpolate(d, size=(self.size, self.size), mode="bilinear", align_corners=False)[:, 0])
        return torch.stack(out, dim=1)

    def blur(self, maps: Tensor) -> Tensor:
        """``[B, S, S]`` smoothed with the scorer's Gaussian (``blur_maps``)."""
        return blur_maps(maps, self.sigma)

    @torch.no_grad()
    def forward(self, query: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
        """``query``, ``reference``: [B, H, W, 3] (or [B, 3, H, W]) in [0, 1], same size.

        Returns maps [B, H, W] at the query's size and image scores [B].
        """
        height, width = _to_bchw(query).shape[-2:]
        amap = self.blur(self.terms(query, reference).sum(dim=1))
        scores = amap.flatten(1).amax(dim=1)
        full = F.interpolate(amap[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        return full, scores
