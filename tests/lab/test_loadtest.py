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


@pytest.mark.parametrize("url, message", [
    ("notaurl", "--url 'notaurl' is not a service's address: give http:// or https://, a host and a port"),
    ("127.0.0.1:8000", "is not a service's address"),  # no scheme: urlparse takes "127.0.0.1" for one
    ("ftp://127.0.0.1:8000", "is not a service's address"),
    ("http://", "is not a service's address"),
    ("http://127.0.0.1:abc", "--url 'http://127.0.0.1:abc': Port could not be cast to integer value"),
])
def test_a_url_that_is_no_service_address_is_refused_in_one_line(url: str, message: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "q.png"
    image.write_bytes(b"not sent")
    assert main(["lab", "loadtest", str(image), "--category", "c", "--url", url, "--max-requests", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rpe-pad lab: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert "cannot resolve" not in err


def test_requests_that_never_connect_are_errors_and_fail_the_run(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listens on the port: every request fails to connect. They are counted as errors
    (not ``"errors_5xx": 0`` and exit 0, as if the service had answered), and the run exits 1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free again once closed: nothing listens there
    image = tmp_path / "q.png"
    image.write_bytes(b"not an image: never answered")
    out = tmp_path / "load.json"
    assert main(["lab", "loadtest", str(image), "--category", "c", "--url", f"http://127.0.0.1:{port}", "--clients",
                 "2", "--seconds", "10", "--max-requests", "4", "--json", str(out)]) == 1
    import json

    result = json.loads(out.read_text())
    assert result["requests"] == 4 and result["status"] == {"ConnectError": 4}
    assert result["errors_connection"] == 4 and result["errors"] == 4 and result["throughput_rps"] == 0
    err = capsys.readouterr().err
    assert err.strip() == (f"rpe-pad lab loadtest: every one of the 4 requests failed (ConnectError: 4): is the "
                           f"service running at http://127.0.0.1:{port}?")
