"""The one inspection pipeline: match -> pose -> (refine) -> render -> score -> decide.

``Inspector.load(bundle_dir)`` rebuilds everything from a verified bundle
(``models.bundle``) on a device (CUDA when present, else the CPU); ``Inspector.inspect``
takes a batch of query images and returns one ``Inspection`` per image. ``rpe-pad
evaluate``, ``rpe-pad inspect``, the benchmarks and the service all call this class;
nothing else chains the stages.

Pose modes (``POSE_MODES``, pluggable through ``InspectorConfig.pose``):

- ``rpe+refine`` (the default, the best measured: docs/REFINE.md): IRPRN's pose from the
  gallery matches (``models.pose``), then the refiners of ``models.refine`` (default
  ``gpnp+ecc``: PnP against the matched gallery views, the one render at that pose,
  polishing PnPs applied by warping it with its depth, a guarded ECC warp); the refiner's
  final render (or warp) at the returned pose is the reference when it is at the bundle's
  size, so no render is repeated;
- ``rpe``: IRPRN's fused pose, no refinement;
- ``retrieval``: the best-matching gallery view's pose;
- ``iterative``: the peers' per-query render-and-compare (SplatPose / iNeRF style) from
  the retrieval pose (``models.refine.iterative_refine``): the slow baseline;
- ``oracle``: the true pose, given by the caller (evaluation upper bound).

Conventions: images ``[B, H, W, 3]`` RGB float in [0, 1] at the bundle's size
(``prepare`` resizes an upload); poses 4 x 4 world-to-camera, OpenCV axes
(``models/camera.py``); quaternions wxyz.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.bundle import FILES, BundleError, Manifest, find_bundles, open_bundle
from models.calibration import Calibration
from models.camera import rotmat_to_quat
from models.gallery import Gallery
from models.irprn import load_irprn_config
from models.pose import DEFAULT_K, PoseEstimator
from models.refine import (
    IterativeConfig,
    RefineConfig,
    ecc_align,
    gallery_features,
    gallery_pnp_refine,
    iterative_refine,
    photometric_refine,
    pnp_refine,
)
from models.scoring import AnomalyScorer
from models.splat.scene import GaussianScene, render
from models.viz import side_by_side

Tensor = torch.Tensor
POSE_MODES = ("oracle", "retrieval", "iterative", "rpe", "rpe+refine")
DEFAULT_POSE = "rpe+refine"
ASPECT_TOLERANCE = 0.02  # relative difference of width/height accepted when resizing a query


class InspectionError(ValueError):
    """A query the pipeline cannot inspect (wrong shape, aspect ratio, missing true pose)."""


@dataclass(frozen=True)
class InspectorConfig:
    pose: str = DEFAULT_POSE  # how query poses are found: one of POSE_MODES
    refine: RefineConfig = field(default_factory=RefineConfig)  # the refiners for rpe+refine
    iterative: IterativeConfig = field(default_factory=IterativeConfig)  # the peers' optimisation (iterative)
    fusion: str = "mean"  # how IRPRN's K poses are fused (models/pose.py)
    k: int = DEFAULT_K  # gallery matches per query (models.pose)
    backend: str = "auto"  # IRPRN runtime: auto (ONNX when exported) | onnx | torch (work folders only)
    tolerance: int | None = None  # scorer comparison radius override; then no calibrated decision

    def __post_init__(self) -> None:
        if self.pose not in POSE_MODES:
            raise ValueError(f"pose mode {self.pose!r} is not available; available: {list(POSE_MODES)}")

    def to_dict(self) -> dict:
        return {"pose": self.pose, "refine": self.refine.__dict__ if self.pose == "rpe+refine" else None,
                "iterative": self.iterative.__dict__ if self.pose == "iterative" else None,
                "fusion": self.fusion, "k": self.k, "backend": self.backend, "tolerance": self.tolerance}


@dataclass
class Inspection:
    """One query's result."""

    score: float  # raw image score: the maximum of the anomaly map
    normalised_score: float | None  # in [0, 1], 0.5 at the threshold (None without calibration)
    is_anomalous: bool | None  # score > threshold (None without calibration)
    threshold: float | None  # the threshold used
    anomaly_map: np.ndarray  # [H, W] float32, raw units
    pose: np.ndarray  # [4, 4] float64 world-to-camera used for the reference
    gallery_ids: list[int]  # matched gallery views, best first (empty for oracle)
    gallery_names: list[str]
    similarities: list[float]
    reference: np.ndarray  # [H, W, 3] float32: the normal view the query was compared with
    timings_ms: dict[str, float]  # per stage, this image's share of its batch
    refine: dict = field(default_factory=dict)  # what the refiners did
    calibration: Calibration | None = None

    @property
    def quaternion(self) -> list[float]:
        """Rotation of ``pose`` as a unit quaternion, wxyz."""
        return [float(v) for v in rotmat_to_quat(torch.from_numpy(self.pose[:3, :3]))]

    @property
    def translation(self) -> list[float]:
        return [float(v) for v in self.pose[:3, 3]]

    def with_threshold(self, threshold: float | None) -> Inspection:
        """The same inspection decided at another threshold (None: the calibrated one);
        raises ``InspectionError`` for a threshold the calibration cannot use."""
        if threshold is None:
            return self
        t = resolve_threshold(self.calibration, threshold)
        return replace(self, threshold=t, is_anomalous=bool(self.score > t),
                       normalised_score=float(self.calibration.normalise(self.score, t)))

    def normalised_map(self) -> np.ndarray | None:
        """The map normalised to [0, 1], 0.5 at the threshold: ``> 0.5`` is the decision mask."""
        if self.calibration is None:
            return None
        return self.calibration.normalise_map(self.anomaly_map, self.threshold)

    def summary(self) -> dict:
        """JSON-ready fields (no arrays but the pose)."""
        return {
            "score": round(self.score, 4),
            "normalised_score": None if self.normalised_score is None else round(self.normalised_score, 4),
            "is_anomalous": self.is_anomalous,
            "threshold": None if self.threshold is None else round(self.threshold, 4),
            "pose": {"world_to_camera": [[round(float(v), 6) for v in row] for row in self.pose],
                     "quaternion_wxyz": [round(v, 6) for v in self.quaternion],
                     "translation": [round(v, 6) for v in self.translation]},
            "gallery_matches": [{"id": i, "name": n, "similarity": round(s, 4)}
                                for i, n, s in zip(self.gallery_ids, self.gallery_names, self.similarities)],
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
            "refine": self.refine,
        }


