"""The calibration stage on the tiny bundle, and what evaluate does with its output."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.calibration import Calibration, threshold_spread
from models.data import load_category
from models.metrics import f1_max
from models.scoring import EITHER_MAPS, AnomalyScorer
from rpe_pad.cli import main
from training.calibrate import CalibConfig, pixel_floor, run_calibration_stage
from training.pipeline import _calibration_headline
from training.splats import default_device


@pytest.fixture()
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A copy of the tiny work folder where `rpe-pad train --out tmp_path` keeps it."""
    out = tmp_path / ".work" / tiny_bundle.name
    shutil.copytree(tiny_bundle, out)
    return out


@pytest.fixture()
def one_jpeg_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The JPEG ladder's first step only, for the tests about something else (the whole ladder is
    test_heldout_calibration_sets_the_stated_false_alarm_rate's)."""
    from training import calibrate

    monkeypatch.setattr(calibrate, "JPEG_LADDER", calibrate.JPEG_LADDER[:1])


@pytest.mark.slow(seconds=6)
def test_quantile_calibration_and_skip(bundle: Path, tiny_synth: Path) -> None:
    cat = load_category(tiny_synth)
    report = run_calibration_stage(cat, CalibConfig(), bundle, progress=False)
    calib = Calibration.model_validate_json((bundle / "calibration" / "calibration.json").read_text())
    jittered = np.array(report["scores"]["jittered"])
    assert len(jittered) == len(cat.train) == calib.sources["jittered"]
    assert calib.rule == "quantile" and calib.threshold_range is None  # no held-out views to resample
    assert calib.threshold == pytest.approx(np.quantile(jittered, 0.99) * 1.1)
    assert calib.threshold > jittered.max()  # the margin clears every normal view here
    assert calib.score_floor == pytest.approx(min(jittered.min(), min(report["scores"]["in_sample"])))
    # The map's floor: the median normal pixel, kept at most half the score's floor (both sides below).
    assert calib.pixel_floor == pytest.approx(pixel_floor(calib.normal_pixel_quantiles, calib.score_floor))
    assert calib.map_floor == calib.pixel_floor
    assert pixel_floor({"q0.5": 390.0}, 2000.0) == 390.0 and pixel_floor({"q0.5": 1500.0}, 2000.0) == 1000.0
    assert calib.scorer["tolerance"] == CalibConfig().tolerance
    assert report["device"] == str(default_device())  # where the models rendered: CUDA when present
    assert (bundle / "reports" / "calibration_hist.png").stat().st_size > 1000
    again = run_calibration_stage(cat, CalibConfig(), bundle, progress=False)
    assert again["skipped"] and again["threshold"] == report["threshold"]
    changed = run_calibration_stage(cat, CalibConfig(margin=0.2), bundle, progress=False)
    assert "skipped" not in changed and changed["threshold"] > report["threshold"]


