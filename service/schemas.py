"""The API's response models.

An inspection's answer is the pipeline's own result type (``models.results.Inspection``)
plus the request's fields; a category's description is ``models.results.CategoryInfo``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.results import CategoryInfo, Inspection


class Categories(BaseModel):
    categories: list[CategoryInfo]
    refused: dict[str, str] = Field(description="bundles found but not loaded, with the reason")


class InspectionOut(Inspection):
    request_id: str = Field(description="X-Request-ID of the request (given, or made by the service)")
    category: str
    filename: str | None = Field(description="the upload's file name, when the client sent one")
    anomaly_map_png: str | None = Field(None, description="base64 8-bit PNG of the normalised map (128 = threshold; "
                                                          "GET /categories map_floor gives the raw values back)")
    overlay_png: str | None = Field(None, description="base64 PNG: query | rendered reference | anomaly overlay")
    reference_png: str | None = Field(None, description="base64 PNG of the rendered normal reference at the pose")
    record_id: str | None = Field(None, description="id of the stored inspection record (GET /inspections/{id}); "
                                                    "null when records are off")
    query_sha256: str = Field(description="sha256 of the uploaded file's bytes, as they arrived")
    intrinsics: list[float] | None = Field(None, description="the request's fx, fy, cx, cy (null: the bundle's "
                                                             "camera, or the photo's EXIF)")
    service_version: str = Field(description="the rpe-pad version that answered")
    bundle_sha256: str = Field("", description="the bundle version that answered (sha256 of its manifest.json, as "
                                               "GET /categories gives it); its gallery views are ?v= its first 12 "
                                               "characters")
    score_floor: float = Field(0.0, description="that version's score_floor (GET /categories says what it means)")
    map_floor: float = Field(0.0, description="that version's map_floor: a pixel p of anomaly_map_png is the raw value "
                                              "threshold + (p / 255 - 0.5) * 2 * (threshold - map_floor)")


class BatchOut(BaseModel):
    request_id: str
    category: str
    results: list[InspectionOut]


class Health(BaseModel):
    status: str
    bundles_loaded: int | None = None
    detail: str | None = None
    records: str | None = Field(None, description="why inspection records are unavailable or behind (also in "
                                                    "detail); null when they are written as they come, or are off")


class RecordSummary(BaseModel):
    """One stored inspection, as listed (``GET /inspections``)."""

    id: str
    created: datetime = Field(description="UTC")
    request_id: str
    category: str
    verdict: str
    score: float
    threshold: float
    normalised_score: float
    filename: str | None
    bundle_id: str
    bundle_sha256: str
    feedback: str | None = Field(description="confirmed_defect, false_alarm, or null")
    feedback_note: str | None
    feedback_at: datetime | None
    feedback_by: str | None = Field(None, description="who gave the feedback, as they named themselves")
    has_overlay: bool
    has_query: bool


class SealOut(BaseModel):
    """Whether a record is as it was written (service/sealing.py), checked with the service's key."""

    status: Literal["valid", "invalid", "unsealed", "unknown_key", "unchecked"] = Field(
        description="valid: the inspection and its feedback are as written; invalid: changed since; unsealed: "
                    "written without a records key; unknown_key: sealed under a key the service does not have "
                    "(rpe-pad records verify takes older keys); unchecked: the service has no key")
    reason: str | None = Field(None, description="what is wrong, or why it was not checked")
    key: str | None = Field(None, description="the name of the key that sealed it")
    chain_id: str | None = Field(None, description="the records writer's chain it was numbered in")
    chain_seq: int | None = Field(None, description="its number in that chain (a gap is a deleted record)")


class RecordDetail(RecordSummary):
    """One stored inspection with its result and the addresses of its images."""

    result: dict = Field(description="the result as POST /inspect returned it (without images)")
    feedback_history: list[dict] = Field(default_factory=list, description="the feedback it had before, oldest "
                                                                            "first: label, note, at (UTC), by")
    overlay_url: str | None
    query_url: str | None
    seal: SealOut | None = Field(None, description="whether the record is as it was written")


class RecordPage(BaseModel):
    items: list[RecordSummary]
    total: int = Field(description="records matching the filters")
    limit: int
    offset: int
    next_before: str | None = Field(None, description="the next page's before= (the last item's id); null on the "
                                                      "last page")


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is refused, not dropped

    label: Literal["confirmed_defect", "false_alarm"] | None = Field(
        description="what the part really was; null clears the feedback (the earlier word is kept in the history, "
                    "the note says why it was cleared)")
    note: str | None = Field(None, max_length=2000, pattern="^[^\\x00]*$",
                             description="free text (no NUL character, which no database keeps)")
    by: str | None = Field(None, min_length=1, max_length=100, pattern="^[^\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]*$",
                           description="who gives it: an operator's name or badge (one line, at most 100 characters); "
                                       "kept with the word and in its history")
