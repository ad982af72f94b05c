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


@pytest.mark.parametrize("name,weights,layers,kept", [
    ("tf_efficientnet_lite0", "imagenet", (0, 1, 2, 3), 5),  # the product's scorer
    ("tf_efficientnet_lite0", "imagenet", (0, 1), 2),
    ("efficientnet_b4", "random", (0, 1, 2, 3), 5),  # the peers' scorer (lab)
], ids=["lite0", "lite0-shallow", "b4"])
def test_unused_stages_pruned_features_unchanged(name, weights, layers, kept) -> None:
    """The stages after the deepest feature are cut, and every feature is the full network's to the bit."""
    import timm

    fx = FeatureExtractor(name, layers=layers, weights=weights)
    full = timm.create_model(name, pretrained=False, features_only=True, out_indices=layers)
    full.load_state_dict(fx.body.state_dict(), strict=False)  # the cut stages keep their random weights: unused
    full.eval()
    assert len(full.blocks) == 7
    assert len(fx.body.blocks) == kept
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        for ours, theirs in zip(fx(x), full(fx.normalize(x)), strict=True):
            assert torch.equal(ours, theirs)


def test_models_without_a_block_list_are_not_pruned() -> None:
    from models.features import prune_unused_stages

    fx = FeatureExtractor("resnet18", layers=(1, 2), weights="random")
    before = [name for name, _ in fx.body.named_children()]
    assert [name for name, _ in prune_unused_stages(fx.body).named_children()] == before
    assert fx.channels == (64, 128)


def test_remapping_refuses_weights_that_do_not_fit() -> None:
    """Package weights are zipped onto timm's names in order, so a wrong count or shape must refuse them."""
    import timm

    from models.features import remap_in_order

    source = {f"k{i}": v for i, (k, v) in enumerate(timm.create_model("tf_efficientnet_lite0").state_dict().items())
              if not k.endswith("num_batches_tracked")}
    assert set(remap_in_order(source, "tf_efficientnet_lite0")) == set(timm.create_model("tf_efficientnet_lite0").state_dict())
    with pytest.raises(WeightsUnavailable, match="tensors, timm expects"):
        remap_in_order(dict(list(source.items())[:-1]), "tf_efficientnet_lite0")
    with pytest.raises(WeightsUnavailable, match="k0 .* does not fit"):
        remap_in_order({**source, "k0": source["k0"][:1]}, "tf_efficientnet_lite0")
