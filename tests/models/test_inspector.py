"""The one inspection pipeline, on the tiny verified bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.camera import quat_to_rotmat, roll_pose
from models.data import load_category
from models.images import load_rgb
from models import registry
from models.compression import Compression
from models.inspector import InspectionError, Inspector, InspectorConfig, RpePose
from models.verify import VerifyConfig
from rpe_pad.cli import main


@pytest.fixture(scope="module")
def inspector(tiny_release: Path) -> Inspector:
    return Inspector.load(tiny_release)


@pytest.fixture(scope="module")
def queries(tiny_synth: Path):
    cat = load_category(tiny_synth)
    good = next(q for q in cat.test if q.label == "good")
    bad = next(q for q in cat.test if q.label != "good")
    return good, bad


def test_result_fields(inspector: Inspector, queries) -> None:
    good, bad = queries
    results = inspector.inspect(torch.stack([good.image, bad.image]))
    assert len(results) == 2
    calib = inspector.calibration
    names = inspector.estimator.gallery.names
    for r in results:
        assert r.anomaly_map.shape == (64, 64) and r.reference.shape == (64, 64, 3)
        # The score is the maximum of the map at the scorer's 224 px; the map is returned at
        # the image's size (bilinear: never above that maximum).
        assert 0.5 * r.score < float(r.anomaly_map.max()) <= r.score * (1 + 1e-6)
        assert r.is_anomalous == (r.score > calib.threshold) and r.threshold == calib.threshold
        assert r.normalised_score == pytest.approx(float(calib.normalise(r.score)))
        assert (r.normalised_score > 0.5) == r.is_anomalous
        # The pose is a rigid world-to-camera transform; the quaternion + translation say the same.
        pose = r.pose_matrix
        assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-6) and pose[3, 3] == 1
        q = torch.tensor(r.pose.quaternion_wxyz, dtype=torch.float64)
        assert np.allclose(quat_to_rotmat(q).numpy(), pose[:3, :3], atol=1e-6)
        assert r.pose.translation == pytest.approx(list(pose[:3, 3]))
        ids = [m.id for m in r.gallery_matches]
        assert len(ids) == 3 and r.gallery_names == [names[i] for i in ids]
        sims = [m.similarity for m in r.gallery_matches]
        assert sims == sorted(sims, reverse=True)
        assert set(r.timings_ms) == {"match", "pose", "refine", "render", "verify", "second_look", "score", "total"}
        # The verdict is the score's decision when the pose verified, else review.
        expected = ("anomalous" if r.is_anomalous else "normal") if r.verification.verified else "review"
        assert r.verdict == expected and r.verification.verified == (r.verification.reason == "")
        assert r.timings_ms["total"] >= r.timings_ms["render"] + r.timings_ms["score"]
        assert {"pnp_accepted", "pnp_path", "ecc_accepted"} <= set(r.refine)
        # The JSON is the model's own fields; the arrays and the calibration never go out.
        dumped = json.loads(r.model_dump_json())
        assert dumped["pose"]["world_to_camera"][3] == [0, 0, 0, 1]
        assert set(dumped) == {"score", "threshold", "threshold_source", "calibrated_threshold", "normalised_score",
                               "is_anomalous", "verdict", "verification", "pose", "gallery_matches", "timings_ms",
                               "refine", "pose_mode", "device"}
        assert r.threshold_source == "calibrated" and r.calibrated_threshold == calib.threshold
        assert r.pose_mode == inspector.config.pose and r.device == "cpu"


def test_threshold_override_moves_the_decision(inspector: Inspector, queries) -> None:
    good, _ = queries
    base = inspector.inspect(good.image[None])[0]
    low = inspector.inspect(good.image[None], threshold=inspector.calibration.score_floor * 1.001)[0]
    high = inspector.inspect(good.image[None], threshold=base.score * 10)[0]
    assert low.is_anomalous is (base.score > low.threshold) and high.is_anomalous is False
    assert low.score == pytest.approx(base.score) and high.normalised_score < 0.5
    # Deciding a result again is the same as inspecting at that threshold.
    again = base.decided(base.score * 10)
    assert (again.threshold, again.is_anomalous, again.normalised_score) == (high.threshold, False,
                                                                             pytest.approx(high.normalised_score))
    assert base.decided(None).threshold == inspector.calibration.threshold
    assert (again.threshold_source, base.decided(None).threshold_source, low.threshold_source) == (
        "override", "calibrated", "override")
    assert again.calibrated_threshold == low.calibrated_threshold == inspector.calibration.threshold
    for bad in (-1.0, float("nan")):
        with pytest.raises(InspectionError, match="above"):
            inspector.inspect(good.image[None], threshold=bad)
        with pytest.raises(InspectionError, match="above"):
            base.decided(bad)


def test_a_score_at_the_threshold_is_normal(inspector: Inspector, tiny_synth: Path) -> None:
    """The decision at its boundary, on a verified result (a training view: the tiny bundle
    sends most of its coarse test queries to review): strictly over the threshold is anomalous,
    equal to it is normal with a normalised score of 0.5, and the verdict follows."""
    view = load_category(tiny_synth).train[0]
    base = inspector.inspect(view.image[None])[0]
    assert base.verification.verified, base.verification.reason
    at, under = base.decided(base.score), base.decided(base.score * 0.999)
    assert (at.is_anomalous, at.verdict, at.normalised_score) == (False, "normal", pytest.approx(0.5))
    assert (under.is_anomalous, under.verdict) == (True, "anomalous") and under.normalised_score > 0.5
    assert inspector.inspect(view.image[None], threshold=base.score * 1.001)[0].verdict == "normal"


def test_settings_come_from_the_manifest_and_overrides_win(tiny_release: Path, queries) -> None:
    """The bundle says how it is run; a caller's override replaces it; a bundle asking for a
    retired option is refused with the reason."""
    from models.bundle import BundleError, MANIFEST

    manifest = json.loads((tiny_release / MANIFEST).read_text())
    assert manifest["inference"] == InspectorConfig().to_dict()
    assert Inspector.load(tiny_release).config == InspectorConfig.from_manifest(manifest["inference"])
    rpe = Inspector.load(tiny_release, pose="rpe", k=2)
    assert rpe.config.pose == "rpe" and rpe.estimator.k == 2 and isinstance(rpe.locate, RpePose)
    good, _ = queries
    r = rpe.inspect(good.image[None])[0]
    assert "refine" not in r.timings_ms and r.refine == {} and len(r.gallery_matches) == 2
    # Manifests written before the redesign: retired keys at the product's values load.
    old = {"pose": "rpe+refine", "fusion": "mean", "backend": "auto", "tolerance": None, "iterative": None, "k": 3,
           "refine": {"method": "gpnp+ecc", "detector": "sift", "photometric": False, "render_size": 200, "rounds": 2}}
    assert InspectorConfig.from_manifest(old) == InspectorConfig()
    with pytest.raises(ValueError, match="fusion='render'.*retired"):
        InspectorConfig.from_manifest({**old, "fusion": "render"})
    with pytest.raises(ValueError, match="refine.method='pnp\\+ecc'.*retired"):
        InspectorConfig.from_manifest({**old, "refine": {"method": "pnp+ecc"}})
    with pytest.raises(ValueError, match="unknown inference settings"):
        InspectorConfig.from_manifest({"pose": "rpe", "warp_speed": 9})
    # A hand-edited k is taken as written or refused, never rounded (3.9 ran as 3, true as 1).
    for k in (3.9, True, "3", 0):
        with pytest.raises(ValueError, match="k \\(gallery matches per query\\) must be an integer"):
            InspectorConfig.from_manifest({**old, "k": k})
    with pytest.raises(ValueError, match="refine.ratio must be"):
        InspectorConfig.from_manifest({**old, "refine": {"ratio": True}})
    with pytest.raises(ValueError, match="not available"):
        InspectorConfig(pose="levitation")
    with pytest.raises(BundleError, match="not available"):
        Inspector.load(tiny_release, pose="levitation")
    n_views = len(rpe.estimator.gallery)  # more matches than the gallery holds: refused at load, not a review
    with pytest.raises(BundleError, match=f"from 1 to the gallery's {n_views} views, got {n_views + 1}"):
        Inspector.load(tiny_release, k=n_views + 1)


def test_lab_modes_are_not_the_products() -> None:
    """The product knows its two pose modes; the lab's appear only when the lab is imported."""
    assert registry.pose_modes() == ("rpe+refine", "rpe") and registry.DEFAULT_POSE == "rpe+refine"
    import lab  # noqa: F401

    assert set(registry.pose_modes(lab=True)) == {"rpe+refine", "rpe", "oracle", "retrieval", "iterative"}
    # A bundle runs a product mode even where the lab is installed: a manifest naming one of the
    # lab's was served by rpe-pad serve and inspect; the lab gets its modes by override alone.
    with pytest.raises(ValueError, match="pose mode 'retrieval', which the product does not run"):
        InspectorConfig.from_manifest({"pose": "retrieval", "k": 3})
    assert InspectorConfig.from_manifest({"pose": "rpe", "k": 3}, pose="retrieval").pose == "retrieval"
    assert registry.pose_modes() == ("rpe+refine", "rpe")
    with pytest.raises(ValueError, match="not available"):
        registry.pose_mode("oracle")  # the product refuses a lab mode by name


