"""The API's response models.

An inspection's answer is the pipeline's own result type (``models.results.Inspection``)
plus the request's fields; a category's description is ``models.results.CategoryInfo``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from models.results import CategoryInfo, Inspection


class Categories(BaseModel):
    categories: list[CategoryInfo]
    refused: dict[str, str] = Field(description="bundles found but not loaded, with the reason")


class InspectionOut(Inspection):
    request_id: str = Field(description="X-Request-ID of the request (given, or made by the service)")
    category: str
    filename: str | None = Field(description="the upload's file name, when the client sent one")
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
