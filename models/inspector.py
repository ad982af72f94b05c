"""The one inspection pipeline: prepare -> match -> pose -> refine -> render -> score -> decide.

``Inspector.load(bundle_dir)`` rebuilds everything from a verified bundle
(``models.bundle``) on a device (CUDA when present, else the CPU), with the inference
settings the bundle's manifest carries (``InspectorConfig.from_manifest``; a caller's
overrides win). ``Inspector.inspect`` takes a batch of prepared query images and returns
one ``models.results.Inspection`` per image. ``rpe-pad inspect``, the demo, the service
and the lab's drivers all call this class; nothing else chains the stages.

Each stage is a small object with one job, run over a ``Batch``:

- ``prepare`` (per image): the query's camera -> the bundle's camera (``map_to_camera``); a
  greyscale photo is refused by a bundle trained on colour photos, and a photo compressed
  more coarsely than the scorer tolerates by a bundle trained on lossless photos
  (``models.compression``);
- the pose mode (``models.registry``; ``InspectorConfig.pose``) locates the camera:
  ``rpe`` = ``Match`` (IRPRN encoder, retrieval) + ``RelativePose`` (pair head, fusion);
  ``rpe+refine`` (the default) adds ``Refine`` (gallery PnP, depth-warp polish, guarded ECC:
  ``models.refine``), whose render at the final pose is the reference;
  the lab registers its evaluation-only modes (``oracle``, ``retrieval``, ``iterative``);
- ``Render``: the normal object at the pose, where no stage left a reference;
- ``Verify``: does the reference fit the query? (``models.verify``: residual optical flow and
  silhouette overlap); a query that fails gets the verdict ``review``, whatever its score;
- ``SecondLook`` (``rpe+refine``): a query the check rejected is refined again from each of the
  pair head's candidates alone, and the verified result with the least misalignment replaces
  the first (docs/RESULTS.md, session 47); one no candidate rescues stays in review;
- ``Score``: feature comparison -> anomaly maps and image scores (``models.scoring``);
- decide: ``Inspection.build`` against the calibration (``models.results``).

The queries stay on the inspector's device from ``start`` to ``Score``; the stages that
run on the CPU (ONNX Runtime on a CPU host, OpenCV) read a host copy made once per batch.

Conventions: images ``[B, H, W, 3]`` RGB float in [0, 1] at the bundle's size; poses 4 x 4
world-to-camera, OpenCV axes (``models/camera.py``); quaternions wxyz.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ValidationError

from models import registry
from models.bundle import (
    FILES,
    GALLERY_VIEWS,
    MANIFEST,
    BundleError,
    Manifest,
    describe_invalid,
    find_bundles,
    open_bundle,
)
from models.calibration import Calibration
from models.camera import scale_intrinsics
from models.compression import MIN_QUALITY, MIN_SUBSAMPLED_SCALE, Compression, too_coarse
from models.data import not_a_folder
from models.features import WeightsUnavailable
from models.gallery import TRAIN, Gallery
from models.hashing import sha256_file
from models.images import Undistortion, has_colour, resize_rgb
from models.irprn import load_irprn_config
from models.pose import DEFAULT_K, Matches, PoseEstimator
from models.refine import RefineConfig, ecc_align, gallery_features, gallery_pnp_refine
from models.results import CategoryInfo, GalleryMatch, Inspection, InspectionError, resolve_threshold
from models.scoring import AnomalyScorer
from models.splat.scene import GaussianScene, render
from models.verify import Verification, VerifyConfig, verify
from models.viz import inspection_figure

Tensor = torch.Tensor
ASPECT_TOLERANCE = 0.02  # relative difference of width/height accepted when resizing a query
CAMERA_TOLERANCE = 0.005  # relative difference of intrinsics treated as the same camera

__all__ = ["Inspector", "InspectorConfig", "Inspection", "InspectionError", "load_bundles", "resolve_device"]


@dataclass(frozen=True)
class InspectorConfig:
    pose: str = registry.DEFAULT_POSE  # how query poses are found: a registered pose mode (models.registry)
    k: int = DEFAULT_K  # gallery matches fused per query (models.pose)
    refine: RefineConfig = field(default_factory=RefineConfig)  # the refinement of rpe+refine
    verify: VerifyConfig = field(default_factory=VerifyConfig)  # when a reference fits its query (models.verify)
    pose_options: dict = field(default_factory=dict)  # a lab pose mode's own settings (e.g. iterative steps)

    def __post_init__(self) -> None:
        registry.pose_mode(self.pose, lab=True)  # ValueError naming the choices
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ValueError(f"k (gallery matches per query) must be an integer >= 1, got {self.k!r}")

    def to_dict(self) -> dict:
        """What a bundle's manifest stores under ``inference`` (product settings only)."""
        return {"pose": self.pose, "k": self.k, "refine": asdict(self.refine), "verify": asdict(self.verify)}

    @classmethod
    def from_manifest(cls, inference: dict, **overrides) -> InspectorConfig:
        """The settings a bundle was built to run with, then the caller's ``overrides``
        (``None`` values are ignored). Keys of retired options are accepted only at the value
        the product ran with; another value refuses the bundle (``ValueError``)."""
        given = dict(inference)
        for key, default in _RETIRED.items():
            value = given.pop(key, default)
            if value not in (default, None):
                raise ValueError(f"the bundle asks for {key}={value!r}, an option this version retired "
                                 f"(docs/RESULTS.md has its figures); rebuild the bundle")
        refine = dict(given.pop("refine", None) or {})
        for key, default in _RETIRED_REFINE.items():
            value = refine.pop(key, default)
            if value != default:
                raise ValueError(f"the bundle asks for refine.{key}={value!r}, an option this version retired "
                                 f"(docs/REFINE.md has its figures); rebuild the bundle")
        for key in ("render_size", "photo_size", "photo_steps", "photo_lr", "photo_gaussians"):
            refine.pop(key, None)  # settings of retired refiners
        checks = dict(given.pop("verify", None) or {})  # bundles before 2026-12-02 have none: the defaults
        known = {f.name for f in fields(RefineConfig)}
        unknown = (sorted(set(refine) - known) + sorted(set(given) - {"pose", "k"})
                   + [f"verify.{k}" for k in sorted(set(checks) - {f.name for f in fields(VerifyConfig)})])
        if unknown:
            raise ValueError(f"unknown inference settings in the bundle: {unknown}")
        if given.get("pose", registry.DEFAULT_POSE) not in registry.pose_modes():  # the lab's: an override only
            raise ValueError(f"the bundle asks for pose mode {given['pose']!r}, which the product does not run (it "
                             f"runs {list(registry.pose_modes())}); rebuild the bundle")
        config = cls(pose=given.get("pose", registry.DEFAULT_POSE), k=given.get("k", DEFAULT_K),
                     refine=RefineConfig(**refine), verify=VerifyConfig(**checks))
        return replace(config, **{k: v for k, v in overrides.items() if v is not None})


