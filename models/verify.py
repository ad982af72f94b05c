"""Does the reference fit the photograph? The check a pose must pass before its score is trusted.

The scorer compares a query with the normal object rendered at the pose the pipeline found.
When that pose is wrong (a gross retrieval failure, a refinement that locked onto the wrong
structure), every edge of the object lights up in the map, and the score says nothing about
defects. ``verify`` measures, on the query and its final reference at the scorer's square
size (``size``, 224 by default, the size the alignment errors of docs/RESULTS.md are quoted at):

- ``misalignment_px``: the median length of the dense optical flow (OpenCV's DIS, Kroeger
  et al. 2016) from the reference to the query, over the pixels where either shows the
  object: the image displacement the scorer is left with. A defect moves the flow only
  inside its own region, so the median over the object stays the pose's;
- ``silhouette_iou``: intersection over union of the two foreground masks (pixels that
  differ from the background colour by more than ``foreground_tol`` in some channel), the
  backstop for poses so far off that no flow can link the two images.

A query is verified when ``misalignment_px <= max_misalignment_px`` and
``silhouette_iou >= min_silhouette_iou``; otherwise its verdict is ``review``
(``models.results``) and the reason names the failed measure. The refinement's last step
warps the reference in 2D onto the query (``models.refine.ecc_align``); a warp can make a
reference fit whose pose is far off (seen once on photographs no model saw: 8.7 px off,
warped 8.4 px, left with 1.2 px of flow; docs/RESULTS.md, session 18). So the warp each
reference got (``warps``) is held to the same bound: a reference that needed more than
``max_misalignment_px`` of 2D warp to fit stands on a pose that is off, and goes to review. So
does a query whose refinement accepted no correction (``unrefined``): its pose is the pose
network's one-shot estimate, 3.3-4.4 px off at the median (docs/POSE.md), which the warp can
make fit where the image pins it while the rest stays off (seen on a fresh category: 7.1 px
off, left with 2.2 px of flow after a 2.1 px warp; docs/RESULTS.md, session 30).

The bounds were fixed before any test figure was seen (docs/SCORING.md, "Pose
verification"): 2.5 px, just above the geometric middle of the 1 px the scorer needs
(../shared facts: alignment to about a pixel) and the 5 px at which a pose is a failure,
and IoU 0.8, far below an aligned object's (above 0.95) and far above a gross failure's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

Tensor = torch.Tensor


@dataclass(frozen=True)
class VerifyConfig:
    max_misalignment_px: float = 2.5  # median flow over the object, pixels at `size`, above which -> review
    min_silhouette_iou: float = 0.8  # foreground IoU below which -> review
    foreground_tol: float = 0.05  # a pixel is foreground when a channel differs from the background by more
    size: int = 224  # square size both images are compared at (the scorer's)

    def __post_init__(self) -> None:
        # An infinite bound would verify every pose: a bundle's manifest carries these.
        checks = (("max_misalignment_px", lambda v: 0 < v < math.inf, "a finite number > 0"),
                  ("min_silhouette_iou", lambda v: 0 <= v <= 1, "a number from 0 to 1"),
                  ("foreground_tol", lambda v: 0 < v < 1, "a number between 0 and 1"),
                  ("size", lambda v: isinstance(v, int) and v >= 16, "an integer >= 16"))
        for name, in_range, need in checks:  # NaN fails every comparison, so it is refused too
            value = getattr(self, name)
            # JSON's true and false are not numbers here, though Python counts bool as int.
            if isinstance(value, bool) or not isinstance(value, int | float) or not in_range(value):
                raise ValueError(f"verify.{name} must be {need}, got {getattr(self, name)!r}")


class Verification(BaseModel):
    """How well the final reference fits the query (``models.verify``)."""

    verified: bool = Field(description="the reference fits the query: the score can be trusted")
    misalignment_px: float | None = Field(description="median optical-flow length over the object, pixels at 224 x 224 "
                                                   "(None when the query shows no object)")
    silhouette_iou: float = Field(ge=0, le=1, description="IoU of the query's and the reference's foreground")
    reason: str = Field(description="why the query was not verified (empty when verified)")


def _square(images: Tensor, size: int) -> Tensor:
    """[B, H, W, 3] -> [B, size, size, 3] float on the CPU (antialiased bilinear)."""
    x = images.detach().float().cpu().permute(0, 3, 1, 2)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1).permute(0, 2, 3, 1)


def foreground(images: Tensor, background: tuple[float, float, float], tol: float) -> Tensor:
    """Masks [B, H, W] of the pixels of ``images [B, H, W, 3]`` that differ from ``background``."""
    bg = torch.tensor(background, dtype=images.dtype, device=images.device)
    return (images - bg).abs().amax(-1) > tol


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor((image * 255.0 + 0.5).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def verify(queries: Tensor, references: Tensor, background: tuple[float, float, float],
           cfg: VerifyConfig = VerifyConfig(), warps: list[float] | None = None,
           unrefined: list[bool] | None = None) -> list[Verification]:
    """One ``Verification`` per pair of ``queries`` and ``references`` ``[B, H, W, 3]`` in [0, 1];
    ``warps``: the 2D warp each reference got to fit its query, pixels at ``cfg.size`` (none: 0);
    ``unrefined``: per query, True when the refinement accepted no correction of its pose
    (none: the pose mode has no refinement)."""
    if queries.shape != references.shape or queries.dim() != 4 or queries.shape[-1] != 3:
        raise ValueError(f"queries {tuple(queries.shape)} and references {tuple(references.shape)} must both be [B, H, W, 3]")
    for name, given in (("warps", warps), ("unrefined", unrefined)):
        if given is not None and len(given) != len(queries):
            raise ValueError(f"{len(given)} {name} for {len(queries)} queries")
    q, r = _square(queries, cfg.size), _square(references, cfg.size)
    fq, fr = foreground(q, background, cfg.foreground_tol), foreground(r, background, cfg.foreground_tol)
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    out = []
    for i in range(len(q)):
        union = int((fq[i] | fr[i]).sum())
        iou = float((fq[i] & fr[i]).sum()) / union if union else 0.0
        if union == 0 or not fq[i].any():
            out.append(Verification(verified=False, misalignment_px=None, silhouette_iou=0.0,
                                    reason="no object in the query (it shows only the background)"))
            continue
        field = flow.calc(_gray(r[i].numpy()), _gray(q[i].numpy()), None)  # reference -> query, [S, S, 2]
        length = np.linalg.norm(field, axis=-1)[(fq[i] | fr[i]).numpy()]
        shift = float(np.median(length))
        reasons = []
        if shift > cfg.max_misalignment_px:
            reasons.append(f"the reference sits {shift:.1f} px from the query (bound {cfg.max_misalignment_px:g} px): "
                           "the pose is off")
        warp = warps[i] if warps is not None else 0.0
        if warp > cfg.max_misalignment_px:
            reasons.append(f"the reference needed a {warp:.1f} px 2D warp to fit the query (bound "
                           f"{cfg.max_misalignment_px:g} px): the pose is off")
        if unrefined is not None and unrefined[i]:
            reasons.append("the refinement confirmed no correction of the pose network's estimate: the pose is "
                           "unverified")
        if iou < cfg.min_silhouette_iou:
            reasons.append(f"the silhouettes overlap by {iou:.2f} (bound {cfg.min_silhouette_iou:g}): the pose is off, "
                           "or the object is not the category's")
        out.append(Verification(verified=not reasons, misalignment_px=round(shift, 3), silhouette_iou=round(iou, 4),
                                reason="; ".join(reasons)))
    return out
