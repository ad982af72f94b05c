"""The ``bundle`` stage of `rpe-pad train`: the work folder's stage outputs -> a bundle.

Reads ``BUNDLES_DIR/.work/<category>/`` (every earlier stage's output), checks that the
pieces belong together (ONNX graphs exported from the current IRPRN weights, gallery
features from the same network), and writes ``BUNDLES_DIR/<category>/`` atomically with
its manifest (``models.bundle``). Skipped when the bundle there is valid, was assembled
from the same files and carries this version's inference settings.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from models.bundle import FILES, GALLERY_VIEWS, REPORTS, WORK_FILES, BundleError, assemble, open_bundle, write_views_png
from models.calibration import Calibration
from models.data import Category
from models.gallery import NOVEL, TRAIN, Gallery
from models.hashing import sha256_file
from models.inspector import InspectorConfig
from models.irprn import SPECS
from models.splat.scene import GaussianScene
from models.version import package_version
from training.irprn import trained_holdout
from training.export import OPSET, graphs_current


def _sources(work: Path) -> dict[str, Path]:
    """Bundle path -> work-folder file, for every file copied as is."""
    missing = [rel for rel in FILES.values() if not (work / rel).is_file()]
    if missing:
        raise FileNotFoundError(f"{work}: cannot assemble a bundle, missing {missing}: run the earlier stages")
    weights = work / WORK_FILES["irprn_weights"]
    if not graphs_current(work):
        raise ValueError(f"{work}: the ONNX graphs were not exported from the current IRPRN weights: run the onnx stage")
    gallery_key = json.loads((work / REPORTS["gallery"]).read_text()).get("key", {})
    if gallery_key.get("weights_sha256") not in (None, sha256_file(weights)):
        raise ValueError(f"{work}: the gallery was built with other IRPRN weights: run the gallery stage")
    copy = {rel: work / rel for rel in FILES.values()}
    copy.update({rel: work / rel for rel in REPORTS.values() if (work / rel).is_file()})
    return copy


def _compact(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("config", "scores", "key", "history", "psnr_test", "per_output")}


def _json(path: Path):
    return json.loads(path.read_text())


def _read(path: Path, read):
    """``read(path)``; a stage output that does not read (hand-edited, cut short) is one line
    naming it, not the parser's dump."""
    try:
        return read(path)
    except OSError:
        raise  # the disk's or the network's failure, not the file's content: retried, not blamed
    except Exception as exc:  # noqa: BLE001 - whatever the reader raises, the file is named
        lines = str(exc).strip().splitlines()
        raise ValueError(f"{path}: does not read ({type(exc).__name__}: {lines[0] if lines else 'no detail'}); run "
                         "the stage that writes it again") from exc


