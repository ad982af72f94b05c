"""Feature extractors: real ImageNet weights offline, shapes per layer, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from skimage import data

from models.features import FeatureExtractor, WeightsUnavailable, create_classifier


def _prep(image) -> torch.Tensor:
    x = torch.from_numpy(image).float().permute(2, 0, 1)[None] / 255.0
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return (x - 0.5) / 0.5


@pytest.mark.parametrize("image,label", [(data.chelsea(), 285), (data.coffee(), 967)], ids=["chelsea", "coffee"])
def test_lite0_weights_classify_correctly(image, label: int) -> None:
    """The remapped package weights are real ImageNet weights: an Egyptian cat and an espresso."""
    model = create_classifier("tf_efficientnet_lite0", weights="imagenet")
    with torch.no_grad():
        probs = model(_prep(image)).softmax(-1)[0]
    assert int(probs.argmax()) == label
    assert probs[label] > 0.5


def test_feature_layers_shapes_and_frozen() -> None:
    fx = FeatureExtractor()
    assert fx.channels == (16, 24, 40, 112) and fx.strides == (2, 4, 8, 16)
    feats = fx(torch.rand(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, c, 64 // s, 96 // s) for c, s in zip(fx.channels, fx.strides)]
    assert not any(p.requires_grad for p in fx.parameters())
    assert all(torch.isfinite(f).all() for f in feats)


def test_pretrained_differs_from_random() -> None:
    x = torch.rand(1, 3, 32, 32)
    a = FeatureExtractor(weights="imagenet")(x)[1]
    b = FeatureExtractor(weights="random")(x)[1]
    assert not torch.allclose(a, b)


def test_unavailable_weights_are_an_error_not_random(tmp_path, monkeypatch) -> None:
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        FeatureExtractor("efficientnet_b4", weights=tmp_path / "nope.safetensors")
    # No hub here: the real download only fails after ~50 s of retries, so stand in for it.
    from models import features

    real = features.timm.create_model

    def no_hub(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("hub unreachable")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(features.timm, "create_model", no_hub)
    with pytest.raises(WeightsUnavailable, match="cannot be downloaded here"):
        FeatureExtractor("efficientnet_b4", weights="imagenet")


def test_local_weights_file(tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("efficientnet_b4", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "b4.safetensors"))
    fx = FeatureExtractor("efficientnet_b4", weights=tmp_path / "b4.safetensors")
    assert fx.channels == (24, 32, 56, 160)  # the peers' blocks 1, 5, 9, 21
