"""The gallery: posed views with their retrieval descriptors and pose-encoder features.

Views are the category's training views (``source`` 0) and the RVSS novel views rendered
at perturbed poses (``source`` 1). Per view: world-to-camera pose ``[4, 4]`` (float64,
``models/camera.py``), descriptor ``[D]`` (L2-normalised, ``models.irprn.descriptor``),
encoder features ``[C, h, w]`` (the gallery side of IRPRN's pairs, computed once).
Retrieval is cosine similarity: one matrix product and a top-k.

The descriptor is the features average-pooled to a ``grid x grid`` layout, so
``D = C * grid^2`` and the grid is read off the shapes (``Gallery.grid``; a query is
described the same way). Galleries are built at ``RETRIEVAL_GRID`` (7 x 7), finer than
the 4 x 4 that picks IRPRN's training pairs (``IRPRNConfig.descriptor_grid``): measured on
held-out renders, the finer layout retrieves views whose pair predictions fuse better
(docs/POSE.md, revision 4); galleries built before keep their 4 x 4 and still load.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from models.camera import rigid_problem

Tensor = torch.Tensor
TRAIN, NOVEL = 0, 1
RETRIEVAL_GRID = 7  # the descriptor layout galleries are built with


class GalleryError(ValueError):
    """A gallery file that cannot be used."""


@dataclass
class Gallery:
    poses: Tensor  # [G, 4, 4] float64 world-to-camera
    source: Tensor  # [G] int8: TRAIN or NOVEL
    descriptors: Tensor  # [G, D] float32, unit norm
    features: Tensor  # [G, C, h, w] float32
    names: list[str]
    # For refinement by PnP against the gallery (optional): the views as uint8 [G, H, W, 3],
    # their expected depth [G, H, W] (float16, 0 where the object is not opaque) and the
    # intrinsics [3, 3] at that size.
    images: Tensor | None = None
    depths: Tensor | None = None
    K: Tensor | None = None

    def __len__(self) -> int:
        return len(self.poses)

    @property
    def grid(self) -> int:
        """The descriptors' pooling grid: ``D = C * grid^2`` for features of ``C`` channels."""
        c, d = self.features.shape[1], self.descriptors.shape[1]
        g = math.isqrt(d // c) if c and d % c == 0 else 0
        if g < 1 or c * g * g != d:
            raise GalleryError(f"descriptors of {d} numbers are not a square pooling of {c}-channel features")
        return g

    def validate(self, where: str = "gallery") -> None:
        """``GalleryError`` naming the field unless every part is of its shape and finite, the
        poses are rigid (a proper rotation, last row 0 0 0 1), the views' intrinsics have
        positive focal lengths and their depths are >= 0."""
        g = len(self.poses)
        if g == 0:
            raise GalleryError(f"{where}: empty gallery")
        if not isinstance(self.names, list) or not all(isinstance(n, str) for n in self.names):
            raise GalleryError(f"{where}: names must be a list of strings")
        shapes_ok = (self.poses.shape[1:] == (4, 4) and self.source.shape == (g,) and self.descriptors.dim() == 2
                     and len(self.descriptors) == g and self.features.dim() == 4 and len(self.features) == g
                     and len(self.names) == g)
        if not shapes_ok:
            raise GalleryError(f"{where}: inconsistent shapes (poses {tuple(self.poses.shape)}, descriptors "
                               f"{tuple(self.descriptors.shape)}, features {tuple(self.features.shape)}, {len(self.names)} names)")
        try:
            self.grid  # noqa: B018 (the property validates the shapes)
        except GalleryError as exc:
            raise GalleryError(f"{where}: {exc}") from None
        for key, value in (("poses", self.poses), ("descriptors", self.descriptors), ("features", self.features)):
            if not torch.isfinite(value).all():
                raise GalleryError(f"{where}: non-finite values in {key}")
        if not ((self.source == TRAIN) | (self.source == NOVEL)).all():
            raise GalleryError(f"{where}: source must be {TRAIN} (training view) or {NOVEL} (novel view)")
        problem = rigid_problem(self.poses)
        if problem is not None:
            raise GalleryError(f"{where}: poses must be rigid world-to-camera transforms: one {problem}")
        if self.images is not None and (self.depths is None or self.K is None or self.images.shape[0] != g
                                        or self.depths.shape != self.images.shape[:3]):
            raise GalleryError(f"{where}: views and depths must come together, one per gallery view")
        if self.images is not None:
            if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[-1] != 3:
                raise GalleryError(f"{where}: images must be uint8 [G, H, W, 3], got {self.images.dtype} "
                                   f"{tuple(self.images.shape)}")
            if not (torch.isfinite(self.depths).all() and (self.depths >= 0).all()):
                raise GalleryError(f"{where}: depths must be finite and >= 0")
            if self.K.shape != (3, 3) or not torch.isfinite(self.K).all() or not (self.K[0, 0] > 0 and self.K[1, 1] > 0):
                raise GalleryError(f"{where}: K must be a finite 3 x 3 matrix with focal lengths > 0")
        norms = self.descriptors.norm(dim=1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
            raise GalleryError(f"{where}: descriptors are not unit vectors")

    def top_k(self, queries: Tensor, k: int, allowed: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Cosine similarities and gallery ids ``[B, k]``, best first, of query descriptors
        ``[B, D]``; ``allowed`` (bool ``[G]``) restricts the candidates."""
        sims = queries.float() @ self.descriptors.T
        if allowed is not None:
            sims = sims.masked_fill(~allowed[None], float("-inf"))
        k = min(k, len(self) if allowed is None else int(allowed.sum()))
        values, ids = sims.topk(k, dim=1)
        return values, ids

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"poses": self.poses.double().contiguous(), "source": self.source.to(torch.int8).contiguous(),
                   "descriptors": self.descriptors.float().contiguous(), "features": self.features.float().contiguous()}
        if self.images is not None:
            tensors.update(images=self.images.to(torch.uint8).contiguous(), depths=self.depths.half().contiguous(),
                           K=self.K.double().contiguous())
        save_file(tensors, str(path), metadata={"names": json.dumps(self.names), "format": "rpe-pad-gallery-1"})

    @classmethod
    def load(cls, path: Path) -> Gallery:
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            names = json.loads(meta["names"])
        except (OSError, KeyError, ValueError, SafetensorError) as exc:
            raise GalleryError(f"{path}: not a readable gallery ({exc})") from exc
        missing = {"poses", "source", "descriptors", "features"} - set(tensors)
        if missing:
            raise GalleryError(f"{path}: missing tensors {sorted(missing)}")
        gallery = cls(tensors["poses"], tensors["source"], tensors["descriptors"], tensors["features"], names,
                      tensors.get("images"), tensors.get("depths"), tensors.get("K"))
        gallery.validate(str(path))
        return gallery