def test_prepare_resizes_and_refuses(inspector: Inspector, tiny_synth: Path) -> None:
    image = load_rgb(next((tiny_synth / "test" / "good").glob("*.png")))
    big = np.kron(image, np.ones((2, 2, 1), np.float32))  # 128 x 128
    out = inspector.prepare(big)
    assert out.shape == (64, 64, 3) and float((out - torch.from_numpy(image)).abs().mean()) < 0.01
    with pytest.raises(InspectionError, match="aspect"):
        inspector.prepare(np.zeros((64, 100, 3), np.float32))
    with pytest.raises(InspectionError, match="RGB"):
        inspector.prepare(np.zeros((64, 64), np.float32))
    with pytest.raises(InspectionError, match="expected images"):
        inspector.inspect(torch.zeros(1, 32, 32, 3))


def test_a_greyscale_photo_is_refused_by_a_colour_bundle_only(inspector: Inspector, tiny_synth: Path) -> None:
    """A bundle trained on colour photos refuses a greyscale file (its every colour would score
    as a defect); a bundle trained on grey photos takes it."""
    image = load_rgb(next((tiny_synth / "test" / "good").glob("*.png")))
    grey = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2)
    assert inspector.colour  # the tiny category's bricks are coloured
    assert inspector.prepare(grey).shape == (64, 64, 3)  # a colour file of a grey view: the file decides
    with pytest.raises(InspectionError, match="greyscale.*colour photos"):
        inspector.prepare(grey, greyscale=True)
    inspector.colour = False
    try:
        assert inspector.prepare(grey, greyscale=True).shape == (64, 64, 3)
    finally:
        inspector.colour = True


