"""`rpe-pad lab scorer-study`: variants chosen on held-out painted defects, reported on the test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.scorer_study import VARIANTS
from rpe_pad.cli import main


def test_scorer_study_cli(tiny_heldout_bundles: Path, tiny_synth: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    assert main(["lab", "scorer-study", str(tiny_synth), "--bundles", str(tiny_heldout_bundles), "--test", "--out",
                 str(out), "--quiet"]) == 0
    report = json.loads((out / "scorer_study.json").read_text())
    assert set(report["selection"]) == set(report["test"]) == set(VARIANTS) and report["chosen"] in VARIANTS
    best = report["selection"][report["chosen"]]
    assert all((s["recall"], s["image_auroc"]) <= (best["recall"], best["image_auroc"]) for s in report["selection"].values())
    t = report["test"]["peers"]
    assert t["of"] == report["test_queries"]["defective"] and t["good"] == report["test_queries"]["good"]
    assert "| `peers` |" in capsys.readouterr().out


def test_chroma_term_ignores_shading_and_sees_a_tint() -> None:
    """``tint``'s term: a grey change of brightness leaves it at zero, a tinted film does not."""
    import torch

    from lab.scorer_study import chroma_term

    ramp = torch.linspace(0.2, 0.9, 16)
    reference = torch.stack([ramp[None, :].expand(16, 16), ramp[:, None].expand(16, 16), torch.full((16, 16), 0.7)])
    reference = reference[None].repeat(2, 1, 1, 1)  # smooth: no neighbour shares the film's ratios
    shaded = (reference + 0.05) * 0.6 - 0.05  # the same chromaticity, darker: exactly no change of ratios
    assert chroma_term(shaded, reference, tolerance=0).abs().max() < 1e-5
    film = reference.clone()
    film[:, 2, 4:12, 4:12] *= 0.6  # a yellow film absorbs 40 % of the blue
    changed = chroma_term(film, reference, tolerance=1)
    assert changed[:, 5:11, 5:11].min() > 0.05 and changed[:, :2, :2].max() < 1e-6