@pytest.mark.slow(seconds=26)
def test_heldout_calibration_sets_the_stated_false_alarm_rate(bundle: Path, tiny_synth: Path) -> None:
    """Rule false_alarm: the splats stage's model before every 4th view was folded in; those
    views, jittered, are the normal scores, and the threshold rejects the stated share of them."""
    from tests.conftest import TINY_SPLATS
    from training.calibrate import split_holdout
    from training.splats import preset, run_splats_stage

    cat = load_category(tiny_synth)
    fitted, held = split_holdout(cat, 4)
    assert [v.name for v in held] == [cat.train[i].name for i in (2, 6)] and len(fitted.train) == 6
    assert not {v.name for v in held} & {v.name for v in fitted.train} and not fitted.test
    splats = preset("demo", **{**TINY_SPLATS, "iterations": 20})
    # The cpu preset's scorer, ``either`` with the CIELAB colour terms (rule false_alarm with the peers'
    # sum is test_calibration_folds_hold_every_view_out_once's).
    cfg = CalibConfig(holdout_every=4, jitters=3, false_alarm_rate=0.2, combination="either", colour="lab")
    with pytest.raises(ValueError, match="rerun the splats stage"):  # the work folder's fit held nothing out
        run_calibration_stage(cat, cfg, bundle, progress=False, splats=splats)
    run_splats_stage(cat, splats, bundle, progress=False, holdout_every=4)
    report = run_calibration_stage(cat, cfg, bundle, progress=False, splats=splats)
    calib = Calibration.model_validate_json((bundle / "calibration" / "calibration.json").read_text())
    held_scores = np.array(report["scores"]["heldout"])
    assert calib.rule == "false_alarm" and calib.false_alarm_rate == 0.2
    assert len(held_scores) == 2 * 3 == calib.sources["heldout"] and report["heldout_views"] == 2
    # The held-out scores stand for the shipped model's once scaled by the convergence ratio.
    scale = report["heldout_scale"]
    assert calib.heldout_scale == pytest.approx(scale, abs=1e-4) and 0 < scale < 10
    assert calib.threshold == pytest.approx(np.quantile(held_scores * calib.heldout_scale, 0.8))
    assert np.mean(held_scores * calib.heldout_scale > calib.threshold) == pytest.approx(0.2, abs=1 / 6)
    # The JPEG ladder: the held-out photos compressed at each quality, scored as above; the lowest
    # quality down to which none raises the false alarms past twice the rate is what the bundle takes.
    from training.calibrate import JPEG_LADDER
    rates = report["jpeg_false_alarm_rates"]
    assert list(rates) == [f"q{q} {c}" for q, c in JPEG_LADDER[:len(rates)]]
    assert calib.jpeg_photo_width == report["jpeg_photo_width"] == 64
    passed = [step for step in JPEG_LADDER[:len(rates)] if rates[f"q{step[0]} {step[1]}"] <= 2 * 0.2]
    assert [tuple(t) for t in calib.jpeg_taken] == passed == list(JPEG_LADDER[:len(passed)])  # stops at a failure
    # Two views are too few to resample: no range, rather than one that looks firm.
    assert calib.threshold_range is None and report["threshold_range"] is None
    assert "90 % range" not in _calibration_headline(report)
    # The quick rule's threshold is kept beside it for comparison; the calibration model is
    # the splats fit's snapshot at its fold-in step.
    assert report["quantile_rule_threshold"] > 0 and report["calibration_model"]["fold_in_step"] == 16
    again = run_calibration_stage(cat, cfg, bundle, progress=False, splats=splats)
    assert again["skipped"]
    # ``either``'s normal statistics are fitted on the same held-out views and travel in the calibration's
    # scorer config: each of the six terms' scale, the deciles of the references' edge strength with the
    # silhouette map's scale in each, and its maps' levels.
    stats = calib.scorer["stats"]
    assert calib.scorer["combination"] == "either" and calib.scorer["colour"] == "lab"
    assert len(stats["term_scales"]) == 6 and all(v > 0 for v in stats["term_scales"])
    assert len(stats["edge_bins"]) == 9 and stats["edge_bins"] == sorted(stats["edge_bins"])
    assert len(stats["edge_scales"]) == 10 and all(v > 0 for v in stats["edge_scales"])
    assert len(stats["levels"]) == len(EITHER_MAPS) and all(v > 0 for v in stats["levels"])
    assert stats["colours"] == 2  # the area map reads both CIELAB terms
    scorer = AnomalyScorer.from_config(calib.scorer)
    assert scorer.combination == "either" and scorer.colour == "lab"
    # Another stated rate: a new threshold from the same statistics' scores.
    stricter = run_calibration_stage(cat, replace(cfg, false_alarm_rate=0.05), bundle, progress=False, splats=splats)
    assert "skipped" not in stricter and stricter["threshold"] >= report["threshold"]
    assert stricter["scores"]["heldout"] == report["scores"]["heldout"]
    # The returned map's own blur (the cpu preset's since session 31): the same scores and threshold,
    # the map's levels at its blur, and the factor that puts its threshold onto the score's.
    sharp = run_calibration_stage(cat, replace(cfg, map_sigma=2.0), bundle, progress=False, splats=splats)
    assert sharp["scores"]["heldout"] == report["scores"]["heldout"] and sharp["threshold"] == report["threshold"]
    with_map = Calibration.model_validate_json((bundle / "calibration" / "calibration.json").read_text())
    stats = with_map.scorer["stats"]
    assert with_map.scorer["map_sigma"] == 2.0 and stats["levels"] == calib.scorer["stats"]["levels"]
    assert len(stats["map_levels"]) == len(EITHER_MAPS) and stats["map_levels"] != stats["levels"]
    assert stats["map_scale"] > 0 and calib.scorer["stats"]["map_scale"] == 1.0
    scorer = AnomalyScorer.from_config(with_map.scorer)
    assert scorer.map_sigma == 2.0
    # Through the pipeline's Render and Score stages: the scores are the score's blur's, and no
    # pixel of the returned map stands above its image's score.
    import torch

    from models.bundle import FILES
    from models.inspector import compare_at_poses
    from models.splat.scene import GaussianScene

    scene = GaussianScene.load(bundle / FILES["scene"], device="cpu")
    views = cat.train[:3]
    args = (torch.stack([v.image for v in views]), torch.stack([v.w2c for v in views]), torch.stack([v.K for v in views]))
    maps, scores = compare_at_poses(scene, scorer, *args)
    _, plain_scores = compare_at_poses(scene, scorer.with_stats(scorer.stats, map_sigma=None), *args)
    assert torch.allclose(scores, plain_scores) and (maps.flatten(1).amax(1) <= scores + 1e-5).all()
    for bad in ({"combination": "peers", "map_sigma": 2.0}, {"combination": "either", "map_sigma": float("inf")},
                {"combination": "either", "map_sigma": 0.0}):
        with pytest.raises(ValueError, match="map_sigma"):
            CalibConfig(holdout_every=4, **bad)
    with pytest.raises(ValueError, match="colour"):
        CalibConfig(holdout_every=4, colour="lab")  # the peers' plain sum has no scales for it
    # A calibration that holds out another share than the fit did is refused with the remedy.
    with pytest.raises(ValueError, match="rerun the splats stage"):
        run_calibration_stage(cat, CalibConfig(holdout_every=3, jitters=2), bundle, progress=False, splats=splats)
    with pytest.raises(ValueError, match="combination"):
        CalibConfig(combination="either")  # nothing to fit it on
    for retired in ("silhouette", "structure"):  # the presets' earlier combinations: scored, no longer fitted
        with pytest.raises(ValueError, match="combination must be one of \\['peers', 'either'\\]"):
            CalibConfig(holdout_every=4, combination=retired)
    with pytest.raises(ValueError, match="splats stage's settings"):
        run_calibration_stage(cat, CalibConfig(holdout_every=4, jitters=2), bundle, progress=False)
    with pytest.raises(ValueError, match="false_alarm_rate"):
        CalibConfig(holdout_every=4, false_alarm_rate=0.0)


