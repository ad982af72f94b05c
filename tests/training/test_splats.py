"""The splats stage: visual-hull initialisation, densification strategy, fitting, resume, report."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

from models import camera
from models.data import load_category
from models.splat.scene import GaussianScene, render
from training.splats import (
    ResettingStrategy,
    SplatConfig,
    config_record,
    evaluate_views,
    fit_splats,
    fold_in_step,
    fold_offsets,
    holdout_indices,
    init_params,
    init_points,
    preset,
    run_splats_stage,
    silhouettes,
    view_at,
)

TINY = dict(iterations=120, init_points=3000, refine_start=40, refine_stop=100, refine_every=20,
            reset_every=10_000, checkpoint_every=0, sh_degree=0)


def test_visual_hull_points_project_inside_the_silhouettes(lego_dir: Path) -> None:
    cat = load_category(lego_dir, load_test=False)
    images = cat.train_images()
    Ks = torch.stack([v.K for v in cat.train])
    cfg = preset("demo", init_points=2000, init_candidates=100_000)
    means, colours, method = init_points(cat, images, Ks, cfg)
    assert method == "hull" and means.shape == (2000, 3) and colours.shape == (2000, 3)
    assert colours.min() >= 0 and colours.max() <= 1
    masks = silhouettes(images, cat.background)
    uv, depth = camera.project_points(means.double()[None].expand(len(images), -1, -1), cat.train_poses(), Ks)
    u, v = uv[..., 0].long().clamp(0, 99), uv[..., 1].long().clamp(0, 99)
    inside = masks[torch.arange(len(images))[:, None], v, u]
    assert inside.float().mean() > 0.95
    # Random points in the same volume mostly miss the object: the hull is informative.
    rnd = (torch.rand(2000, 3, dtype=torch.float64) * 2 - 1) * 1.45
    uv, _ = camera.project_points(rnd[None].expand(len(images), -1, -1), cat.train_poses(), Ks)
    u, v = uv[..., 0].long().clamp(0, 99), uv[..., 1].long().clamp(0, 99)
    assert masks[torch.arange(len(images))[:, None], v, u].float().mean() < 0.6


def test_opacity_reset_fires(tiny_synth: Path) -> None:
    """gsplat 1.5.3's own condition never fires; ours resets at reset_every."""
    cat = load_category(tiny_synth, load_test=False)
    params = {k: torch.nn.Parameter(v) for k, v in init_params(torch.randn(200, 3) * 0.3, torch.rand(200, 3), 0).items()}
    with torch.no_grad():
        params["opacities"].fill_(3.0)
    opts = {k: torch.optim.Adam([params[k]], lr=1e-3) for k in params}
    strategy = ResettingStrategy(reset_every=5, refine_start_iter=1000, refine_stop_iter=2000)
    state = strategy.initialize_state(scene_scale=1.0)
    v = cat.train[0]
    for step in (4, 5):
        out = render(params, v.w2c[None].float(), v.K[None].float(), cat.width, cat.height)
        strategy.step_pre_backward(params, opts, state, step, out.meta)
        out.colors.sum().backward()
        strategy.step_post_backward(params, opts, state, step, out.meta)
        if step == 4:  # not yet: untouched
            assert params["opacities"].min().item() == params["opacities"].max().item() == 3.0
        else:  # at reset_every: every opacity down to twice the pruning threshold
            assert params["opacities"].max().item() <= torch.logit(torch.tensor(0.01)).item() + 1e-6


