"""`rpe-pad lab loadtest`: N concurrent clients against a running service, on loopback only.

Each client posts the same image to ``/inspect`` back to back for ``seconds`` (or until
``max_requests`` in all). Reports throughput, latency percentiles, answers by status, and
the service's resident memory (``process_resident_memory_bytes`` from ``/metrics``)
before and after, and where the server spent each request's time (``server_ms``: mean
ms per request of each phase of ``POST /inspect`` and of each pipeline stage, from the
service's own histograms over the run). A request that gets no answer (the connection
refused or dropped, a timeout) is counted by its exception's name and in ``errors_connection``;
``errors`` counts every request not answered 200, and the command exits 1 when that is all
of them. ``Clients`` (the clients and their tally) also drives ``rpe-pad lab fleet-loadtest``
(``lab/fleet.py``), through a load balancer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np


def check_url(url: str) -> None:
    """``url`` is a service's address: http or https, and a host (a port, when given, a number)."""
    parsed = urlparse(url)
    try:
        parsed.port
    except ValueError as exc:  # "http://127.0.0.1:abc", a port over 65535
        raise ValueError(f"--url {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"--url {url!r} is not a service's address: give http:// or https://, a host and a port, "
                         "e.g. http://127.0.0.1:8000")


def _loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}") from exc
    if not addresses or not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        raise ValueError(f"{url}: the load test only targets loopback addresses (127.0.0.1, ::1, localhost)")


async def _metrics(client: httpx.AsyncClient) -> str:
    try:
        return (await client.get("/metrics")).text
    except httpx.HTTPError:
        return ""


def _rss(text: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1])
    return None


TIMED = {"rpepad_phase_seconds": "phase", "rpepad_stage_seconds": "stage"}


def _timed_sums(text: str) -> dict[str, list[float]]:
    """``{"phase:read": [seconds, count], "stage:render": [...], ...}`` from the service's
    histograms (its request phases and its pipeline stages)."""
    sums: dict[str, list[float]] = {}
    for line in text.splitlines():
        for family, label in TIMED.items():
            for suffix, slot in (("_sum{", 0), ("_count{", 1)):
                if line.startswith(family + suffix):
                    name = line.split(f'{label}="', 1)[1].split('"', 1)[0]
                    sums.setdefault(f"{label}:{name}", [0.0, 0.0])[slot] = float(line.rsplit(" ", 1)[1])
    return sums


def breakdown(before: str, after: str) -> dict[str, dict[str, float]]:
    """Mean ms per request of each phase of ``POST /inspect`` and each pipeline stage
    between two ``/metrics`` texts (``phases`` and ``stages``)."""
    a, b = _timed_sums(before), _timed_sums(after)
    out: dict[str, dict[str, float]] = {"phases": {}, "stages": {}}
    for key, (total, count) in b.items():
        t0, c0 = a.get(key, [0.0, 0.0])
        if count > c0:
            kind, name = key.split(":", 1)
            out["phases" if kind == "phase" else "stages"][name] = round(1000 * (total - t0) / (count - c0), 1)
    return out


class Clients:
    """Concurrent clients posting one image to ``/inspect`` back to back, and what they saw.

    ``in_query``: the category goes in the query string (what a load balancer routes by),
    else in the form. Every answer is counted by status (an exception by its class name), the
    balancer's ``X-Served-By`` by value, and the first ``KEPT`` failures are kept with the
    second they ended at and the problem's detail."""

    KEPT = 20

    def __init__(self, image: Path, category: str, in_query: bool = False):
        self.image, self.data, self.category, self.in_query = image, image.read_bytes(), category, in_query
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.served_by: Counter[str] = Counter()
        self.failures: list[dict] = []
        self.sent = 0

    async def run(self, client: httpx.AsyncClient, clients: int, seconds: float, max_requests: int = 10**9) -> float:
        """Run ``clients`` clients for ``seconds`` (or ``max_requests`` in all); the seconds it took."""
        start = time.perf_counter()
        deadline = start + seconds
        where = {"params": {"category": self.category}} if self.in_query else {"data": {"category": self.category}}

        async def one() -> None:
            while time.perf_counter() < deadline and self.sent < max_requests:
                self.sent += 1
                t0 = time.perf_counter()
                detail = None
                try:
                    r = await client.post("/inspect", files={"file": (self.image.name, self.data, "image/png")},
                                          **where)
                    status = str(r.status_code)
                    self.served_by[r.headers.get("x-served-by", "-")] += 1
                    if r.status_code != 200:
                        detail = r.text[:300]
                except httpx.HTTPError as exc:
                    status, detail = type(exc).__name__, str(exc)[:300]
                t1 = time.perf_counter()
                self.statuses[status] += 1
                self.latencies.append(t1 - t0)
                if status != "200" and len(self.failures) < self.KEPT:
                    self.failures.append({"at_s": round(t1 - start, 2), "status": status, "detail": detail})

        await asyncio.gather(*(one() for _ in range(clients)))
        return time.perf_counter() - start

    def report(self, elapsed: float) -> dict:
        """Requests, throughput (answers 200 a second), latency percentiles (ms) and answers by status."""
        lat = np.array(self.latencies) * 1000
        return {
            "requests": len(self.latencies),
            "throughput_rps": round(self.statuses.get("200", 0) / elapsed, 2),
            "latency_ms": {p: round(float(np.percentile(lat, q)), 1)
                           for p, q in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))} if len(lat) else {},
            "status": dict(sorted(self.statuses.items())),
        }


async def run_load(url: str, category: str, image: Path, clients: int = 8, seconds: float = 60.0,
                   max_requests: int = 10_000, api_key: str | None = None) -> dict:
    check_url(url)
    _loopback(url)
    if clients < 1 or seconds <= 0 or max_requests < 1:
        raise ValueError("clients, seconds and max_requests must be positive")
    headers = {"X-API-Key": api_key} if api_key else {}
    load = Clients(image, category)
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as client:
        metrics_before = await _metrics(client)
        elapsed = await load.run(client, clients, seconds, max_requests)
        metrics_after = await _metrics(client)
    rss_before, rss_after = _rss(metrics_before), _rss(metrics_after)
    report = load.report(elapsed)
    return {
        "url": url, "category": category, "clients": clients, "seconds": round(elapsed, 1), **report,
        "errors_5xx": sum(n for s, n in load.statuses.items() if s.startswith("5")),
        "errors_connection": sum(n for s, n in load.statuses.items() if not s.isdigit()),  # no answer at all
        "errors": report["requests"] - load.statuses.get("200", 0),  # every request not answered 200
        "rss_mb_before": None if rss_before is None else round(rss_before / 2**20, 1),
        "rss_mb_after": None if rss_after is None else round(rss_after / 2**20, 1),
        "rss_growth_pct": None if not (rss_before and rss_after) else round(100 * (rss_after / rss_before - 1), 2),
        "server_ms": breakdown(metrics_before, metrics_after),
    }
