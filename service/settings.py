"""Service settings, read once from the environment (prefix ``RPEPAD_``) or a ``.env`` file."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models import registry
from models.bundle import check_category_name
from models.images import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE
from service.bundle_source import S3Location, parse_source
from service.sealing import read_key


# Upper bounds of the durations (docs/SERVICE.md): far above any deployment's, and finite, so
# that no sleep, deadline or date computed from a setting is endless or out of range.
MAX_WAIT_MS = 10_000.0  # RPEPAD_MAX_WAIT_MS: 10 s
MAX_DRAIN_S = 3600.0  # RPEPAD_DRAIN_S: an hour
MAX_POLL_S = 86_400.0  # RPEPAD_BUNDLES_POLL_S: a day
MAX_RETRY_AFTER_S = 3600  # RPEPAD_RETRY_AFTER_S: an hour
MAX_AGE_DAYS = 36_500.0  # RPEPAD_RECORDS_MAX_AGE_DAYS: 100 years


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RPEPAD_", env_file=".env", extra="ignore")

    # Bundles: a directory (one subdirectory per category), or s3://bucket/prefix on an
    # S3-compatible store (service/bundle_source.py; endpoint and credentials: boto3's AWS_* variables)
    bundles: str = "bundles"
    bundles_cache: Path | None = None  # where s3:// bundles are fetched to; None = data_dir/bundles-cache
    # how often an s3:// source is looked at again, at most a day; 0 = at start only
    bundles_poll_s: float = Field(default=60.0, ge=0, le=MAX_POLL_S, allow_inf_nan=False)
    # Category sharding: the categories this replica loads, as "a,b" or a JSON list '["a", "b"]';
    # None (or empty) = every category in the source. One the source lacks is refused with the reason.
    categories: Annotated[list[str] | None, NoDecode] = None
    # on SIGTERM: /readyz 503 for this long (at most an hour) while serving on, then stop
    drain_s: float = Field(default=0.0, ge=0, le=MAX_DRAIN_S, allow_inf_nan=False)
    device: Literal["auto", "cuda", "cpu"] = "auto"  # where models run; auto = CUDA when present
    # CPU threads of the one inference thread (torch's team, and ONNX Runtime's pool sized from
    # it); None = torch's default, every core it sees. Replicas sharing a host: its cores / replicas
    threads: int | None = Field(default=None, gt=0)
    pose: str | None = None  # pose mode (models.registry, product modes); None = each bundle's own setting
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, gt=0)  # per file
    max_image_pixels: int = Field(default=MAX_IMAGE_PIXELS, gt=0)  # width x height, checked before decoding
    min_image_side: int = Field(default=MIN_IMAGE_SIDE, gt=0)  # smaller images are refused (422)
    max_files_per_batch: int = Field(default=16, gt=0)  # POST /inspect/batch
    # uploads decoded at once, over all requests: a photo at full size takes 25-40 bytes a pixel
    # while it is decoded and brought to the bundle's camera (0.6-0.9 GB at 25 megapixels)
    max_decodes: int = Field(default=4, gt=0)
    api_key: SecretStr | None = None  # when set, every inspection needs header X-API-Key (outer whitespace dropped)
    max_batch: int = Field(default=4, gt=0)  # images per model call (micro-batch)
    # how long a batch waits for company (at most 10 s)
    max_wait_ms: float = Field(default=10.0, ge=0, le=MAX_WAIT_MS, allow_inf_nan=False)
    queue_size: int = Field(default=32, gt=0)  # queued images per category before 503
    retry_after_s: int = Field(default=2, gt=0, le=MAX_RETRY_AFTER_S)  # Retry-After on 503
    warmup: bool = True  # one max_batch-sized batch per category before ready (first requests do not pay)
    # Inspection records (service/records.py)
    records: bool = True  # store every inspection (result, overlay, query) with operator feedback
    data_dir: Path = Path("data")  # where the default SQLite records file lives
    database_url: str | None = None  # any SQLAlchemy URL (postgresql+psycopg://...); None = SQLite in data_dir
    store_queries: bool = True  # keep each uploaded query image with its record
    max_stored_query_bytes: int = Field(default=5 * 1024 * 1024, gt=0)  # larger uploads are recorded without it
    records_max_count: int | None = Field(default=100_000, gt=0)  # newest records kept (None = no limit)
    # older records are deleted (None = no limit; at most 100 years: a finite date)
    records_max_age_days: float | None = Field(default=365.0, gt=0, le=MAX_AGE_DAYS, allow_inf_nan=False)
    records_queue: int = Field(default=256, gt=0)  # records waiting for the writer; beyond, written without images
    # a file of at least 32 secret bytes: every record is sealed with it (service/sealing.py); None = unsealed.
    # Keep it where whoever can write to the database cannot read it (a secret, not the data volume).
    records_key_file: Path | None = None

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
        if not value.strip():  # Path("") would quietly be the current folder
            raise ValueError("is empty: give the bundles folder or an s3:// location")
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

    @field_validator("records_key_file")
    @classmethod
    def _a_key(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_key(value)  # ValueError naming what is wrong: missing, too short, too large
        return value

    @field_validator("database_url", "records_max_count", "records_max_age_days", "records_key_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return None if isinstance(value, str) and value.strip().lower() in ("", "none") else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _header_value(cls, value):
        """The key without surrounding whitespace (``kubectl create secret --from-file`` keeps a
        file's newline; HTTP clients strip a header's), so a client can send it; empty = no key.
        A key of whitespace alone, or with a character a header cannot carry, is refused."""
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            return value  # pydantic's own error for a non-string
        key = value.strip()
        if not key:
            raise ValueError("is only whitespace (leave it empty or unset for no key)")
        for at, char in enumerate(key):
            if not " " <= char <= "~":
                raise ValueError(f"has character U+{ord(char):04X} at position {at}: header X-API-Key carries "
                                 f"printable ASCII only (letters, digits, punctuation, spaces)")
        return key

    @model_validator(mode="after")
    def _a_full_batch_fits_the_queue(self) -> Settings:
        """A batch is queued whole or not at all, so one larger than the queue would be told
        "busy, retry later" forever."""
        if self.max_files_per_batch > self.queue_size:
            raise ValueError(f"max_files_per_batch ({self.max_files_per_batch}) is larger than queue_size "
                             f"({self.queue_size}): such a batch could never be queued; raise RPEPAD_QUEUE_SIZE "
                             f"or lower RPEPAD_MAX_FILES_PER_BATCH")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
