"""The second look (``models.inspector.SecondLook``): where the pose check rejects a query's
reference, each of the pair head's candidates is refined alone, and the verified result with the
least misalignment replaces the first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.camera import roll_pose
from models.data import load_category
from models.inspector import Batch, Inspector, SecondLook
from models.pose import Matches
from models.verify import Verification, VerifyConfig

K = 3


def _marker(pose: torch.Tensor) -> int:
    return int(round(float(pose[0, 3])))


class FakeRefine:
    """Stands in for ``Refine``: keeps each trial's pose, draws its marker into the reference."""

    def __init__(self):
        self.trials: list[Batch] = []

    def __call__(self, trial: Batch) -> None:
        self.trials.append(trial)
        marks = [_marker(p) for p in trial.poses]
        trial.references = torch.stack([torch.full((4, 4, 3), m / 100.0) for m in marks])
        trial.refine = [{"pnp_accepted": True, "from": m} for m in marks]


class FakeCheck:
    """Stands in for ``Verify``: verifies the markers it is given, at the given misalignment."""

    def __init__(self, verified: dict[int, float]):
        self.verified = verified

    def __call__(self, trial: Batch) -> None:
        trial.verification = [
            Verification(verified=True, misalignment_px=self.verified[m], silhouette_iou=0.95, reason="")
            if (m := _marker(p)) in self.verified else
            Verification(verified=False, misalignment_px=9.0, silhouette_iou=0.5, reason=f"off ({m})")
            for p in trial.poses]


def _batch() -> Batch:
    """Two queries: the first verified, the second rejected; candidate j of query i carries the
    marker 10 i + j in its translation."""
    poses = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    candidates = torch.eye(4, dtype=torch.float64).repeat(2, K, 1, 1)
    for i in range(2):
        for j in range(K):
            candidates[i, j, 0, 3] = 10 * i + j
    b = Batch(images=torch.rand(2, 4, 4, 3), Ks=torch.eye(3, dtype=torch.float64).repeat(2, 1, 1), poses=poses,
              refine=[{"pnp_accepted": True}, {"pnp_accepted": True}])
    b.candidates = candidates
    b.matched = Matches(torch.arange(2.0)[:, None], torch.tensor([[5, 6, 7], [8, 9, 10]]),
                        torch.tensor([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]]))
    b.references = torch.zeros(2, 4, 4, 3)
    b.verification = [Verification(verified=True, misalignment_px=0.3, silhouette_iou=0.97, reason=""),
                      Verification(verified=False, misalignment_px=7.0, silhouette_iou=0.7, reason="the pose is off")]
    return b


def test_the_verified_candidate_with_the_least_misalignment_replaces_the_first() -> None:
    b, refine = _batch(), FakeRefine()
    SecondLook(refine)(b, FakeCheck({11: 2.0, 12: 0.5}))
    (trial,) = refine.trials
    # Only the rejected query is tried, once per candidate, each with its own gallery view first.
    assert [_marker(p) for p in trial.poses] == [10, 11, 12]
    assert trial.matched.gallery_ids.tolist() == [[8, 9, 10], [9, 8, 10], [10, 8, 9]]
    assert trial.matched.similarities[:, 0].tolist() == pytest.approx([0.6, 0.5, 0.4])
    assert _marker(b.poses[1]) == 12 and float(b.references[1, 0, 0, 0]) == pytest.approx(0.12)
    assert b.verification[1].verified and b.verification[1].misalignment_px == 0.5
    assert b.refine[1]["from"] == 12
    assert b.refine[1]["second_look"] == {"tried": K, "verified": 2, "candidate": 2, "first_reason": "the pose is off"}
    # The verified query is untouched.
    assert _marker(b.poses[0]) == 0 and "second_look" not in b.refine[0] and b.verification[0].misalignment_px == 0.3
    assert b.timings["second_look"] >= 0


def test_a_query_no_candidate_rescues_keeps_its_first_pose_and_reason() -> None:
    b, refine = _batch(), FakeRefine()
    SecondLook(refine)(b, FakeCheck({}))
    assert _marker(b.poses[1]) == 0 and float(b.references[1].abs().max()) == 0
    assert not b.verification[1].verified and b.verification[1].reason == "the pose is off"
    assert b.refine[1]["second_look"] == {"tried": K, "verified": 0, "candidate": None,
                                          "first_reason": "the pose is off"}


def test_nothing_is_tried_when_every_query_verified_or_one_candidate_was_all() -> None:
    b, refine = _batch(), FakeRefine()
    b.verification[1] = b.verification[0]
    SecondLook(refine)(b, FakeCheck({11: 0.1}))
    assert refine.trials == [] and all("second_look" not in r for r in b.refine) and "second_look" in b.timings
    b = _batch()  # k = 1: the fused pose is its one candidate, refined already
    b.candidates = b.candidates[:, :1]
    SecondLook(refine)(b, FakeCheck({10: 0.1}))
    assert refine.trials == [] and not b.verification[1].verified and "second_look" not in b.refine[1]


def test_a_fused_pose_dragged_off_by_its_candidates_is_rescued(tiny_release: Path, tiny_synth: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real pipeline: the fusion returns a pose far off, one candidate is the true
    pose; the query comes back verified at (near) the true pose, the record naming that candidate."""
    inspector = Inspector.load(tiny_release)
    # The tiny model renders at 64 px: the same allowance as test_a_wrong_pose_is_sent_to_review.
    monkeypatch.setattr(inspector.verify_stage, "cfg", VerifyConfig(max_misalignment_px=6.0))
    good = next(q for q in load_category(tiny_synth).test if q.label == "good")
    true = good.w2c[None].double()
    plain = inspector.estimator.relative

    def dragged(matches):
        _, cands = plain(matches)
        cands = cands.clone()
        cands[:, 0], cands[:, 1], cands[:, 2] = roll_pose(true, 120.0), true, roll_pose(true, -120.0)
        return roll_pose(true, 180.0), cands

    monkeypatch.setattr(inspector.estimator, "relative", dragged)
    r = inspector.inspect(good.image[None])[0]
    look = r.refine["second_look"]
    assert look["candidate"] == 1 and look["verified"] >= 1 and "pose" in look["first_reason"]
    assert r.verification.verified and r.verdict in ("normal", "anomalous")
    assert torch.allclose(torch.from_numpy(r.pose_matrix[:3, :3]), true[0, :3, :3], atol=0.05)
    # Without the second look the same query would have gone to review.
    monkeypatch.setattr(inspector.locate, "second_look", None)
    assert inspector.inspect(good.image[None])[0].verdict == "review"
