"""Camera poses of photos by structure-from-motion (COLMAP through pycolmap).

One camera shared by every photo (``CameraMode.SINGLE``), SIFT with domain-size pooling and
affine shape estimation (COLMAP's advice for wide baselines: object photos are taken tens of
degrees apart), exhaustive matching (a few hundred photos at most), incremental mapping.
The principal point stays at the image centre (COLMAP's default), which is the camera of
``transforms.json``. Poses come out world-to-camera in OpenCV axes, the project's convention
(``models/camera.py``), in COLMAP's arbitrary frame: ``training.prepare.frame`` normalises it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap
from PIL import Image

from models import registry
from training.prepare.photos import Photo, PrepareError
from training.prepare.verify import verify

log = logging.getLogger(__name__)

CAMERA_MODELS = tuple(registry.CAMERA_MODELS)  # one focal length each, principal point at the centre
MIN_KEYPOINTS = 100  # below this a photo is reported as having too few features
MIN_PAIR_INLIERS = 15  # COLMAP's default for a verified pair


class NoStart(PrepareError):
    """Structure-from-motion found no pair of photos to start a model from."""


@dataclass
class Camera:
    model: str
    width: int
    height: int
    focal: float  # pixels
    distortion: tuple[float, ...]  # SIMPLE_RADIAL: (k1,); RADIAL: (k1, k2); SIMPLE_PINHOLE: ()

    def distortion_px(self) -> float:
        """How far the distortion moves the image corner (pixels)."""
        r2 = ((self.width / 2) ** 2 + (self.height / 2) ** 2) / self.focal**2
        k = (*self.distortion, 0.0, 0.0)
        return abs(k[0] * r2 + k[1] * r2**2) * math.sqrt(r2) * self.focal


@dataclass
class Reconstruction:
    camera: Camera
    w2c: dict[str, np.ndarray]  # photo name -> [4, 4] world-to-camera, OpenCV axes
    reprojection_px: dict[str, float]  # photo name -> mean reprojection error of its points
    points: np.ndarray  # [P, 3] sparse points seen by at least 3 photos
    unregistered: dict[str, str] = field(default_factory=dict)  # photo name -> why not
    silhouette: dict[str, float] = field(default_factory=dict)  # photo name -> share of points inside its mask
    replaced: list[str] = field(default_factory=list)  # photos whose pose the silhouette refuted, placed again
    seconds: dict[str, float] = field(default_factory=dict)


def reconstruct(photos: list[Photo], work: Path, masks: dict[str, np.ndarray], camera_model: str = "SIMPLE_RADIAL",
                focal: float | None = None, threads: int = -1,
                step: Callable[[str], None] | None = None) -> Reconstruction:
    """Run structure-from-motion on ``photos`` (one size) in ``work``; the largest model wins,
    its poses are checked against the object ``masks`` (by photo name; ``verify``), and every
    photo outside it is listed in ``unregistered`` with the reason."""
    if camera_model not in CAMERA_MODELS:
        raise PrepareError(f"camera model {camera_model!r} is not supported; choose one of {', '.join(CAMERA_MODELS)}")
    # COLMAP's log (glog) to stderr alone: by default it also writes files to /tmp that no run
    # removes. Its errors only with RPEPAD_DEBUG; otherwise the caller reports in its own words.
    pycolmap.logging.logtostderr = True
    pycolmap.logging.minloglevel = 1 if os.environ.get("RPEPAD_DEBUG") else 3
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = {f"{i:04d}.png": p.name for i, p in enumerate(photos)}
    for file, photo in zip(names, photos):
        Image.fromarray(photo.rgb).save(images / file, compress_level=1)
    database = work / "database.db"
    database.unlink(missing_ok=True)
    height, width = photos[0].rgb.shape[:2]

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    if focal is not None:
        extra = {"SIMPLE_RADIAL": ",0", "RADIAL": ",0,0", "SIMPLE_PINHOLE": ""}[camera_model]
        reader.camera_params = f"{focal},{width / 2},{height / 2}{extra}"
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = threads
    extraction.sift.estimate_affine_shape = True
    extraction.sift.domain_size_pooling = True
    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.num_threads = threads
    # A given focal length starts the estimate and is refined with it: a wrong one (a typo, or
    # millimetres) held fixed would bend every pose; the report compares the two.
    mapping.ba_refine_focal_length = True
    mapping.random_seed = 0
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = 0  # the same photos register the same way on every run
    pycolmap.set_random_seed(0)

    seconds = {}
    start = time.perf_counter()
    (step or _no_step)("features")
    pycolmap.extract_features(database, images, image_names=list(names), camera_mode=pycolmap.CameraMode.SINGLE,
                              reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)
    seconds["features"] = time.perf_counter() - start
    (step or _no_step)("matching")
    pycolmap.match_exhaustive(database, verification_options=verification, device=pycolmap.Device.cpu)
    seconds["matching"] = time.perf_counter() - start - seconds["features"]
    (step or _no_step)("mapping")
    models = pycolmap.incremental_mapping(database, images, work / "sparse", mapping)
    seconds["mapping"] = time.perf_counter() - start - seconds["features"] - seconds["matching"]
    if not models:
        raise NoStart("structure-from-motion found no two photos to start from: the photos share too few "
                           "features (a plain, textureless or shiny object; too far apart in angle; or all from one "
                           "viewpoint). Take more photos with more overlap, 10-15 degrees apart")
    best = max(models.values(), key=lambda m: m.num_reg_images())
    unregistered = _why_unregistered(database, models, best, names)
    (step or _no_step)("checking poses against the silhouettes")
    verdicts = verify(best, str(database), {file: masks[name] for file, name in names.items()})
    seconds["silhouette check"] = time.perf_counter() - start - sum(seconds.values())
    best.write_text(str(work / "sparse"))  # readable next to the category, for COLMAP's GUI or other tools
    result = _read_model(best, names)
    for v in verdicts:
        name = names[v.file]
        result.silhouette[name] = v.share
        if v.removed:
            unregistered[name] = v.removed
        elif v.replaced:
            result.replaced.append(name)
            result.reprojection_px[name] = v.reprojection_px
    result.unregistered = unregistered
    result.seconds = seconds
    return result


def _no_step(name: str) -> None:
    pass


def _read_model(model: pycolmap.Reconstruction, names: dict[str, str]) -> Reconstruction:
    (cam,) = model.cameras.values()
    params = [float(v) for v in cam.params]
    camera = Camera(cam.model_name, int(cam.width), int(cam.height), params[0], tuple(params[3:]))
    w2c, errors = {}, {}
    for image in model.images.values():
        if not image.has_pose:
            continue
        pose = np.eye(4)
        pose[:3] = image.cam_from_world().matrix()
        name = names[image.name]
        w2c[name] = pose
        residuals = [
            np.linalg.norm(np.asarray(image.project_point(model.points3D[p.point3D_id].xyz)) - np.asarray(p.xy))
            for p in image.points2D if p.has_point3D()
        ]
        errors[name] = float(np.mean(residuals)) if residuals else float("nan")
    points = np.array([p.xyz for p in model.points3D.values() if p.track.length() >= 3]).reshape(-1, 3)
    return Reconstruction(camera, w2c, errors, points)


def _why_unregistered(database: Path, models: dict, best: pycolmap.Reconstruction,
                      names: dict[str, str]) -> dict[str, str]:
    placed = {best.images[i].name for i in best.reg_image_ids()}
    elsewhere = {}
    for model in models.values():
        if model is best:
            continue
        for i in model.reg_image_ids():
            elsewhere[model.images[i].name] = model.num_reg_images()
    reasons = {}
    with pycolmap.Database.open(database) as db:
        ids = {image.name: image.image_id for image in db.read_all_images()}
        pair_ids, inliers = db.read_two_view_geometry_num_inliers()
        partners: dict[int, int] = {}
        for pair_id, count in zip(pair_ids, inliers):
            if count < MIN_PAIR_INLIERS:
                continue
            a, b = pycolmap.pair_id_to_image_pair(pair_id)
            partners[a] = partners.get(a, 0) + 1
            partners[b] = partners.get(b, 0) + 1
        for file, name in names.items():
            if file in placed:
                continue
            keypoints = db.num_keypoints_for_image(ids[file]) if file in ids else 0
            if keypoints < MIN_KEYPOINTS:
                reasons[name] = (f"too few features ({keypoints} keypoints): blurred, plain, or the object is too "
                                 "small in the frame")
            elif not partners.get(ids[file]):
                reasons[name] = "matches no other photo: take photos closer together in angle around this one"
            elif file in elsewhere:
                reasons[name] = (f"fits only a separate group of {elsewhere[file]} photos, not the main model: the "
                                 "object may have moved, or the views between the groups are missing")
            else:
                reasons[name] = (f"matches {partners[ids[file]]} photo(s) but could not be placed: too few of its "
                                 "features are on the reconstructed object")
    return reasons