# Inference keys written by earlier versions, with the only value the product still runs.
_RETIRED = {"fusion": "mean", "backend": "auto", "tolerance": None, "iterative": None}
_RETIRED_REFINE = {"method": "gpnp+ecc", "detector": "sift", "photometric": False}


log = logging.getLogger(__name__)


def pose_runtime_device(device: torch.device) -> str:
    """ONNX Runtime's device for the pose network of an inspector on ``device``: CUDA where
    onnxruntime-gpu is installed (the ``gpu`` extra), else the CPU. An inspector on CUDA with
    the CPU package still runs (renders and scorer on the GPU), with a warning at load,
    rather than refusing to start."""
    return "cpu" if device.type == "cpu" else "auto"


def resolve_device(device: str = "auto") -> torch.device:
    if device not in registry.DEVICES:
        raise ValueError(f"device must be one of {', '.join(registry.DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA GPU (use --device auto or cpu)")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


@dataclass
class Batch:
    """One call's queries as they pass through the stages."""

    images: Tensor  # [B, H, W, 3] float in [0, 1], on the inspector's device
    Ks: Tensor  # [B, 3, 3] float64 intrinsics at the bundle's size (CPU)
    poses: Tensor | None = None  # [B, 4, 4] float64 world-to-camera (CPU), set by the pose mode
    references: Tensor | None = None  # [B, H, W, 3] float: the normal views, set by Refine or Render
    matched: Matches | None = None  # the match stage's output: features, gallery ids [B, k], similarities
    candidates: Tensor | None = None  # [B, k, 4, 4] float64: the pair head's pose per match, before the fusion
    gallery_matches: list[list[GalleryMatch]] | None = None  # the same matches, named, for the result
    given_poses: Tensor | None = None  # [B, 4, 4]: known poses (the lab's oracle)
    verification: list[Verification] | None = None  # per query, set by Verify
    refine: list[dict] = field(default_factory=list)  # per query, what the refinement did
    timings: dict[str, float] = field(default_factory=dict)  # per stage, ms for the whole batch

    @cached_property
    def images_cpu(self) -> Tensor:
        """A host copy for the stages that run on the CPU (made once)."""
        return self.images.cpu()

    def timed(self, stage: str, start: float) -> None:
        """Adds the stage's time since ``start``; on CUDA after its kernels have finished (they
        run on after the call returns, and would be charged to the next stage that waits)."""
        if self.images.is_cuda:
            torch.cuda.synchronize(self.images.device)
        self.timings[stage] = self.timings.get(stage, 0.0) + 1000 * (time.perf_counter() - start)


