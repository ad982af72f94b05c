"""Where the service's bundles come from: a local directory, or an S3-compatible object store.

``RPEPAD_BUNDLES`` is either a directory (one subdirectory per category, as ``rpe-pad train
--out`` writes it; the service reads it in place, as it always has) or ``s3://bucket/prefix``:
the same layout under a key prefix, ``prefix/<category>/manifest.json`` and every file the
manifest lists at its relative path. ``parse_source`` tells the two apart and refuses a
malformed URL with the reason. The store's address, region and credentials are boto3's own
settings (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, ``AWS_REGION``,
``AWS_ACCESS_KEY_ID`` ..., a profile, an instance role), so any S3-compatible store works.

``S3Source.sync`` brings the store's bundles into a local cache with one directory per
version, ``CACHE/<category>@<sha256 of its manifest.json>/<category>/``: the sha256 of the
manifest is the version's identity (the manifest pins the sha256 of every other file). A
version is fetched into ``CACHE/.tmp-XXXX/<category>/``, checked completely by
``models.bundle`` (the manifest's schema and every listed file's size and sha256: the one
verification there is), and only then renamed to its version directory in a single rename.
So a version directory is whole and verified, or absent; nothing half-fetched is ever
loaded. A version found in the cache (from an earlier run) is verified again before it is
handed out, and fetched afresh when that fails.

A restart while the store cannot be read (``cached``): the service then starts on the newest
version of each category already in the cache from an earlier run, verified again, and keeps
saying that the store could not be read until a look succeeds. A cache that does not verify is
not served.

What can go wrong, and where it is reported:
- the store as a whole (unreachable, no such bucket, no credentials): ``Snapshot.error``;
  nothing else is known from that look;
- one category's newest version (no manifest, an object the manifest names is missing, an
  object of another size than the manifest's (refused before anything is downloaded) or
  another hash, an invalid manifest, a failed download):
  ``Snapshot.refused[category]``. A version refused for its content is not downloaded
  again while the category's objects stay the same (keys, sizes and ETags); a failed
  download is tried again on the next sync.

Category sharding (``RPEPAD_CATEGORIES``): given a list of categories, a source offers
those only (``select``). An ``S3Source`` then lists only ``prefix/<category>/`` of each, so a
replica never reads, let alone downloads, another shard's objects; a listed category that
the source does not have is refused with the reason, like a bad bundle.

No torch here: ``sync`` runs on a worker thread, never on the service's inference thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from models.bundle import MANIFEST, BundleError, find_bundles, open_bundle, read_manifest, verify_files
from models.data import not_a_folder

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_BUCKET_CHARS = re.compile(r"^[a-z0-9.-]+$")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_VERSION_DIR = re.compile(r"^(?P<category>[^/]+)@(?P<sha256>[0-9a-f]{64})$")
CONNECT_TIMEOUT_S = 5  # an unreachable store is reported within seconds, not botocore's default minute
READ_TIMEOUT_S = 60
MAX_MANIFEST_BYTES = 16 << 20  # a manifest lists files: Lego's, with its gallery, is 118 kB


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket/prefix``: ``prefix`` is empty or ends with ``/``."""

    bucket: str
    prefix: str

    def key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def url(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.key(*parts)}"

    def __str__(self) -> str:
        return self.url()


def parse_source(value: str | os.PathLike) -> Path | S3Location:
    """A local directory (any text without a ``scheme://``) or an ``s3://bucket/prefix``
    location; ``ValueError`` naming the problem for any other scheme or a malformed URL."""
    text = os.fspath(value)
    match = _SCHEME.match(text)
    if match is None:
        return Path(text)
    scheme = match.group(1).lower()
    if scheme != "s3":
        raise ValueError(f"bundles source {text!r}: unsupported scheme {scheme}://; give a local directory or "
                         "s3://bucket/prefix")
    parts = urlsplit(text)
    if parts.query or parts.fragment:
        raise ValueError(f"bundles source {text!r}: an s3:// URL takes no query (?...) or fragment (#...)")
    problem = _bucket_problem(parts.netloc)
    if problem:
        raise ValueError(f"bundles source {text!r}: bucket name {parts.netloc!r} {problem}")
    prefix = parts.path.strip("/")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        raise ValueError(f"bundles source {text!r}: the prefix {prefix!r} has an empty, '.' or '..' segment")
    return S3Location(parts.netloc, prefix + "/" if prefix else "")


