"""Gallery retrieval and its file: top-k by cosine, restrictions, validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.gallery import NOVEL, TRAIN, Gallery, GalleryError
from models.irprn import descriptor


def _gallery(g: int = 12, d: int = 16) -> Gallery:
    gen = torch.Generator().manual_seed(0)
    return Gallery(poses=torch.eye(4, dtype=torch.float64).repeat(g, 1, 1),
                   source=torch.tensor([TRAIN] * (g // 2) + [NOVEL] * (g - g // 2), dtype=torch.int8),
                   descriptors=F.normalize(torch.randn(g, d, generator=gen), dim=1),
                   features=torch.randn(g, 4, 2, 2, generator=gen), names=[f"v{i}" for i in range(g)])


def test_top_k_matches_brute_force() -> None:
    g = _gallery()
    queries = F.normalize(torch.randn(5, 16), dim=1)
    sims, ids = g.top_k(queries, 3)
    brute = queries @ g.descriptors.T
    for b in range(5):
        order = brute[b].argsort(descending=True)[:3]
        assert ids[b].tolist() == order.tolist()
        assert torch.allclose(sims[b], brute[b, order])
    # A gallery view is its own best match.
    _, own = g.top_k(g.descriptors, 1)
    assert own[:, 0].tolist() == list(range(len(g)))


def test_grid_is_read_off_the_shapes(tmp_path: Path) -> None:
    feats = torch.randn(3, 5, 14, 14)
    for grid in (1, 4, 7):
        g = Gallery(torch.eye(4, dtype=torch.float64).repeat(3, 1, 1), torch.zeros(3, dtype=torch.int8),
                    descriptor(feats, grid), feats, ["a", "b", "c"])
        assert g.grid == grid
    assert _gallery().grid == 2  # 16 numbers of 4-channel features
    odd = _gallery(d=12)  # 12 = 4 x 3: no square pooling of 4 channels gives it
    with pytest.raises(GalleryError, match="square pooling"):
        _ = odd.grid
    odd.save(tmp_path / "odd.safetensors")
    with pytest.raises(GalleryError, match="odd.safetensors.*square pooling"):
        Gallery.load(tmp_path / "odd.safetensors")


def test_top_k_restricted_to_allowed_views() -> None:
    g = _gallery()
    _, ids = g.top_k(g.descriptors, 2, allowed=g.source == TRAIN)
    assert (g.source[ids] == TRAIN).all()
    _, ids = g.top_k(g.descriptors[:1], 50)
    assert ids.shape == (1, 12)


def test_save_load_round_trip_and_validation(tmp_path: Path) -> None:
    g = _gallery()
    g.save(tmp_path / "g.safetensors")
    back = Gallery.load(tmp_path / "g.safetensors")
    assert torch.equal(back.descriptors, g.descriptors) and back.names == g.names
    assert back.poses.dtype == torch.float64
    bad = _gallery()
    bad.descriptors = bad.descriptors * 2
    bad.save(tmp_path / "bad.safetensors")
    with pytest.raises(GalleryError, match="unit vectors"):
        Gallery.load(tmp_path / "bad.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(GalleryError, match="not a readable gallery"):
        Gallery.load(tmp_path / "junk.safetensors")
    short = _gallery()
    short.names = short.names[:-1]
    with pytest.raises(GalleryError, match="inconsistent"):
        short.validate()


def test_views_and_depths_round_trip(tmp_path: Path) -> None:
    g = _gallery(4)
    g.images = torch.randint(0, 255, (4, 8, 8, 3), dtype=torch.uint8)
    g.depths = torch.rand(4, 8, 8).half()
    g.K = torch.eye(3, dtype=torch.float64)
    g.save(tmp_path / "g.safetensors")
    back = Gallery.load(tmp_path / "g.safetensors")
    assert torch.equal(back.images, g.images) and torch.equal(back.depths, g.depths) and torch.equal(back.K, g.K)
    g.depths = None
    with pytest.raises(GalleryError, match="views and depths"):
        g.validate()


def _with_views(g: int = 4) -> Gallery:
    gallery = _gallery(g)
    gallery.images = torch.randint(0, 255, (g, 8, 8, 3), dtype=torch.uint8)
    gallery.depths = torch.rand(g, 8, 8).half()
    gallery.K = torch.tensor([[10.0, 0, 4], [0, 10.0, 4], [0, 0, 1]], dtype=torch.float64)
    return gallery


@pytest.mark.parametrize("damage, problem", [
    (lambda g: setattr(g, "names", list(range(len(g)))), "names must be a list of strings"),
    (lambda g: g.source.fill_(7), "source must be 0 (training view) or 1 (novel view)"),
    (lambda g: g.poses.zero_(), "poses must be rigid"),
    (lambda g: g.poses[:, :3, :3].mul_(1000.0), "poses must be rigid"),
    (lambda g: g.poses[:, :3, 0].neg_(), "poses must be rigid"),  # a reflection, det -1
    (lambda g: g.poses[:, 3, 0].fill_(0.5), "poses must be rigid"),
    (lambda g: g.K.fill_(float("nan")), "K must be a finite 3 x 3 matrix with focal lengths > 0"),
    (lambda g: g.K.zero_(), "K must be a finite 3 x 3 matrix with focal lengths > 0"),
    (lambda g: g.depths.fill_(float("nan")), "depths must be finite and >= 0"),
    (lambda g: g.depths.fill_(-5.0), "depths must be finite and >= 0"),
    (lambda g: setattr(g, "images", g.images.float() * 1000), "images must be uint8"),
])
def test_a_gallery_that_would_mislead_the_pipeline_is_refused(damage, problem: str) -> None:
    """A gallery file comes from outside (a bundle): each of these loaded and then gave wrong
    poses, NaN references or an error at inspection."""
    gallery = _with_views()
    gallery.validate()
    damage(gallery)
    with pytest.raises(GalleryError, match=re.escape(problem)):
        gallery.validate()


def test_top_k_never_returns_an_excluded_view() -> None:
    g = _gallery()  # 6 training views of 12
    sims, ids = g.top_k(g.descriptors[:2], 50, allowed=g.source == TRAIN)
    assert ids.shape == (2, 6) and (g.source[ids] == TRAIN).all() and torch.isfinite(sims).all()