def resolve_threshold(calibration: Calibration | None, threshold: float) -> float:
    """A caller's threshold override, checked against the calibration (InspectionError if unusable)."""
    if calibration is None:
        raise InspectionError("a threshold override needs a calibrated bundle")
    try:
        return calibration.resolve(threshold)
    except ValueError as exc:
        raise InspectionError(str(exc)) from exc


def resolve_device(device: str = "auto") -> torch.device:
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA GPU")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


class Inspector:
    """A category's loaded models and the pipeline over them."""

    def __init__(self, scene: GaussianScene, scorer: AnomalyScorer, calibration: Calibration | None,
                 estimator: PoseEstimator | None, width: int, height: int, K: Tensor, config: InspectorConfig,
                 device: torch.device, name: str, manifest: Manifest | None = None):
        if config.pose != "oracle" and estimator is None:
            raise ValueError(f"pose mode {config.pose!r} needs IRPRN and the gallery")
        self.scene, self.scorer, self.calibration, self.estimator = scene, scorer, calibration, estimator
        self.width, self.height, self.K = width, height, K.double()
        self.config, self.device, self.name, self.manifest = config, device, name, manifest
        self._gallery_keypoints: dict = {}  # gpnp: the gallery views' keypoints
        rcfg = config.refine
        if config.pose == "rpe+refine" and rcfg.uses_gallery_pnp:
            if estimator.gallery.images is None:
                raise ValueError(f"refinement {rcfg.method!r} needs the gallery's stored views and depths, which this "
                                 "bundle lacks: rebuild it with rpe-pad train (the gallery stage), or refine with "
                                 "pnp+ecc (--refine pnp+ecc, RPEPAD_REFINE=pnp+ecc)")
            gallery_features(estimator.gallery, rcfg, self._gallery_keypoints)  # once, not per query

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(cls, bundle_dir: Path, config: InspectorConfig | None = None, device: str = "auto") -> Inspector:
        """From a bundle, after checking it completely (``models.bundle.open_bundle``)."""
        bundle_dir = Path(bundle_dir)
        manifest = open_bundle(bundle_dir)
        config = config or InspectorConfig()
        if config.backend == "torch":
            raise ValueError("bundles carry IRPRN as ONNX only: use backend auto or onnx")
        dev = resolve_device(device)
        scene = GaussianScene.load(bundle_dir / FILES["scene"], device=dev)
        calib = Calibration.model_validate_json((bundle_dir / FILES["calibration"]).read_text())
        scorer, calib = _scorer(calib, config.tolerance)
        estimator = None
        if config.pose != "oracle":
            irprn, unit = load_irprn_config(bundle_dir / FILES["irprn_config"])
            gallery = Gallery.load(bundle_dir / FILES["gallery"])
            estimator = PoseEstimator.from_onnx(
                bundle_dir / FILES["encoder"], bundle_dir / FILES["pair_head"], gallery, unit, irprn.input_size,
                device=device, translation=irprn.translation,
                k=config.k, fusion=config.fusion, scene=scene)
        cam = manifest.camera
        return cls(scene, scorer.to(dev), calib, estimator, cam.width, cam.height, torch.tensor(cam.K), config, dev,
                   manifest.category, manifest)

    @classmethod
    def from_work_dir(cls, work_dir: Path, config: InspectorConfig | None = None, device: str = "auto",
                      camera: tuple[int, int, Tensor] | None = None) -> Inspector:
        """From a training work folder (stage outputs, no manifest, nothing verified): for
        evaluating partial or ablation runs. Services load bundles only. ``camera``:
        (width, height, K) of the queries when the folder has no gallery to read them from."""
        work_dir = Path(work_dir)
        config = config or InspectorConfig()
        dev = resolve_device(device)
        scene_path = work_dir / FILES["scene"]
        if not scene_path.is_file():
            raise FileNotFoundError(f"{work_dir}: neither a bundle (manifest.json) nor a training folder ({FILES['scene']})")
        scene = GaussianScene.load(scene_path, device=dev)
        calib_path = work_dir / FILES["calibration"]
        calib = Calibration.model_validate_json(calib_path.read_text()) if calib_path.is_file() else None
        scorer, calib = _scorer(calib, config.tolerance)
        estimator = None
        if config.pose != "oracle":
            estimator = PoseEstimator.from_bundle(work_dir, backend=config.backend, device=device, k=config.k,
                                                  fusion=config.fusion, scene=scene)
        width, height, K = camera if camera is not None else _camera_of(work_dir)
        return cls(scene, scorer.to(dev), calib, estimator, width, height, K, config, dev, work_dir.name)

    @classmethod
    def open(cls, path: Path, config: InspectorConfig | None = None, device: str = "auto",
             camera: tuple[int, int, Tensor] | None = None) -> Inspector:
        """A bundle when ``path`` has a manifest, else a training work folder."""
        if (Path(path) / "manifest.json").exists():
            return cls.load(path, config, device)
        return cls.from_work_dir(path, config, device, camera)

    # ------------------------------------------------------------ the pipeline
    def prepare(self, image: np.ndarray) -> Tensor:
        """An RGB float image ``[H, W, 3]`` of any size with the bundle's aspect ratio ->
        ``[h, w, 3]`` at the bundle's size (antialiased bilinear)."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise InspectionError(f"expected an RGB image [H, W, 3], got shape {tuple(image.shape)}")
        h, w = image.shape[:2]
        want, got = self.width / self.height, w / h
        if abs(got / want - 1) > ASPECT_TOLERANCE:
            raise InspectionError(f"image is {w} x {h} (aspect {got:.3f}); category {self.name!r} needs aspect "
                                  f"{want:.3f} ({self.width} x {self.height} or a multiple)")
        t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        if (h, w) != (self.height, self.width):
            t = F.interpolate(t.permute(2, 0, 1)[None], size=(self.height, self.width), mode="bilinear",
                              antialias=True, align_corners=False)[0].permute(1, 2, 0)
        return t.clamp(0, 1).contiguous()

    @torch.no_grad()
    def inspect(self, images: Tensor, true_poses: Tensor | None = None, threshold: float | None = None) -> list[Inspection]:
        """Inspect ``images [B, H, W, 3]`` (at the bundle's size: see ``prepare``).

        ``true_poses [B, 4, 4]``: for pose mode ``oracle`` only. ``threshold``: overrides
        the calibrated one for the decision and the normalisation."""
        if images.ndim != 4 or images.shape[1:] != (self.height, self.width, 3):
            raise InspectionError(f"expected images [B, {self.height}, {self.width}, 3], got {tuple(images.shape)}")
        if threshold is not None:
            resolve_threshold(self.calibration, threshold)  # fail before any work
        cfg = self.config
        b = len(images)
        images = images.float().cpu()
        Ks = self.K[None].expand(b, 3, 3).clone()
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        ids = sims = None
        refine_info: list[dict] = [{} for _ in range(b)]
        if cfg.pose == "oracle":
            if true_poses is None or true_poses.shape != (b, 4, 4):
                raise InspectionError("pose mode 'oracle' needs the true poses [B, 4, 4]")
            poses = true_poses.double().cpu()
        else:
            mode = {"rpe+refine": "rpe", "iterative": "retrieval"}.get(cfg.pose, cfg.pose)
            result = self.estimator.estimate(images, mode=mode, Ks=Ks)
            poses, ids, sims = result.poses, result.gallery_ids, result.similarities
            timings.update(result.timings_ms)
        if cfg.pose == "iterative":
            t0 = time.perf_counter()
            poses = iterative_refine(self.scene, images, poses, Ks, cfg.iterative)
            timings["optimise"] = 1000 * (time.perf_counter() - t0)
        refine_ms = render_ms = 0.0
        rcfg = cfg.refine
        refining = cfg.pose == "rpe+refine" and rcfg.method != "none"
        rendered: Tensor | None = None  # PnP's verification renders at the final poses, when at our size
        stale: list[int] = []  # queries whose pose changed after those renders
        if refining and (rcfg.uses_pnp or rcfg.uses_gallery_pnp):
            t0 = time.perf_counter()
            if rcfg.uses_pnp:
                pnp = pnp_refine(self.scene, images, poses, Ks, rcfg)
            else:
                pnp = gallery_pnp_refine(self.scene, self.estimator.gallery, images, poses, Ks, ids, rcfg,
                                         cache=self._gallery_keypoints)
            poses = pnp.poses
            render_ms = pnp.render_ms  # the render the unrefined pipeline makes too: counted as "render"
            if pnp.renders is not None and pnp.renders.shape[1:3] == (self.height, self.width):
                rendered = torch.from_numpy(pnp.renders)
            for i in range(b):
                refine_info[i].update(pnp_accepted=pnp.accepted[i], pnp_inliers=pnp.inliers[i], pnp_reason=pnp.reasons[i])
                if pnp.paths:
                    refine_info[i]["pnp_path"] = pnp.paths[i]
            if rcfg.photometric:  # render-and-compare where PnP could not correct the pose
                failed = [i for i in range(b) if not pnp.accepted[i]]
                photo = photometric_refine(self.scene, images, poses, Ks, rcfg, todo=failed)
                poses = photo.poses
                stale = [i for i in failed if photo.accepted[i]]
                for i in failed:
                    refine_info[i].update(photo_accepted=photo.accepted[i], photo_reason=photo.reasons[i])
            refine_ms += 1000 * (time.perf_counter() - t0) - render_ms
        t0 = time.perf_counter()
        if rendered is None:
            ref = render(self.scene, poses.float(), Ks.float(), self.width, self.height).colors.clamp(0, 1).cpu()
        else:  # the reference is PnP's last verification render: no second render of the same pose
            ref = rendered.clone()
            if stale:
                ref[stale] = render(self.scene, poses[stale].float(), Ks[stale].float(), self.width,
                                    self.height).colors.clamp(0, 1).cpu()
        timings["render"] = 1000 * (time.perf_counter() - t0) + render_ms
        if refining and rcfg.uses_ecc:
            t0 = time.perf_counter()
            warped = []
            for i, (qi, ri) in enumerate(zip(images.numpy(), ref.numpy())):
                w, info = ecc_align(qi, ri, rcfg)
                warped.append(torch.from_numpy(np.ascontiguousarray(w)))
                refine_info[i].update(ecc_accepted=info["accepted"], ecc_shift_px=info["shift_px"],
                                      ecc_reason=info.get("reason", ""))
            ref = torch.stack(warped)
            refine_ms += 1000 * (time.perf_counter() - t0)
        if refining:
            timings["refine"] = refine_ms
        t0 = time.perf_counter()
        maps, scores = self.scorer(images.to(self.device), ref.to(self.device))
        maps, scores = maps.cpu(), scores.cpu()
        timings["score"] = 1000 * (time.perf_counter() - t0)
        timings["total"] = 1000 * (time.perf_counter() - t_start)
        per_image = {k: v / b for k, v in timings.items()}
        calib = self.calibration
        names = self.estimator.gallery.names if self.estimator is not None else []
        out = []
        for i in range(b):
            score = float(scores[i])
            gids = [] if ids is None else [int(g) for g in ids[i]]
            out.append(Inspection(
                score=score,
                normalised_score=None if calib is None else float(calib.normalise(score, threshold)),
                is_anomalous=None if calib is None else bool(calib.decide(score, threshold)),
                threshold=None if calib is None else float(calib.resolve(threshold)),
                anomaly_map=maps[i].numpy().astype(np.float32),
                pose=poses[i].double().numpy(),
                gallery_ids=gids,
                gallery_names=[names[g] for g in gids],
                similarities=[] if sims is None else [float(s) for s in sims[i]],
                reference=ref[i].numpy(),
                timings_ms=dict(per_image),
                refine=refine_info[i],
                calibration=calib,
            ))
        return out

    def figure(self, image: np.ndarray, inspection: Inspection, title: str = "") -> Image.Image:
        """query | rendered reference | anomaly overlay with the decision contour."""
        norm = inspection.normalised_map()
        if norm is None:  # uncalibrated: scale by this map's own maximum
            norm = inspection.anomaly_map / max(float(inspection.anomaly_map.max()), 1e-12)
        verdict = {True: "ANOMALOUS", False: "normal", None: "no threshold"}[inspection.is_anomalous]
        caption = f"{verdict}: {inspection.score:.0f}" + ("" if inspection.threshold is None else f" / {inspection.threshold:.0f}")
        return side_by_side(image, inspection.reference, norm, title=title,
                            captions=("query", "rendered reference", caption))

    def warm_up(self, batch: int = 1) -> float:
        """Run one batch of ``batch`` of the gallery's own views through the pipeline, so
        that buffers, ONNX sessions and caches exist before the first real query (the
        service does this before it reports ready); returns the seconds it took. Nothing to
        do in pose mode ``oracle`` (evaluation only: no gallery)."""
        if self.estimator is None:
            return 0.0
        gallery = self.estimator.gallery
        if gallery.images is not None and gallery.images.shape[1:3] == (self.height, self.width):
            images = gallery.images[torch.arange(batch) % len(gallery)].float() / 255.0
        else:
            images = torch.full((batch, self.height, self.width, 3), 0.5)
        start = time.perf_counter()
        self.inspect(images)
        return time.perf_counter() - start

    def describe(self) -> dict:
        """What a client needs to know about the loaded category."""
        m = self.manifest
        return {
            "category": self.name,
            "bundle_format_version": m.format_version if m else None,
            "bundle_created": m.created.isoformat() if m else None,
            "image_size": [self.width, self.height],
            "gallery_size": len(self.estimator.gallery) if self.estimator is not None else 0,
            "threshold": None if self.calibration is None else self.calibration.threshold,
            "pose_mode": self.config.pose,
            "device": str(self.device),
        }


def _scorer(calib: Calibration | None, tolerance: int | None) -> tuple[AnomalyScorer, Calibration | None]:
    """The calibrated scorer, or (with another tolerance) a fresh one and no calibration."""
    if calib is not None and (tolerance is None or tolerance == calib.scorer["tolerance"]):
        return AnomalyScorer.from_config(calib.scorer), calib
    return AnomalyScorer(**({} if tolerance is None else {"tolerance": tolerance})), None


def _camera_of(work_dir: Path) -> tuple[int, int, Tensor]:
    """Image size and intrinsics of a work folder, from its stored gallery views."""
    gallery_path = work_dir / FILES["gallery"]
    if gallery_path.is_file():
        g = Gallery.load(gallery_path)
        if g.K is not None and g.images is not None:
            return int(g.images.shape[2]), int(g.images.shape[1]), g.K.double()
    raise FileNotFoundError(f"{work_dir}: no gallery views to read the camera from (build the gallery stage, or pass "
                            "the camera)")




def load_bundles(bundles_dir: Path, config: InspectorConfig | None = None, device: str = "auto",
                 on_error=None) -> tuple[dict[str, Inspector], dict[str, str]]:
    """Every valid bundle under ``bundles_dir`` by category, and the refused ones with the
    reason (``on_error(path, reason)`` is called for each, e.g. to log it)."""
    loaded: dict[str, Inspector] = {}
    refused: dict[str, str] = {}
    bundles_dir = Path(bundles_dir)
    if not bundles_dir.is_dir():
        raise FileNotFoundError(f"{bundles_dir}: bundles directory does not exist")
    for path in find_bundles(bundles_dir):
        try:
            loaded[path.name] = Inspector.load(path, config, device)
        except Exception as exc:  # noqa: BLE001 (any failure refuses this bundle only, with its reason)
            refused[path.name] = str(exc) if isinstance(exc, BundleError) else f"{path}: {type(exc).__name__}: {exc}"
            if on_error is not None:
                on_error(path, str(exc))
    return loaded, refused