@pytest.mark.slow(seconds=10)
def test_fit_improves_and_resumes(tiny_bundle: Path, tiny_synth: Path, tmp_path: Path) -> None:
    """The session's splats stage (``tiny_bundle``, 150 steps from the visual hull) is the fit
    measured; the resumes are checked on short fits of their own."""
    cat = load_category(tiny_synth)
    cfg = preset("demo", **TINY)
    images, poses = cat.train_images(), cat.train_poses()
    Ks = torch.stack([v.K for v in cat.train])
    init_scene = GaussianScene.from_params(init_params(*init_points(cat, images, Ks, cfg)[:2], 0))
    before = sum(evaluate_views(init_scene, images, poses, Ks)["psnr"]) / len(images)
    fitted = GaussianScene.load(tiny_bundle / "splats" / "scene.safetensors")
    after = sum(evaluate_views(fitted, images, poses, Ks)["psnr"]) / len(images)
    assert after > before + 3.0, (before, after)
    saved = json.loads((tiny_bundle / "reports" / "splats.json").read_text())
    assert saved["init"] == "hull" and saved["resumed_from_step"] == 0 and saved["iterations"] == 150

    # Checkpoint at step 9 of 12 (after two densification steps), then a second call resumes
    # from it; another config restarts.
    ck_cfg = replace(cfg, iterations=12, checkpoint_every=9, refine_start=3, refine_every=3)
    fit_splats(cat, ck_cfg, tmp_path / "b", progress=False)
    assert (tmp_path / "b" / "checkpoint.safetensors").is_file()
    resumed = fit_splats(cat, ck_cfg, tmp_path / "b", progress=False)
    assert resumed.report["resumed_from_step"] == 9
    # A fit that withholds views follows another schedule: it does not resume the plain one's
    # checkpoint, and the plain one then does not resume its checkpoint either.
    snap = tmp_path / "snap.safetensors"
    withheld = fit_splats(cat, ck_cfg, tmp_path / "b", progress=False, withheld=[1, 5], snapshot=snap)
    assert withheld.report["resumed_from_step"] == 0 and snap.is_file()
    assert fit_splats(cat, ck_cfg, tmp_path / "b", progress=False, withheld=[1, 5], snapshot=snap).report["resumed_from_step"] == 9
    assert fit_splats(cat, ck_cfg, tmp_path / "b", progress=False).report["resumed_from_step"] == 0
    other = fit_splats(cat, replace(ck_cfg, seed=1), tmp_path / "b", progress=False)
    assert other.report["resumed_from_step"] == 0


def test_records_keep_the_retired_rasterize_mode() -> None:
    """Work folders recorded ``rasterize_mode: classic`` until session 46 retired it; the records
    (checkpoints, the stage's config, calibration keys) keep it, so those folders are still reused
    instead of refitted, and a self-check still finds their calibration models."""
    cfg = preset("cpu")
    before = json.loads(json.dumps({**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, "rasterize_mode": "classic"}))
    assert json.loads(json.dumps(config_record(cfg))) == before
    assert not hasattr(cfg, "rasterize_mode")


def test_withheld_views_wait_for_the_fold_in() -> None:
    """Before the fold-in step the withheld views are never fitted; after it, every view is,
    once per pass; without withheld views the schedule is one permutation per pass."""
    withheld, fold = [1, 5], 40
    before = [view_at(s, 8, withheld, fold, seed=0) for s in range(fold)]
    assert not set(before) & set(withheld) and set(before) == {0, 2, 3, 4, 6, 7}
    after = [view_at(s, 8, withheld, fold, seed=0) for s in range(fold, fold + 16)]
    assert sorted(after[:8]) == sorted(after[8:]) == list(range(8))
    plain = [view_at(s, 8, [], fold, seed=0) for s in range(16)]
    assert sorted(plain[:8]) == list(range(8)) and plain != [view_at(s, 8, [], fold, seed=1) for s in range(16)]
    assert holdout_indices(10, 5) == [2, 7] and holdout_indices(10, 0) == []
    assert holdout_indices(10, 5, 0) == [0, 5] and holdout_indices(10, 5, 4) == [4, 9]
    assert holdout_indices(8, 5, 3) == [3]  # another fold may hold one view out; the shipped fit's own needs two
    assert fold_offsets(5, 5) == [2, 0, 1, 3, 4] and fold_offsets(5, 1) == [2] and fold_offsets(0, 1) == []
    with pytest.raises(ValueError, match="offset"):
        holdout_indices(10, 5, 5)
    with pytest.raises(ValueError, match="folds"):
        fold_offsets(5, 6)
    with pytest.raises(ValueError, match="too few"):
        holdout_indices(3, 2)
    with pytest.raises(ValueError, match="fold_in"):
        SplatConfig(fold_in=1.0)


