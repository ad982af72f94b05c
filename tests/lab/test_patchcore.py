"""The 2D baseline: greedy coreset selection and nearest-neighbour patch scoring."""

from __future__ import annotations

from pathlib import Path

import torch

from models.data import load_category
from lab.patchcore import PatchCore, PatchCoreConfig, greedy_coreset


def test_greedy_coreset_covers_every_cluster() -> None:
    """Three tight, far-apart clusters: three picks land one in each; n >= N keeps all."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=gen) for c in centres])
    picked = greedy_coreset(points, 3)
    assert sorted((picked // 50).tolist()) == [0, 1, 2]
    assert torch.equal(greedy_coreset(points, 500), torch.arange(150))


def test_patchcore_scores_a_training_view_zero_and_a_defect_higher(tiny_synth: Path) -> None:
    cat = load_category(tiny_synth)
    train = torch.stack([v.image for v in cat.train])
    model = PatchCore(PatchCoreConfig(weights="random", size=64, coreset=1.0, sigma=1.0)).fit(train)
    assert model.bank.shape[1] == sum(model.extractor.channels[i] for i in model.levels)
    defect = train[:1].clone()
    defect[0, 20:34, 20:34] = torch.tensor([1.0, 0.0, 1.0])  # a magenta patch on the object
    maps, scores = model(torch.cat([train[:1], defect]))
    assert maps.shape == (2, cat.height, cat.width)
    # Its own patches are in the bank: zero up to cdist's matrix-product rounding.
    assert float(scores[1]) > 20 * float(scores[0])
    assert int(maps[1].argmax()) // cat.width in range(14, 40)  # the peak is at the patch
