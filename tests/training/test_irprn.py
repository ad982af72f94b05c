"""RVSS, IRPRN training, the gallery and the ONNX export on the tiny category."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.camera import look_at, pose_errors
from models.data import load_category
from models.gallery import NOVEL, RETRIEVAL_GRID, TRAIN, Gallery
from models.irprn import IRPRNConfig, load_irprn
from models.pose import PoseEstimator
from rpe_pad.cli import main
from training import irprn as irprn_stage
from training.export import ExportError, check_parity
from training.gallery import run_gallery_stage
from training.irprn import (
    IRPRNTrainConfig,
    augment,
    build_pairs,
    heldout_gallery_mask,
    holdout_views,
    pair_families,
    preset,
    train_irprn,
)
from training.rvss import RVSSConfig, load_novel, novel_poses, run_rvss_stage
from training.splats import default_device


def test_rvss_novel_set(tiny_pose_bundle: Path, tiny_synth: Path) -> None:
    cat = load_category(tiny_synth)
    novel = load_novel(tiny_pose_bundle / "rvss" / "novel.safetensors")
    assert len(novel.poses) == 3 * len(cat.train) and novel.images.shape[1:] == (64, 64, 3)
    assert novel.parents.tolist() == [i for i in range(len(cat.train)) for _ in range(3)]
    err = pose_errors(novel.poses, cat.train_poses()[novel.parents].double())
    # sigma_r = 0.02 rad per axis: a few degrees at most, and never exactly the parent.
    assert (err["rot_deg"] > 0).all() and err["rot_deg"].max() < 8
    report = json.loads((tiny_pose_bundle / "reports" / "rvss.json").read_text())
    assert report["n_novel"] == 24 and (tiny_pose_bundle / "reports" / "rvss_sheet.png").is_file()
    again = run_rvss_stage(cat, RVSSConfig(), tiny_pose_bundle, progress=False)
    assert again.get("skipped")


def test_rvss_stage_with_orbit_views(tiny_bundle: Path, tiny_synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "work"
    shutil.copytree(tiny_bundle / "splats", out / "splats")
    cat = load_category(tiny_synth)
    cfg = RVSSConfig(orbit_m=1, orbit_min_deg=8.0, orbit_max_deg=12.0)
    report = run_rvss_stage(cat, cfg, out, progress=False)
    novel = load_novel(out / "rvss" / "novel.safetensors")
    n = len(cat.train)
    assert report["n_novel"] == 4 * n and len(novel.images) == 4 * n and novel.parents[3 * n:].tolist() == list(range(n))
    # The stage renders the poses novel_poses draws: the orbit views 8-12 degrees from their
    # parents (plus the jitter), the paper's views a few.
    expected, _ = novel_poses(cat.train_poses(), cfg, report["scene_unit"])
    assert torch.allclose(novel.poses, expected)
    moved = pose_errors(novel.poses, cat.train_poses()[novel.parents].double())["rot_deg"]
    assert moved[3 * n:].min() > 6 and moved[: 3 * n].max() < moved[3 * n:].min()
    assert not torch.equal(novel.images[3 * n:], novel.images[:n])  # rendered, not copied
    assert json.loads((out / "reports" / "rvss.json").read_text())["key"]["config"]["orbit_m"] == 1
    assert run_rvss_stage(cat, cfg, out, progress=False).get("skipped")
    assert not run_rvss_stage(cat, RVSSConfig(), out, progress=False).get("skipped")  # other settings: redone


def test_rvss_off_and_seeded() -> None:
    poses = torch.eye(4, dtype=torch.float64).repeat(5, 1, 1)
    none, parents = novel_poses(poses, RVSSConfig(m=0), 1.0)
    assert len(none) == 0 and len(parents) == 0
    a, _ = novel_poses(poses, RVSSConfig(seed=1), 1.0)
    b, _ = novel_poses(poses, RVSSConfig(seed=1), 1.0)
    assert torch.equal(a, b)


def test_rvss_orbit_views() -> None:
    eye = torch.tensor([[4.0 * np.cos(a), 4.0 * np.sin(a), 1.0] for a in np.linspace(0, 6, 5)], dtype=torch.float64)
    poses = look_at(eye, torch.zeros(5, 3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    paper, paper_parents = novel_poses(poses, RVSSConfig(seed=2), 1.0)
    cfg = RVSSConfig(seed=2, orbit_m=4, orbit_min_deg=5.0, orbit_max_deg=10.0)
    both, parents = novel_poses(poses, cfg, 1.0)
    # The paper's views come first, unchanged; then orbit_m views per training view.
    assert torch.equal(both[:15], paper) and torch.equal(parents[:15], paper_parents)
    assert parents[15:].tolist() == [i for i in range(5) for _ in range(4)]
    moved = pose_errors(both[15:], poses[parents[15:]])["rot_deg"]
    near = pose_errors(paper, poses[paper_parents])["rot_deg"]
    assert moved.min() > 2 and moved.median() > 2 * near.median()
    # Carried around the object: the object centre stays near the image centre.
    centre = both[15:, :3, 3]
    assert (centre[:, :2].norm(dim=-1) / centre[:, 2]).max() < 0.2
    ratio = centre.norm(dim=-1) / poses[parents[15:], :3, 3].norm(dim=-1)  # distance within 1 +- 0.08 (+ the jitter)
    assert (ratio - 1).abs().max() < 0.08 + 0.1 and (ratio - 1).abs().max() > 0.02
    assert cfg.key()["orbit_m"] == 4 and "orbit_m" not in RVSSConfig().key()
    with pytest.raises(ValueError, match="orbit"):
        RVSSConfig(orbit_min_deg=9.0, orbit_max_deg=3.0)


def test_pairs_never_pair_a_view_with_itself() -> None:
    desc = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    ids, ranks = build_pairs(desc, desc, 3, torch.arange(6), torch.arange(6))
    assert ids.shape == (6, 3) and (ids != torch.arange(6)[:, None]).all()
    assert ranks[0].tolist() == [0, 1, 2]
    ids, _ = build_pairs(desc, desc, 3, torch.full((6,), -1), torch.arange(6))
    assert (ids[:, 0] == torch.arange(6)).all()  # -1 excludes nothing: a view may match its own copy first


def test_pair_families_keep_a_view_from_itself_alone() -> None:
    # Three training views, two novel views of each (parents 0 0 1 1 2 2), near copies of
    # their parents: the paper's pairing lets a novel view meet its parent, never itself.
    gen = torch.Generator().manual_seed(0)
    train = torch.nn.functional.normalize(torch.randn(3, 16, generator=gen), dim=1)
    parents = torch.tensor([0, 0, 1, 1, 2, 2])
    novel = torch.nn.functional.normalize(train[parents] + 0.01 * torch.randn(6, 16, generator=gen), dim=1)
    novel_family, train_family = pair_families(3, 6)
    assert novel_family.tolist() == [3, 4, 5, 6, 7, 8] and train_family.tolist() == [0, 1, 2]
    ids, _ = build_pairs(novel, train, 2, novel_family, train_family)
    assert (ids[:, 0] == parents).all()  # the nearest training view is the parent
    ids, _ = build_pairs(train, train, 2, train_family, train_family)
    assert (ids != torch.arange(3)[:, None]).all()  # never a training view with itself


# A default IRPRNTrainConfig's dict as the code before the retirements wrote it: the stage
# key and checkpoint config of existing work folders (the model's part: tests/models/test_irprn.py).
SAVED_TRAIN_DEFAULT = {"k": 3, "mpts": True, "use_novel": True, "train_queries": True, "augment_copies": 2,
                       "max_roll_deg": 20.0, "color_jitter": 0.1, "freeze_backbone": True, "epochs": 40, "batch": 32,
                       "lr": 1e-3, "lr_drop_epoch": 25, "weight_decay": 1e-4, "val_fraction": 0.1, "pair_pool": "train",
                       "pair_exclude": "self", "checkpoint_every": 10, "seed": 0}


def test_default_config_dict_is_unchanged() -> None:
    out = IRPRNTrainConfig().to_dict()
    assert list(out) == ["model", *SAVED_TRAIN_DEFAULT]  # same keys, same order: same config.json bytes
    assert {k: v for k, v in out.items() if k != "model"} == SAVED_TRAIN_DEFAULT
    assert out["model"] == IRPRNTrainConfig().model.to_dict()
    for name in ("pair_pool", "pair_exclude"):
        with pytest.raises(TypeError):
            IRPRNTrainConfig(**{name: SAVED_TRAIN_DEFAULT[name]})  # no longer options
    # Every field is written (a new one cannot be left out of the key by the fixed order).
    fields = {f.name for f in dataclasses.fields(IRPRNTrainConfig)}
    assert fields <= set(IRPRNTrainConfig(holdout=1).to_dict())


def test_augmented_copies_keep_the_original_first() -> None:
    images = torch.rand(4, 16, 16, 3)
    poses = torch.eye(4, dtype=torch.float64).repeat(4, 1, 1)
    out = augment(images, poses, IRPRNTrainConfig(augment_copies=2), torch.Generator().manual_seed(0))
    assert len(out.images) == 12 and out.origin.tolist() == [0, 1, 2, 3] * 3
    assert torch.equal(out.images[:4], images) and torch.equal(out.poses[:4], poses)
    rolled = out.poses[4:]
    # A roll turns the camera about its optical axis only.
    assert torch.allclose(rolled[:, 2, 2], torch.ones(8, dtype=torch.float64))
    assert not torch.allclose(rolled[:, 0, 0], torch.ones(8, dtype=torch.float64))


def test_irprn_report_gallery_and_onnx(tiny_pose_bundle: Path) -> None:
    report = json.loads((tiny_pose_bundle / "reports" / "irprn.json").read_text())
    assert report["k"] == 3 and report["n_queries"] == 24 + 8 and report["n_query_copies"] == 64
    assert report["n_pairs"] == 64 * 3 and len(report["history"]) == 2
    first, last = report["history"]
    # It learns: the second epoch's loss is clearly below the first's (55.5 -> 52.0 when written; an
    # optimiser that never steps would give the same loss twice, both epochs seeing the same pairs).
    assert last["loss"] < 0.98 * first["loss"]
    assert report["device"] == str(default_device())  # trained where the Gaussian model was fitted
    gallery = Gallery.load(tiny_pose_bundle / "gallery" / "gallery.safetensors")
    assert len(gallery) == 32 and int((gallery.source == TRAIN).sum()) == 8 and int((gallery.source == NOVEL).sum()) == 24
    # Described on the retrieval grid, not the training pairs' 4 x 4, and the report says so.
    assert gallery.grid == RETRIEVAL_GRID != 4
    assert gallery.descriptors.shape[1] == gallery.features.shape[1] * RETRIEVAL_GRID**2
    assert json.loads((tiny_pose_bundle / "reports" / "gallery.json").read_text())["descriptor_grid"] == RETRIEVAL_GRID
    onnx_report = json.loads((tiny_pose_bundle / "reports" / "onnx.json").read_text())
    assert onnx_report["max_scaled_diff"] <= 1e-4 and "CPUExecutionProvider" in onnx_report["providers"]
    assert onnx_report["max_abs_diff"] < 1e-3


def test_onnx_and_torch_estimators_agree(tiny_pose_bundle: Path, tiny_synth: Path) -> None:
    images = torch.stack([q.image for q in load_category(tiny_synth).test])
    from models.bundle import FILES
    from models.gallery import Gallery

    gallery = Gallery.load(tiny_pose_bundle / FILES["gallery"])
    net, unit = load_irprn(tiny_pose_bundle / "irprn")
    onnx_est = PoseEstimator.from_onnx(tiny_pose_bundle / FILES["encoder"], tiny_pose_bundle / FILES["pair_head"],
                                       gallery, unit, net.cfg.input_size, device="cpu")  # as the torch one runs
    torch_est = PoseEstimator.from_torch(net, gallery, unit)
    a, b = onnx_est.estimate(images), torch_est.estimate(images)
    assert torch.equal(a.gallery_ids, b.gallery_ids)
    assert torch.allclose(a.poses, b.poses, atol=1e-4)
    assert onnx_est.providers == ["CPUExecutionProvider"] and torch_est.providers == ["torch"]
    # Queries are described like the gallery: a training view finds itself.
    train = load_category(tiny_synth).train
    own = onnx_est.match(torch.stack([v.image for v in train[:3]]))
    assert onnx_est.grid == RETRIEVAL_GRID and own.gallery_ids[:, 0].tolist() == [0, 1, 2]


def test_parity_check_refuses_a_wrong_graph(tiny_pose_bundle: Path, tmp_path: Path) -> None:
    net, _ = load_irprn(tiny_pose_bundle / "irprn")
    with torch.no_grad():
        net.head.coarse[-1].bias.add_(0.01)  # PyTorch now disagrees with the exported graph
    with pytest.raises(ExportError, match="differ"):
        check_parity(net, tiny_pose_bundle / "irprn" / "encoder.onnx", tiny_pose_bundle / "irprn" / "pair_head.onnx")


# A quarter of the default input's pixels, for the tests that check what reaches training and
# how it resumes, not how well the network does (the fan-out test trains its bundles at this size).
SMALL = IRPRNConfig(input_size=112)


def test_training_resumes_from_its_checkpoint(tiny_pose_bundle: Path, tiny_synth: Path, tmp_path: Path,
                                             irprn_stops_in_epoch_3) -> None:
    cat = load_category(tiny_synth)
    novel = load_novel(tiny_pose_bundle / "rvss" / "novel.safetensors")
    cfg = preset("demo", epochs=3, augment_copies=0, checkpoint_every=1, model=SMALL)
    with pytest.raises(KeyboardInterrupt):
        train_irprn(cat, novel, 1.0, cfg, tmp_path, progress=False)
    assert (tmp_path / "checkpoint.safetensors").is_file()
    irprn_stops_in_epoch_3()  # lets the next run through
    _, report = train_irprn(cat, novel, 1.0, cfg, tmp_path, progress=False)
    assert report["resumed_from_epoch"] == 2 and len(report["history"]) == 3
    assert not (tmp_path / "checkpoint.safetensors").exists()


def test_holdout_views_and_their_gallery_mask() -> None:
    assert holdout_views(60, 0).tolist() == []
    held = holdout_views(60, 6)
    assert held.tolist() == [0, 12, 24, 35, 47, 59]  # spread through the capture order, no repeats
    assert len(holdout_views(10, 8).unique()) == 8
    for bad in (-1, 9, 10):
        with pytest.raises(ValueError, match="hold out"):
            holdout_views(10, bad)
    with pytest.raises(ValueError, match="holdout"):
        IRPRNTrainConfig(holdout=-1)
    # Gallery order: 4 training views, then novel views of parents 0 0 1 2 3 2.
    mask = heldout_gallery_mask(4, torch.tensor([0, 0, 1, 2, 3, 2]), torch.tensor([0, 2]))
    assert mask.tolist() == [False, True, False, True, False, False, True, False, True, False]
    assert "holdout" not in IRPRNTrainConfig().to_dict()  # earlier work folders keep their stage key
    assert IRPRNTrainConfig(holdout=3).to_dict()["holdout"] == 3


@pytest.mark.slow(seconds=8)
def test_held_out_views_never_reach_training(tiny_pose_bundle: Path, tiny_synth: Path, tmp_path: Path) -> None:
    cat = load_category(tiny_synth)
    novel = load_novel(tiny_pose_bundle / "rvss" / "novel.safetensors")
    cfg = preset("demo", epochs=1, augment_copies=1, checkpoint_every=0, holdout=2, model=SMALL)
    net, report = train_irprn(cat, novel, 1.0, cfg, tmp_path / "a", progress=False)
    held = holdout_views(len(cat.train), 2)
    assert report["holdout"] == [cat.train[i].name for i in held.tolist()]
    n_novel_kept = int(heldout_gallery_mask(len(cat.train), novel.parents, held)[len(cat.train):].sum())
    assert n_novel_kept == len(novel.poses) - 2 * 3  # three RVSS views per training view
    assert report["n_queries"] == n_novel_kept + len(cat.train) - 2
    # Scramble the held-out photographs and the novel views rendered from them: training is unchanged.
    gen = torch.Generator().manual_seed(0)
    scrambled = [dataclasses.replace(v, image=torch.rand(v.image.shape, generator=gen)) if i in held.tolist() else v
                 for i, v in enumerate(cat.train)]
    from_held = torch.isin(novel.parents, held)
    images = novel.images.clone()
    images[from_held] = torch.rand(images[from_held].shape, generator=gen)
    net2, report2 = train_irprn(dataclasses.replace(cat, train=scrambled), dataclasses.replace(novel, images=images),
                                1.0, cfg, tmp_path / "b", progress=False)
    assert report2["history"] == report["history"]
    for (name, a), b in zip(net.state_dict().items(), net2.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # ... and without the holdout it is not (the test can fail).
    free = dataclasses.replace(cfg, holdout=0)
    _, r1 = train_irprn(cat, novel, 1.0, free, tmp_path / "c", progress=False)
    _, r2 = train_irprn(dataclasses.replace(cat, train=scrambled), dataclasses.replace(novel, images=images), 1.0,
                        free, tmp_path / "d", progress=False)
    assert r1["history"] != r2["history"] and "holdout" not in r1


def test_a_holdout_run_builds_no_bundle(tiny_pose_bundle: Path, tiny_synth: Path, tmp_path: Path) -> None:
    from training.bundle import run_bundle_stage
    from training.calibrate import CalibConfig
    from training.pipeline import run_train

    with pytest.raises(ValueError, match="validation run"):
        run_train(tiny_synth, tmp_path / "b", preset="demo", ablation={"holdout": 2})
    work = tmp_path / "work"
    shutil.copytree(tiny_pose_bundle, work)
    config = json.loads((work / "irprn" / "config.json").read_text())
    config["train"]["holdout"] = 2
    (work / "irprn" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="held out"):
        run_bundle_stage(load_category(tiny_synth), work, tmp_path / "bundles", "demo", CalibConfig(), progress=False)
    assert not (tmp_path / "bundles" / load_category(tiny_synth).name).exists()


@pytest.mark.slow(seconds=5)
def test_evaluate_pose_modes(tiny_pose_bundle: Path, tiny_synth: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    for mode in ("retrieval", "rpe", "rpe+refine"):
        out = tmp_path / mode
        assert main(["lab", "evaluate", str(tiny_pose_bundle), str(tiny_synth), "--pose", mode, "--out", str(out)]) == 0
        m = json.loads((out / "metrics.json").read_text())
        assert m["pose_mode"] == mode and m["n_queries"] == 8
        assert {"match", "render", "score", "total"} <= set(m["timing_ms"])
        assert m["pose_reproj_err_px_median"] >= 0 and len(m["per_query_reproj_px"]) == 8
        assert np.isfinite(m["pose_rot_err_deg_median"]) and np.isfinite(m["pose_center_err_rel_median"])
    assert "pose" in json.loads((tmp_path / "rpe" / "metrics.json").read_text())["timing_ms"]
    m = json.loads((tmp_path / "rpe+refine" / "metrics.json").read_text())
    assert "refine" in m["timing_ms"] and 0 <= m["refine"]["pnp_accepted_fraction"] <= 1
    assert 0 <= m["refine"]["ecc_accepted_fraction"] <= 1
    # Each query's score and verdict: the decision at the threshold is read back from them.
    rows, threshold = m["per_query"], m["decision"]["threshold"]
    assert [r["query"] for r in rows] == [v.name for v in load_category(tiny_synth).test]
    caught = [r["label"] != "good" and r["score"] > threshold for r in rows]
    assert sum(caught) == m["decision"]["tp"]
    assert all((r["score"] > threshold) == (r["verdict"] == "anomalous") for r in rows if r["verdict"] != "review")


def test_stage_order_is_enforced(tiny_bundle: Path, tiny_synth: Path, tmp_path: Path) -> None:
    out = tmp_path / tiny_bundle.name
    shutil.copytree(tiny_bundle, out)
    cat = load_category(tiny_synth)
    with pytest.raises(FileNotFoundError, match="rvss stage first"):
        irprn_stage.run_irprn_stage(cat, preset("demo"), out, progress=False)
    with pytest.raises(FileNotFoundError, match="irprn stage first"):
        run_gallery_stage(cat, out, progress=False)


def test_onnx_graphs_are_tied_to_the_weights(tiny_pose_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training import export

    bundle = tmp_path / tiny_pose_bundle.name
    shutil.copytree(tiny_pose_bundle, bundle)
    from lab.workdir import pose_estimator

    assert export.graphs_current(bundle) and pose_estimator(bundle, "cpu").providers == ["CPUExecutionProvider"]
    # New weights (a retrained network) make the exported graphs stale: the lab's reader of
    # work folders falls back to PyTorch, and the bundle stage refuses them.
    net, unit = load_irprn(bundle / "irprn")
    with torch.no_grad():
        net.head.coarse[-1].bias.add_(0.01)
    from models.irprn import save_irprn

    save_irprn(net, bundle / "irprn", unit, {})
    assert not export.graphs_current(bundle) and pose_estimator(bundle).providers == ["torch"]
    # A failed parity check leaves the served graphs as they were and no temporary files.
    before = (bundle / "irprn" / "encoder.onnx").read_bytes()

    def refuse(*args, **kwargs):
        raise ExportError("differ")

    monkeypatch.setattr(export, "check_parity", refuse)
    with pytest.raises(ExportError):
        export.run_onnx_stage(_cat(bundle), bundle)
    assert (bundle / "irprn" / "encoder.onnx").read_bytes() == before
    assert not list((bundle / "irprn").glob("*.tmp.onnx"))


def _cat(bundle: Path) -> SimpleNamespace:
    """What run_onnx_stage reads of a category: its name and a few training images."""
    return SimpleNamespace(name=bundle.name, train=[SimpleNamespace(image=torch.rand(64, 64, 3)) for _ in range(2)])


def test_ablation_switches() -> None:
    from training.pipeline import irprn_config

    rvss, cfg = irprn_config("cpu")
    assert rvss.m == 3 and cfg.use_novel and cfg.model.n_refine == 3 and cfg.k == 3 and cfg.mpts
    assert rvss.orbit_m == 6 and irprn_config("demo")[0].orbit_m == 0
    rvss, cfg = irprn_config("cpu", rvss_m=0, n_refine=0, k=1, mpts=False, epochs=2)
    assert rvss.m == 0 and rvss.orbit_m == 0 and not cfg.use_novel and cfg.model.n_refine == 0 and cfg.k == 1
    assert not cfg.mpts
    assert cfg.epochs == 2
    rvss, cfg = irprn_config("cpu", rvss_m=0, rvss_orbit=2)  # orbit views alone are still novel views
    assert rvss.m == 0 and rvss.orbit_m == 2 and cfg.use_novel


class _PairsDrawn(Exception):
    pass


def test_pairs_are_drawn_on_the_cpu_when_training_on_cuda(tiny_pose_bundle: Path, tiny_synth: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA the descriptors come from the GPU while the families and poses the pairs index
    stay on the CPU: the pairs must be drawn on the CPU (the GPU run of session 15 predates
    IRPRN training on CUDA; on a GPU the mix raised in ``masked_fill``)."""
    from tests.fake_cuda import fake_cuda

    seen = []

    def spy(*args, **kwargs):
        seen.extend(a.device.type for a in args if isinstance(a, torch.Tensor))
        raise _PairsDrawn

    monkeypatch.setattr(irprn_stage, "build_pairs", spy)
    cat = load_category(tiny_synth)
    novel = load_novel(tiny_pose_bundle / "rvss" / "novel.safetensors")
    cfg = preset("demo", epochs=1, augment_copies=0, checkpoint_every=0, model=SMALL)
    with fake_cuda(monkeypatch), pytest.raises(_PairsDrawn):
        train_irprn(cat, novel, 1.0, cfg, tmp_path, progress=False, device=torch.device("cuda"))
    assert seen == ["cpu"] * 4  # two descriptors, two families
