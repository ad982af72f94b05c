"""Bundles from object storage (``RPEPAD_BUNDLES=s3://bucket/prefix``) against a real
S3-protocol server on loopback: moto's standalone server, reached by boto3 through the usual
AWS variables exactly as a real store would be. The bundle is the session's ``tiny_release``."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lab.fleet import next_version, object_store
from models.bundle import MANIFEST, FileEntry, open_bundle, read_manifest
from service.app import create_app
from service.bundle_source import S3Location, S3Source, parse_source
from service.settings import Settings

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

PREFIX = "models"
TAMPERED = "irprn/config.json"  # small, read at load
POLL_S = 0.2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store():
    with object_store() as url:
        yield url


def _aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str) -> None:
    """boto3's usual environment pointed at ``endpoint``; nothing read from ~/.aws or a metadata service."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _bucket() -> str:
    name = f"bundles-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def _upload(bucket: str, bundle: Path, manifest: bytes | None = None, changed: dict[str, bytes] | None = None,
            leave_out: tuple[str, ...] = ()) -> None:
    """``bundle`` under ``s3://bucket/PREFIX/<category>/``, the manifest last (as a publisher should)."""
    s3, changed = boto3.client("s3"), changed or {}
    for path in sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(bundle).as_posix()
        if rel not in leave_out:
            s3.put_object(Bucket=bucket, Key=f"{PREFIX}/{bundle.name}/{rel}", Body=changed.get(rel, path.read_bytes()))
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/{bundle.name}/{MANIFEST}",
                  Body=manifest if manifest is not None else (bundle / MANIFEST).read_bytes())


