"""The one result type: what the Inspector returns, the API answers and the CLI prints.

``Inspection`` is a pydantic model: its fields are the JSON the service sends (the service's
response adds only the request's own fields: ``service/schemas.py``) and the line
``rpe-pad inspect --json`` prints. The arrays (anomaly map, rendered reference) and the
calibration travel with it as private attributes, never serialised. A threshold override is
applied in one place, ``Inspection.decided``.

The verdict an operator acts on is ``verdict``: ``anomalous`` or ``normal`` from the score
against the threshold when the pose verified (``models.verify``), and ``review`` when it did
not: the reference does not fit the photograph, so the score means nothing and a person must
look. ``is_anomalous`` stays the score's own comparison with the threshold.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from models.calibration import Calibration, exceeds
from models.camera import rotmat_to_quat
from models.verify import Verification

Verdict = Literal["normal", "anomalous", "review"]
VERDICTS: tuple[str, ...] = ("normal", "anomalous", "review")


class InspectionError(ValueError):
    """A query the pipeline cannot inspect (wrong shape or camera, unusable threshold): the
    caller's mistake, with a message that says what to change."""


class Pose(BaseModel):
    world_to_camera: list[list[float]] = Field(description="4 x 4, OpenCV axes (x right, y down, z forward)")
    quaternion_wxyz: list[float] = Field(description="rotation of world_to_camera, unit, w >= 0")
    translation: list[float] = Field(description="translation of world_to_camera")

    @classmethod
    def of(cls, matrix: np.ndarray) -> Pose:
        q = rotmat_to_quat(torch.from_numpy(np.asarray(matrix[:3, :3], dtype=np.float64)))
        return cls(world_to_camera=[[float(v) for v in row] for row in matrix],
                   quaternion_wxyz=[float(v) for v in q], translation=[float(v) for v in matrix[:3, 3]])


class GalleryMatch(BaseModel):
    id: int = Field(description="index in the bundle's gallery")
    name: str = Field(description="the gallery view's name (training photo, or novel view)")
    similarity: float = Field(description="cosine similarity of the retrieval descriptors")


class Inspection(BaseModel):
    """One query's result."""

    model_config = ConfigDict(frozen=True)

    score: float = Field(description="raw anomaly score: the maximum of the anomaly map at the score's blur (the "
                                     "returned map may be blurred finer and is capped at the score)")
    threshold: float = Field(description="the threshold used (calibrated, or the request's override), raw units")
    threshold_source: Literal["calibrated", "override"] = Field(
        description="calibrated: the bundle's threshold; override: the caller's (the request's threshold field, the "
                    "page's slider, inspect --threshold)")
    calibrated_threshold: float = Field(description="the bundle's calibrated threshold, whichever was used")
    normalised_score: float = Field(ge=0, le=1, description="in [0, 1]; 0.5 at the threshold used")
    is_anomalous: bool = Field(description="score > threshold (the score's comparison; act on verdict)")
    verdict: Verdict = Field(description="what to do with the part: anomalous or normal by the score when the pose "
                                         "verified, review (a person must look) when it did not")
    verification: Verification = Field(description="how well the rendered reference fits the query")
    pose: Pose = Field(description="the camera pose the reference was rendered at")
    gallery_matches: list[GalleryMatch] = Field(description="best first (empty when the pose was given)")
    timings_ms: dict[str, float] = Field(description="per stage (match, pose, refine, render, verify, second_look, "
                                                     "score) and total; this image's share of its batch")
    refine: dict[str, Any] = Field(default_factory=dict, description="what the refinement did (rpe+refine); "
                                   "second_look: what the second look did where the pose check rejected the first "
                                   "pose (tried, verified, the candidate chosen or null, first_reason)")
    pose_mode: str = Field(description="the pose mode that located the query (the bundle's, or RPEPAD_POSE / --pose)")
    device: str = Field(description="where the pipeline ran: cpu or cuda[:N]")

    _anomaly_map: np.ndarray = PrivateAttr()  # [H, W] float32, raw units
    _reference: np.ndarray = PrivateAttr()  # [H, W, 3] float32: the normal view the query was compared with
    _calibration: Calibration = PrivateAttr()

    @classmethod
    def build(cls, calibration: Calibration, score: float, anomaly_map: np.ndarray, reference: np.ndarray,
              pose: np.ndarray, matches: list[GalleryMatch], timings_ms: dict[str, float], refine: dict,
              verification: Verification, pose_mode: str, device: str,
              threshold: float | None = None) -> Inspection:
        t = resolve_threshold(calibration, threshold)
        out = cls(score=score, threshold=t, threshold_source=_source(threshold),
                  calibrated_threshold=float(calibration.threshold),
                  normalised_score=float(calibration.normalise(score, t)),
                  is_anomalous=bool(exceeds(score, t)), verdict=verdict_of(score, t, verification),
                  verification=verification, pose=Pose.of(pose), gallery_matches=matches,
                  timings_ms=timings_ms, refine=refine, pose_mode=pose_mode, device=device)
        out._anomaly_map, out._reference, out._calibration = anomaly_map, reference, calibration
        return out

    def decided(self, threshold: float | None) -> Inspection:
        """The same inspection decided at another threshold (None: the calibrated one);
        ``InspectionError`` for a threshold the calibration cannot use."""
        t = resolve_threshold(self._calibration, threshold)
        return self.model_copy(update={"threshold": t, "threshold_source": _source(threshold),
                                       "is_anomalous": bool(exceeds(self.score, t)),
                                       "verdict": verdict_of(self.score, t, self.verification),
                                       "normalised_score": float(self._calibration.normalise(self.score, t))})

    @property
    def anomaly_map(self) -> np.ndarray:
        return self._anomaly_map

    @property
    def reference(self) -> np.ndarray:
        return self._reference

    @property
    def calibration(self) -> Calibration:
        return self._calibration

    @property
    def pose_matrix(self) -> np.ndarray:
        """``[4, 4]`` float64 world-to-camera."""
        return np.array(self.pose.world_to_camera, dtype=np.float64)

    @property
    def gallery_names(self) -> list[str]:
        return [m.name for m in self.gallery_matches]

    def normalised_map(self) -> np.ndarray:
        """The map normalised to [0, 1], 0.5 at the threshold: ``> 0.5`` is the decision mask."""
        return self._calibration.normalise_map(self._anomaly_map, self.threshold)


