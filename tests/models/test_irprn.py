"""IRPRN's parts: dynamic convolution, the staged pair head, losses, MPTS, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.irprn import (
    IRPRN,
    DynamicConv2d,
    HomoscedasticLoss,
    IRPRNConfig,
    PairHead,
    descriptor,
    load_irprn,
    mpts_weights,
    quat_distance,
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
    net = IRPRN(SMALL).eval()
    save_irprn(net, tmp_path / "irprn", 0.9, {"epochs": 1})
    loaded, unit = load_irprn(tmp_path / "irprn")
    assert unit == 0.9
    x, y = torch.rand(2, 3, 224, 224), torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        a, b = net(x, y), loaded(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
