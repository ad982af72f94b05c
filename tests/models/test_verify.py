"""The pose check (models.verify) on a real Lego photograph and its shifted copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.images import load_rgb
from models.results import VERDICTS, verdict_of
from models.verify import Verification, VerifyConfig, verify

WHITE = (1.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def photo(lego_dir: Path) -> torch.Tensor:
    """A Lego training photograph at 224 x 224 (the check's own size), [1, 224, 224, 3]."""
    image = torch.from_numpy(load_rgb(min((lego_dir / "train" / "good").glob("*.png")))).float()
    return torch.nn.functional.interpolate(image.permute(2, 0, 1)[None], size=(224, 224), mode="bilinear",
                                           antialias=True, align_corners=False).permute(0, 2, 3, 1).clamp(0, 1)


def shifted(image: torch.Tensor, dx: int) -> torch.Tensor:
    """``image`` moved ``dx`` pixels right, white coming in on the left."""
    out = torch.ones_like(image)
    out[:, :, dx:] = image[:, :, : image.shape[2] - dx]
    return out


def test_aligned_references_verify_and_misaligned_ones_do_not(photo: torch.Tensor) -> None:
    shifts = [0, 1, 2, 4, 6, 12]
    refs = torch.cat([photo if s == 0 else shifted(photo, s) for s in shifts])
    results = verify(photo.expand_as(refs), refs, WHITE)
    measured = [r.misalignment_px for r in results]
    # The median flow over the object recovers the shift to a fraction of a pixel.
    assert measured == pytest.approx(shifts, abs=0.35)
    assert [r.verified for r in results] == [True, True, True, False, False, False]
    assert all("px from the query" in r.reason for r in results[3:]) and results[0].reason == ""
    assert results[0].silhouette_iou == 1.0 and results[-1].silhouette_iou < results[1].silhouette_iou


def test_a_local_defect_does_not_fail_the_check(photo: torch.Tensor) -> None:
    """A painted stain changes the flow only inside itself: the median over the object holds."""
    stained = photo.clone()
    ys, xs = torch.nonzero((photo[0] - 1).abs().amax(-1) > 0.05, as_tuple=True)
    cy, cx = int(ys.float().mean()), int(xs.float().mean())
    stained[0, cy - 8 : cy + 8, cx - 8 : cx + 8] = torch.tensor([0.1, 0.5, 0.9])
    (result,) = verify(stained, photo, WHITE)
    assert result.verified and result.misalignment_px < 1.0 and result.silhouette_iou > 0.95


def test_gross_failures_and_empty_queries_go_to_review(photo: torch.Tensor) -> None:
    flipped = photo.flip(1).flip(2)  # the object seen upside down: no pose error a flow could explain
    blank = torch.ones_like(photo)
    wrong, empty = verify(torch.cat([photo, blank]), torch.cat([flipped, photo]), WHITE)
    assert not wrong.verified and wrong.reason
    assert not empty.verified and empty.misalignment_px is None and "no object" in empty.reason
    assert Verification.model_validate_json(empty.model_dump_json()) == empty  # serialisable as is


def test_bounds_come_from_the_config(photo: torch.Tensor) -> None:
    ref = shifted(photo, 4)
    assert not verify(photo, ref, WHITE)[0].verified
    assert verify(photo, ref, WHITE, VerifyConfig(max_misalignment_px=6.0))[0].verified
    # The silhouettes' overlap is a check of its own: a 2 px shift passes the flow's bound, and
    # fails an overlap bound set above its overlap, saying so.
    near = shifted(photo, 2)
    (kept,) = verify(photo, near, WHITE)
    assert kept.verified and kept.silhouette_iou < 0.99
    (strict,) = verify(photo, near, WHITE, VerifyConfig(min_silhouette_iou=0.99))
    assert not strict.verified and strict.reason.startswith("the silhouettes overlap by")
    with pytest.raises(ValueError):
        VerifyConfig(max_misalignment_px=0)
    with pytest.raises(ValueError):
        VerifyConfig(min_silhouette_iou=1.5)
    # JSON's true reads as 1 in Python: a hand-edited manifest sent every query to review with it.
    for bad in ({"max_misalignment_px": float("inf")}, {"min_silhouette_iou": float("nan")}, {"size": 224.5},
                {"foreground_tol": 0.0}, {"min_silhouette_iou": True}, {"size": True}, {"max_misalignment_px": "2"}):
        name = next(iter(bad))  # an infinite bound verified every pose (a bundle's setting): each is named
        with pytest.raises(ValueError, match=rf"verify\.{name} must be"):
            VerifyConfig(**bad)
    with pytest.raises(ValueError, match="must both be"):
        verify(photo, photo[:, :100], WHITE)


def test_a_reference_that_needed_a_large_2d_warp_goes_to_review(photo: torch.Tensor) -> None:
    """The refinement's ECC warp can make a reference fit whose pose is far off; the warp it
    needed is held to the misalignment bound, and the Inspector's stage reads it from the
    refinement's record, converted from the ECC's size to the check's."""
    fitted, small = verify(torch.cat([photo, photo]), torch.cat([photo, photo]), WHITE, warps=[8.4, 0.6])
    assert not fitted.verified and "8.4 px 2D warp" in fitted.reason and fitted.misalignment_px < 0.35
    assert small.verified and small.reason == ""
    assert verify(photo, photo, WHITE, VerifyConfig(max_misalignment_px=10.0), warps=[8.4])[0].verified
    with pytest.raises(ValueError, match="warps"):
        verify(photo, photo, WHITE, warps=[1.0, 2.0])
    from models.inspector import Batch, Verify

    batch = Batch(images=torch.cat([photo] * 3), Ks=torch.eye(3).expand(3, 3, 3), references=torch.cat([photo] * 3),
                  refine=[{"ecc_accepted": True, "ecc_shift_px": 4.0}, {"ecc_accepted": False, "ecc_shift_px": 9.0},
                          {}])
    Verify(WHITE, VerifyConfig(), ecc_size=112)(batch)  # 4 px at 112 is 8 px at the check's 224
    assert [v.verified for v in batch.verification] == [False, True, True]
    assert "8.0 px 2D warp" in batch.verification[0].reason


def test_a_pose_the_refinement_did_not_correct_goes_to_review(photo: torch.Tensor) -> None:
    """With no accepted correction the pose is IRPRN's one-shot estimate, which a 2D warp can
    make fit in part (seed 5's good/000, 7.1 px off, passed every image measure): the Verify
    stage reads it from the refinement's record, and modes without a refinement are unaffected."""
    kept, fixed = verify(torch.cat([photo, photo]), torch.cat([photo, photo]), WHITE, unrefined=[True, False])
    assert not kept.verified and "confirmed no correction" in kept.reason and kept.misalignment_px < 0.35
    assert fixed.verified and fixed.reason == ""
    with pytest.raises(ValueError, match="unrefined"):
        verify(photo, photo, WHITE, unrefined=[True, False])
    from models.inspector import Batch, Verify

    refined = [{"pnp_accepted": False, "ecc_accepted": True, "ecc_shift_px": 0.5},
               {"pnp_accepted": True, "ecc_accepted": True, "ecc_shift_px": 0.5}]
    for records, expected in ((refined, [False, True]), ([{}, {}], [True, True])):  # rpe+refine, then a lab mode
        batch = Batch(images=torch.cat([photo] * 2), Ks=torch.eye(3).expand(2, 3, 3), references=torch.cat([photo] * 2),
                      refine=records)
        Verify(WHITE, VerifyConfig(), ecc_size=224)(batch)
        assert [v.verified for v in batch.verification] == expected


def test_verdict_rule() -> None:
    ok = Verification(verified=True, misalignment_px=0.2, silhouette_iou=0.99, reason="")
    off = Verification(verified=False, misalignment_px=9.0, silhouette_iou=0.7, reason="off")
    assert [verdict_of(2.0, 1.0, ok), verdict_of(0.5, 1.0, ok), verdict_of(2.0, 1.0, off)] == ["anomalous", "normal", "review"]
    assert set(VERDICTS) == {"normal", "anomalous", "review"}
