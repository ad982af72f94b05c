"""`rpe-pad lab loadtest`: N concurrent clients against a running service, on loopback only.

Each client posts the same image to ``/inspect`` back to back for ``seconds`` (or until
``max_requests`` in all). Reports throughput, latency percentiles, answers by status, and
the service's resident memory (``process_resident_memory_bytes`` from ``/metrics``)
before and after, and where the server spent each request's time (``server_ms``: mean
ms per request of each phase of ``POST /inspect`` and of each pipeline stage, from the
service's own histograms over the run).
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


async def run_load(url: str, category: str, image: Path, clients: int = 8, seconds: float = 60.0,
                   max_requests: int = 10_000, api_key: str | None = None) -> dict:
    _loopback(url)
    if clients < 1 or seconds <= 0 or max_requests < 1:
        raise ValueError("clients, seconds and max_requests must be positive")
    data = image.read_bytes()
    headers = {"X-API-Key": api_key} if api_key else {}
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    sent = 0
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as client:
        metrics_before = await _metrics(client)
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post("/inspect", files={"file": (image.name, data, "image/png")},
                                          data={"category": category})
                    statuses[str(r.status_code)] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - start
        metrics_after = await _metrics(client)
    rss_before, rss_after = _rss(metrics_before), _rss(metrics_after)
    lat = np.array(latencies) * 1000
    ok = statuses.get("200", 0)
    return {
        "url": url, "category": category, "clients": clients, "seconds": round(elapsed, 1), "requests": len(latencies),
        "throughput_rps": round(ok / elapsed, 2),
        "latency_ms": {p: round(float(np.percentile(lat, q)), 1) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))}
        if len(lat) else {},
        "status": dict(sorted(statuses.items())),
        "errors_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "rss_mb_before": None if rss_before is None else round(rss_before / 2**20, 1),
        "rss_mb_after": None if rss_after is None else round(rss_after / 2**20, 1),
        "rss_growth_pct": None if not (rss_before and rss_after) else round(100 * (rss_after / rss_before - 1), 2),
        "server_ms": breakdown(metrics_before, metrics_after),
    }