def manifest_fields(category: Category, work: Path, preset: str, calib_cfg) -> dict:
    """The manifest's descriptive fields, read from the work folder's stage outputs."""
    scene = _read(work / FILES["scene"], GaussianScene.load)
    irprn = _read(work / FILES["irprn_config"], _json)
    calib = _read(work / FILES["calibration"], lambda path: Calibration.model_validate_json(path.read_text()))
    gallery = _read(work / FILES["gallery"], Gallery.load)
    reports = {stage: _read(work / rel, _json) for stage, rel in sorted(REPORTS.items())
               if rel.endswith(".json") and (work / rel).is_file()}
    spec = SPECS.get(irprn["model"]["backbone"])
    mean, std = (spec.mean, spec.std) if spec else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    splats_cfg = _read(work / WORK_FILES["splats_config"], _json)
    rvss_path = work / WORK_FILES["rvss_config"]
    rvss_cfg = _read(rvss_path, _json) if rvss_path.is_file() else None
    return {
        "software": f"rpe-pad {package_version()}",
        "camera": {"width": category.width, "height": category.height, "K": category.K.tolist(),
                   "camera_angle_x": category.camera_angle_x, "background": tuple(category.background),
                   "lens_radial": list(category.lens) if category.lens else None, "exif_camera": category.exif_camera,
                   "lossy_photos": category.lossy_photos},
        "scene": {"normalization": scene.normalization, "scene_unit": irprn["scene_unit"],
                  "num_gaussians": scene.num_gaussians, "sh_degree": scene.sh_degree, "semantics": scene.semantics},
        "models": {
            "splats": {"sh_degree": scene.sh_degree, "num_gaussians": scene.num_gaussians, "semantics": scene.semantics},
            "irprn": {"arguments": irprn["model"], "scene_unit": irprn["scene_unit"], "onnx_opset": OPSET,
                      "encoder": {"inputs": {"images": ["batch", 3, irprn["model"]["input_size"], irprn["model"]["input_size"]]},
                                  "outputs": ["features"]},
                      "pair_head": {"inputs": ["query", "gallery"], "outputs": ["q", "t"]},
                      "preprocessing": {"input": "RGB float in [0, 1]", "resize": "bilinear, antialiased",
                                        "size": irprn["model"]["input_size"], "mean": list(mean), "std": list(std),
                                        "normalised": "inside the encoder graph"},
                      "onnx_parity_max_abs_diff": reports.get("onnx", {}).get("max_abs_diff")},
            "scorer": calib.scorer,
        },
        "training": {"preset": preset, "splats": splats_cfg, "calibration": asdict(calib_cfg), "rvss": rvss_cfg,
                     "irprn": irprn.get("train")},
        "calibration": {"rule": calib.rule, "threshold": calib.threshold, "score_floor": calib.score_floor,
                        "pixel_floor": calib.pixel_floor},
        "inference": InspectorConfig().to_dict(),
        "gallery": {"n_views": len(gallery), "n_train": int((gallery.source == TRAIN).sum()),
                    "n_novel": int((gallery.source == NOVEL).sum()), "names": gallery.names,
                    "descriptor": {"grid": gallery.grid, "rule": "encoder features average-pooled to grid x grid, "
                                   "flattened, L2-normalised; retrieval by cosine similarity"},
                    "views_png": f"{GALLERY_VIEWS}/NNNN.png, in gallery order"},
        "summary": {stage: _compact(rep) for stage, rep in reports.items()},
    }


def run_bundle_stage(category: Category, work: Path, bundles_dir: Path, preset: str, calib_cfg,
                     progress: bool = True) -> dict:
    start = time.perf_counter()
    held = trained_holdout((work / FILES["irprn_config"]).parent)
    if held:
        raise ValueError(f"{work}: IRPRN was trained with {held} training views held out (a validation run, "
                         "rpe-pad lab train --holdout); retrain it on every view before building a bundle")
    copy = _sources(work)
    target = bundles_dir / category.name
    hashes = {rel: sha256_file(src) for rel, src in copy.items()}
    try:
        existing = open_bundle(target)
        # Reused only when its files are these and it runs with this version's inference
        # settings (a bundle from before a refinement change is re-assembled, not kept).
        if (existing.inference == InspectorConfig().to_dict()
                and all(rel in existing.files and existing.files[rel].sha256 == sha for rel, sha in hashes.items())):
            return {"bundle": str(target), "skipped": True, "files": len(existing.files),
                    "bytes": sum(f.bytes for f in existing.files.values())}
    except BundleError:
        pass
    fields = manifest_fields(category, work, preset, calib_cfg)
    gallery = _read(work / FILES["gallery"], Gallery.load)

    def views(tmp: Path) -> None:
        if gallery.images is not None:
            write_views_png(gallery.images.numpy(), tmp / GALLERY_VIEWS)

    out = assemble(bundles_dir, category.name, copy, fields, extra_writers=[views])
    manifest = open_bundle(out)  # what a service will do: prove it loads
    return {"bundle": str(out), "files": len(manifest.files), "bytes": sum(f.bytes for f in manifest.files.values()),
            "seconds": round(time.perf_counter() - start, 1)}
