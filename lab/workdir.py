"""An Inspector over a training work folder (``BUNDLES/.work/<category>``): stage outputs,
no manifest, nothing verified. For evaluating ablation variants and partial runs in the lab;
the product loads bundles only (``models.inspector.Inspector.load``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from models.bundle import FILES, WORK_FILES
from models.calibration import Calibration
from models.gallery import Gallery
from models.inspector import Inspector, InspectorConfig, pose_runtime_device, resolve_device
from models.irprn import load_irprn, load_irprn_config
from models.pose import PoseEstimator
from models.scoring import AnomalyScorer
from models.splat.scene import GaussianScene
from training.export import graphs_current


def pose_estimator(work_dir: Path, device: str = "auto", k: int | None = None) -> PoseEstimator:
    """IRPRN and the gallery of a work folder: ONNX Runtime when the exported graphs are
    current, else the PyTorch weights."""
    for needed in (work_dir / FILES["gallery"], work_dir / FILES["irprn_config"]):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing: build the pose stages first "
                                    "(rpe-pad train ... --stages rvss,irprn,gallery,onnx)")
    gallery = Gallery.load(work_dir / FILES["gallery"])
    kw = {} if k is None else {"k": k}
    if (work_dir / FILES["encoder"]).is_file() and graphs_current(work_dir):
        cfg, unit = load_irprn_config(work_dir / FILES["irprn_config"])
        return PoseEstimator.from_onnx(work_dir / FILES["encoder"], work_dir / FILES["pair_head"], gallery, unit,
                                       cfg.input_size, device=pose_runtime_device(resolve_device(device)), **kw)
    net, unit = load_irprn((work_dir / WORK_FILES["irprn_weights"]).parent)
    return PoseEstimator.from_torch(net, gallery, unit, **kw)


def camera_of(work_dir: Path) -> tuple[int, int, torch.Tensor]:
    """Image size and intrinsics of a work folder, from its stored gallery views."""
    gallery_path = work_dir / FILES["gallery"]
    if gallery_path.is_file():
        g = Gallery.load(gallery_path)
        if g.K is not None and g.images is not None:
            return int(g.images.shape[2]), int(g.images.shape[1]), g.K.double()
    raise FileNotFoundError(f"{work_dir}: no gallery views to read the camera from (build the gallery stage, or pass "
                            "the camera)")


def open_inspector(path: Path, config: InspectorConfig | None = None, device: str = "auto",
                   camera: tuple[int, int, torch.Tensor] | None = None, k: int | None = None) -> Inspector:
    """A bundle (verified, its manifest's settings overridden by ``config``'s pose and
    options) when ``path`` has a manifest, else a work folder. ``k``: gallery matches per
    query; ``None`` keeps the bundle's (a work folder has none: ``config.k``). ``camera``:
    (width, height, K) of the queries when the folder has no gallery to read them from."""
    config = config or InspectorConfig()
    path = Path(path)
    if (path / "manifest.json").exists():
        return Inspector.load(path, device, pose=config.pose, k=k, pose_options=config.pose_options)
    scene_path = path / FILES["scene"]
    if not scene_path.is_file():
        raise FileNotFoundError(f"{path}: neither a bundle (manifest.json) nor a training folder ({FILES['scene']})")
    calib_path = path / FILES["calibration"]
    if not calib_path.is_file():
        raise FileNotFoundError(f"{calib_path} is missing: run the calibration stage first")
    dev = resolve_device(device)
    scene = GaussianScene.load(scene_path, device=dev)
    calib = Calibration.model_validate_json(calib_path.read_text())
    if k is not None:
        config = replace(config, k=k)
    estimator = None if config.pose == "oracle" else pose_estimator(path, device, config.k)
    width, height, K = camera if camera is not None else camera_of(path)
    return Inspector(scene, AnomalyScorer.from_config(calib.scorer).to(dev), calib, estimator, width, height, K, config,
                     dev, path.name)