def _bucket_problem(bucket: str) -> str | None:
    """Why ``bucket`` is not a valid S3 bucket name (the S3 naming rules), or None."""
    if not bucket:
        return "is empty (the URL is s3://BUCKET/prefix)"
    if ":" in bucket or "@" in bucket:
        return ("is not a bucket name (the store's address goes in AWS_ENDPOINT_URL and the credentials in "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, not in the URL)")
    if not 3 <= len(bucket) <= 63:
        return f"has {len(bucket)} characters (3 to 63)"
    if not _BUCKET_CHARS.match(bucket):
        return "may hold only lowercase letters, digits, dots and hyphens"
    if not (bucket[0].isalnum() and bucket[-1].isalnum()):
        return "must begin and end with a letter or a digit"
    if ".." in bucket:
        return "must not have two dots in a row"
    if _IPV4.match(bucket):
        return "must not look like an IP address"
    return None


def select(found: Mapping[str, object], categories: Sequence[str] | None, where: str
           ) -> tuple[dict[str, object], dict[str, str]]:
    """The entries of ``found`` (category -> anything) that ``categories`` lists, in its order
    (all of them when it is None), and the reason for each listed category ``found`` lacks."""
    if categories is None:
        return dict(found), {}
    missing = {name: f"{where}: no bundle {name!r} here (RPEPAD_CATEGORIES lists it)" for name in categories
               if name not in found}
    return {name: found[name] for name in categories if name in found}, missing


def local_bundles(directory: Path, categories: Sequence[str] | None = None) -> tuple[dict[str, Path], dict[str, str]]:
    """A bundles directory's candidate bundles by category (``select``), and why listed ones are missing."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: bundles directory {not_a_folder(directory)}")
    return select({path.name: path for path in find_bundles(directory)}, categories, str(directory))


@dataclass(frozen=True)
class Version:
    """One bundle version, fetched and verified."""

    category: str
    sha256: str  # of its manifest.json: the version's identity (what Inspector.bundle_sha256 reads)
    path: Path  # the local bundle directory, named after the category


@dataclass
class Snapshot:
    """What one look at the store found."""

    versions: dict[str, Version] = field(default_factory=dict)  # category -> its newest version, verified
    refused: dict[str, str] = field(default_factory=dict)  # category -> why its newest version is not usable
    error: str | None = None  # the store itself could not be read (then nothing else is known)


def s3_client():
    """A boto3 S3 client configured the usual AWS way (environment, config files, roles)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", config=Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S))


