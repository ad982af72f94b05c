"""IRPRN's parts: dynamic convolution, the staged pair head, losses, MPTS, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.camera import look_at
from models.irprn import (
    IRPRN,
    Correlation,
    DynamicConv2d,
    HomoscedasticLoss,
    IRPRNConfig,
    PairHead,
    compose_query_poses,
    descriptor,
    load_irprn,
    load_irprn_config,
    mpts_weights,
    quat_distance,
    relative_targets,
    save_irprn,
    scene_unit,
)

SMALL = IRPRNConfig(weights="random", width=16, hidden=32, n_refine=2, n_kernels=3)


def test_dynamic_conv_equals_the_attention_mixed_kernel() -> None:
    torch.manual_seed(0)
    layer = DynamicConv2d(6, n_kernels=4).eval()
    x = torch.randn(3, 6, 9, 9)
    out = layer(x)
    attn = torch.softmax(layer.attention(x.mean(dim=(2, 3))), dim=1)  # [B, K]
    w = layer.conv.weight.view(4, 6, 6, 3, 3)
    b = layer.conv.bias.view(4, 6)
    for i in range(3):
        kernel = (attn[i].view(4, 1, 1, 1, 1) * w).sum(0)
        bias = (attn[i].view(4, 1) * b).sum(0)
        ref = F.conv2d(x[i : i + 1], kernel, bias, padding=1)
        assert torch.allclose(out[i : i + 1], ref, atol=1e-5)


def test_pair_head_stages_and_identity_start() -> None:
    head = PairHead(8, SMALL).eval()
    f = torch.randn(5, 8, 14, 14)
    q, t = head(f, f)
    assert q.shape == (5, 3, 4) and t.shape == (5, 3, 3)
    assert torch.allclose(q.norm(dim=-1), torch.ones(5, 3), atol=1e-5)
    # Freshly built, it predicts (nearly) no motion: relative poses are small.
    assert (quat_distance(q, torch.tensor([1.0, 0, 0, 0])) < 0.2).all()
    assert t.abs().max() < 0.2
    # The stages differ once the refinement offsets are non-zero.
    with torch.no_grad():
        head.refine_mlps[0][-1].bias.fill_(0.1)
    q2, _ = head(f, f)
    assert not torch.allclose(q2[:, 0], q2[:, 1])


def test_the_head_trains_and_stays_finite() -> None:
    torch.manual_seed(0)
    net = PairHead(8, IRPRNConfig(weights="random", width=16, hidden=32, n_refine=2, n_kernels=3))
    fq, fg = torch.randn(4, 8, 14, 14), torch.randn(4, 8, 14, 14)
    q, t = net(fq, fg)
    assert q.shape == (4, 3, 4) and t.shape == (4, 3, 3) and torch.isfinite(q).all() and torch.isfinite(t).all()
    (q.sum() + t.sum()).backward()
    grads = {name: p.grad for name, p in net.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # The correlation branch is wired in: its projection receives gradient.
    assert grads["correlation.proj.weight"].abs().sum() > 0


def test_correlation_flow_follows_a_shift() -> None:
    # A gallery map that is the query map moved right by one cell: every query cell (away
    # from the border) finds its content one cell (2/14 in normalised units) to the right.
    torch.manual_seed(0)
    layer = Correlation(16, 16, 14)
    with torch.no_grad():
        layer.proj.weight.copy_(torch.eye(16).view(16, 16, 1, 1))
        layer.proj.bias.zero_()
        layer.log_temperature.fill_(4.0)
    fq = torch.randn(1, 16, 14, 14)
    fg = torch.roll(fq, shifts=1, dims=3)
    out = layer(fq, fg)
    assert out.shape == (1, 14 * 14 + 3, 14, 14)
    flow, conf = out[0, 196:198, :, :-1], out[0, 198, :, :-1]
    assert torch.allclose(flow[0], torch.full_like(flow[0], 2 / 14), atol=0.02)
    assert flow[1].abs().max() < 0.02 and conf.min() > 0.9
    # The volume holds cosine similarities: a cell against its own content is 1.
    assert torch.allclose(layer(fq, fq)[0, :196].amax(dim=0), torch.ones(14, 14), atol=1e-5)


def test_targets_round_trip() -> None:
    gen = torch.Generator().manual_seed(1)
    eyes = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    eyes = eyes / eyes.norm(dim=1, keepdim=True) * 3.5
    poses = look_at(eyes, torch.zeros(6, 3, dtype=torch.float64), torch.tensor([0.0, 0, 1], dtype=torch.float64))
    q, t = relative_targets(poses[:5], poses[1:], 0.9)
    assert q.shape == (5, 4) and t.shape == (5, 3)
    assert torch.allclose(compose_query_poses(q, t, poses[1:], 0.9), poses[:5], atol=1e-10)
    # t is P_rel's translation in scene units: twice the unit, half the numbers.
    assert torch.allclose(relative_targets(poses[:5], poses[1:], 1.8)[1], t / 2)


# A default config as the code before the retirements wrote it (config.json, stage keys).
SAVED_DEFAULT = {"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "layer": 3, "input_size": 224, "width": 64,
                 "hidden": 512, "n_refine": 3, "n_kernels": 4, "descriptor_grid": 4, "head": "corr",
                 "translation": "relative", "corr_dim": 64, "fine_layer": None, "fine_radius": 3, "fine_dim": 16}


def test_saved_configs_keep_their_form_and_retired_options_are_refused(tmp_path: Path) -> None:
    assert json.dumps(IRPRNConfig().to_dict()) == json.dumps(SAVED_DEFAULT)  # same keys, same order
    assert IRPRNConfig.from_dict(SAVED_DEFAULT) == IRPRNConfig()
    for name in ("head", "translation", "fine_layer", "fine_radius", "fine_dim"):
        with pytest.raises(TypeError):
            IRPRNConfig(**{name: SAVED_DEFAULT[name]})  # no longer options
    for name, value in (("head", "concat"), ("translation", "object"), ("fine_layer", 2)):
        with pytest.raises(ValueError, match=f"{name}={value!r}.*retrain"):
            IRPRNConfig.from_dict({**SAVED_DEFAULT, name: value})
    # A config saved before ``head`` existed is a "concat" network: refused, not guessed.
    old = {k: v for k, v in SMALL.to_dict().items() if k not in ("head", "translation", "corr_dim", "fine_layer")}
    (tmp_path / "config.json").write_text(json.dumps({"model": old, "scene_unit": 1.0}))
    with pytest.raises(ValueError, match="concat.*retrain"):
        load_irprn_config(tmp_path / "config.json")
    # One saved with the keys kept loads (weights come from the file).
    (tmp_path / "config.json").write_text(json.dumps({"model": SMALL.to_dict(), "scene_unit": 1.0}))
    cfg, unit = load_irprn_config(tmp_path / "config.json")
    assert cfg == IRPRNConfig(**{**SMALL.__dict__, "weights": "random"}) and unit == 1.0


@pytest.mark.parametrize("config, problem", [
    ({"scene_unit": 1.0}, "no model arguments"),
    ({"model": SAVED_DEFAULT, "scene_unit": float("nan")}, "scene_unit must be a finite number > 0"),
    ({"model": SAVED_DEFAULT, "scene_unit": 0.0}, "scene_unit must be a finite number > 0"),
    ({"model": SAVED_DEFAULT, "scene_unit": -1.0}, "scene_unit must be a finite number > 0"),
    ({"model": SAVED_DEFAULT}, "scene_unit must be a finite number > 0"),
    ({"model": {**SAVED_DEFAULT, "input_size": 0}, "scene_unit": 1.0}, "input_size must be an integer >= 1"),
    ({"model": {**SAVED_DEFAULT, "n_refine": -1}, "scene_unit": 1.0}, "n_refine must be an integer >= 0"),
    ({"model": {**SAVED_DEFAULT, "width": "64"}, "scene_unit": 1.0}, "width must be an integer >= 1"),
])
def test_a_saved_config_with_a_bad_value_is_refused_naming_it(tmp_path: Path, config: dict, problem: str) -> None:
    """A bundle's irprn/config.json comes from outside: a scene unit of 0 or NaN put every
    estimated camera at the gallery view's centre or at NaN."""
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=problem):
        load_irprn_config(tmp_path / "config.json")


