"""`rpe-pad lab sensitivity`: the imposed misalignment is exact and the table is complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rpe_pad.cli import main
from lab.sensitivity import misalign


def test_shift_moves_content_right_by_whole_pixels() -> None:
    img = torch.zeros(1, 16, 16, 3)
    img[0, 5, 6] = 1.0
    moved = misalign(img, shift_px=3)
    assert moved[0, 5, 9].tolist() == [1.0, 1.0, 1.0]
    assert moved.sum() == pytest.approx(3.0)


def test_rotation_about_the_centre() -> None:
    img = torch.zeros(1, 17, 17, 3)
    img[0, 8, 14] = 1.0  # right of the centre (8, 8)
    moved = misalign(img, rotation_deg=90)
    peak = divmod(int(moved[0, ..., 0].argmax()), 17)
    assert peak == (2, 8)  # counter-clockwise on screen: now above the centre
    assert torch.equal(misalign(img), img)


def test_sensitivity_cli(tiny_bundle: Path, tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sens"
    assert main(["lab", "sensitivity", str(tiny_bundle), str(tiny_synth), "--shifts", "0", "4", "--rotations", "2",
                 "--tolerances", "0", "1", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "sensitivity.json").read_text())
    assert len(result["rows"]) == 2 * 3
    assert {(r["tolerance"], r["kind"], r["amount"]) for r in result["rows"]} == {
        (t, k, a) for t in (0, 1) for k, a in (("shift_px", 0), ("shift_px", 4), ("rotation_deg", 2))}
    for r in result["rows"]:
        assert 0.0 <= r["image_auroc"] <= 1.0 and 0.0 <= r["pixel_auroc"] <= 1.0
    aligned = next(r for r in result["rows"] if r["tolerance"] == 0 and r["amount"] == 0 and r["kind"] == "shift_px")
    shifted = next(r for r in result["rows"] if r["tolerance"] == 0 and r["amount"] == 4 and r["kind"] == "shift_px")
    # 4 px at 64 px is a large misalignment: normal views must score higher.
    assert shifted["good_score_median"] > 1.2 * aligned["good_score_median"]
    assert "| 4 px shift |" in capsys.readouterr().out


def test_sensitivity_reads_a_bundle(tiny_release: Path, tiny_synth: Path) -> None:
    """A bundle has no splats/config.json: the image size comes from its manifest."""
    from lab.sensitivity import sensitivity

    result = sensitivity(tiny_release, tiny_synth, shifts=[0], rotations=[], tolerances=[1], progress=False)
    assert result["image_size"] == [64, 64]