def test_a_coarse_jpeg_is_refused_by_a_bundle_trained_on_lossless_photos(inspector: Inspector, tiny_synth: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Compression error reads as residue (session 33: quality 85 at 256 px rejected every good
    view of seed 1), so a bundle trained on lossless photos refuses what is coarser than it was
    measured to tolerate, saying why and what to send; one trained on lossy photos takes it."""
    image = load_rgb(next((tiny_synth / "test" / "good").glob("*.png")))
    assert not inspector.manifest.camera.lossy_photos  # the tiny category's photos are PNG
    assert inspector.prepare(image, compression=Compression("JPEG", 95, "4:4:4")).shape == (64, 64, 3)
    with pytest.raises(InspectionError, match=r"JPEG \(quality about 85, 4:2:0\).*lossless photos.*send PNG"):
        inspector.prepare(image, compression=Compression("JPEG", 85, "4:2:0"))
    big = np.kron(image, np.ones((2, 2, 1), np.float32))  # twice the bundle's width: subsampled chroma is averaged away
    assert inspector.prepare(big, compression=Compression("JPEG", 95, "4:2:0")).shape == (64, 64, 3)
    # A calibration that measured its own held-out photos decides instead (training/calibrate.py).
    measured = inspector.calibration.model_copy(update={"jpeg_taken": [(100, "4:4:4")], "jpeg_photo_width": 64})
    monkeypatch.setattr(inspector, "calibration", measured)
    assert inspector.prepare(image, compression=Compression("JPEG", 100, "4:4:4")).shape == (64, 64, 3)
    with pytest.raises(InspectionError, match="calibration took.*quality 100 4:4:4"):
        inspector.prepare(image, compression=Compression("JPEG", 95, "4:4:4"))
    # One whose held-out photos took no JPEG at all (fresh seed 7 in session 35, at quality 100):
    # even the finest JPEG is refused, and the message asks for a lossless photo only.
    monkeypatch.setattr(inspector, "calibration", measured.model_copy(update={"jpeg_taken": []}))
    with pytest.raises(InspectionError, match=r"quality about 100, 4:4:4\).*found no JPEG setting.*this compression "
                                              r"would read as defects: send PNG \(or a lossless format\)"):
        inspector.prepare(image, compression=Compression("JPEG", 100, "4:4:4"))
    assert inspector.prepare(image).shape == (64, 64, 3)  # a lossless photo is taken
    lossy = inspector.manifest.camera.model_copy(update={"lossy_photos": True})
    monkeypatch.setattr(inspector, "manifest", inspector.manifest.model_copy(update={"camera": lossy}))
    assert inspector.prepare(image, compression=Compression("JPEG", 85, "4:2:0")).shape == (64, 64, 3)


def test_prepare_of_the_bundles_camera_runs_no_torch_op(inspector: Inspector, tiny_synth: Path) -> None:
    """The service prepares such queries off its inference thread: no torch op may run there
    (service.app.State), and the Pillow resize gives torch's antialiased bilinear result."""
    from torch.overrides import TorchFunctionMode

    class Calls(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    image = load_rgb(next((tiny_synth / "test" / "good").glob("*.png")))
    big = np.ascontiguousarray(np.kron(image, np.ones((3, 3, 1), np.float32)))  # 192 x 192
    with Calls() as calls:
        out = inspector.prepare(big)
    assert calls.names == [] and out.shape == (64, 64, 3)
    torch_way = torch.nn.functional.interpolate(torch.from_numpy(big).permute(2, 0, 1)[None], size=(64, 64),
                                                mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(out, torch_way[0].permute(1, 2, 0).clamp(0, 1), atol=1e-5)


def test_a_query_from_another_camera_is_mapped_or_refused(inspector: Inspector, tiny_synth: Path) -> None:
    """The same camera at another resolution is resized; a longer lens or a shifted principal
    point is resampled along the same rays; a narrower view than the bundle's is refused."""
    image = torch.from_numpy(load_rgb(next((tiny_synth / "test" / "good").glob("*.png"))))  # the bundle's camera
    fx, fy, cx, cy = (float(inspector.K[0, 0]), float(inspector.K[1, 1]), float(inspector.K[0, 2]),
                      float(inspector.K[1, 2]))
    # Declared as the bundle's own camera: nothing changes.
    same = inspector.prepare(image.numpy(), (fx, fy, cx, cy))
    assert torch.allclose(same, image.clamp(0, 1))
    # The bundle's view inside a wider photo: pad the 64 px view to 96 px on a 1.5x larger
    # canvas (same focal length, principal point moved with the padding, off-centre).
    canvas = torch.ones(96, 96, 3)
    canvas[10:74, 20:84] = image
    mapped = inspector.prepare(canvas.numpy(), (fx, fy, cx + 20, cy + 10))
    assert float((mapped - image).abs().mean()) < 1e-4  # an integer shift: exact
    # Twice the resolution and twice the focal length with the same framing: a plain resize.
    big = torch.from_numpy(np.kron(image.numpy(), np.ones((2, 2, 1), np.float32)))
    assert float((inspector.prepare(big.numpy(), (2 * fx, 2 * fy, 2 * cx, 2 * cy)) - image).abs().mean()) < 0.01
    # A photo that sees less than the bundle's camera (a crop) cannot be mapped: refused.
    with pytest.raises(InspectionError, match="does not see all"):
        inspector.prepare(image[8:56, 8:56].numpy(), (fx, fy, cx - 8, cy - 8))
    with pytest.raises(InspectionError, match="finite"):
        inspector.prepare(image.numpy(), (0.0, fy, cx, cy))


def test_queries_stay_on_the_inspector_device(inspector: Inspector, queries) -> None:
    good, _ = queries
    batch = inspector.start(good.image[None])
    assert batch.images.device == inspector.device and batch.images_cpu.device.type == "cpu"
    inspector.locate(batch)
    assert batch.references.device == inspector.device and batch.poses.shape == (1, 4, 4)


def test_inspect_cli_prints_and_draws(tiny_release: Path, tiny_synth: Path, tmp_path: Path, inspector: Inspector,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from models.images import load_rgb

    good = min((tiny_synth / "test" / "good").glob("*.png"))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    out = tmp_path / "overlays"
    code = main(["inspect", str(tiny_release), str(good), str(text), "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 1  # one image failed; the other was still inspected
    assert f"{text}: error" in captured.err
    line = next(line for line in captured.out.splitlines() if line.startswith("{"))
    result = json.loads(line)
    assert result["image"] == str(good)
    # The printed result is the given photo's: the library inspects the same file to the same figures.
    expected = inspector.inspect(inspector.prepare(load_rgb(good, inspector.scene.background))[None])[0]
    assert result["score"] == pytest.approx(expected.score, rel=1e-4) and result["verdict"] == expected.verdict
    assert result["is_anomalous"] == expected.is_anomalous
    assert (out / f"{good.stem}_overlay.png").stat().st_size > 1000
    # Photos of one name from two folders (Burrs/000.png, Stains/000.png) each keep their figure.
    twin = tmp_path / "other" / good.name
    twin.parent.mkdir()
    twin.write_bytes(good.read_bytes())
    assert main(["inspect", str(tiny_release), str(good), str(twin), "--out", str(tmp_path / "twins")]) == 0
    printed = capsys.readouterr().out
    figures = sorted(p.name for p in (tmp_path / "twins").glob("*_overlay.png"))
    assert figures == sorted([f"{good.parent.name}_{good.stem}_overlay.png", f"other_{good.stem}_overlay.png"])
    assert printed.count("against threshold") == 2 and "0.5 is the threshold" in printed
    with pytest.raises(SystemExit) as exc:  # argparse: three numbers are not intrinsics
        main(["inspect", str(tiny_release), str(good), "--intrinsics", "1,2,3"])
    assert exc.value.code == 2 and "fx,fy,cx,cy" in capsys.readouterr().err


def test_refinement_needs_the_stored_views(inspector: Inspector) -> None:
    """A bundle whose gallery lacks the stored views and depths is refused at load in the
    default mode, with what to do; pose mode rpe still runs on it."""
    import copy
    import dataclasses

    estimator = copy.copy(inspector.estimator)
    estimator.gallery = dataclasses.replace(estimator.gallery, images=None, depths=None, K=None)
    parts = (inspector.scene, inspector.scorer, inspector.calibration, estimator, inspector.width, inspector.height,
             inspector.K)
    with pytest.raises(ValueError, match="stored views and depths.*rebuild"):
        Inspector(*parts, InspectorConfig(), inspector.device, "old")
    assert Inspector(*parts, InspectorConfig(pose="rpe"), inspector.device, "old").config.pose == "rpe"


def test_a_wrong_pose_is_sent_to_review(inspector: Inspector, queries, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever its score, a query whose reference is rendered at a wrong pose gets the
    verdict review, with the reason; the same query at its own pose verifies."""
    good, _ = queries
    assert good.w2c is not None
    # The tiny fixture's model renders at 64 px, where a quarter pixel of render error is
    # about a pixel at the check's 224: a bound of 6 px (under 2 px at 64) for it.
    monkeypatch.setattr(inspector.verify_stage, "cfg", VerifyConfig(max_misalignment_px=6.0))

    def locate_at(poses):
        def locate(batch):
            batch.poses = poses
        return locate

    monkeypatch.setattr(inspector, "locate", locate_at(good.w2c[None].double()))
    right = inspector.inspect(good.image[None])[0]
    monkeypatch.setattr(inspector, "locate", locate_at(roll_pose(good.w2c[None].double(), 40.0)))
    wrong = inspector.inspect(good.image[None])[0]
    assert right.verification.verified and right.verdict in ("normal", "anomalous")
    assert not wrong.verification.verified and wrong.verdict == "review" and "pose" in wrong.verification.reason
    # A threshold override keeps a review a review.
    assert wrong.decided(wrong.score * 10).verdict == "review" and right.decided(right.score * 10).verdict == "normal"


def test_the_bundles_camera_undistorts_its_photos_and_refuses_another(inspector: Inspector, tiny_synth: Path,
                                                                      tiny_release: Path, tmp_path: Path) -> None:
    """A bundle trained on prepared photos (``rpe-pad prepare``) records their lens and EXIF
    camera: a query of that camera is resized and undistorted as its training photos were (no
    torch op), one whose EXIF names another camera is refused, one without EXIF is trusted."""
    import shutil

    from torch.overrides import TorchFunctionMode

    from models.bundle import MANIFEST
    from models.images import resize_rgb, undistort

    bundle = tmp_path / tiny_release.name
    shutil.copytree(tiny_release, bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["camera"].update(lens_radial=[-0.2], exif_camera="Acme C1")  # as training writes a prepared category's
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    lensed = Inspector.load(bundle)
    image = load_rgb(next((tiny_synth / "test" / "good").glob("*.png")))
    big = np.ascontiguousarray(np.kron(image, np.ones((2, 2, 1), np.float32)))  # the same camera at 128 px

    class Calls(TorchFunctionMode):
        names: list = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.append(func)
            return func(*args, **(kwargs or {}))

    with Calls() as calls:
        out = lensed.prepare(big, exif_camera="Acme C1")
    assert calls.names == []
    want = undistort(resize_rgb(big, 64, 64), inspector.K.numpy(), [-0.2])
    assert np.allclose(out.numpy(), want, atol=1e-6)
    assert float((out - inspector.prepare(big)).abs().max()) > 0.05  # the lens moved the corners
    assert torch.equal(lensed.prepare(big), out)  # no EXIF: taken to be the bundle's camera
    with pytest.raises(InspectionError, match="taken with a Other Cam, but this bundle was trained on photos from a "
                                              "Acme C1"):
        lensed.prepare(big, exif_camera="Other Cam")
    fx, fy, cx, cy = (float(v) for v in (inspector.K[0, 0], inspector.K[1, 1], inspector.K[0, 2], inspector.K[1, 2]))
    assert lensed.prepare(image, (fx, fy, cx, cy), exif_camera="Other Cam").shape == (64, 64, 3)  # said how to map it


def test_compare_at_poses_can_align_the_render_as_the_refinement_does(inspector: Inspector, tiny_synth: Path) -> None:
    """The calibration's tail with ``align``: a render at a pose a few pixels off is warped
    onto its photograph before scoring, so it scores lower than unaligned and closer to the
    render at the true pose."""
    from models.camera import perturb_pose
    from models.inspector import compare_at_poses
    from models.refine import RefineConfig

    views = load_category(tiny_synth).train[:4]
    images = torch.stack([v.image for v in views])
    poses, Ks = torch.stack([v.w2c for v in views]), torch.stack([v.K for v in views])
    off = perturb_pose(poses, 2.0 / float(Ks[0, 0, 0]), 0.0, torch.Generator().manual_seed(0))  # about 2-3 px
    scene, scorer = inspector.scene, inspector.scorer
    _, own = compare_at_poses(scene, scorer, images, poses, Ks)
    _, plain = compare_at_poses(scene, scorer, images, off, Ks)
    _, aligned = compare_at_poses(scene, scorer, images, off, Ks, align=RefineConfig())
    assert aligned.mean() < plain.mean()
    assert (aligned - own).abs().mean() < (plain - own).abs().mean()


def test_category_info_states_the_operating_point(inspector: Inspector, tiny_heldout_bundles: Path,
                                                  tiny_release: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``GET /categories`` tells a client the stated false-alarm rate and how firmly the
    calibration's views pin the threshold, when the bundle's calibration has them."""
    quick = inspector.describe()
    assert quick.false_alarm_rate is None and quick.threshold_range is None and quick.false_alarm_range is None
    held = Inspector.load(tiny_heldout_bundles / tiny_release.name)
    info = held.describe()
    assert info.false_alarm_rate == 0.1 and info.threshold_range is None  # two held-out views: no range
    ranged = held.calibration.model_copy(update={"threshold_range": (0.5 * info.threshold, 2.0 * info.threshold),
                                                 "false_alarm_range": (0.0, 0.3)})
    monkeypatch.setattr(held, "calibration", ranged)
    info = held.describe()
    assert info.threshold_range == [0.5 * info.threshold, 2.0 * info.threshold] and info.false_alarm_range == [0.0, 0.3]


def test_a_query_camera_is_resampled_from_the_window_it_shares_with_the_bundle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A photo from another camera is read where the bundle's camera looks: the same focal
    length in a wider frame gives back the view exactly; a camera with half the bundle's pixels
    is enlarged over its window alone (enlarging the whole 6-megapixel photo 2x cost
    gigabytes for one mistyped focal length)."""
    from models import inspector

    width, height = 64, 48
    K = torch.tensor([[60.0, 0, 32.0], [0, 60.0, 24.0], [0, 0, 1]], dtype=torch.float64)
    view = torch.from_numpy(np.random.default_rng(0).random((height, width, 3), dtype=np.float32))
    canvas = torch.zeros(height + 300, width + 400, 3)
    canvas[11:11 + height, 17:17 + width] = view
    out = inspector._resample_camera(canvas, width, height, K, (60.0, 60.0, 32.0 + 17, 24.0 + 11))
    assert torch.allclose(out, view, atol=1e-4)

    enlarged = []
    interpolate = inspector.F.interpolate
    monkeypatch.setattr(inspector.F, "interpolate",
                        lambda x, size, **kw: enlarged.append(size) or interpolate(x, size=size, **kw))
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    smooth = torch.stack([xs, ys, (xs + ys) / 2], dim=-1)  # bilinear enlarging restores it inside
    half = torch.nn.functional.avg_pool2d(smooth.permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0)
    photo = torch.zeros(2000, 3000, 3)
    photo[500:500 + height // 2, 900:900 + width // 2] = half
    out = inspector._resample_camera(photo, width, height, K, (30.0, 30.0, 900 + 16.0, 500 + 12.0))
    (sh, sw), = enlarged
    assert sh * sw < 2 * width * height  # the window and its margin, not 4000 x 6000
    assert torch.allclose(out[2:-2, 2:-2], smooth[2:-2, 2:-2], atol=0.01)


def test_a_stage_on_cuda_is_timed_once_its_kernels_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA kernels run on after the call that queued them: a stage's clock stops after a
    synchronisation, or gsplat's render is charged to the stage after it."""
    import time

    from models.inspector import Batch
    from tests.fake_cuda import fake_cuda

    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(str(device)))
    with fake_cuda(monkeypatch):
        on_gpu = Batch(images=torch.zeros(1, 4, 4, 3).to("cuda"), Ks=torch.eye(3)[None], poses=torch.eye(4)[None])
        on_gpu.timed("render", time.perf_counter())
    on_cpu = Batch(images=torch.zeros(1, 4, 4, 3), Ks=torch.eye(3)[None], poses=torch.eye(4)[None])
    on_cpu.timed("render", time.perf_counter())
    assert synced == ["cuda:0"] and set(on_gpu.timings) == set(on_cpu.timings) == {"render"}