def test_no_refinement_layers_is_one_stage() -> None:
    head = PairHead(8, IRPRNConfig(weights="random", width=16, hidden=32, n_refine=0))
    q, t = head(torch.randn(2, 8, 14, 14), torch.randn(2, 8, 14, 14))
    assert q.shape == (2, 1, 4) and t.shape == (2, 1, 3)


def test_quaternion_distance_is_sign_invariant() -> None:
    q = F.normalize(torch.randn(10, 4), dim=-1)
    assert torch.allclose(quat_distance(q, -q), torch.zeros(10), atol=1e-6)
    assert torch.allclose(quat_distance(q, q), torch.zeros(10), atol=1e-6)
    other = F.normalize(torch.randn(10, 4), dim=-1)
    assert torch.allclose(quat_distance(q, other), quat_distance(-q, other))


def test_mpts_weights() -> None:
    assert torch.allclose(mpts_weights(3), torch.tensor([3 / 6, 2 / 6, 1 / 6]))
    assert torch.allclose(mpts_weights(1), torch.tensor([1.0]))
    for k in range(1, 6):
        assert mpts_weights(k).sum() == pytest.approx(1.0)
        assert (mpts_weights(k).diff() < 0).all()


def test_homoscedastic_loss_formula_and_weights() -> None:
    crit = HomoscedasticLoss(s_t=0.5, s_q=-1.0)
    q_gt = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    t_gt = torch.zeros(2, 3)
    q = torch.tensor([[[0.0, 1.0, 0, 0]], [[1.0, 0, 0, 0]]])  # errors sqrt(2) and 0
    t = torch.tensor([[[0.0, 0, 2.0]], [[0.0, 0, 0]]])  # errors 2 and 0
    loss, _ = crit(q, t, q_gt, t_gt)
    lt, lq = 1.0, 2**0.5 / 2  # batch means
    expected = lt * torch.exp(torch.tensor(-0.5)) + 0.5 + lq * torch.exp(torch.tensor(1.0)) - 1.0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    weighted, _ = crit(q, t, q_gt, t_gt, torch.tensor([0.0, 1.0]))  # all weight on the exact pair
    assert weighted.item() == pytest.approx(0.5 - 1.0, abs=1e-6)
    weighted.backward()
    assert crit.s_t.grad is not None and crit.s_q.grad is not None


