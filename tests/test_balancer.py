"""deploy/haproxy: the shipped configuration checked by haproxy itself, and run in front of two
real replicas (``rpe-pad serve`` in child processes) that load different categories from an
S3 server on loopback, to see each request reach the replica that holds its category."""

from __future__ import annotations

import re
import subprocess
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from lab.fleet import CONFIG, HAPROXY, Balancer, object_store, publish, s3_client, store_env
from lab.served import Service, start_all

pytestmark = pytest.mark.skipif(HAPROXY is None,
                                reason="haproxy is not installed (Debian: apt-get install haproxy; .ci/run does)")

SHIPPED_MAP = CONFIG.parent / "categories.map"


def _backends() -> set[str]:
    return set(re.findall(r"^backend (\S+)", CONFIG.read_text(), flags=re.M))


def test_the_shipped_config_is_valid(tmp_path: Path) -> None:
    env = {"RPEPAD_LB_PORT": "18080",
           **{f"RPEPAD_SHARD_{g}_{i}": f"127.0.0.1:{18000 + 10 * n + i}"
              for n, g in enumerate("AB") for i in (1, 2, 3)}}
    done = subprocess.run([HAPROXY, "-c", "-f", str(CONFIG)], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr  # the shipped map, found beside the file
    assert "Configuration file is valid" in done.stdout
    # Without the port there is nothing to listen on: haproxy says so.
    del env["RPEPAD_LB_PORT"]
    done = subprocess.run([HAPROXY, "-c", "-f", str(CONFIG)], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "missing port" in done.stdout + done.stderr
    # Every line of the shipped map names a shard group the configuration has.
    lines = [line.split() for line in SHIPPED_MAP.read_text().splitlines() if line.strip() and line[0] != "#"]
    assert lines and all(len(line) == 2 and line[1] in _backends() for line in lines)
    assert {"shard_a", "shard_b", "fleet"} == _backends()


@pytest.fixture(scope="module")
def fleet(two_categories: Path, tmp_path_factory: pytest.TempPathFactory):
    """alpha on replica a1 (shard group A), beta on b1 (B), from the store, behind haproxy."""
    pytest.importorskip("moto.server")
    work = tmp_path_factory.mktemp("fleet")
    with object_store() as endpoint, ExitStack() as stack:
        client = s3_client(endpoint)
        client.create_bucket(Bucket="fleet")
        for name in ("alpha", "beta"):
            publish(client, "fleet", "bundles", two_categories / name)
        env = {**store_env(endpoint, work), "RPEPAD_WARMUP": "false", "RPEPAD_MAX_WAIT_MS": "0",
               "RPEPAD_RECORDS": "false"}
        replicas = {name: Service("s3://fleet/bundles", work / name, log=work / f"{name}.log",
                                  RPEPAD_CATEGORIES=category, **env)
                    for name, category in (("a1", "alpha"), ("b1", "beta"))}
        for replica in replicas.values():
            stack.callback(replica.stop)
        start_all(list(replicas.values()))
        balancer = stack.enter_context(Balancer({"a": [f"127.0.0.1:{replicas['a1'].port}"],
                                                 "b": [f"127.0.0.1:{replicas['b1'].port}"]},
                                                {"alpha": "a", "beta": "b"}, work))
        balancer.wait(["shard_a/a1", "shard_b/b1"])
        yield balancer, replicas


@pytest.mark.slow(seconds=45)
def test_each_category_reaches_the_replica_that_holds_it(fleet, query_png: bytes) -> None:
    balancer, replicas = fleet
    # Each replica loaded its own category from the store, and only that one.
    for name, category in (("a1", "alpha"), ("b1", "beta")):
        listed = httpx.get(f"{replicas[name].url}/categories").json()
        assert [c["category"] for c in listed["categories"]] == [category] and listed["refused"] == {}
    with httpx.Client(base_url=balancer.url, timeout=60) as client:
        for category, replica in (("alpha", "shard_a/a1"), ("beta", "shard_b/b1"), ("alpha", "shard_a/a1")):
            r = client.post("/inspect", params={"category": category},
                            files={"file": ("q.png", query_png, "image/png")})
            assert r.status_code == 200 and r.json()["category"] == category, r.text
            assert r.headers["x-served-by"] == replica
        r = client.post("/inspect/batch", params={"category": "beta"},
                        files=[("files", ("q.png", query_png, "image/png"))] * 2)
        assert r.status_code == 200 and r.headers["x-served-by"] == "shard_b/b1"
        # A gallery view is routed by the category in its path.
        r = client.get("/categories/beta/gallery/0.png")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.headers["x-served-by"] == "shard_b/b1"
        # A category no shard group holds: the balancer's own 404, in the service's format.
        r = client.post("/inspect", params={"category": 'nope"'}, files={"file": ("q.png", query_png, "image/png")})
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["detail"] == 'no replica serves category "nope"" (it is not in the balancer\'s map)'
        # Requests without a category go to any replica.
        seen = {client.get("/readyz").headers["x-served-by"] for _ in range(6)}
        assert seen <= {"fleet/a1", "fleet/b1"} and seen


@pytest.fixture(scope="module")
def query_png(tiny_synth: Path) -> bytes:
    return min((tiny_synth / "test" / "good").glob("*.png")).read_bytes()
