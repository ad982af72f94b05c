"""`rpe-pad lab fleet-loadtest`: replicas behind HAProxy on loopback, under load, while one
replica restarts and a new bundle version is published (issue 25's bar for the balancer).

1. An S3 server on loopback (moto's, in this process) gets every bundle of ``bundles`` under
   ``s3://rpepad-fleet/bundles/``, files first and the manifest last.
2. Two replicas (``lab.served.Service``: ``rpe-pad serve`` in child processes) load them from
   there: ``RPEPAD_BUNDLES=s3://...``, a poll every 2 s, ``RPEPAD_CATEGORIES`` the bundles'
   categories, its share of the cores (``RPEPAD_THREADS``), a 3 s drain on SIGTERM
   (``RPEPAD_DRAIN_S``, longer than the balancer needs to see a failing ``/readyz``). Both are shard group A, the map sends every category there.
3. haproxy runs ``deploy/haproxy/haproxy.cfg`` with the replicas' addresses in its
   environment and a generated map; the load starts once it reports both replicas UP.
4. ``clients`` clients post ``image`` to the balancer's ``/inspect?category=...`` back to
   back for ``seconds``. At ``restart_at`` of the run replica a1 gets SIGTERM, is waited for,
   and is started again (timed until it is ready, and until haproxy has it UP again). At
   ``swap_at`` a new version of the category's bundle (the same files, a manifest one hour
   younger: it verifies, and its sha256 differs) is published, and each replica's
   ``GET /categories`` is watched until it serves that version.

The report: requests, answers by status (an exception by its class name) and the first
failures, latency percentiles, which replica answered (haproxy's ``X-Served-By``), the
restart's and the swap's timings, and every version each replica was seen serving. ``met``:
no failed request, the restarted replica back in rotation, and both replicas on the new
version by the end.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path

import httpx

from lab.loadtest import Clients
from lab.served import Service, free_port, start_all
from models.bundle import MANIFEST, find_bundles, read_manifest

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")  # Debian: /usr/sbin
BUCKET, PREFIX = "rpepad-fleet", "bundles"
POLL_S = 2  # how often the replicas look at the store
REPLICAS = 2  # on one host: each gets its share of the cores (RPEPAD_THREADS), else their teams spin
DRAIN_S = 3  # the replicas' drain on SIGTERM: more than haproxy's fall x inter (2 x 1 s)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "lab", "AWS_SECRET_ACCESS_KEY": "lab", "AWS_REGION": "us-east-1"}


# ------------------------------------------------------------ the object store


@contextmanager
def object_store(port: int = 0) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (``port`` 0: any free one), in this process; yields its URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def store_env(endpoint: str, work: Path) -> dict[str, str]:
    """boto3's environment for a replica: the store at ``endpoint``, nothing from ~/.aws or a
    metadata service."""
    return {"AWS_ENDPOINT_URL": endpoint, **CREDENTIALS, "AWS_CONFIG_FILE": str(work / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials"), "AWS_EC2_METADATA_DISABLED": "true"}


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=CREDENTIALS["AWS_REGION"],
                        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


def publish(client, bucket: str, prefix: str, bundle: Path, manifest: bytes | None = None) -> str:
    """``bundle`` to ``s3://bucket/prefix/<category>/``, every file and then the manifest
    (``manifest`` instead of the bundle's own when given); the sha256 of the manifest."""
    for path in sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != MANIFEST):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{bundle.name}/{path.relative_to(bundle).as_posix()}",
                          Body=path.read_bytes())
    manifest = manifest if manifest is not None else (bundle / MANIFEST).read_bytes()
    client.put_object(Bucket=bucket, Key=f"{prefix}/{bundle.name}/{MANIFEST}", Body=manifest)
    return hashlib.sha256(manifest).hexdigest()


def next_version(bundle: Path) -> bytes:
    """The manifest of another version of the same files: created one hour later."""
    manifest = read_manifest(bundle)
    return (manifest.model_copy(update={"created": manifest.created + timedelta(hours=1)})
            .model_dump_json(indent=2) + "\n").encode()


# ------------------------------------------------------------ the balancer