def test_descriptor_unit_norm_and_grid() -> None:
    f = torch.randn(3, 8, 14, 14)
    d = descriptor(f, 4)
    assert d.shape == (3, 8 * 16)
    assert torch.allclose(d.norm(dim=1), torch.ones(3))
    assert descriptor(f, 1).shape == (3, 8)


def test_scene_unit() -> None:
    assert scene_unit(4.0) == 1.0 and scene_unit(2.0) == 0.5
    with pytest.raises(ValueError):
        scene_unit(0.0)


def test_save_load_round_trip(tmp_path: Path) -> None:
    from models.bundle import FILES, WORK_FILES

    net = IRPRN(SMALL).eval()
    save_irprn(net, tmp_path / "irprn", 0.9, {"epochs": 1})
    # The work folder's paths of models.bundle are where save_irprn writes.
    assert (tmp_path / WORK_FILES["irprn_weights"]).is_file() and (tmp_path / FILES["irprn_config"]).is_file()
    loaded, unit = load_irprn(tmp_path / "irprn")
    assert unit == 0.9
    x, y = torch.rand(2, 3, 224, 224), torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        a, b = net(x, y), loaded(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_network_exports_with_parity(tmp_path: Path) -> None:
    from training.export import check_parity, export_irprn

    torch.manual_seed(0)
    cfg = IRPRNConfig(weights="random", width=16, hidden=32, n_refine=1, input_size=112)
    net = IRPRN(cfg).eval()
    enc, head = export_irprn(net, tmp_path)
    report = check_parity(net, enc, head)  # raises above the tolerance
    assert report["max_abs_diff"] <= 1e-4 and set(report["per_output"]) >= {"random_b5/features", "random_b5/q"}