def _source(threshold: float | None) -> Literal["calibrated", "override"]:
    return "calibrated" if threshold is None else "override"


def verdict_of(score: float, threshold: float, verification: Verification) -> Verdict:
    """``review`` when the reference did not verify, else the score against the threshold."""
    if not verification.verified:
        return "review"
    return "anomalous" if exceeds(score, threshold) else "normal"


def resolve_threshold(calibration: Calibration, threshold: float | None) -> float:
    """The threshold in force: the calibrated one (None) or a caller's override, checked
    (``InspectionError`` for one the calibration cannot use). The one place overrides go."""
    try:
        return float(calibration.resolve(threshold))
    except ValueError as exc:
        raise InspectionError(str(exc)) from exc


class CategoryInfo(BaseModel):
    """What a client needs to know about a loaded category (``GET /categories``)."""

    category: str
    bundle_format_version: int
    bundle_created: str
    image_size: list[int] = Field(description="width, height: queries are resized to this (same aspect ratio)")
    intrinsics: list[float] = Field(description="fx, fy, cx, cy of the bundle's camera at image_size, pixels")
    gallery_size: int
    threshold: float = Field(description="calibrated decision threshold, raw score units")
    false_alarm_rate: float | None = Field(None, description="the share of good parts the threshold was set to reject "
                                                             "(calibration rule false_alarm), else null")
    threshold_range: list[float] | None = Field(None, description="the threshold's 90 % range when the calibration's "
                                                                  "held-out views are resampled: how firmly they pin it "
                                                                  "(null without enough held-out views)")
    false_alarm_range: list[float] | None = Field(None, description="the false-alarm rate's 90 % range over the same "
                                                                    "resamplings, on the calibration's views")
    score_floor: float = Field(0.0, description="the raw score a normalised score shows as 0 (0.5 is the threshold): "
                                              "normalised = clip(0.5 + (score - threshold) / (2 (threshold - "
                                              "score_floor)), 0, 1)")
    map_floor: float = Field(0.0, description="the same for the anomaly map: a pixel p of anomaly_map_png is the raw "
                                            "value threshold + (p / 255 - 0.5) * 2 * (threshold - map_floor)")
    pose_mode: str
    device: str = Field(description="where the renders and the scorer run: cpu or cuda[:N]")
    pose_device: str | None = Field(None, description="where the pose network runs (ONNX Runtime's session: cuda or "
                                                      "cpu, which may differ from device); null in a mode without it")
    bundle_id: str = Field("", description="category@created of the loaded bundle")
    bundle_sha256: str = Field("", description="sha256 of the bundle's manifest.json, which holds every file's sha256")
