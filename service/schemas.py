"""The API's response models (separate from the pipeline's ``Inspection``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class CategoryInfo(BaseModel):
    category: str
    bundle_format_version: int
    bundle_created: str
    image_size: list[int] = Field(description="width, height: queries are resized to this (same aspect ratio)")
    gallery_size: int
    threshold: float = Field(description="calibrated decision threshold, raw score units")
    pose_mode: str
    device: str


class Categories(BaseModel):
    categories: list[CategoryInfo]
    refused: dict[str, str] = Field(description="bundles found but not loaded, with the reason")


class Pose(BaseModel):
    world_to_camera: list[list[float]] = Field(description="4 x 4, OpenCV axes (x right, y down, z forward)")
    quaternion_wxyz: list[float]
    translation: list[float]


class GalleryMatch(BaseModel):
    id: int
    name: str
    similarity: float


class InspectionOut(BaseModel):
    request_id: str
    category: str
    filename: str | None
    score: float = Field(description="raw anomaly score (maximum of the anomaly map)")
    normalised_score: float = Field(description="in [0, 1]; 0.5 at the threshold used")
    is_anomalous: bool
    threshold: float = Field(description="the threshold used (calibrated, or the request's override)")
    pose: Pose
    gallery_matches: list[GalleryMatch]
    timings_ms: dict[str, float] = Field(description="per stage: match, pose, refine, render, score, total")
    refine: dict = Field(default_factory=dict, description="what the pose refiners did")
    anomaly_map_png: str | None = Field(None, description="base64 8-bit PNG of the normalised map (128 = threshold)")
    overlay_png: str | None = Field(None, description="base64 PNG: query | rendered reference | anomaly overlay")


class BatchOut(BaseModel):
    request_id: str
    category: str
    results: list[InspectionOut]


class Health(BaseModel):
    status: str
    bundles_loaded: int | None = None
    detail: str | None = None
