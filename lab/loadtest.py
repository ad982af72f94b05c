"""`rpe-pad lab loadtest`: N concurrent clients against a running service, on loopback only.

Each client posts the same image to ``/inspect`` back to back for ``seconds`` (or until
``max_requests`` in all). Reports throughput, latency percentiles, answers by status, and
the service's resident memory (``process_resident_memory_bytes`` from ``/metrics``)
before and after.
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


async def _rss(client: httpx.AsyncClient) -> float | None:
    try:
        text = (await client.get("/metrics")).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1])
    return None


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
        rss_before = await _rss(client)
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
        rss_after = await _rss(client)
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
    }
