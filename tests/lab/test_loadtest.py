"""`rpe-pad lab loadtest` against a real uvicorn server on loopback, serving the tiny bundle."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from rpe_pad.cli import main
from service.app import create_app
from lab.loadtest import run_load
from service.settings import Settings


@pytest.fixture(scope="module")
def server(tiny_release: Path, tmp_path_factory: pytest.TempPathFactory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(Settings(bundles=tiny_release.parent, device="cpu", data_dir=tmp_path_factory.mktemp("records")))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    end = time.time() + 120
    while time.time() < end:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    yield url
    srv.should_exit = True
    thread.join(timeout=10)


def test_load_report(server: str, tiny_release: Path, tiny_synth: Path, tmp_path: Path) -> None:
    image = min((tiny_synth / "test" / "good").glob("*.png"))
    out = tmp_path / "load.json"
    assert main(["lab", "loadtest", str(image), "--category", tiny_release.name, "--url", server, "--clients", "3",
                 "--seconds", "30", "--max-requests", "6", "--json", str(out)]) == 0
    import json

    result = json.loads(out.read_text())
    assert result["requests"] == 6 and result["status"] == {"200": 6} and result["errors_5xx"] == 0
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    assert result["rss_mb_before"] > 50 and result["rss_mb_after"] > 50 and result["throughput_rps"] > 0
    # Where the server spent the time: every phase of POST /inspect and every pipeline stage,
    # each a mean over the run's 6 requests that cannot exceed the client's mean latency.
    phases, stages = result["server_ms"]["phases"], result["server_ms"]["stages"]
    assert set(phases) == {"receive", "read", "decode", "queue", "inference", "respond", "serialise"}
    assert {"match", "pose", "render", "score", "total"} <= set(stages)
    assert all(v >= 0 for v in phases.values()) and stages["total"] <= phases["inference"] + 1.0
    assert sum(phases.values()) <= lat["p99"] * 1.05
    # Unknown category: every answer counted by status, nothing crashes.
    bad = asyncio.run(run_load(server, "Nope", image, clients=2, seconds=10, max_requests=4))
    assert bad["status"] == {"404": 4} and bad["throughput_rps"] == 0


def test_only_loopback(tiny_synth: Path) -> None:
    image = min((tiny_synth / "test" / "good").glob("*.png"))
    with pytest.raises(ValueError, match="loopback"):
        asyncio.run(run_load("http://192.0.2.1:8000", "x", image, max_requests=1))
