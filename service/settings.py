"""Service settings, read once from the environment (prefix ``RPEPAD_``) or a ``.env`` file."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models import registry
from models.bundle import check_category_name
from models.images import MIN_IMAGE_SIDE
from service.bundle_source import S3Location, parse_source


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RPEPAD_", env_file=".env", extra="ignore")

    # Bundles: a directory (one subdirectory per category), or s3://bucket/prefix on an
    # S3-compatible store (service/bundle_source.py; endpoint and credentials: boto3's AWS_* variables)
    bundles: str = "bundles"
    bundles_cache: Path | None = None  # where s3:// bundles are fetched to; None = data_dir/bundles-cache
    bundles_poll_s: float = Field(default=60.0, ge=0)  # how often an s3:// source is looked at again; 0 = at start only
    # Category sharding: the categories this replica loads, as "a,b" or a JSON list '["a", "b"]';
    # None (or empty) = every category in the source. One the source lacks is refused with the reason.
    categories: Annotated[list[str] | None, NoDecode] = None
    drain_s: float = Field(default=0.0, ge=0)  # on SIGTERM: /readyz 503 for this long while serving on, then stop
    device: Literal["auto", "cuda", "cpu"] = "auto"  # where models run; auto = CUDA when present
    # CPU threads of the one inference thread (torch's team, and ONNX Runtime's pool sized from
    # it); None = torch's default, every core it sees. Replicas sharing a host: its cores / replicas
    threads: int | None = Field(default=None, gt=0)
    pose: str | None = None  # pose mode (models.registry, product modes); None = each bundle's own setting
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, gt=0)  # per file
    max_image_pixels: int = Field(default=25_000_000, gt=0)  # width x height, checked before decoding
    min_image_side: int = Field(default=MIN_IMAGE_SIDE, gt=0)  # smaller images are refused (422)
    max_files_per_batch: int = Field(default=16, gt=0)  # POST /inspect/batch
    api_key: SecretStr | None = None  # when set, every inspection needs header X-API-Key
    max_batch: int = Field(default=4, gt=0)  # images per model call (micro-batch)
    max_wait_ms: float = Field(default=10.0, ge=0)  # how long a batch waits for company
    queue_size: int = Field(default=32, gt=0)  # queued images per category before 503
    retry_after_s: int = Field(default=2, gt=0)  # Retry-After on 503
    warmup: bool = True  # one max_batch-sized batch per category before ready (first requests do not pay)
    # Inspection records (service/records.py)
    records: bool = True  # store every inspection (result, overlay, query) with operator feedback
    data_dir: Path = Path("data")  # where the default SQLite records file lives
    database_url: str | None = None  # any SQLAlchemy URL (postgresql+psycopg://...); None = SQLite in data_dir
    store_queries: bool = True  # keep each uploaded query image with its record
    max_stored_query_bytes: int = Field(default=5 * 1024 * 1024, gt=0)  # larger uploads are recorded without it
    records_max_count: int | None = Field(default=100_000, gt=0)  # newest records kept (None = no limit)
    records_max_age_days: float | None = Field(default=365.0, gt=0)  # older records are deleted (None = no limit)
    records_queue: int = Field(default=256, gt=0)  # records waiting for the writer before new ones are dropped

    def bundle_source(self) -> Path | S3Location:
        """``bundles`` as a local directory or an ``s3://`` location."""
        return parse_source(self.bundles)

    def bundles_cache_dir(self) -> Path:
        return self.bundles_cache if self.bundles_cache is not None else self.data_dir / "bundles-cache"

    def records_url(self) -> str:
        """The records database: ``database_url``, else SQLite at ``data_dir/records.sqlite3``."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'records.sqlite3').resolve()}"

    @field_validator("bundles", mode="before")
    @classmethod
    def _path_or_url(cls, value):
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("bundles")
    @classmethod
    def _valid_source(cls, value: str) -> str:
        parse_source(value)  # ValueError naming the problem of a malformed s3:// URL
        return value

    @field_validator("categories", mode="before")
    @classmethod
    def _category_list(cls, value):
        """A comma-separated list or a JSON list (the environment gives text; Python may give a list)."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text.startswith("["):
            return text.split(",") if text else None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValueError(f"categories {text!r} starts with '[' but is not a JSON list ({exc})") from exc

    @field_validator("categories")
    @classmethod
    def _category_names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [name.strip() for name in value]
        for name in names:
            try:
                check_category_name(name)
            except ValueError as exc:
                raise ValueError(f"categories {value!r}: {exc}") from exc
        return list(dict.fromkeys(names)) or None  # in order, each once; an empty list is every category

    @field_validator("pose")
    @classmethod
    def _product_pose_mode(cls, value: str | None) -> str | None:
        if value is not None:
            registry.pose_mode(value)  # ValueError naming the product's modes
        return value

    @field_validator("database_url", "records_max_count", "records_max_age_days", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return None if isinstance(value, str) and value.strip().lower() in ("", "none") else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return None if value is None or (isinstance(value, str) and not value.strip()) else value


@lru_cache
def get_settings() -> Settings:
    return Settings()