class Balancer:
    """haproxy with ``deploy/haproxy/haproxy.cfg`` in a child process on loopback.

    ``shards``: group letter -> replica addresses (``host:port``), up to three each;
    ``categories``: category -> group letter (the map, written to ``work``)."""

    def __init__(self, shards: dict[str, list[str]], categories: dict[str, str], work: Path, config: Path = CONFIG):
        if HAPROXY is None:
            raise FileNotFoundError("haproxy is not installed (Debian: apt-get install haproxy)")
        self.config, self.work = config, work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.map, self.socket, self.log = work / "categories.map", work / "haproxy.sock", work / "haproxy.log"
        self.map.write_text("".join(f"{name} shard_{group}\n" for name, group in categories.items()))
        self.env = {**os.environ, "RPEPAD_LB_PORT": str(self.port), "RPEPAD_LB_MAP": str(self.map),
                    "RPEPAD_LB_SOCKET": str(self.socket),
                    **{f"RPEPAD_SHARD_{group.upper()}_{i}": address
                       for group, addresses in shards.items() for i, address in enumerate(addresses, 1)}}
        self.process: subprocess.Popen | None = None

    def check(self) -> str:
        """``haproxy -c`` on the configuration with this environment; its output (RuntimeError when invalid)."""
        done = subprocess.run([HAPROXY, "-c", "-f", str(self.config)], env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"haproxy -c failed:\n{done.stdout}{done.stderr}")
        return done.stdout + done.stderr

    def start(self, timeout: float = 15) -> Balancer:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)], env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                self.states()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"haproxy did not start in {timeout:.0f} s (log: {self.log})")

    def states(self) -> dict[str, str]:
        """Each server's state as haproxy sees it: ``{"shard_a/a1": "UP", ...}``."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(b"show stat\n")
            text = b"".join(iter(lambda: s.recv(65536), b"")).decode()
        rows = csv.DictReader(text.lstrip("# ").splitlines())
        return {f"{r['pxname']}/{r['svname']}": r["status"] for r in rows
                if r.get("svname") not in (None, "FRONTEND", "BACKEND")}

    def wait(self, servers: list[str], state: str = "UP", timeout: float = 60) -> float:
        """Seconds until every one of ``servers`` is in ``state``."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            states = self.states()
            if all(states.get(name) == state for name in servers):  # not "UP 1/2" (going down)
                return time.monotonic() - start
            time.sleep(0.1)
        raise TimeoutError(f"{servers} not {state} in {timeout:.0f} s: {self.states()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def __enter__(self) -> Balancer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------ the run


def _version(url: str, category: str) -> str | None:
    """The sha256 of ``category``'s bundle a replica serves (None: not answering, or not loaded)."""
    try:
        body = httpx.get(f"{url}/categories", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    return next((c["bundle_sha256"] for c in body.get("categories", []) if c["category"] == category), None)


def _restart(replica: Service, name: str, balancer: Balancer) -> dict:
    """SIGTERM (the replica drains, finishes what it has, exits), start again, back in rotation."""
    t0 = time.monotonic()
    replica.stop()
    stopped = time.monotonic()
    replica.start()
    ready = time.monotonic()
    balancer.wait([f"shard_a/{name}"], "UP")
    return {"replica": name, "stopped_after_s": round(stopped - t0, 1), "ready_after_s": round(ready - t0, 1),
            "in_rotation_after_s": round(time.monotonic() - t0, 1)}


def _swap(client, bundle: Path, replicas: dict[str, Service], seen: dict[str, list[str]], timeout: float) -> dict:
    """Publish the next version of ``bundle``; seconds until each replica serves it."""
    t0 = time.monotonic()
    sha = publish(client, BUCKET, PREFIX, bundle, next_version(bundle))
    published = time.monotonic() - t0
    picked: dict[str, float | None] = {name: None for name in replicas}
    while time.monotonic() - t0 < timeout and None in picked.values():
        for name, replica in replicas.items():
            version = _version(replica.url, bundle.name)
            if version is not None and (not seen[name] or seen[name][-1] != version[:12]):
                seen[name].append(version[:12])
            if picked[name] is None and version == sha:
                picked[name] = round(time.monotonic() - t0, 1)
        time.sleep(0.2)
    return {"category": bundle.name, "version": sha[:12], "published_in_s": round(published, 1),
            "serving_after_s": picked}


async def _at(delay: float, fn, *args):
    await asyncio.sleep(delay)
    t = time.monotonic()
    try:
        return {"at_s": round(delay, 1), **await asyncio.to_thread(fn, *args)}
    except Exception as exc:  # noqa: BLE001 (reported, and the run is not met)
        return {"at_s": round(delay, 1), "error": f"{type(exc).__name__}: {exc}",
                "after_s": round(time.monotonic() - t, 1)}


def fleet_loadtest(bundles: Path, image: Path, category: str | None = None, clients: int = 8, seconds: float = 60.0,
                   restart_at: float = 1 / 3, swap_at: float = 1 / 2, work: Path | None = None,
                   echo=print) -> dict:
    """The run in the module docstring; ``work`` keeps the replicas' and haproxy's logs."""
    if clients < 1 or seconds <= 0 or not 0 < restart_at < 1 or not 0 < swap_at < 1:
        raise ValueError("clients and seconds must be positive, restart_at and swap_at fractions of the run in (0, 1)")
    found = {path.name: path for path in find_bundles(bundles)}
    if not found:
        raise FileNotFoundError(f"{bundles}: no bundle (one folder per category, as rpe-pad train --out writes)")
    category = category or sorted(found)[0]
    if category not in found:
        raise ValueError(f"category {category!r} is not a bundle in {bundles} (there: {sorted(found)})")
    work = Path(work or tempfile.mkdtemp(prefix="rpepad-fleet-"))
    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        endpoint = stack.enter_context(object_store())
        client = s3_client(endpoint)
        client.create_bucket(Bucket=BUCKET)
        for path in found.values():
            publish(client, BUCKET, PREFIX, path)
        echo(f"published {sorted(found)} to s3://{BUCKET}/{PREFIX}/ at {endpoint}")
        env = {**store_env(endpoint, work), "RPEPAD_BUNDLES_POLL_S": str(POLL_S), "RPEPAD_DRAIN_S": str(DRAIN_S),
               "RPEPAD_CATEGORIES": ",".join(sorted(found)), "RPEPAD_MAX_WAIT_MS": "0",
               "RPEPAD_THREADS": str(max(1, len(os.sched_getaffinity(0)) // REPLICAS))}
        replicas = {name: Service(f"s3://{BUCKET}/{PREFIX}", work / name, log=work / f"{name}.log", **env)
                    for name in [f"a{i + 1}" for i in range(REPLICAS)]}
        for replica in replicas.values():
            stack.callback(replica.stop)
        start_all(list(replicas.values()))
        balancer = Balancer({"a": [f"127.0.0.1:{r.port}" for r in replicas.values()]},
                            {name: "a" for name in found}, work)
        balancer.check()
        stack.enter_context(balancer)
        balancer.wait([f"shard_a/{name}" for name in replicas])
        seen = {name: [(_version(r.url, category) or "none")[:12]] for name, r in replicas.items()}
        echo(f"haproxy on {balancer.url}, replicas {sorted(replicas)} UP; {clients} clients for {seconds:g} s on "
             f"{category}: restart of a1 at {restart_at * seconds:.0f} s, new version at {swap_at * seconds:.0f} s")
        result = asyncio.run(_run(balancer, replicas, client, found[category], image, clients, seconds,
                                  restart_at, swap_at, seen))
        result["states_at_end"] = balancer.states()
    result["work"] = str(work)
    return result


async def _run(balancer: Balancer, replicas: dict[str, Service], client, bundle: Path, image: Path, clients: int,
               seconds: float, restart_at: float, swap_at: float, seen: dict[str, list[str]]) -> dict:
    load = Clients(image, bundle.name, in_query=True)
    async with httpx.AsyncClient(base_url=balancer.url, timeout=120) as http:
        restart = asyncio.create_task(_at(restart_at * seconds, _restart, replicas["a1"], "a1", balancer))
        swap = asyncio.create_task(_at(swap_at * seconds, _swap, client, bundle, replicas, seen, 180.0))
        elapsed = await load.run(http, clients, seconds)
        restarted, swapped = await restart, await swap
    report = load.report(elapsed)
    failed = sum(n for status, n in load.statuses.items() if status != "200")
    back = "in_rotation_after_s" in restarted
    on_new = "serving_after_s" in swapped and None not in swapped["serving_after_s"].values()
    return {"clients": clients, "seconds": round(elapsed, 1), "category": bundle.name, **report, "failed": failed,
            "failures": load.failures, "served_by": dict(sorted(load.served_by.items())), "restart": restarted,
            "swap": swapped, "versions_seen": seen, "met": failed == 0 and back and on_new}