@pytest.mark.slow(seconds=10)
def test_calibration_folds_hold_every_view_out_once(bundle: Path, tiny_synth: Path, one_jpeg_step: None) -> None:
    """Folds: each fold's views are held out of a calibration model of their own (the same fit,
    stopped at the fold-in), and the calibration scores every fold against its model. A fit that
    lacks folds keeps its models and gains only the missing ones."""
    from models.hashing import sha256_file
    from models.splat.scene import GaussianScene
    from tests.conftest import TINY_SPLATS
    from training.splats import fold_paths, preset, run_splats_stage

    cat = load_category(tiny_synth)
    splats = preset("demo", **{**TINY_SPLATS, "iterations": 20})
    cfg = CalibConfig(holdout_every=4, folds=2, jitters=2, false_alarm_rate=0.2)
    run_splats_stage(cat, splats, bundle, progress=False, holdout_every=4)
    with pytest.raises(ValueError, match="one view in 4, from view 0.*rerun the splats stage"):  # the second fold is not fitted
        run_calibration_stage(cat, cfg, bundle, progress=False, splats=splats)
    shipped = sha256_file(bundle / "splats" / "scene.safetensors")
    report = run_splats_stage(cat, splats, bundle, progress=False, holdout_every=4, folds=2)
    assert "skipped" not in report and list(report["calibration_folds"]) == ["0"]
    assert report["calibration_folds"]["0"]["num_gaussians"] > 0
    assert sha256_file(bundle / "splats" / "scene.safetensors") == shipped  # the shipped fit was kept
    path, key_path = fold_paths(bundle, 4, 0)
    assert key_path.parent == bundle / "calibration" / "folds" and GaussianScene.load(path).num_gaussians > 0
    key = json.loads(key_path.read_text())
    assert key["offset"] == 0 and key["views"] == [v.name for i, v in enumerate(cat.train) if i not in (0, 4)]
    assert not (key_path.parent / "fold0_work").exists()  # the fold's checkpoints go with its fit
    assert run_splats_stage(cat, splats, bundle, progress=False, holdout_every=4, folds=2)["skipped"]
    report = run_calibration_stage(cat, cfg, bundle, progress=False, splats=splats)
    calib = Calibration.model_validate_json((bundle / "calibration" / "calibration.json").read_text())
    held = np.array(report["scores"]["heldout"])
    assert report["heldout_views"] == 4 == calib.sources["heldout_views"] and len(held) == 4 * 2
    assert [f["offset"] for f in report["calibration_folds"]] == [2, 0]
    assert "(false_alarm, 4 held-out views)" in _calibration_headline(report)
    assert calib.threshold == pytest.approx(np.quantile(held * calib.heldout_scale, 0.8))
    # The views that set the threshold: each view's highest copy, scaled, with the fold that lacked it.
    copies = (held * calib.heldout_scale).reshape(4, 2)
    fold_of = {cat.train[i].name: offset for offset in (2, 0) for i in range(offset, len(cat.train), 4)}
    highest = report["highest_heldout_views"]
    assert [h["score"] for h in highest] == pytest.approx(sorted(copies.max(1), reverse=True), rel=1e-6)
    assert all(h["fold_offset"] == fold_of[h["view"]] for h in highest) and len({h["view"] for h in highest}) == 4
    assert sum(h["copies_over_threshold"] for h in highest) == int((held * calib.heldout_scale > calib.threshold).sum())
    assert (bundle / "reports" / "calibration_views.png").stat().st_size > 1000
    assert f"highest held-out view {highest[0]['view']} " in _calibration_headline(report)
    for h in highest:  # why each scores high: the residue at its peak, of the model that lacked it and the shipped one
        assert all(0 <= p < n for p, n in zip(h["peak_px"], cat.train[0].image.shape[:2]))
        r = h["residue"]
        assert r["calibration_model"] > 0 and r["shipped_share"] == pytest.approx(r["shipped_model"] / r["calibration_model"],
                                                                                  abs=2e-3)
    assert f"the shipped model leaves {100 * highest[0]['residue']['shipped_share']:.0f} % of its residue" in \
        _calibration_headline(report)
    # The first fold's views are scored against their own model, the second's against theirs.
    one = run_calibration_stage(cat, CalibConfig(holdout_every=4, jitters=2, false_alarm_rate=0.2), bundle,
                                progress=False, splats=splats)
    assert one["heldout_views"] == 2 and one["scores"]["heldout_own"] == report["scores"]["heldout_own"][:2]
    assert "highest_heldout_views" not in run_calibration_stage(cat, CalibConfig(), bundle, progress=False)
    assert not (bundle / "reports" / "calibration_views.png").exists()  # no held-out views: no sheet left over
    for bad in ({"holdout_every": 4, "folds": 5}, {"holdout_every": 4, "folds": 0}, {"folds": 2}):
        with pytest.raises(ValueError, match="folds"):
            CalibConfig(**bad)


