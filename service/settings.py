"""Service settings, read once from the environment (prefix ``RPEPAD_``) or a ``.env`` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models import registry


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RPEPAD_", env_file=".env", extra="ignore")

    bundles: Path = Path("bundles")  # directory of bundles, one subdirectory per category
    device: Literal["auto", "cuda", "cpu"] = "auto"  # where models run; auto = CUDA when present
    pose: str | None = None  # pose mode (models.registry, product modes); None = each bundle's own setting
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, gt=0)  # per file
    max_image_pixels: int = Field(default=25_000_000, gt=0)  # width x height, checked before decoding
    min_image_side: int = Field(default=32, gt=0)  # smaller images are refused (422)
    max_files_per_batch: int = Field(default=16, gt=0)  # POST /inspect/batch
    api_key: SecretStr | None = None  # when set, every inspection needs header X-API-Key
    max_batch: int = Field(default=4, gt=0)  # images per model call (micro-batch)
    max_wait_ms: float = Field(default=10.0, ge=0)  # how long a batch waits for company
    queue_size: int = Field(default=32, gt=0)  # queued images per category before 503
    retry_after_s: int = Field(default=2, gt=0)  # Retry-After on 503
    warmup: bool = True  # one max_batch-sized batch per category before ready (first requests do not pay)

    @field_validator("pose")
    @classmethod
    def _product_pose_mode(cls, value: str | None) -> str | None:
        if value is not None:
            registry.pose_mode(value)  # ValueError naming the product's modes
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return None if value is None or (isinstance(value, str) and not value.strip()) else value


@lru_cache
def get_settings() -> Settings:
    return Settings()
