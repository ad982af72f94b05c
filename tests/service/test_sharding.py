"""Category sharding (``RPEPAD_CATEGORIES``), the category in the query string (what a load
balancer routes by), and the drain before a shutdown (``RPEPAD_DRAIN_S``): the real app on
the session's tiny bundle under two names (``two_categories``: alpha and beta)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from pydantic import ValidationError

from lab.served import free_port
from models.bundle import MANIFEST
from service.app import create_app
from service.bundle_source import S3Location, S3Source
from service.server import DrainingServer
from service.settings import Settings

PROBLEM = "application/problem+json"


def _settings(bundles: Path, tmp: Path, **overrides) -> Settings:
    return Settings(bundles=bundles, device="cpu", data_dir=tmp, warmup=False, max_wait_ms=0, _env_file=None,
                    **overrides)


def _wait(client: TestClient, ready: bool = True, timeout: float = 60) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        r = client.get("/readyz")
        if (r.status_code == 200) == ready and "loading" not in r.text:
            return r.json()
        time.sleep(0.1)
    raise AssertionError(f"readyz: {client.get('/readyz').json()}")


@pytest.fixture(scope="module")
def query_png(tiny_synth: Path) -> bytes:
    return min((tiny_synth / "test" / "good").glob("*.png")).read_bytes()


@pytest.fixture(scope="module")
def beta(two_categories: Path, tmp_path_factory: pytest.TempPathFactory):
    """A replica of the shard "beta, gamma" on a folder holding alpha and beta."""
    with TestClient(create_app(_settings(two_categories, tmp_path_factory.mktemp("beta"),
                                         categories="beta,gamma"))) as client:
        _wait(client)
        yield client


# ------------------------------------------------------------ the setting


@pytest.mark.parametrize("text, categories", [
    ("alpha,beta", ["alpha", "beta"]),
    (" alpha , beta,alpha ", ["alpha", "beta"]),  # spaces trimmed, each once, in order
    ('["alpha", "be,ta"]', ["alpha", "be,ta"]),  # JSON: a name with a comma
    ("", None),
    ("[]", None),  # nothing listed: every category
])
def test_categories_are_a_list_or_json(text: str, categories, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPEPAD_CATEGORIES", text)
    assert Settings(_env_file=None).categories == categories


@pytest.mark.parametrize("text, problem", [
    ("alpha,,beta", "must not be empty"),
    ("alpha,", "must not be empty"),
    ("../alpha", "plain directory name"),
    (".work", "plain directory name"),
    ('["alpha"', "not a JSON list"),
    ("[1]", "valid string"),
])
def test_bad_categories_are_refused_with_the_reason(text: str, problem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPEPAD_CATEGORIES", text)
    with pytest.raises(ValidationError, match="categories") as info:
        Settings(_env_file=None)
    assert problem in str(info.value)


# ------------------------------------------------------------ a shard of a directory


def test_a_replica_loads_only_its_categories(beta: TestClient, two_categories: Path, query_png: bytes) -> None:
    listed = beta.get("/categories").json()
    assert [c["category"] for c in listed["categories"]] == ["beta"]  # alpha is in the folder, not in the shard
    assert set(listed["refused"]) == {"gamma"}
    assert "no bundle 'gamma'" in listed["refused"]["gamma"] and "RPEPAD_CATEGORIES" in listed["refused"]["gamma"]
    assert str(two_categories) in listed["refused"]["gamma"]
    ready = beta.get("/readyz").json()
    assert ready["bundles_loaded"] == 1 and "gamma" in ready["detail"]
    r = beta.post("/inspect", params={"category": "alpha"}, files={"file": ("q.png", query_png, "image/png")})
    assert r.status_code == 404 and "alpha" in r.json()["detail"]


def test_a_replica_none_of_whose_categories_is_there_says_why(two_categories: Path, tmp_path: Path) -> None:
    with TestClient(create_app(_settings(two_categories, tmp_path, categories="gamma"))) as client:
        body = _wait(client, ready=False)
        assert client.get("/readyz").status_code == 503
        assert "no valid bundle" in body["detail"] and "no bundle 'gamma'" in body["detail"]
        assert client.get("/healthz").status_code == 200


# ------------------------------------------------------------ the category in the query string


def test_the_category_in_the_query_string(beta: TestClient, query_png: bytes) -> None:
    file = {"file": ("q.png", query_png, "image/png")}
    r = beta.post("/inspect", params={"category": "beta"}, files=file)
    assert r.status_code == 200 and r.json()["category"] == "beta"
    r = beta.post("/inspect", params={"category": "beta"}, data={"category": "beta"}, files=file)  # the page's way
    assert r.status_code == 200 and r.json()["category"] == "beta"
    r = beta.post("/inspect/batch", params={"category": "beta"}, files=[("files", ("q.png", query_png, "image/png"))])
    assert r.status_code == 200 and [x["category"] for x in r.json()["results"]] == ["beta"]


@pytest.mark.parametrize("path", ["/inspect", "/inspect/batch"])
def test_two_different_categories_or_none_are_refused(beta: TestClient, query_png: bytes, path: str) -> None:
    field = "file" if path == "/inspect" else "files"
    files = [(field, ("q.png", query_png, "image/png"))]
    r = beta.post(path, params={"category": "beta"}, data={"category": "alpha"}, files=files)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert r.json()["detail"] == ("two categories: 'beta' in the query string and 'alpha' in the form; give one, or "
                                  "the same in both")
    r = beta.post(path, files=files)
    assert r.status_code == 422 and r.json()["detail"].startswith("no category: give ?category=NAME")
    r = beta.post(path, params={"category": ""}, files=files)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM


def test_the_schema_offers_both_places(beta: TestClient) -> None:
    spec = beta.get("/openapi.json").json()
    for path in ("/inspect", "/inspect/batch"):
        operation = spec["paths"][path]["post"]
        (query,) = [p for p in operation["parameters"] if p["name"] == "category"]
        assert query["in"] == "query" and not query["required"] and "load balancer" in query["description"]
        body = spec["components"]["schemas"][operation["requestBody"]["content"]["multipart/form-data"]["schema"]
                                             ["$ref"].rsplit("/", 1)[1]]
        assert "category" in body["properties"] and "category" not in body.get("required", [])


# ------------------------------------------------------------ a shard of an object store


class _Watched:
    """A boto3 client that remembers the prefixes listed and the keys read."""

    def __init__(self, client):
        self.client, self.listed, self.read = client, [], []

    def __getattr__(self, name):
        return getattr(self.client, name)

    def get_object(self, **kwargs):
        self.read.append(kwargs["Key"])
        return self.client.get_object(**kwargs)

    def get_paginator(self, operation):
        paginator, listed = self.client.get_paginator(operation), self.listed

        class Recorded:
            def paginate(self, **kwargs):
                listed.append(kwargs["Prefix"])
                return paginator.paginate(**kwargs)

        return Recorded()


def test_a_shard_lists_and_reads_only_its_categories(two_categories: Path, tmp_path: Path) -> None:
    """Only manifests in the store (fetching whole versions is tests/service/test_s3_bundles.py's
    part, and a replica's from a shard is tests/test_balancer.py's): each is refused for its
    missing files once read, so what a source read shows in what it refused."""
    pytest.importorskip("moto.server")
    from lab.fleet import object_store, s3_client

    with object_store() as endpoint:
        client = s3_client(endpoint)
        client.create_bucket(Bucket="shards")
        for name in ("alpha", "beta"):
            client.put_object(Bucket="shards", Key=f"models/{name}/{MANIFEST}",
                              Body=(two_categories / name / MANIFEST).read_bytes())
        location = S3Location("shards", "models/")
        watched = _Watched(client)
        snap = S3Source(location, tmp_path, watched, categories=["alpha", "gamma"]).sync()
        assert snap.error is None and snap.versions == {} and set(snap.refused) == {"alpha", "gamma"}
        assert "missing object" in snap.refused["alpha"]
        assert snap.refused["gamma"] == "s3://shards/models/: no bundle 'gamma' here (RPEPAD_CATEGORIES lists it)"
        assert watched.listed == ["models/alpha/", "models/gamma/"] and watched.read == [f"models/alpha/{MANIFEST}"]
        # Without a shard the same store offers beta too.
        assert set(S3Source(location, tmp_path, client).sync().refused) == {"alpha", "beta"}


# ------------------------------------------------------------ the drain before a shutdown


def test_a_drain_answers_not_ready_and_serves_on_until_it_stops(beta: TestClient, query_png: bytes,
                                                               tmp_path: Path) -> None:
    # In the app: /readyz says 503 while inspections are still answered.
    beta.app.state.draining = True
    try:
        r = beta.get("/readyz")
        assert r.status_code == 503 and r.json()["detail"].startswith("shutting down: draining")
        r = beta.post("/inspect", params={"category": "beta"}, files={"file": ("q.png", query_png, "image/png")})
        assert r.status_code == 200
    finally:
        beta.app.state.draining = False
    # The server: the first signal starts the drain, it keeps accepting, then it stops by itself.
    app = create_app(_settings(tmp_path, tmp_path, records=False))
    port = free_port()
    server = DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"), 0.8,
                            lambda: setattr(app.state, "draining", True))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    end = time.time() + 30
    while not server.started and time.time() < end:
        time.sleep(0.05)
    server.handle_exit(signal.SIGTERM, None)
    signalled = time.monotonic()
    assert "draining" in httpx.get(f"{url}/readyz").json()["detail"]
    assert httpx.get(f"{url}/healthz").status_code == 200
    thread.join(timeout=10)
    assert not thread.is_alive() and time.monotonic() - signalled >= 0.8
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz")