def test_pose_jitter_raises_normal_scores(bundle: Path, tiny_synth: Path) -> None:
    cat = load_category(tiny_synth)
    big = run_calibration_stage(cat, CalibConfig(jitter_px=6.0), bundle, progress=False)
    assert np.median(big["scores"]["jittered"]) > np.median(big["scores"]["in_sample"])


def test_labelled_validation_gives_the_f1_rule(bundle: Path, tiny_synth: Path) -> None:
    cat = load_category(tiny_synth)
    report = run_calibration_stage(cat, CalibConfig(), bundle, validation=cat, progress=False)
    assert report["rule"] == "f1"
    calib = Calibration.model_validate_json((bundle / "calibration" / "calibration.json").read_text())
    val = np.array(report["scores"]["validation"])
    assert calib.sources["validation"] == len(cat.test) == len(val)
    labels = np.array(report["scores"]["validation_labels"])
    flagged = val > calib.threshold
    tp = np.sum(flagged & labels)
    assert 2 * tp / (flagged.sum() + labels.sum()) == pytest.approx(f1_max(labels, val))


def test_train_stage_then_evaluate_reports_the_decision(bundle: Path, tiny_synth: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # The splats stage is skipped (its output exists for the same config? no: the tiny
    # config differs from the demo preset), so run calibration only, then evaluate.
    assert main(["train", str(tiny_synth), "--out", str(bundle.parent.parent), "--preset", "demo",
                 "--stages", "calibration", "--quiet"]) == 0
    assert "| calibration |" in capsys.readouterr().out
    calib = Calibration.model_validate_json((bundle / "calibration" / "calibration.json").read_text())
    assert calib.sources["jittered"] == 8  # demo preset: at most 24 views, the category has 8
    report = tmp_path / "report"
    assert main(["lab", "evaluate", str(bundle), str(tiny_synth), "--pose", "oracle", "--out", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    d = metrics["decision"]
    assert d["threshold"] == round(calib.threshold, 4)
    assert d["tp"] + d["fp"] + d["fn"] + d["tn"] == metrics["n_queries"]
    assert "threshold (calibrated)" in (report / "metrics.md").read_text()


def test_calibration_needs_the_splats(tmp_path: Path, tiny_synth: Path) -> None:
    with pytest.raises(FileNotFoundError, match="splats stage first"):
        run_calibration_stage(load_category(tiny_synth), CalibConfig(), tmp_path / "none", progress=False)


def test_the_convergence_ratio_compares_two_models_on_the_same_views(tiny_bundle: Path, tiny_synth: Path) -> None:
    """Against itself a model's ratio is 1; a model whose render is degraded scores higher, and
    the shipped model's ratio over it falls below 1 (the scale that lowers its scores)."""
    from dataclasses import replace as dc_replace

    from models.scoring import AnomalyScorer
    from models.splat.scene import GaussianScene
    from training.calibrate import convergence_ratio

    views = load_category(tiny_synth).train[:4]
    scene = GaussianScene.load(tiny_bundle / "splats" / "scene.safetensors")
    scorer = AnomalyScorer(background=scene.background)
    assert convergence_ratio(scene, scene, views, scorer, batch=4, progress=False) == pytest.approx(1.0)
    blurred = dc_replace(scene, scales=scene.scales + 0.7)  # log-scales: every Gaussian twice as wide
    ratio = convergence_ratio(scene, blurred, views, scorer, batch=4, progress=False)
    assert 0 < ratio < 0.9


def test_heldout_calibration_states_its_range_and_a_validation_set_replaces_it(
        bundle: Path, tiny_synth: Path, monkeypatch: pytest.MonkeyPatch, one_jpeg_step: None) -> None:
    """With enough held-out views (here the minimum lowered to the tiny category's two), the
    threshold's range is the bootstrap over the views, each with its draws, stored in the
    calibration and its report; a labelled validation set (rule f1) drops it, and the stage
    still writes its report."""
    from models import calibration
    from tests.conftest import TINY_SPLATS
    from training import calibrate
    from training.splats import preset, run_splats_stage

    cat = load_category(tiny_synth)
    splats = preset("demo", **{**TINY_SPLATS, "iterations": 20})
    run_splats_stage(cat, splats, bundle, progress=False, holdout_every=4)
    monkeypatch.setattr(calibration, "SPREAD_MIN_VIEWS", 2)
    monkeypatch.setattr(calibrate, "SPREAD_MIN_VIEWS", 2)
    cfg = CalibConfig(holdout_every=4, jitters=3, false_alarm_rate=0.2)
    report = run_calibration_stage(cat, cfg, bundle, progress=False, splats=splats)
    calib = Calibration.model_validate_json((bundle / "calibration" / "calibration.json").read_text())
    spread = threshold_spread((np.array(report["scores"]["heldout"]) * calib.heldout_scale).reshape(2, 3), 0.2)
    assert calib.threshold_range == pytest.approx(spread[0]) and calib.false_alarm_range == pytest.approx(spread[1])
    assert report["threshold_range"] == pytest.approx(list(spread[0]), rel=1e-6, abs=1e-4)  # float32 scores
    assert "90 % range" in _calibration_headline(report)
    checked = run_calibration_stage(cat, cfg, bundle, validation=cat, progress=False, splats=splats)
    calib = Calibration.model_validate_json((bundle / "calibration" / "calibration.json").read_text())
    assert checked["rule"] == calib.rule == "f1" and calib.threshold_range is None and checked["threshold_range"] is None


def test_the_highest_held_out_views_are_named_with_their_fold() -> None:
    """Each view's copies are judged by its highest: a view with one high copy outranks one whose
    copies are all middling, and its copies over the threshold are counted."""
    from types import SimpleNamespace

    from training.calibrate import HeldOut, highest_heldout_views

    views = [SimpleNamespace(name=f"train/good/{i:03d}") for i in range(4)]
    models = [(None, views[:2]), (None, views[2:])]
    jittered = np.array([0.5, 0.6, 0.7, 0.7, 2.0, 0.1, 0.9, 1.1])  # two copies a view, the folds' order
    heldout = HeldOut(own=np.zeros(4), jittered=jittered, maps=np.zeros((8, 64, 64)), scorer=None, scale=0.5)
    highest = highest_heldout_views(models, [3, 1], heldout, threshold=0.5, n=3)
    assert [h["view"] for h in highest] == ["train/good/002", "train/good/003", "train/good/001"]
    assert [h["fold_offset"] for h in highest] == [1, 1, 3]
    assert [h["score"] for h in highest] == [1.0, 0.55, 0.35] and [h["copy"] for h in highest] == [4, 7, 2]
    assert [h["copies_over_threshold"] for h in highest] == [1, 1, 0] and highest[0]["copies"] == 2


def test_the_residue_at_a_views_peak_tells_the_model_that_lacked_it_from_the_shipped_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """At the peak of a view's highest copy's map (64 x 64, mapped onto the photograph), the
    blurred |photograph - render| of each model: a 0.4 blob the shipped model draws down to 0.1
    leaves it a share of 0.25; a view both models draw alike, a share of 1."""
    from types import SimpleNamespace

    import torch

    import training.calibrate as calibrate

    photo = torch.full((64, 96, 3), 0.5)
    views = [SimpleNamespace(name=f"train/good/{i:03d}", image=photo, w2c=torch.eye(4), K=torch.eye(3)) for i in range(2)]
    lacking, shipped = SimpleNamespace(tag="lacking"), SimpleNamespace(tag="shipped")

    def fake_render(scene, poses, Ks, width, height):
        assert (width, height) == (96, 64)
        out = photo.clone()
        out[16:48, 48:80] += 0.4 if scene is lacking else 0.1  # a 32 x 32 px blob around (32, 64)
        return out[None]

    monkeypatch.setattr(calibrate, "render_references", fake_render)
    maps = np.zeros((4, 64, 64))
    maps[1, 32, 42] = 1.0  # view 0's second copy peaks in the blob: (32.5 * 64 / 64, 42.5 * 96 / 64)
    maps[2, 5, 5] = 1.0  # view 1's first copy peaks outside it
    heldout = calibrate.HeldOut(own=np.zeros(2), jittered=np.zeros(4), maps=maps, scorer=None)
    rows = [{"view": "train/good/000", "copy": 1}, {"view": "train/good/001", "copy": 2}]
    out, renders = calibrate.peak_residues([(lacking, views)], shipped, heldout, rows)
    assert out[0]["peak_px"] == [32, 63] and out[1]["peak_px"] == [5, 8]
    assert out[0]["residue"] == {"calibration_model": pytest.approx(0.4), "shipped_model": pytest.approx(0.1),
                                 "shipped_share": pytest.approx(0.25)}
    assert out[1]["residue"] == {"calibration_model": 0.0, "shipped_model": 0.0, "shipped_share": None}
    assert [r.shape for r in renders] == [(2, 64, 96, 3)] * 2 and out[0]["copy"] == 1  # the row's own fields kept


def test_the_histogram_shows_the_scores_that_set_the_threshold() -> None:
    """Rule false_alarm: the held-out scores set the threshold, so the axis spans them (and the
    threshold's range); the in-sample and jittered scores, whose tails reach far, are outlines
    said not to set it, with those beyond the axis counted."""
    from training.calibrate import histogram

    rng = np.random.default_rng(0)
    heldout = rng.uniform(0.4, 1.0, 48)
    calib = Calibration(rule="false_alarm", threshold=1.02, false_alarm_rate=0.02, heldout_scale=0.95,
                        threshold_range=(0.94, 1.64), false_alarm_range=(0.0, 0.1), score_floor=0.3,
                        pixel_floor=0.1,
                        normal_scores=dict(n=48, min=0.4, median=0.7, p95=0.95, p99=0.99, max=1.0),
                        normal_pixel_quantiles={}, scorer={})
    raw = {"in_sample": [0.3, 0.5, 6.3], "jittered": [0.4, 0.9, 5.0, 2.5], "heldout": heldout.tolist(),
           "heldout_scale": 0.95}
    ax = histogram(calib, raw, "t").axes[0]
    low, high = ax.get_xlim()
    assert high == pytest.approx(1.64 * 1.3) and high < 5.0  # the held-out scale, not the far tails
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("1 beyond the axis" in t and "not what sets" in t for t in labels), labels  # 6.3 of the in-sample
    assert any("2 beyond the axis" in t for t in labels) and any("2% false alarms" in t for t in labels), labels
