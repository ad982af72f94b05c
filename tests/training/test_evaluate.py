"""Evaluation of a bundle in its own pose mode: the report, the operating point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.metrics import auroc, f1_max
from training.evaluate import decision_metrics, detection_metrics, evaluate, pose_report


def test_bundle_report(tiny_release: Path, tiny_synth: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    metrics = evaluate(tiny_release, tiny_synth, out_dir=report)
    assert json.loads((report / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["pose_mode"] == "rpe+refine" and metrics["n_queries"] == 8 and metrics["bundle"] == "verified bundle"
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= metrics[key] <= 1.0
    d = metrics["decision"]
    assert d["tp"] + d["fn"] == 6 and d["fp"] + d["tn"] == 2  # 6 defective, 2 good views in the tiny category
    # The figures are the queries' own scores, read the right way round (defective = 1, high = anomalous).
    rows = metrics["per_query"]
    labels, scores = np.array([r["label"] != "good" for r in rows]), np.array([r["score"] for r in rows])
    assert metrics["image_auroc"] == pytest.approx(auroc(labels, scores), abs=1e-3)
    assert metrics["f1_max"] == pytest.approx(f1_max(labels, scores), abs=1e-3)
    assert d == decision_metrics(labels, scores, d["threshold"])
    for defect, value in metrics["image_auroc_per_defect"].items():
        sel = np.array([r["label"] in ("good", defect) for r in rows])
        assert value == pytest.approx(auroc(labels[sel], scores[sel]), abs=1e-3)
    assert set(metrics["refine"]) >= {"pnp_accepted_fraction", "ecc_accepted_fraction", "pnp_paths"}
    assert "pose_reproj_err_px_median" in metrics  # the synthetic category has true query poses
    text = (report / "metrics.md").read_text()
    assert "| image_auroc |" in text and "good parts rejected" in text
    good, bad = (metrics["verification"]["verdicts"][k] for k in ("good", "defective"))
    assert sum(good.values()) == 2 and sum(bad.values()) == 6
    assert (f"| verdicts, defects: anomalous / review / normal | {bad.get('anomalous', 0)} / {bad.get('review', 0)} / "
            f"{bad.get('normal', 0)} |") in text
    assert (f"| verdicts, good parts: normal / review / anomalous | {good.get('normal', 0)} / {good.get('review', 0)} / "
            f"{good.get('anomalous', 0)} |") in text
    assert (report / "overlays.png").stat().st_size > 1000


def test_decision_metrics_count_the_operating_point() -> None:
    labels = np.array([True, True, True, False, False])
    d = decision_metrics(labels, np.array([5.0, 1.0, 3.0, 4.0, 0.5]), threshold=2.0)
    assert (d["tp"], d["fn"], d["fp"], d["tn"]) == (2, 1, 1, 1)
    assert d["recall"] == round(2 / 3, 4) and d["false_positive_rate"] == 0.5 and d["precision"] == round(2 / 3, 4)


class _Query:
    def __init__(self, label: str, mask: torch.Tensor):
        self.label, self.mask = label, mask


class _Category:
    name, defect_types, test = "toy", ["Burrs"], [None] * 4


def test_detection_metrics_read_maps_and_scores_the_right_way_round() -> None:
    """Maps bright on the defect score 1 on every figure; the same maps upside down score 0
    (a sign or a label flipped anywhere in the wiring fails here)."""
    masks = torch.zeros(4, 32, 32)
    masks[2, 4:12, 4:12] = 1
    masks[3, 20:30, 10:14] = 1
    queries = [_Query("good", masks[0]), _Query("good", masks[1]), _Query("Burrs", masks[2]), _Query("Burrs", masks[3])]
    maps = masks * 5 + 0.1 * torch.rand(4, 32, 32)
    scores = maps.flatten(1).amax(1).numpy()
    right = detection_metrics(_Category(), queries, maps, scores, eval_size=32)
    assert right["image_auroc"] == right["pixel_auroc"] == right["aupro"] == right["f1_max"] == 1.0
    assert right["image_auroc_per_defect"] == {"Burrs": 1.0}
    wrong = detection_metrics(_Category(), queries, -maps, -scores, eval_size=32)
    assert wrong["image_auroc"] == 0.0 and wrong["pixel_auroc"] < 0.01 and wrong["aupro"] < 0.01


def test_pose_report_measures_the_estimate_against_the_truth(tiny_release: Path) -> None:
    from models.bundle import FILES
    from models.camera import roll_pose
    from models.splat.scene import GaussianScene

    scene = GaussianScene.load(tiny_release / FILES["scene"], device="cpu")
    true = torch.eye(4, dtype=torch.float64)[None].repeat(2, 1, 1)
    true[:, 2, 3] = 3.0  # the object 3 units in front of the camera
    K = torch.tensor([[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]], dtype=torch.float64)[None].repeat(2, 1, 1)
    same = pose_report(true.clone(), true, K, 64, 64, scene, eval_size=224)
    assert same["pose_reproj_err_px_median"] == 0.0 and same["pose_rot_err_deg_median"] == 0.0
    turned = torch.stack([roll_pose(p, 10.0) for p in true])  # the camera rolled 10 degrees about its axis
    off = pose_report(turned, true, K, 64, 64, scene, eval_size=224)
    assert off["pose_rot_err_deg_median"] == pytest.approx(10.0, abs=0.01)
    assert off["pose_reproj_err_px_median"] > 1.0 and off["per_query_reproj_px"][0] == off["per_query_reproj_px"][1]