class S3Source:
    """The bundles under an ``s3://`` location, synced into ``cache_dir`` (module docstring)."""

    def __init__(self, location: S3Location, cache_dir: Path, client=None, categories: Sequence[str] | None = None):
        self.location, self.cache_dir = location, Path(cache_dir)
        self.categories = categories  # the only categories looked at (None: every one under the prefix)
        self._client = client
        self._refusals: dict[str, tuple[tuple, str]] = {}  # category -> (its objects when refused, reason)

    def __str__(self) -> str:
        return str(self.location)

    def sync(self, serving: Mapping[str, str] | None = None, keep: Collection[Path] = ()) -> Snapshot:
        """The newest version of every category in the store, each verified in the cache.

        ``serving``: category -> sha256 of the version in service (not verified again);
        ``keep``: bundle directories still in use. Every other version directory and any
        leftover temporary directory is removed from the cache after a successful look.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        serving = serving or {}
        try:
            if self._client is None:
                self._client = s3_client()
            if self.categories is None:
                groups = _by_category(self._list(self.location.prefix))
            else:  # a shard: its own categories' keys only
                groups = {name: files for name in self.categories
                          if (files := self._list(self.location.key(name, "")))}
        except (BotoCoreError, ClientError, ValueError) as exc:  # ValueError: e.g. a malformed AWS_ENDPOINT_URL
            return Snapshot(error=f"the bundle store could not be read: {_describe(exc)}")
        groups, missing = select(groups, self.categories, str(self.location))
        snapshot = Snapshot(refused=missing)
        for category, files in sorted(groups.items()):
            try:
                snapshot.versions[category] = self._version(category, files, serving.get(category))
            except BundleError as exc:
                snapshot.refused[category] = str(exc)
            except (BotoCoreError, ClientError, OSError) as exc:  # tried again on the next sync
                snapshot.refused[category] = f"{self.location.url(category)}/: fetch failed: {_describe(exc)}"
        self._prune({v.path.parent for v in snapshot.versions.values()} | {Path(p).parent for p in keep})
        return snapshot

    def cached(self) -> Snapshot:
        """The newest version of each category already in the cache (by when it was fetched),
        verified again: what a service starts on while the store cannot be read. A category
        whose cached version does not verify is refused with the reason; nothing is removed."""
        newest: dict[str, tuple[float, Version]] = {}  # category -> (when fetched, its version)
        if self.cache_dir.is_dir():
            for path in self.cache_dir.iterdir():
                match = _VERSION_DIR.match(path.name)
                if match and (path / match["category"]).is_dir():
                    name, fetched = match["category"], path.stat().st_mtime
                    if name not in newest or fetched > newest[name][0]:
                        newest[name] = (fetched, Version(name, match["sha256"], path / name))
        chosen, _ = select(newest, self.categories, str(self.cache_dir))  # a missing one: the store's error says why
        snapshot = Snapshot()
        for name, (_, version) in chosen.items():
            try:
                open_bundle(version.path)
            except BundleError as exc:
                snapshot.refused[name] = f"cached version in {version.path.parent}: {exc}"
                continue
            snapshot.versions[name] = version
        return snapshot

    # ------------------------------------------------------------ one category
    def _version(self, category: str, files: dict[str, tuple[int, str]], serving: str | None) -> Version:
        where = self.location.url(category)
        if MANIFEST not in files:
            raise BundleError(f"{where}/: no {MANIFEST} (not a bundle, or an upload that has not finished: "
                              f"upload {MANIFEST} last)")
        fingerprint = tuple(sorted(files.items()))
        refused = self._refusals.get(category)
        if refused is not None and refused[0] == fingerprint:
            raise BundleError(refused[1])  # the same objects as last time: not downloaded again
        size = files[MANIFEST][0]
        if size > MAX_MANIFEST_BYTES:  # read whole into memory: refused by the listing's size first
            raise BundleError(f"{where}/{MANIFEST}: {size} bytes, more than a manifest may have "
                              f"({MAX_MANIFEST_BYTES}; not a bundle manifest)")
        manifest_bytes = self._get(self.location.key(category, MANIFEST), MAX_MANIFEST_BYTES)
        sha = hashlib.sha256(manifest_bytes).hexdigest()
        target = self.cache_dir / f"{category}@{sha}"
        if sha == serving:
            return Version(category, sha, target / category)
        if (target / category).is_dir():  # fetched by an earlier run: verified again before use
            try:
                open_bundle(target / category)
                return Version(category, sha, target / category)
            except BundleError:
                shutil.rmtree(target, ignore_errors=True)
        try:
            path = self._fetch(category, manifest_bytes, files, target)
        except BundleError as exc:
            self._refusals[category] = (fingerprint, str(exc))
            raise
        self._refusals.pop(category, None)
        return Version(category, sha, path)

    def _fetch(self, category: str, manifest_bytes: bytes, files: dict[str, tuple[int, str]], target: Path) -> Path:
        """Download one version into a temporary directory, verify it, rename it to ``target``."""
        where = f"{self.location.url(category)}/ (version {hashlib.sha256(manifest_bytes).hexdigest()[:12]})"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.cache_dir))
        bundle = tmp / category
        try:
            bundle.mkdir()
            (bundle / MANIFEST).write_bytes(manifest_bytes)
            try:
                manifest = read_manifest(bundle)  # schema, format version, category name, safe paths
                missing = sorted(rel for rel in manifest.files if rel not in files)
                if missing:
                    raise BundleError(f"{bundle}: missing object {missing[0]} (named in the manifest; "
                                      f"{len(missing)} missing)")
                resized = sorted(rel for rel, entry in manifest.files.items() if files[rel][0] != entry.bytes)
                if resized:  # refused before anything is downloaded: the listing has every size
                    rel = resized[0]
                    raise BundleError(f"{bundle}: object {rel} has {files[rel][0]} bytes, the manifest says "
                                      f"{manifest.files[rel].bytes} ({len(resized)} of another size)")
                for rel in manifest.files:
                    self._download(self.location.key(category, rel), bundle / rel, rel, bundle)
                verify_files(bundle, manifest)  # every file's size and sha256, before anything is moved
            except BundleError as exc:
                raise BundleError(str(exc).replace(str(bundle), where)) from exc
            try:
                tmp.rename(target)  # the version appears whole, in one rename
            except OSError:
                if not (target / category).is_dir():  # not the same version placed by another process
                    raise
            return target / category
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already after the rename

    # ------------------------------------------------------------ the store
    def _list(self, prefix: str) -> dict[str, tuple[int, str]]:
        """Every object under ``prefix``: key relative to it -> (size, ETag)."""
        objects = {}
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.location.bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                objects[obj["Key"][len(prefix):]] = (obj["Size"], obj.get("ETag", ""))
        return objects

    def _get(self, key: str, limit: int) -> bytes:
        """An object's bytes, refused past ``limit`` (an object may have grown since it was listed)."""
        with closing(self._client.get_object(Bucket=self.location.bucket, Key=key)["Body"]) as body:
            data = body.read(limit + 1)
        if len(data) > limit:
            raise BundleError(f"{self.location.bucket}/{key}: more than {limit} bytes")
        return data

    def _download(self, key: str, dest: Path, rel: str, bundle: Path) -> None:
        from botocore.exceptions import ClientError

        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            response = self._client.get_object(Bucket=self.location.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise BundleError(f"{bundle}: missing object {rel} (named in the manifest)") from exc
            raise
        with closing(response["Body"]) as body, dest.open("wb") as f:
            shutil.copyfileobj(body, f, 1 << 20)

    # ------------------------------------------------------------ the cache
    def _prune(self, keep: set[Path]) -> None:
        """Remove the version directories not in ``keep`` and leftover temporary directories."""
        if not self.cache_dir.is_dir():
            return
        for path in self.cache_dir.iterdir():
            if path.is_dir() and (path.name.startswith(".tmp-") or _VERSION_DIR.match(path.name)) and path not in keep:
                shutil.rmtree(path, ignore_errors=True)


def _by_category(objects: dict[str, tuple[int, str]]) -> dict[str, dict[str, tuple[int, str]]]:
    """Objects grouped by their first path segment (the category), keys relative to it;
    objects right under the prefix and hidden folders (``.work``, ``.tmp-*``) are ignored."""
    groups: dict[str, dict[str, tuple[int, str]]] = {}
    for key, value in objects.items():
        category, sep, rel = key.partition("/")
        if sep and rel and category and not category.startswith("."):
            groups.setdefault(category, {})[rel] = value
    return groups


def _describe(exc: Exception) -> str:
    """One line for a boto3 error: the store's error code and message, or the exception's."""
    response = getattr(exc, "response", None)
    error = response.get("Error", {}) if isinstance(response, dict) else {}
    if error.get("Code"):
        return f"{error['Code']}: {error.get('Message') or type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"