def _tampered(bundle: Path, rel: str = TAMPERED) -> bytes:
    """``rel`` with one byte changed: the same size, another sha256."""
    data = bytearray((bundle / rel).read_bytes())
    data[len(data) // 2] ^= 0x01
    return bytes(data)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Counting:
    """A boto3 client that remembers which objects were downloaded."""

    def __init__(self, client):
        self.client, self.gets = client, []

    def __getattr__(self, name):
        return getattr(self.client, name)

    def get_object(self, **kwargs):
        self.gets.append(kwargs["Key"])
        return self.client.get_object(**kwargs)


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []


# ------------------------------------------------------------ the URL


@pytest.mark.parametrize("url, problem", [
    ("gs://bundles/x", "unsupported scheme gs://"),
    ("s3:///models", "is empty"),
    ("s3://ab/models", "3 to 63"),
    ("s3://Bundles_Here/models", "lowercase letters"),
    ("s3://-bundles/models", "begin and end"),
    ("s3://bund..les/models", "two dots"),
    ("s3://192.168.1.10/models", "IP address"),
    ("s3://localhost:9000/models", "AWS_ENDPOINT_URL"),
    ("s3://key:secret@bundles/models", "AWS_ENDPOINT_URL"),
    ("s3://bundles/a//b", "empty, '.' or '..' segment"),
    ("s3://bundles/a/../b", "empty, '.' or '..' segment"),
    ("s3://bundles/models?versionId=1", "no query"),
])
def test_bad_urls_are_refused_with_the_reason(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match="bundles source") as info:
        Settings(bundles=url, _env_file=None)
    assert problem in str(info.value)


def test_urls_and_paths() -> None:
    assert parse_source("s3://bundles.example-1") == S3Location("bundles.example-1", "")
    assert parse_source("s3://bundles/") == S3Location("bundles", "")
    assert parse_source("S3://bundles/a/b/") == S3Location("bundles", "a/b/")
    assert str(S3Location("bundles", "a/b/")) == "s3://bundles/a/b/"
    assert parse_source("relative/bundles") == Path("relative/bundles")
    settings = Settings(bundles=Path("/srv/bundles"), data_dir=Path("/d"), _env_file=None)
    assert settings.bundle_source() == Path("/srv/bundles") and settings.bundles_cache_dir() == Path("/d/bundles-cache")


# ------------------------------------------------------------ fetching and verifying (no service)


def test_a_version_is_fetched_verified_cached_and_never_half_placed(store: str, tiny_release: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _aws(monkeypatch, tmp_path, store)
    bucket, cache, name = _bucket(), tmp_path / "cache", tiny_release.name
    _upload(bucket, tiny_release)
    client = _Counting(boto3.client("s3"))
    source = S3Source(S3Location(bucket, f"{PREFIX}/"), cache, client)

    snap = source.sync()
    v1 = snap.versions[name]
    assert snap.error is None and snap.refused == {}
    assert v1.sha256 == _sha((tiny_release / MANIFEST).read_bytes()) and v1.path == cache / f"{name}@{v1.sha256}" / name
    assert open_bundle(v1.path).files == read_manifest(tiny_release).files
    assert _leftovers(cache) == [f"{name}@{v1.sha256}"]
    assert len(client.gets) == 1 + len(read_manifest(tiny_release).files)
    # Known versions are not downloaded again: only the manifest is read.
    client.gets.clear()
    assert source.sync({name: v1.sha256}).versions[name] == v1
    assert S3Source(source.location, cache, client).sync().versions[name] == v1  # another run, the same cache
    assert client.gets == [f"{PREFIX}/{name}/{MANIFEST}"] * 2

    # A tampered object (same size, another hash): refused, nothing placed, not downloaded again.
    v2 = next_version(tiny_release)
    _upload(bucket, tiny_release, v2, changed={TAMPERED: _tampered(tiny_release)})
    snap = source.sync({name: v1.sha256}, keep=[v1.path])
    reason = snap.refused[name]
    assert name not in snap.versions and snap.error is None
    assert f"s3://{bucket}/{PREFIX}/{name}/ (version {_sha(v2)[:12]})" in reason
    assert f"{TAMPERED} does not match its sha256" in reason
    assert _leftovers(cache) == [f"{name}@{v1.sha256}"]  # no temporary folder, no half version
    client.gets.clear()
    assert source.sync({name: v1.sha256}, keep=[v1.path]).refused[name] == reason
    assert client.gets == []  # the same objects as when it was refused: not even the manifest is read

    # A missing object (the manifest names it, the store does not have it).
    boto3.client("s3").delete_object(Bucket=bucket, Key=f"{PREFIX}/{name}/{TAMPERED}")
    snap = source.sync({name: v1.sha256}, keep=[v1.path])
    assert f"missing object {TAMPERED}" in snap.refused[name] and name not in snap.versions

    # Repaired: the new version is fetched, and the old one is removed once not in use.
    _upload(bucket, tiny_release, v2)
    snap = source.sync({name: v1.sha256}, keep=[v1.path])
    assert snap.versions[name].sha256 == _sha(v2) and snap.refused == {}
    assert _leftovers(cache) == sorted([f"{name}@{v1.sha256}", f"{name}@{_sha(v2)}"])
    source.sync({name: _sha(v2)})
    assert _leftovers(cache) == [f"{name}@{_sha(v2)}"]

    # A cached version damaged on disk is verified before use and fetched again.
    cached = cache / f"{name}@{_sha(v2)}" / name / TAMPERED
    cached.write_bytes(_tampered(tiny_release))
    again = S3Source(source.location, cache, client).sync().versions[name]
    assert open_bundle(again.path) and (again.path / TAMPERED).read_bytes() == (tiny_release / TAMPERED).read_bytes()


def test_an_object_of_another_size_is_refused_before_any_download(store: str, tiny_release: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The listing gives every object's size: one that differs from the manifest's is refused
    before anything is downloaded (a 300 MB object was fetched whole before)."""
    _aws(monkeypatch, tmp_path, store)
    bucket, name = _bucket(), tiny_release.name
    listed = (tiny_release / TAMPERED).stat().st_size
    _upload(bucket, tiny_release, changed={TAMPERED: b" " * (listed + 1000)})
    client = _Counting(boto3.client("s3"))
    snap = S3Source(S3Location(bucket, f"{PREFIX}/"), tmp_path / "cache", client).sync()
    assert f"object {TAMPERED} has {listed + 1000} bytes, the manifest says {listed}" in snap.refused[name]
    assert client.gets == [f"{PREFIX}/{name}/{MANIFEST}"]


def test_a_manifest_whose_paths_clash_is_refused_once_for_its_content(store: str, tiny_release: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest listing a file and a folder of the same name is a bad bundle (refused for its
    content, not downloaded again while the objects stay the same), not a failed download
    retried at every sync."""
    _aws(monkeypatch, tmp_path, store)
    bucket, name = _bucket(), tiny_release.name
    manifest = read_manifest(tiny_release)
    extra = {"reports/x": b"a", "reports/x/y": b"b"}
    files = {**manifest.files, **{rel: FileEntry(sha256=_sha(data), bytes=len(data)) for rel, data in extra.items()}}
    _upload(bucket, tiny_release, manifest.model_copy(update={"files": files}).model_dump_json().encode())
    for rel, data in extra.items():
        boto3.client("s3").put_object(Bucket=bucket, Key=f"{PREFIX}/{name}/{rel}", Body=data)
    client = _Counting(boto3.client("s3"))
    source = S3Source(S3Location(bucket, f"{PREFIX}/"), tmp_path / "cache", client)
    reason = source.sync().refused[name]
    assert "'reports/x' is listed as a file and as the folder of another listed file" in reason
    assert "fetch failed" not in reason and client.gets == [f"{PREFIX}/{name}/{MANIFEST}"]
    assert source.sync().refused[name] == reason and client.gets == [f"{PREFIX}/{name}/{MANIFEST}"]  # not again


def test_a_manifest_too_large_is_refused_by_its_listed_size_unread(store: str, tiny_release: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest is read whole into memory: one larger than a manifest can be (a listing of
    files) is refused from the listing, never downloaded (a 400 MiB one took 1.2 GB before)."""
    import service.bundle_source as bundle_source

    _aws(monkeypatch, tmp_path, store)
    bucket, name = _bucket(), tiny_release.name
    _upload(bucket, tiny_release)
    size = (tiny_release / MANIFEST).stat().st_size
    monkeypatch.setattr(bundle_source, "MAX_MANIFEST_BYTES", size - 1)
    client = _Counting(boto3.client("s3"))
    source = S3Source(S3Location(bucket, f"{PREFIX}/"), tmp_path / "cache", client)
    reason = source.sync().refused[name]
    assert f"{MANIFEST}: {size} bytes, more than a manifest may have ({size - 1}" in reason, reason
    assert client.gets == [] and _leftovers(tmp_path / "cache") == []
    monkeypatch.setattr(bundle_source, "MAX_MANIFEST_BYTES", size)  # at the limit: fetched and served
    assert name in source.sync().versions


def test_a_store_that_cannot_be_read(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _aws(monkeypatch, tmp_path, f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    snap = S3Source(S3Location("bundles", ""), tmp_path / "cache").sync()
    assert snap.versions == {} and "could not be read" in snap.error and "Could not connect" in snap.error
    _aws(monkeypatch, tmp_path, store)
    snap = S3Source(S3Location("no-such-bucket-here", ""), tmp_path / "cache").sync()
    assert "NoSuchBucket" in snap.error


# ------------------------------------------------------------ the service


def _client(bundles: str, tmp_path: Path, **overrides) -> TestClient:
    settings = Settings(bundles=bundles, device="cpu", max_batch=1, data_dir=tmp_path / "data",  # a 1-image warm-up
                        bundles_poll_s=POLL_S, _env_file=None, **overrides)
    return TestClient(create_app(settings))


def _until(check, timeout: float = 60, what: str = "") -> None:
    end = time.time() + timeout
    while not check():
        assert time.time() < end, f"timed out waiting for {what or check}"
        time.sleep(0.05)


def _post(client: TestClient, category: str, data: bytes):
    return client.post("/inspect", files={"file": ("q.png", data, "image/png")}, data={"category": category})


@pytest.fixture(scope="module")
def query_png(tiny_synth: Path) -> bytes:
    return min((tiny_synth / "test" / "good").glob("*.png")).read_bytes()


@pytest.mark.slow(seconds=9)
def test_service_swaps_versions_under_load_and_keeps_serving_through_failures(
        tiny_release: Path, query_png: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, v1 = tiny_release.name, _sha((tiny_release / MANIFEST).read_bytes())
    v2 = next_version(tiny_release)
    own_store = object_store()  # this test stops its store at the end
    endpoint = own_store.__enter__()
    try:
        _aws(monkeypatch, tmp_path, endpoint)
        bucket = _bucket()
        url = f"s3://{bucket}/{PREFIX}"
        _upload(bucket, tiny_release)
        with _client(url, tmp_path) as c:
            _until(lambda: c.get("/readyz").status_code == 200, what="ready")
            assert c.get("/readyz").json() == {"status": "ready", "bundles_loaded": 1, "detail": None,
                                                 "records": None}
            (info,) = c.get("/categories").json()["categories"]
            assert info["bundle_sha256"] == v1 and c.get("/categories").json()["refused"] == {}
            assert _post(c, name, query_png).status_code == 200

            def refused() -> dict[str, str]:
                return c.get("/categories").json()["refused"]

            # A new version with a tampered object: refused, the old version still served.
            _upload(bucket, tiny_release, v2, changed={TAMPERED: _tampered(tiny_release)})
            _until(lambda: "does not match its sha256" in refused().get(name, ""), what="the tampered version refused")
            assert f"still serving version {v1[:12]}" in refused()[name]
            assert c.get("/categories").json()["categories"][0]["bundle_sha256"] == v1
            ready = c.get("/readyz")
            assert ready.status_code == 200 and "does not match its sha256" in ready.json()["detail"]
            assert _post(c, name, query_png).status_code == 200
            # The object goes missing: refused for that reason now.
            boto3.client("s3").delete_object(Bucket=bucket, Key=f"{PREFIX}/{name}/{TAMPERED}")
            _until(lambda: f"missing object {TAMPERED}" in refused().get(name, ""), what="the missing object")
            assert f"missing object {TAMPERED}" in c.get("/readyz").json()["detail"]

            # Repaired while clients keep asking: the new version is swapped in, no request fails.
            answers, stop = [], threading.Event()

            def client_loop() -> None:
                while not stop.is_set():
                    r = _post(c, name, query_png)
                    answers.append((r.status_code, r.json().get("record_id"), r.json().get("bundle_sha256")))

            clients = [threading.Thread(target=client_loop, daemon=True) for _ in range(2)]
            for t in clients:
                t.start()
            try:
                _until(lambda: len(answers) >= 2, what="requests before the swap")
                _upload(bucket, tiny_release, v2)
                _until(lambda: c.get("/categories").json()["categories"][0]["bundle_sha256"] == _sha(v2),
                       what="the new version served")
                after = len(answers)
                _until(lambda: len(answers) >= after + 2, what="requests after the swap")
            finally:
                stop.set()
                for t in clients:
                    t.join(timeout=60)
            assert not any(t.is_alive() for t in clients), "a request was never answered"
            assert [status for status, _, _ in answers] == [200] * len(answers)
            state = c.app.state.svc
            assert state.records.flush(timeout=30)
            versions = {c.get(f"/inspections/{record}").json()["bundle_sha256"] for _, record, _ in answers}
            assert versions == {v1, _sha(v2)}  # both versions answered during the run
            # Each answer names the version that gave it, as its record does; a gallery view of
            # the old version is gone (it was served the new version's picture, cached a day).
            assert all(c.get(f"/inspections/{record}").json()["bundle_sha256"] == sha for _, record, sha in answers)
            gone = c.get(f"/categories/{name}/gallery/0.png", params={"v": v1[:12]})
            assert gone.status_code == 404 and "inspect again" in gone.json()["detail"]
            assert c.get(f"/categories/{name}/gallery/0.png", params={"v": _sha(v2)[:12]}).status_code == 200
            _until(lambda: not state.retiring, what="the old batcher drained")
            assert c.get("/readyz").json()["detail"] is None and refused() == {}
            cache = tmp_path / "data" / "bundles-cache"
            _until(lambda: _leftovers(cache) == [f"{name}@{_sha(v2)}"], what="the old version out of the cache")

            # The store goes away: what is loaded is still served, and the service says why.
            own_store.__exit__(None, None, None)
            own_store = None
            _until(lambda: f"{url}/" in refused(), what="the store reported")
            assert "could not be read" in refused()[f"{url}/"] and "Could not connect" in refused()[f"{url}/"]
            ready = c.get("/readyz")
            assert ready.status_code == 200 and ready.json()["bundles_loaded"] == 1
            assert "could not be read" in ready.json()["detail"]
            assert c.get("/categories").json()["categories"][0]["bundle_sha256"] == _sha(v2)
            assert _post(c, name, query_png).status_code == 200
    finally:
        if own_store is not None:
            own_store.__exit__(None, None, None)


def test_an_unreachable_store_at_start_is_reported_and_tried_again(
        tiny_release: Path, query_png: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    _aws(monkeypatch, tmp_path, f"http://127.0.0.1:{port}")  # nothing listens there yet
    with _client("s3://late-bundles/models", tmp_path) as c:
        _until(lambda: "could not be read" in c.get("/readyz").json().get("detail", ""), what="the reason")
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "retry-after" in ready.headers
        assert "s3://late-bundles/models/" in ready.json()["detail"] and "Could not connect" in ready.json()["detail"]
        assert f"looking again every {POLL_S:g} s" in ready.json()["detail"]
        categories = c.get("/categories")
        assert categories.status_code == 503 and "could not be read" in categories.json()["detail"]
        assert c.get("/healthz").status_code == 200
        with object_store(port):  # the store comes up: the next look finds the bundle
            boto3.client("s3").create_bucket(Bucket="late-bundles")
            _upload("late-bundles", tiny_release)
            _until(lambda: c.get("/readyz").status_code == 200, what="ready once the store answers")
            assert _post(c, tiny_release.name, query_png).status_code == 200
            assert c.get("/readyz").json()["detail"] is None


def test_a_restart_while_the_store_is_down_serves_the_verified_cache(
        tiny_release: Path, query_png: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, sha = tiny_release.name, _sha((tiny_release / MANIFEST).read_bytes())
    port = _free_port()
    _aws(monkeypatch, tmp_path, f"http://127.0.0.1:{port}")
    with object_store(port):  # the first run fetches the version into the cache
        bucket = _bucket()
        _upload(bucket, tiny_release)
        url = f"s3://{bucket}/{PREFIX}"
        with _client(url, tmp_path) as c:
            _until(lambda: c.get("/readyz").status_code == 200, what="ready")
    cached = tmp_path / "data" / "bundles-cache" / f"{name}@{sha}" / name
    assert (cached / MANIFEST).is_file()

    # The store is down when the service restarts: it serves the cached version and says why.
    with _client(url, tmp_path) as c:
        _until(lambda: c.get("/readyz").status_code == 200, what="ready from the cache")
        detail = c.get("/readyz").json()["detail"]
        assert "could not be read" in detail and f"serving the versions fetched before: {name}@{sha[:12]}" in detail
        assert c.get("/categories").json()["categories"][0]["bundle_sha256"] == sha
        assert _post(c, name, query_png).status_code == 200

    # A cached copy that no longer verifies is not served: the reason is given instead.
    (cached / TAMPERED).write_bytes(_tampered(cached))
    with _client(url, tmp_path) as c:
        _until(lambda: "cached version" in (c.get("/readyz").json().get("detail") or ""), what="the cache refused")
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "could not be read" in ready.json()["detail"]
        assert f"{name}: cached version" in ready.json()["detail"] and "sha256" in ready.json()["detail"]
        assert _post(c, name, query_png).status_code == 503