def test_stage_with_heldout_calibration_leaves_the_calibration_model(tiny_synth: Path, tmp_path: Path) -> None:
    """One fit gives both models: the snapshot at the fold-in (without every 4th view), saved
    with the views it saw, and the shipped model that then saw every view."""
    cat = load_category(tiny_synth)
    cfg = preset("demo", **{**TINY, "iterations": 20, "fold_in": 0.5})
    work = tmp_path / cat.name
    report = run_splats_stage(cat, cfg, work, progress=False, holdout_every=4)
    assert report["calibration_model"]["fold_in_step"] == 10 == fold_in_step(cfg)
    assert report["calibration_model"]["withheld_views"] == 2 and report["calibration_model"]["num_gaussians"] > 0
    key = json.loads((work / "calibration" / "holdout_scene.json").read_text())
    assert key["views"] == [v.name for i, v in enumerate(cat.train) if i not in (2, 6)]
    snapshot = GaussianScene.load(work / "calibration" / "holdout_scene.safetensors")
    shipped = GaussianScene.load(work / "splats" / "scene.safetensors")
    assert snapshot.num_gaussians != shipped.num_gaussians or not torch.equal(snapshot.means, shipped.means)
    assert run_splats_stage(cat, cfg, work, progress=False, holdout_every=4)["skipped"]
    # Another share held out refits; no held-out calibration removes the stale calibration model.
    assert "skipped" not in run_splats_stage(cat, cfg, work, progress=False, holdout_every=3)
    assert json.loads((work / "calibration" / "holdout_scene.json").read_text())["holdout_every"] == 3
    run_splats_stage(cat, cfg, work, progress=False)
    assert not (work / "calibration" / "holdout_scene.safetensors").exists()
    assert not (work / "calibration" / "holdout_scene.json").exists()


def test_stage_report_and_sheet(tiny_bundle: Path, tiny_synth: Path) -> None:
    """What the session's splats stage (``tiny_bundle``) wrote: the report, the sheet, the scene."""
    saved = json.loads((tiny_bundle / "reports" / "splats.json").read_text())
    for key in ("psnr_test_mean", "ssim_test_mean", "num_gaussians", "seconds"):
        assert key in saved
    assert saved["eval_views"] == "test/good at true poses" and len(saved["psnr_test"]) == 2
    assert saved["psnr_test_mean"] == pytest.approx(sum(saved["psnr_test"]) / 2, abs=1e-3) and saved["psnr_test_mean"] > 15.0
    assert (tiny_bundle / "reports" / "splats_sheet.png").stat().st_size > 1000
    scene = GaussianScene.load(tiny_bundle / "splats" / "scene.safetensors")
    assert scene.num_gaussians == saved["num_gaussians"]
    assert json.loads((tiny_bundle / "splats" / "config.json").read_text())["iterations"] == 150
    assert not (tiny_bundle / "splats" / "checkpoint.safetensors").exists()


def test_unknown_preset_and_stage(tmp_path: Path, tiny_synth: Path) -> None:
    from training.pipeline import run_train

    with pytest.raises(ValueError, match="unknown preset"):
        preset("turbo")
    with pytest.raises(ValueError, match="unknown stage"):
        run_train(tiny_synth, tmp_path, stages=["nope"])


def test_a_resumed_fit_keeps_adams_step_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint resumed on CUDA puts the moments on the GPU and Adam's step counter on the
    CPU, where a fresh Adam keeps it (on the GPU every step of the fit read it back)."""
    from tests.fake_cuda import fake_cuda
    from training.splats import _load_checkpoint, _save_checkpoint

    cfg = preset("demo")
    params = {"means": torch.nn.Parameter(torch.zeros(4, 3)), "opacities": torch.nn.Parameter(torch.zeros(4))}
    optimizers = {k: torch.optim.Adam([p], lr=0.1) for k, p in params.items()}
    for p in params.values():
        p.sum().backward()
    for opt in optimizers.values():
        opt.step()
    _save_checkpoint(tmp_path / "ck.safetensors", 7, params, optimizers, {}, cfg, [])
    with fake_cuda(monkeypatch):
        on_gpu = {k: torch.nn.Parameter(torch.zeros_like(p).to("cuda")) for k, p in params.items()}
        resumed = {k: torch.optim.Adam([p], lr=0.1) for k, p in on_gpu.items()}
        assert _load_checkpoint(tmp_path / "ck.safetensors", on_gpu, resumed, {}, cfg, [], 10) == 7
    for k, opt in resumed.items():
        state = opt.state[on_gpu[k]]
        assert (state["step"].device.type, state["exp_avg"].device.type, on_gpu[k].device.type) == ("cpu", "cuda", "cuda")