class Match:
    """IRPRN's encoder on the queries, retrieval of the best ``k`` gallery views."""

    def __init__(self, estimator: PoseEstimator):
        self.estimator = estimator

    def __call__(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        m = self.estimator.match(batch.images_cpu)
        names = self.estimator.gallery.names
        batch.matched = m
        batch.gallery_matches = [[GalleryMatch(id=int(g), name=names[int(g)], similarity=float(s)) for g, s in zip(ids, sims)]
                         for ids, sims in zip(m.gallery_ids, m.similarities)]
        batch.timed("match", t0)


class RelativePose:
    """IRPRN's pair head on every match, composed with the gallery poses and fused."""

    def __init__(self, estimator: PoseEstimator):
        self.estimator = estimator

    def __call__(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        batch.poses, batch.candidates = self.estimator.relative(batch.matched)
        batch.timed("pose", t0)


class Refine:
    """Gallery PnP from IRPRN's pose, one render at the corrected pose (the reference), a
    depth-warp polish (SIFT rounds, then a dense-flow round), then the guarded ECC warp of
    that reference (``models.refine``)."""

    def __init__(self, scene: GaussianScene, gallery: Gallery, cfg: RefineConfig):
        if gallery.images is None:
            raise ValueError("pose mode rpe+refine needs the gallery's stored views and depths, which this bundle "
                             "lacks: rebuild it with rpe-pad train")
        self.scene, self.gallery, self.cfg = scene, gallery, cfg
        self.keypoints = gallery_features(gallery, {})  # every gallery view's SIFT keypoints, once per bundle

    def __call__(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        pnp = gallery_pnp_refine(self.scene, self.gallery, batch.images_cpu, batch.poses, batch.Ks, batch.matched.gallery_ids,
                                 self.cfg, cache=self.keypoints)
        batch.poses = pnp.poses
        for i, info in enumerate(batch.refine):
            info.update(pnp_accepted=pnp.accepted[i], pnp_inliers=pnp.inliers[i], flow_inliers=pnp.flow_inliers[i],
                        pnp_reason=pnp.reasons[i], pnp_path=pnp.paths[i])
        warped = []
        t1 = time.perf_counter()
        for i, (query, ref) in enumerate(zip(batch.images_cpu.numpy(), pnp.renders)):
            w, info = ecc_align(query, ref, self.cfg)
            warped.append(torch.from_numpy(np.ascontiguousarray(w)))
            batch.refine[i].update(ecc_accepted=info["accepted"], ecc_shift_px=info["shift_px"],
                                   ecc_reason=info.get("reason", ""))
        batch.references = torch.stack(warped).to(batch.images.device)
        # The one render is the one the unrefined pipeline makes too: counted as "render".
        batch.timings["render"] = batch.timings.get("render", 0.0) + pnp.render_ms
        batch.timings["refine"] = 1000 * (t1 - t0) - pnp.render_ms + 1000 * (time.perf_counter() - t1)


class Render:
    """The normal object at each query's pose, where no earlier stage left a reference."""

    def __init__(self, scene: GaussianScene, width: int, height: int):
        self.scene, self.width, self.height = scene, width, height

    def __call__(self, batch: Batch) -> None:
        if batch.references is not None:
            return
        t0 = time.perf_counter()
        dev = self.scene.means.device
        out = render(self.scene, batch.poses.float().to(dev), batch.Ks.float().to(dev), self.width, self.height)
        batch.references = out.colors.clamp(0, 1).to(batch.images.device)
        batch.timed("render", t0)


class Verify:
    """Does each reference fit its query? (``models.verify``, with the 2D warp the refinement
    gave each reference, converted from the ECC's size to the check's, and whether it accepted
    any correction of the pose)."""

    def __init__(self, background: tuple[float, float, float], cfg: VerifyConfig, ecc_size: int):
        self.background, self.cfg, self.ecc_size = background, cfg, ecc_size

    def __call__(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        per_query = len(batch.refine) == len(batch.images)
        warps = [float(info["ecc_shift_px"]) * self.cfg.size / self.ecc_size if info.get("ecc_accepted") else 0.0
                 for info in batch.refine] if per_query else None
        refined = per_query and all("pnp_accepted" in info for info in batch.refine)  # rpe+refine ran
        unrefined = [not info["pnp_accepted"] for info in batch.refine] if refined else None
        batch.verification = verify(batch.images_cpu, batch.references.cpu(), self.background, self.cfg, warps,
                                    unrefined)
        batch.timed("verify", t0)


class Score:
    """Query vs reference: anomaly maps ``[B, H, W]`` and image scores ``[B]``."""

    def __init__(self, scorer: AnomalyScorer):
        self.scorer = scorer

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor]:
        t0 = time.perf_counter()
        maps, scores = self.scorer(batch.images, batch.references.to(batch.images.device))
        maps, scores = maps.cpu(), scores.cpu()
        batch.timed("score", t0)
        return maps, scores


class SecondLook:
    """For each query whose reference the pose check rejected: the refinement again from each
    of the pair head's ``k`` candidates alone (``Batch.candidates``, the poses the fusion
    averaged; that candidate's gallery view first for the gallery PnP), each result checked;
    the verified result with the smallest measured misalignment replaces the first. A query
    no candidate rescues keeps its first pose, reference and reason (``review``). A query that
    verified the first time is not touched, nor is any query when k = 1 (its fused pose is its one
    candidate). What it did is in the query's refinement record
    (``second_look``). The fused pose fails where one candidate is far off and drags the
    average with it (docs/RESULTS.md, session 47)."""

    def __init__(self, refine: Refine):
        self.refine = refine

    def __call__(self, batch: Batch, check: Verify) -> None:
        t0 = time.perf_counter()
        failed = [i for i, v in enumerate(batch.verification) if not v.verified]
        if failed and batch.candidates is not None and batch.candidates.shape[1] > 1:  # k = 1: the fused pose is the one
            self._retry(batch, failed, check)
        batch.timed("second_look", t0)  # always timed, so every result of a mode has the same stages

    def _retry(self, batch: Batch, failed: list[int], check: Verify) -> None:
        k = batch.candidates.shape[1]
        rows = [i for i in failed for _ in range(k)]  # each failed query once per candidate
        ids, sims = batch.matched.gallery_ids, batch.matched.similarities
        first = [[j] + [m for m in range(k) if m != j] for j in range(k)]  # candidate j's gallery view first
        trial = Batch(images=batch.images[rows], Ks=batch.Ks[rows],
                      poses=batch.candidates[failed].reshape(-1, 4, 4).clone(), refine=[{} for _ in rows])
        trial.matched = Matches(batch.matched.features[rows],
                                torch.stack([ids[i, first[j]] for i in failed for j in range(k)]),
                                torch.stack([sims[i, first[j]] for i in failed for j in range(k)]))
        self.refine(trial)
        check(trial)
        for n, i in enumerate(failed):
            tried = trial.verification[n * k:(n + 1) * k]
            ok = [(v.misalignment_px, j) for j, v in enumerate(tried) if v.verified]
            record = {"tried": k, "verified": len(ok), "candidate": None, "first_reason": batch.verification[i].reason}
            if ok:
                j = min(ok)[1]
                s = n * k + j
                batch.poses[i] = trial.poses[s].to(batch.poses.dtype)
                batch.references[i] = trial.references[s].to(batch.references.device, batch.references.dtype)
                batch.verification[i] = trial.verification[s]
                batch.refine[i] = dict(trial.refine[s])
                record["candidate"] = j
            batch.refine[i]["second_look"] = record


class RpePose:
    """Pose mode ``rpe``: the gallery matches and IRPRN's fused relative poses."""

    second_look: SecondLook | None = None  # a mode that refines may look again where the pose check fails

    def __init__(self, inspector: Inspector):
        if inspector.estimator is None:
            raise ValueError(f"pose mode {inspector.config.pose!r} needs IRPRN and the gallery")
        self.stages = [Match(inspector.estimator), RelativePose(inspector.estimator)]

    def __call__(self, batch: Batch) -> None:
        for stage in self.stages:
            stage(batch)


class RefinedPose(RpePose):
    """Pose mode ``rpe+refine`` (the default): ``rpe``, then ``Refine``; after the pose check,
    ``SecondLook`` for the queries it rejected."""

    def __init__(self, inspector: Inspector):
        super().__init__(inspector)
        refine = Refine(inspector.scene, inspector.estimator.gallery, inspector.config.refine)
        self.stages.append(refine)
        self.second_look = SecondLook(refine)


def map_to_camera(image: np.ndarray, width: int, height: int, K: Tensor,
                  intrinsics: tuple[float, float, float, float] | None,
                  lens: Undistortion | None = None) -> Tensor:
    """A query ``[h, w, 3]`` as the bundle's camera (``K`` at ``width x height``) would see it.

    Without ``intrinsics`` the query is taken to come from the bundle's camera at another
    resolution: it must have the same aspect ratio and is resized (antialiased bilinear).
    With the query's ``(fx, fy, cx, cy)`` in its own pixels: the same camera at another
    resolution is resized as above; another camera (focal length or principal point) is
    resampled so each bundle pixel reads the query along the same ray (a zoom and shift,
    exact for a pinhole camera), and refused when the query's view does not cover the
    bundle's, or gives fewer than ``MIN_QUERY_ZOOM`` of its pixels per bundle pixel
    (``InspectionError``). ``lens``: the bundle's camera's undistortion (at the
    bundle's size); a query of that camera is undistorted after resizing, as its training
    photos were (a query of another camera is taken to be undistorted already)."""
    h, w = image.shape[:2]
    if intrinsics is not None:
        K = K.double()
        fx, fy, cx, cy = (float(v) for v in intrinsics)
        if not all(math.isfinite(v) for v in (fx, fy, cx, cy)) or fx <= 0 or fy <= 0:
            raise InspectionError(f"intrinsics must be finite with fx, fy > 0, got {intrinsics}")
        same = scale_intrinsics(K, w / width, h / height)
        want = torch.tensor([same[0, 0], same[1, 1], same[0, 2], same[1, 2]])
        got = torch.tensor([fx, fy, cx, cy], dtype=torch.float64)
        if not torch.allclose(got, want, rtol=CAMERA_TOLERANCE, atol=CAMERA_TOLERANCE * max(w, h)):
            return _resample_camera(torch.from_numpy(image), width, height, K, (fx, fy, cx, cy))
    want, got = width / height, w / h
    if abs(got / want - 1) > ASPECT_TOLERANCE:
        raise InspectionError(f"image is {w} x {h} (aspect {got:.3f}); the bundle's camera gives aspect {want:.3f} "
                              f"({width} x {height} or a multiple): pass the query's intrinsics if it comes from "
                              "another camera")
    # Pillow and OpenCV, not torch: a query of the bundle's camera is prepared with no torch op
    # at all (the service does it off its inference thread; service.app.State explains why).
    resized = np.clip(resize_rgb(image, width, height), 0.0, 1.0)
    if lens is not None:
        resized = lens(resized)
    return torch.from_numpy(np.ascontiguousarray(resized, dtype=np.float32))


LOAD_ATTEMPTS = 3  # reads of a bundle that changes while it is loaded (Inspector.load)


def _manifest_sha(bundle_dir: Path) -> str | None:
    try:
        return sha256_file(bundle_dir / MANIFEST)
    except OSError:
        return None
MIN_QUERY_ZOOM = 0.25  # query pixels per bundle pixel below which a query's camera is refused (_resample_camera)


def _resample_camera(image: Tensor, width: int, height: int, K: Tensor, intrinsics: tuple[float, ...]) -> Tensor:
    """Bundle pixel ``u_b`` reads the query at ``u_q = (u_b - cx_b) fx_q / fx_b + cx_q`` (and
    likewise in y); refused unless the bundle's whole frame falls inside the query's."""
    h, w = image.shape[:2]
    fx, fy, cx, cy = intrinsics
    ax, ay = fx / float(K[0, 0]), fy / float(K[1, 1])  # query pixels per bundle pixel
    if min(ax, ay) < MIN_QUERY_ZOOM:  # the object would be upsampled from a few query pixels (and memory with it)
        raise InspectionError(f"the query's camera (fx {fx:.6g}, fy {fy:.6g}) gives {min(ax, ay):.3g} of its pixels per "
                              f"pixel of the bundle's camera (fx {float(K[0, 0]):.1f}); at least {MIN_QUERY_ZOOM} are "
                              "needed: check the intrinsics, or take the photo closer or at a higher resolution")
    x0, x1 = (0 - float(K[0, 2])) * ax + cx, (width - float(K[0, 2])) * ax + cx
    y0, y1 = (0 - float(K[1, 2])) * ay + cy, (height - float(K[1, 2])) * ay + cy
    slack = 0.01 * max(w, h)
    if x0 < -slack or y0 < -slack or x1 > w + slack or y1 > h + slack:
        raise InspectionError(f"the query's camera (fx {fx:.6g}, fy {fy:.6g}, cx {cx:.6g}, cy {cy:.6g} at {w} x {h}) "
                              "does not see all of what the bundle's camera sees (it would need pixels "
                              f"x {x0:.6g}..{x1:.6g}, y {y0:.6g}..{y1:.6g}): take the photo with a wider view, or "
                              "train a bundle for this camera")
    # Only the window the bundle's camera sees, with a margin for the antialiasing filter: a
    # query with fewer pixels than the bundle's camera is enlarged, and enlarging all of a big
    # photo would cost up to 1 / MIN_QUERY_ZOOM**2 times its memory for pixels never read.
    pad = 2 + math.ceil(max(ax, ay))
    left, top = max(0, math.floor(x0) - pad), max(0, math.floor(y0) - pad)
    right, bottom = min(w, math.ceil(x1) + pad), min(h, math.ceil(y1) + pad)
    image, cx, cy = image[top:bottom, left:right], cx - left, cy - top
    h, w = image.shape[:2]
    # Antialias first at the scale of the zoom, then sample the exact sub-pixel window.
    sw, sh = max(1, round(w / ax)), max(1, round(h / ay))
    small = F.interpolate(image.float().permute(2, 0, 1)[None], size=(sh, sw), mode="bilinear", antialias=True,
                          align_corners=False)
    sx, sy = sw / w, sh / h  # small pixels per query pixel
    gx = (torch.arange(width, dtype=torch.float64) + 0.5 - float(K[0, 2])) * ax + cx
    gy = (torch.arange(height, dtype=torch.float64) + 0.5 - float(K[1, 2])) * ay + cy
    nx, ny = 2 * gx * sx / sw - 1, 2 * gy * sy / sh - 1  # grid_sample's [-1, 1], align_corners=False
    grid = torch.stack(torch.meshgrid(ny, nx, indexing="ij")[::-1], dim=-1)[None].float()
    out = F.grid_sample(small, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0].permute(1, 2, 0).clamp(0, 1).contiguous()


class Inspector:
    """A category's loaded models and the pipeline over them."""

    def __init__(self, scene: GaussianScene, scorer: AnomalyScorer, calibration: Calibration,
                 estimator: PoseEstimator | None, width: int, height: int, K: Tensor, config: InspectorConfig,
                 device: torch.device, name: str, manifest: Manifest | None = None):
        self.scene, self.scorer, self.calibration, self.estimator = scene, scorer, calibration, estimator
        self.width, self.height, self.K = width, height, K.double()
        self.config, self.device, self.name, self.manifest = config, device, name, manifest
        radial = manifest.camera.lens_radial if manifest is not None else None
        # The bundle's lens (prepared photos): its queries are undistorted as the training photos were.
        self.lens = Undistortion(self.K.numpy(), radial, width, height) if radial else None
        self.bundle_sha256 = ""  # sha256 of the bundle's manifest.json (which pins every file), set by load
        self.bundle_dir: Path | None = None  # set by load
        self.colour = False  # trained on colour photos (``models.images.has_colour``): set by load
        self.locate = registry.resolve(registry.pose_mode(config.pose, lab=True))(self, **config.pose_options)
        self.render_stage = Render(scene, width, height)
        self.verify_stage = Verify(scene.background, config.verify, config.refine.ecc_size)
        self.score_stage = Score(scorer)

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(cls, bundle_dir: Path, device: str = "auto", **overrides) -> Inspector:
        """From a bundle, after checking it completely (``models.bundle.open_bundle``), with
        its manifest's inference settings and the caller's ``overrides`` (InspectorConfig
        fields; None = the bundle's). Each file is read by the code that checks its content;
        whatever that raises refuses the bundle with a ``BundleError`` naming the file.

        A bundle replaced while it is read (a new version copied over it, a folder renamed into
        its place) is read again: the manifest's sha256 before the checks and after the last
        file must agree, so that no inspector holds one version's checks and another's files."""
        bundle_dir = Path(bundle_dir)
        for _ in range(LOAD_ATTEMPTS):
            before = _manifest_sha(bundle_dir)  # None when missing: open_bundle names what is
            try:
                inspector = cls._load_once(bundle_dir, device, **overrides)
            except (BundleError, OSError):
                if _manifest_sha(bundle_dir) == before:
                    raise  # the bundle as it stands is refused
                continue  # a new version landed while this one was checked: read that one
            if inspector.bundle_sha256 == before:
                return inspector
        raise BundleError(f"{bundle_dir}: the bundle changed while it was being loaded, {LOAD_ATTEMPTS} times: load "
                          "it once it is in place")

    @classmethod
    def _load_once(cls, bundle_dir: Path, device: str, **overrides) -> Inspector:
        manifest = open_bundle(bundle_dir)
        try:
            config = InspectorConfig.from_manifest(manifest.inference, **overrides)
        except (ValueError, TypeError) as exc:
            raise BundleError(f"{bundle_dir}: {MANIFEST}: inference: {exc}") from exc
        from models import onnx_runtime as rt

        dev = resolve_device(device)
        scene = _read(bundle_dir, FILES["scene"], lambda p: GaussianScene.load(p, device=dev))
        calib = _read(bundle_dir, FILES["calibration"], lambda p: Calibration.model_validate_json(p.read_text()))
        scorer = _read(bundle_dir, FILES["calibration"], lambda p: AnomalyScorer.from_config(calib.scorer).to(dev))
        irprn, unit = _read(bundle_dir, FILES["irprn_config"], load_irprn_config)
        gallery = _read(bundle_dir, FILES["gallery"], Gallery.load)
        _check_as_stated(bundle_dir, manifest, scene, gallery)
        estimator = _read(bundle_dir, "irprn", lambda _: PoseEstimator.from_onnx(  # its messages name the graph
            bundle_dir / FILES["encoder"], bundle_dir / FILES["pair_head"], gallery, unit, irprn.input_size,
            device=pose_runtime_device(dev), k=config.k))
        if dev.type == "cuda" and estimator.providers[0] != rt.CUDA:
            why = ("its CUDA provider did not start (see its log)" if rt.CUDA in rt.ort.get_available_providers()
                   else "this onnxruntime has no CUDA provider (install the gpu extra: onnxruntime-gpu)")
            log.warning("%s: the renders run on CUDA, but the pose network runs on the CPU: %s", manifest.category, why)
        cam = manifest.camera
        inspector = cls(scene, scorer, calib, estimator, cam.width, cam.height, torch.tensor(cam.K), config, dev,
                        manifest.category, manifest)
        inspector.bundle_sha256 = sha256_file(bundle_dir / MANIFEST)
        inspector.bundle_dir = bundle_dir
        if gallery.images is not None:
            inspector.colour = has_colour(gallery.images[gallery.source == TRAIN].numpy())
        return inspector

    # ------------------------------------------------------------ the pipeline
    def prepare(self, image: np.ndarray, intrinsics: tuple[float, float, float, float] | None = None,
                exif_camera: str | None = None, greyscale: bool = False,
                compression: Compression | None = None) -> Tensor:
        """An RGB float image ``[H, W, 3]`` -> ``[h, w, 3]`` as the bundle's camera sees it
        (``map_to_camera``; ``intrinsics``: the query's fx, fy, cx, cy in its own pixels).
        ``exif_camera``: the query's EXIF "Make Model"; refused when the bundle was trained on
        photos whose EXIF names another camera (and no ``intrinsics`` say how to map it).
        ``greyscale``: the file was a greyscale image (``models.images.greyscale_file``); refused
        when the bundle was trained on colour photos. ``compression``: the file's lossy encoding
        (``models.compression.compression_of``); refused when the bundle was trained on
        lossless photos and it is too coarse for them (``too_coarse``)."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise InspectionError(f"expected an RGB image [H, W, 3], got shape {tuple(image.shape)}")
        cam = self.manifest.camera if self.manifest is not None else None
        trained_on = cam.exif_camera if cam is not None else None
        if intrinsics is None and trained_on and exif_camera and exif_camera != trained_on:
            raise InspectionError(f"the photo was taken with a {exif_camera}, but this bundle was trained on photos "
                                  f"from a {trained_on}: use that camera, or pass the photo's intrinsics")
        if self.colour and greyscale:  # every colour of the part would read as a defect
            raise InspectionError(f"the photo is greyscale, but bundle {self.name!r} was trained on colour photos: send "
                                  "the colour photo, or train a bundle on greyscale photos of the part")
        lossless = cam is None or not cam.lossy_photos
        measured = (self.calibration.jpeg_taken, self.calibration.jpeg_photo_width)
        why = too_coarse(compression, image.shape[1], self.width, measured) if lossless else ""
        if why:  # compression error reads as residue: good parts would be rejected
            takes = (f"a JPEG at least {measured[1]} px wide and as fine as a setting its calibration took"
                     if measured[0] else "a lossless format" if measured[0] is not None else
                     f"JPEG at quality {MIN_QUALITY} or more, at least {MIN_SUBSAMPLED_SCALE:g} x {self.width} px wide "
                     f"unless its chroma is 4:4:4")
            raise InspectionError(f"the photo is a {compression.describe()}, and {why}; bundle {self.name!r} was trained on "
                                  f"lossless photos, so this compression would read as defects: send PNG (or "
                                  f"{takes})")
        return map_to_camera(np.ascontiguousarray(image, dtype=np.float32), self.width, self.height, self.K, intrinsics,
                             self.lens)

    def start(self, images: Tensor) -> Batch:
        """A batch of prepared images ``[B, H, W, 3]`` on the inspector's device."""
        if images.ndim != 4 or images.shape[1:] != (self.height, self.width, 3):
            raise InspectionError(f"expected images [B, {self.height}, {self.width}, 3], got {tuple(images.shape)}")
        b = len(images)
        return Batch(images=images.float().to(self.device), Ks=self.K[None].expand(b, 3, 3).clone(),
                     refine=[{} for _ in range(b)])

    @torch.no_grad()
    def inspect(self, images: Tensor, threshold: float | None = None) -> list[Inspection]:
        """Inspect ``images [B, H, W, 3]`` (at the bundle's size: see ``prepare``);
        ``threshold`` overrides the calibrated one."""
        resolve_threshold(self.calibration, threshold)  # fail before any work
        return self.run(self.start(images), threshold)

    @torch.no_grad()
    def run(self, batch: Batch, threshold: float | None = None) -> list[Inspection]:
        """The stages over a started batch: locate (the pose mode), render where no stage did,
        verify, score, decide. The lab's oracle sets ``batch.given_poses`` before calling it."""
        t0 = time.perf_counter()
        self.locate(batch)
        self.render_stage(batch)
        self.verify_stage(batch)
        second_look = getattr(self.locate, "second_look", None)  # the lab's modes have none
        if second_look is not None:
            second_look(batch, self.verify_stage)
        maps, scores = self.score_stage(batch)
        batch.timed("total", t0)
        b = len(batch.images)
        per_image = {k: v / b for k, v in batch.timings.items()}
        refs = batch.references.cpu().numpy()
        return [Inspection.build(self.calibration, float(scores[i]), maps[i].numpy().astype(np.float32), refs[i],
                                 batch.poses[i].double().cpu().numpy(), batch.gallery_matches[i] if batch.gallery_matches else [],
                                 dict(per_image), batch.refine[i], batch.verification[i], self.config.pose,
                                 str(self.device), threshold)
                for i in range(b)]

    def gallery_view_png(self, view_id: int) -> bytes | None:
        """Gallery view ``view_id`` as PNG bytes (the bundle's ``gallery/views`` file when the
        manifest lists it and it still has the listed sha256, else encoded from the gallery's
        images), or None when there is no such view. No other file is ever read."""
        gallery = self.estimator.gallery if self.estimator is not None else None
        if gallery is None or not 0 <= view_id < len(gallery):
            return None
        rel = f"{GALLERY_VIEWS}/{view_id:04d}.png"
        entry = self.manifest.files.get(rel) if self.manifest is not None and self.bundle_dir is not None else None
        if entry is not None and (self.bundle_dir / rel).is_file():
            data = (self.bundle_dir / rel).read_bytes()
            if hashlib.sha256(data).hexdigest() == entry.sha256:
                return data
        if gallery.images is None:
            return None
        buf = io.BytesIO()
        Image.fromarray(gallery.images[view_id].numpy().astype(np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    def figure(self, image: np.ndarray, inspection: Inspection, title: str = "") -> Image.Image:
        """query | rendered reference | anomaly overlay with the decision contour."""
        return inspection_figure(image, inspection.reference, inspection.normalised_map(), inspection.verdict,
                                 inspection.score, inspection.threshold, title=title)

    def warm_up(self, batch: int = 1) -> float:
        """Run one batch of ``batch`` of the gallery's own views through the pipeline, so
        that buffers, ONNX sessions and caches exist before the first real query (the
        service does this before it reports ready); returns the seconds it took."""
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

    def describe(self) -> CategoryInfo:
        """What a client needs to know about the loaded category."""
        m, K = self.manifest, self.K
        return CategoryInfo(
            category=self.name,
            bundle_format_version=m.format_version if m else 0,
            bundle_created=m.created.isoformat() if m else "",
            image_size=[self.width, self.height],
            intrinsics=[float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])],
            gallery_size=len(self.estimator.gallery) if self.estimator is not None else 0,
            threshold=self.calibration.threshold,
            false_alarm_rate=self.calibration.false_alarm_rate,
            threshold_range=list(self.calibration.threshold_range or ()) or None,
            false_alarm_range=list(self.calibration.false_alarm_range or ()) or None,
            score_floor=self.calibration.score_floor,
            map_floor=self.calibration.map_floor,
            pose_mode=self.config.pose,
            device=str(self.device),
            pose_device=self.pose_device,
            bundle_id=self.bundle_id,
            bundle_sha256=self.bundle_sha256,
        )

    @property
    def pose_device(self) -> str | None:
        """Where the pose network runs: ``cuda`` or ``cpu`` by its ONNX Runtime session (which
        may have fallen back to the CPU on a GPU host), ``cpu`` for a PyTorch network (the lab's,
        which ``PoseEstimator.from_torch`` keeps there), ``None`` without one."""
        from models import onnx_runtime as rt

        if self.estimator is None:
            return None
        first = self.estimator.providers[0]
        return "cuda" if first == rt.CUDA else "cpu"

    @property
    def bundle_id(self) -> str:
        """``category@created`` of the loaded bundle (what an inspection record names)."""
        return f"{self.name}@{self.manifest.created.isoformat()}" if self.manifest else self.name


def compare_at_poses(scene: GaussianScene, scorer: AnomalyScorer, images: Tensor, poses: Tensor, Ks: Tensor,
                     align: RefineConfig | None = None) -> tuple[Tensor, Tensor]:
    """The pipeline's tail at known poses (``Render`` + ``Score``): anomaly maps ``[B, H, W]``
    and scores ``[B]`` of ``images [B, H, W, 3]`` against renders at world-to-camera ``poses``
    with intrinsics ``Ks``; with ``align``, each render first gets the refinement's last
    step, the 2D alignment onto its photograph (``align_references``). The calibration stage
    scores normal views with it."""
    h, w = images.shape[1:3]
    device = scene.means.device
    batch = Batch(images=images.float().to(device), Ks=Ks.double().cpu(), poses=poses.double().cpu())
    Render(scene, w, h)(batch)
    if align is not None:
        batch.references = align_references(batch.images_cpu, batch.references.cpu(), align).to(device)
    return Score(scorer.to(device))(batch)


def align_references(images: Tensor, references: Tensor, cfg: RefineConfig) -> Tensor:
    """Each reference ``[B, H, W, 3]`` warped onto its image by the refinement's guarded ECC
    (``models.refine.ecc_align``), as ``Refine`` does after its PnP."""
    return torch.stack([torch.from_numpy(np.ascontiguousarray(ecc_align(q, r, cfg)[0]))
                        for q, r in zip(images.numpy(), references.numpy())])


def load_bundles(bundles_dir: Path, device: str = "auto", on_error=None,
                 **overrides) -> tuple[dict[str, Inspector], dict[str, str]]:
    """Every valid bundle under ``bundles_dir`` by category, and the refused ones with the
    reason (``on_error(path, reason)`` is called for each, e.g. to log it); ``overrides``
    as in ``Inspector.load``."""
    bundles_dir = Path(bundles_dir)
    if not bundles_dir.is_dir():
        raise FileNotFoundError(f"{bundles_dir}: bundles directory {not_a_folder(bundles_dir)}")
    return load_each({path.name: path for path in find_bundles(bundles_dir)}, device, on_error, **overrides)


def _read(bundle_dir: Path, rel: str, read):
    """``read(bundle_dir / rel)``; whatever it raises refuses the bundle, in one line naming the file,
    except what says this machine lacks something (weights, memory, a module): that is not the file's
    fault, and it propagates as it is."""
    path = bundle_dir / rel
    try:
        return read(path)
    except (WeightsUnavailable, MemoryError, torch.cuda.OutOfMemoryError, ImportError):
        raise
    except Exception as exc:  # noqa: BLE001 (a damaged file may raise anything: the bundle is refused, naming it)
        reason = describe_invalid(exc) if isinstance(exc, ValidationError) else str(exc).replace(f"{path}: ", "")
        if not isinstance(exc, ValueError):  # a KeyError's or onnxruntime's text needs its type to read
            reason = f"{type(exc).__name__}: {reason}"
        raise BundleError(f"{bundle_dir}: {rel}: {(reason.splitlines() or [''])[0]}") from exc


def _check_as_stated(bundle_dir: Path, manifest: Manifest, scene: GaussianScene, gallery: Gallery) -> None:
    """The scene's Gaussians and the gallery's views are as many as the manifest states (when it
    does), and the gallery's stored views are of the manifest camera's size."""
    counts = {"scene": scene.num_gaussians, "gallery": len(gallery)}
    for section, key, rel in (("scene", "num_gaussians", FILES["scene"]), ("gallery", "n_views", FILES["gallery"])):
        stated = getattr(manifest, section).get(key, counts[section])
        if stated != counts[section]:
            raise BundleError(f"{bundle_dir}: {rel} holds {counts[section]}, the manifest's {section}.{key} says "
                              f"{stated}")
    cam = manifest.camera
    if gallery.images is not None and tuple(gallery.images.shape[1:3]) != (cam.height, cam.width):
        h, w = gallery.images.shape[1:3]
        raise BundleError(f"{bundle_dir}: {FILES['gallery']} holds views of {w} x {h}, the manifest's camera is "
                          f"{cam.width} x {cam.height}")


def load_each(paths: dict[str, Path], device: str = "auto", on_error=None,
              **overrides) -> tuple[dict[str, Inspector], dict[str, str]]:
    """``load_bundles`` over given bundle directories (category -> directory), e.g. the
    versions the service fetched from object storage."""
    loaded: dict[str, Inspector] = {}
    refused: dict[str, str] = {}
    for name, path in paths.items():
        try:
            loaded[name] = Inspector.load(path, device, **overrides)
        except Exception as exc:  # noqa: BLE001 (any failure refuses this bundle only, with its reason)
            refused[name] = str(exc) if isinstance(exc, BundleError) else f"{path}: {type(exc).__name__}: {exc}"
            if on_error is not None:
                on_error(path, str(exc))
    return loaded, refused
