"""The inspection service against the real app and the real tiny bundle (no mocks)."""

from __future__ import annotations

import io
import logging
import re
import struct
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings

PROBLEM = "application/problem+json"


_RECORDS: list[Path] = []  # the module's folder for the clients' records (``_records_root``)


@pytest.fixture(scope="module", autouse=True)
def _records_root(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each client's records in a folder of its own under pytest's temporary folder, never the
    working folder, and removed with it (kept only for failed tests)."""
    _RECORDS[:] = [tmp_path_factory.mktemp("records")]


def _client(bundles: Path, **overrides) -> TestClient:
    overrides.setdefault("data_dir", Path(tempfile.mkdtemp(prefix="client-", dir=_RECORDS[0])))
    settings = Settings(bundles=bundles, device="cpu", max_wait_ms=20, **overrides)
    return TestClient(create_app(settings))


def _wait_ready(client: TestClient, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"not ready: {client.get('/readyz').json()}")


@pytest.fixture(scope="module")
def client(tiny_release: Path):
    with _client(tiny_release.parent) as c:
        _wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def category(tiny_release: Path) -> str:
    return tiny_release.name


def _png(array: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **save)
    return buf.getvalue()


@pytest.fixture(scope="module")
def query_png(tiny_synth: Path) -> bytes:
    return min((tiny_synth / "test" / "good").glob("*.png")).read_bytes()


@pytest.fixture(scope="module")
def defect_png(tiny_synth: Path) -> bytes:
    return min(p for p in (tiny_synth / "test").glob("*/*.png") if p.parent.name != "good").read_bytes()


def _post(client: TestClient, category: str, data: bytes, media: str = "image/png", name: str = "q.png", **form):
    return client.post("/inspect", files={"file": (name, data, media)}, data={"category": category, **form})


def test_a_verified_query_gets_the_scores_verdict(client: TestClient, category: str, tiny_synth: Path) -> None:
    """The tiny bundle sends most of its coarse test queries to review; a training view
    verifies, so the answer's verdict is the score's, and an override just over its score
    passes it while one just under it rejects it (the boundary itself: test_inspector)."""
    view = min((tiny_synth / "train" / "good").glob("*.png")).read_bytes()
    body = _post(client, category, view).json()
    assert body["verification"]["verified"], body["verification"]
    assert body["verdict"] == ("anomalous" if body["score"] > body["threshold"] else "normal")
    at = _post(client, category, view, threshold=repr(body["score"] * 1.001)).json()
    under = _post(client, category, view, threshold=repr(body["score"] * 0.999)).json()
    assert (at["verdict"], at["is_anomalous"], under["verdict"], under["is_anomalous"]) == (
        "normal", False, "anomalous", True)


@pytest.mark.slow(seconds=15)
def test_health_ready_categories_openapi(client: TestClient, category: str) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "bundles_loaded": None, "detail": None,
                                             "records": None}
    assert client.get("/readyz").json()["bundles_loaded"] == 1
    cats = client.get("/categories").json()
    (info,) = cats["categories"]
    assert info["category"] == category and info["image_size"] == [64, 64] and info["gallery_size"] > 8
    assert info["threshold"] > 0 and info["device"] == "cpu" and info["pose_mode"] == "rpe+refine"
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/inspect", "/inspect/batch", "/categories", "/healthz", "/readyz", "/metrics"} <= set(paths)
    # The OpenAPI page loads nothing from outside (a line with no internet), and what it loads is served.
    page = client.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text
    assets = re.findall(r"""(?:src|href)=["']?([^"' >]+)""", page.text)
    assert assets and not [a for a in assets if "://" in a or a.startswith("//")], assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert client.get("/redoc").status_code == 404  # ReDoc would load from a CDN: not offered


def test_inspect_returns_everything(client: TestClient, category: str, query_png: bytes, defect_png: bytes) -> None:
    r = client.post(
        "/inspect", files={"file": ("q.png", query_png, "image/png")},
        data={"category": category, "include_map": "true", "include_overlay": "true"}, headers={"X-Request-ID": "abc-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == "abc-1" == r.headers["x-request-id"]
    assert body["is_anomalous"] == (body["score"] > body["threshold"])
    assert (body["normalised_score"] > 0.5) == body["is_anomalous"]
    assert len(body["pose"]["world_to_camera"]) == 4 and len(body["pose"]["quaternion_wxyz"]) == 4
    assert len(body["gallery_matches"]) == 3
    assert {"match", "pose", "refine", "render", "verify", "score", "total"} <= set(body["timings_ms"])
    v = body["verification"]
    assert body["verdict"] == (("anomalous" if body["is_anomalous"] else "normal") if v["verified"] else "review")
    assert set(v) == {"verified", "misalignment_px", "silhouette_iou", "reason"}
    import base64

    amap = Image.open(io.BytesIO(base64.b64decode(body["anomaly_map_png"])))
    assert amap.size == (64, 64) and amap.mode == "L"
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert overlay.size[0] > 3 * 64
    # A threshold override changes the decision, not the score.
    low = _post(client, category, query_png, threshold=str(body["score"] * 0.99)).json()
    high = _post(client, category, query_png, threshold=str(body["score"] * 1.01)).json()
    assert low["score"] == pytest.approx(body["score"], rel=1e-5) and low["is_anomalous"] and not high["is_anomalous"]
    assert low["threshold"] == pytest.approx(body["score"] * 0.99, rel=1e-4)
    # The answer names the bundle version that gave it; its gallery views are asked of that
    # version (a view of a version swapped out since is a 404, not the new version's picture).
    info = client.get("/categories").json()["categories"][0]
    sha = info["bundle_sha256"]
    assert body["bundle_sha256"] == sha and len(sha) == 64
    assert (body["score_floor"], body["map_floor"]) == (info["score_floor"], info["map_floor"])  # the map's scale
    view = body["gallery_matches"][0]["id"]
    r = client.get(f"/categories/{category}/gallery/{view}.png", params={"v": sha[:12]})
    assert r.status_code == 200 and "immutable" in r.headers["cache-control"]
    assert client.get(f"/categories/{category}/gallery/{view}.png").headers["cache-control"] == "private, no-cache"
    other = ("0" if sha[0] != "0" else "1") + sha[1:12]
    r = client.get(f"/categories/{category}/gallery/{view}.png", params={"v": other})
    assert r.status_code == 404 and f"now serves bundle {sha[:12]}, not {other}" in r.json()["detail"]


def test_batch(client: TestClient, category: str, query_png: bytes, defect_png: bytes) -> None:
    files = [("files", ("a.png", query_png, "image/png")), ("files", ("b.png", defect_png, "image/png"))]
    r = client.post("/inspect/batch", files=files, data={"category": category})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["filename"] for x in body["results"]] == ["a.png", "b.png"]
    single = _post(client, category, query_png).json()
    assert body["results"][0]["score"] == pytest.approx(single["score"], rel=1e-4)
    bad = files + [("files", ("c.txt", b"text", "text/plain"))]
    r = client.post("/inspect/batch", files=bad, data={"category": category})
    assert r.status_code == 415 and "c.txt" in r.json()["detail"]


def _huge_png() -> bytes:
    """A valid 1 x 1 PNG whose header claims 100000 x 100000 pixels."""
    data = bytearray(_png(np.zeros((1, 1, 3), np.uint8)))
    ihdr = data[8 + 8 : 8 + 8 + 13]
    ihdr[0:8] = struct.pack(">II", 100_000, 100_000)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return bytes(data)


def _jpeg(array: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", **save)
    return buf.getvalue()


RGB = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
HOSTILE = Path(__file__).resolve().parents[1] / "data" / "hostile"  # fuzzed files Pillow raises odd errors on


def _nan_tiff() -> bytes:
    """A 64 x 64 float TIFF (mode F) of NaN: Pillow decodes it; its pixels are not numbers."""
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), np.nan, np.float32), mode="F").save(buf, format="TIFF")
    return buf.getvalue()


def _short_ihdr_png() -> bytes:
    """A PNG whose IHDR chunk is 5 bytes: Pillow's opener raises ValueError, not OSError."""
    body = b"IHDR" + b"\x00" * 5
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 5) + body + struct.pack(">I", zlib.crc32(body))

BAD_UPLOADS = {
    "empty": (b"", "image/png", 400),
    "text as text": (b"hello, world", "text/plain", 415),
    "text as png": (b"hello, world", "image/png", 400),
    "truncated png": (_png(RGB)[:300], "image/png", 400),
    "truncated jpeg": (_jpeg(RGB)[:400], "image/jpeg", 400),
    "1x1": (_png(np.zeros((1, 1, 3), np.uint8)), "image/png", 422),
    "huge dimensions in a tiny file": (_huge_png(), "image/png", 413),
    "wrong aspect ratio": (_png(np.zeros((64, 100, 3), np.uint8)), "image/png", 422),
    "gif": (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/gif", 415),
    "float tiff of NaN": (_nan_tiff(), "image/tiff", 400),
    "png with a short header chunk": (_short_ihdr_png(), "image/png", 400),
    "jpeg with malformed EXIF (type)": ((HOSTILE / "exif_orientation_type.jpg").read_bytes(), "image/jpeg", 400),
    "jpeg with malformed EXIF (struct)": ((HOSTILE / "exif_struct.jpg").read_bytes(), "image/jpeg", 400),
    "tiff with its strip offsets as text": ((HOSTILE / "strip_offsets_text.tiff").read_bytes(), "image/tiff", 400),
}


@pytest.mark.parametrize("name", sorted(BAD_UPLOADS))
def test_bad_uploads_get_a_problem(client: TestClient, category: str, query_png: bytes, name: str) -> None:
    data, media, status = BAD_UPLOADS[name]
    r = _post(client, category, data, media)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["detail"] and body["request_id"] == r.headers["x-request-id"]
    assert _post(client, category, query_png).status_code == 200  # and the service keeps answering


def test_odd_but_valid_images_are_converted(client: TestClient, category: str, query_png: bytes) -> None:
    rgb = np.asarray(Image.open(io.BytesIO(query_png)).convert("RGB"))
    base = _post(client, category, query_png).json()["score"]
    # EXIF orientation 3 (180 degrees) on a rotated copy: the same picture once applied.
    exif = Image.Exif()
    exif[0x0112] = 3
    rotated = _png(np.ascontiguousarray(rgb[::-1, ::-1]), exif=exif.tobytes())
    assert _post(client, category, rotated).json()["score"] == pytest.approx(base, rel=1e-4)
    grey16 = (rgb.mean(axis=2) * 257).astype(np.uint16)
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, format="JPEG", quality=95)
    palette = io.BytesIO()
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(palette, format="PNG")
    # Each converted to the same picture (to a colour's rounding): the score stays near the original's
    # (when written: palette 1.000, CMYK JPEG 1.013, 4x upscaled 0.967 of it).
    for data, media, rel in ((cmyk.getvalue(), "image/jpeg", 0.05),
                             (palette.getvalue(), "image/png", 0.01),
                             (_png(np.kron(rgb, np.ones((4, 4, 1), np.uint8))), "application/octet-stream", 0.05)):
        r = _post(client, category, data, media)
        assert r.status_code == 200, r.text
        assert r.json()["score"] == pytest.approx(base, rel=rel), media
    # A greyscale copy (16-bit here) is another picture: a category trained on colour photos
    # refuses it, where converting it would score every colour of the part as a defect.
    r = _post(client, category, _png(grey16))
    assert r.status_code == 422 and "greyscale" in r.json()["detail"] and "colour photos" in r.json()["detail"]
    # A JPEG coarser than the scorer tolerates is refused by a bundle trained on lossless photos
    # (docs/RESULTS.md, session 33: good parts scored as defects), with what to send instead.
    r = _post(client, category, _jpeg(rgb, quality=80), "image/jpeg")
    assert r.status_code == 422 and "JPEG (quality about 80, 4:2:0)" in r.json()["detail"]
    assert "send PNG" in r.json()["detail"]
    tiff = io.BytesIO()  # the same JPEG data in a TIFF was taken as lossless
    Image.fromarray(rgb).save(tiff, format="TIFF", compression="jpeg", quality=30)
    r = _post(client, category, tiff.getvalue(), "image/tiff")
    assert r.status_code == 422 and "TIFF with JPEG" in r.json()["detail"], r.text


def test_field_errors(client: TestClient, category: str, query_png: bytes) -> None:
    r = client.post("/inspect", data={"category": category})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM and "file" in r.json()["detail"]
    r = client.post("/inspect", files={"file": ("q.png", query_png, "image/png")})
    assert r.status_code == 422 and "category" in r.json()["detail"]
    r = _post(client, "Nope", query_png)
    assert r.status_code == 404 and category in r.json()["detail"]
    for threshold in ("-1", "abc", "nan", "1e308"):  # 1e308: the normalised score's scale overflowed (a 0.5 shown)
        assert _post(client, category, query_png, threshold=threshold).status_code == 422
    # Common client mistakes are answered with how to send the photo.
    r = client.post("/inspect", files={"category": (None, category), "file": (None, "photo.png")})  # -F file=photo.png
    assert r.status_code == 422 and "expected a file, got text" in r.json()["detail"]
    assert "-F file=@photo.png" in r.json()["detail"]
    r = client.post("/inspect", json={"category": category, "file": "photo.png"})  # a JSON body
    assert r.status_code == 422 and "multipart/form-data" in r.json()["detail"] and "application/json" in r.json()["detail"]


def test_nothing_sent_is_dropped_without_a_word(client: TestClient, category: str, query_png: bytes) -> None:
    """A field sent twice, a misspelt one, a form field in the query string: each is refused,
    naming what would have been dropped (the form parser kept the last file and ignored the
    rest). A multipart body whose boundary is not the one declared is a 400 problem."""
    png = ("q.png", query_png, "image/png")
    detail = lambda r: (r.status_code, r.headers["content-type"], r.json()["detail"])  # noqa: E731
    status, media, text = detail(client.post("/inspect", files=[("file", png), ("file", png)], data={"category": category}))
    assert (status, media) == (422, PROBLEM) and "'file' given more than once" in text and "/inspect/batch" in text
    status, _, text = detail(_post(client, category, query_png, thresold="0.5"))
    assert status == 422 and "unknown form field 'thresold'" in text and "threshold" in text
    status, _, text = detail(client.post(f"/inspect?category={category}&threshold=0.5", files={"file": png}))
    assert status == 422 and "'threshold' not read" in text
    status, _, text = detail(client.post(f"/inspect?category={category}&category={category}", files={"file": png}))
    assert status == 422 and "more than once in the query string" in text
    body = (b'--right\r\nContent-Disposition: form-data; name="category"\r\n\r\n' + category.encode()
            + b"\r\n--right--\r\n")
    status, media, text = detail(client.post("/inspect", content=body,
                                              headers={"content-type": "multipart/form-data; boundary=wrong"}))
    assert (status, media) == (400, PROBLEM) and "multipart" in text
    status, _, text = detail(client.post("/inspect/batch", files=[("files", png), ("files", png)],
                                         data={"category": category, "threshold": ["1", "2"]}))
    assert status == 422 and "'threshold' given more than once" in text
    status, _, text = detail(client.post("/inspect/batch", files={"file": png}, data={"category": category}))
    assert status == 422 and "unknown form field 'file'" in text and "takes its images as files" in text
    assert _post(client, category, query_png).status_code == 200  # the plain request still passes


def test_query_camera(client: TestClient, category: str, query_png: bytes) -> None:
    """The photo's intrinsics: the bundle's own give the plain answer; a camera that sees less
    than the bundle's, or a malformed field, is the client's mistake (422 with the reason)."""
    fx, fy, cx, cy = client.get("/categories").json()["categories"][0]["intrinsics"]
    plain = _post(client, category, query_png).json()
    same = _post(client, category, query_png, intrinsics=f"{fx},{fy},{cx},{cy}")
    assert same.status_code == 200 and same.json()["score"] == pytest.approx(plain["score"], rel=1e-6)
    narrow = _post(client, category, query_png, intrinsics=f"{2 * fx},{2 * fy},{cx},{cy}")  # a longer lens
    assert narrow.status_code == 422 and narrow.headers["content-type"] == PROBLEM
    assert "does not see all" in narrow.json()["detail"]
    # A focal length that puts the bundle's view on a few of the query's pixels: refused with
    # the reason (it was upsampled without bound: a 500, or gigabytes, for a typo).
    for tiny in (f"1e-12,1e-12,{cx},{cy}", f"{0.2 * fx},{0.2 * fy},{cx},{cy}"):
        r = _post(client, category, query_png, intrinsics=tiny)
        assert r.status_code == 422 and "pixels per pixel" in r.json()["detail"], r.text
    for bad in ("1,2,3", "a,b,c,d", "0,1,1,1"):
        r = _post(client, category, query_png, intrinsics=bad)
        assert r.status_code == 422 and ("intrinsics" in r.json()["detail"] or "fx" in r.json()["detail"]), bad


def test_uploads_are_decoded_a_few_at_a_time(tiny_release: Path, category: str, query_png: bytes,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Each decode of a full-size photo holds 25-40 bytes a pixel (a 25-megapixel PNG of 84 KB
    took 0.6-0.9 GB), and every request's decode ran at once in the thread pool."""
    import service.app

    running, most, lock = [0], [0], threading.Lock()
    real = service.app.decode

    def counted(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.05)
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(service.app, "decode", counted)
    with _client(tiny_release.parent, max_decodes=2) as c:
        _wait_ready(c)
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda _: _post(c, category, query_png).status_code, range(12)))
    assert codes == [200] * 12
    assert most[0] == 2  # as many as the setting allows, no more


def test_upload_size_limit_and_api_key(tiny_release: Path, category: str, query_png: bytes) -> None:
    with _client(tiny_release.parent, max_upload_bytes=len(query_png) - 1, api_key="s3cret") as c:
        _wait_ready(c)
        assert c.get("/categories").status_code == 401
        r = _post(c, category, query_png)
        assert r.status_code == 401 and r.headers["content-type"] == PROBLEM
        r = c.post("/inspect", files={"file": ("q.png", query_png, "image/png")}, data={"category": category},
                   headers={"X-API-Key": "wrong"})
        assert r.status_code == 401
        r = c.post("/inspect", files={"file": ("q.png", query_png, "image/png")}, data={"category": category},
                   headers={"X-API-Key": "s3cret"})
        assert r.status_code == 413 and "bytes" in r.json()["detail"]
        # A body larger than any batch could be is refused from its Content-Length, unparsed.
        big = b"\0" * (16 * len(query_png) + (2 << 20))
        r = c.post("/inspect", files={"file": ("big.png", big, "image/png")}, data={"category": category},
                   headers={"X-API-Key": "s3cret"})
        assert r.status_code == 413 and "request body" in r.json()["detail"] and r.headers["x-request-id"]
        # The same body sent chunked, with no Content-Length: counted as it arrives and refused
        # with a problem too, before the form parser has spooled it all.
        head = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
                b"Content-Type: image/png\r\n\r\n")
        chunks = iter([head] + [b"\0" * 65536] * (len(big) // 65536 + 1) + [b"\r\n--b--\r\n"])
        r = c.post(f"/inspect?category={category}", content=chunks, headers={
            "X-API-Key": "s3cret", "content-type": "multipart/form-data; boundary=b"})
        assert "content-length" not in r.request.headers
        assert r.status_code == 413 and r.headers["content-type"] == PROBLEM and r.json()["request_id"]
        assert "without a Content-Length" in r.json()["detail"]
        # Each route's own limit: one photo's worth for /inspect (a batch's 16 were taken and
        # parsed whole before the file's 413), and no file's for a feedback JSON.
        one = b"\0" * (len(query_png) + (1 << 20) + 1)
        r = c.post("/inspect", files={"file": ("one.png", one, "image/png")}, data={"category": category},
                   headers={"X-API-Key": "s3cret"})
        assert r.status_code == 413 and "request body" in r.json()["detail"] and "/inspect" in r.json()["detail"]
        r = c.post(f"/inspections/{'0' * 32}/feedback", json={"label": "false_alarm", "note": "x" * (2 << 20)},
                   headers={"X-API-Key": "s3cret"})
        assert r.status_code == 413 and "request body" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200  # operations endpoints stay open
        # Without the key, a POST is refused before its body is read: an upload a batch's size,
        # sent chunked, is not taken in (before, 161 MiB were received and spooled first).
        app = c.app

        async def call(body: list[bytes]) -> tuple[int, int]:
            messages = iter(body)
            read, status = [], []

            async def receive():
                chunk = next(messages, None)
                read.append(chunk)
                return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

            async def send(message):
                if message["type"] == "http.response.start":
                    status.append(message["status"])

            await app({"type": "http", "method": "POST", "path": "/inspect/batch", "raw_path": b"/inspect/batch",
                       "query_string": f"category={category}".encode(), "root_path": "", "scheme": "http",
                       "http_version": "1.1", "server": ("test", 80), "client": ("test", 1),
                       "headers": [(b"content-type", b"multipart/form-data; boundary=b"), (b"x-api-key", b"wrong")]},
                      receive, send)
            return status[0], sum(1 for chunk in read if chunk)

        import anyio

        status, chunks_read = anyio.run(call, [head, *[b"\0" * 65536] * 64, b"\r\n--b--\r\n"])
        assert status == 401 and chunks_read == 0, (status, chunks_read)


def test_readyz_gives_reasons_only_with_the_key(tiny_release: Path, tmp_path: Path) -> None:
    """A probe needs no key; where one is set, what is not served is named to it, and why (a
    path, a database host) only with the key."""
    import shutil

    bundles = tmp_path / "bundles"
    shutil.copytree(tiny_release, bundles / tiny_release.name)
    (bundles / "Broken").mkdir()
    (bundles / "Broken" / "manifest.json").write_text("{")
    with _client(bundles, api_key="s3cret") as c:
        _wait_ready(c)
        bare = c.get("/readyz")
        assert bare.status_code == 200 and bare.json()["detail"] == "Broken: not served (the reason with X-API-Key)"
        assert str(tmp_path) not in bare.text and bare.headers["x-content-type-options"] == "nosniff"
        keyed = c.get("/readyz", headers={"X-API-Key": "s3cret"}).json()["detail"]
        assert keyed.startswith("Broken: ") and "not valid JSON" in keyed and str(bundles) in keyed
    shutil.rmtree(bundles / tiny_release.name)  # nothing served: the 503 says why to the key alone
    with _client(bundles, api_key="s3cret") as c:
        end = time.time() + 60
        while "still loading" in c.get("/readyz").text:
            assert time.time() < end
            time.sleep(0.2)
        bare = c.get("/readyz")
        assert bare.status_code == 503 and bare.json()["detail"] == "no bundle is served (the reason with X-API-Key)"
        keyed = c.get("/readyz", headers={"X-API-Key": "s3cret"})
        assert keyed.status_code == 503 and "not valid JSON" in keyed.json()["detail"]


def test_not_ready_without_bundles(tmp_path: Path, query_png: bytes, caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "bundles" / "Broken"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{")
    with caplog.at_level(logging.ERROR), _client(tmp_path / "bundles") as c:
        end = time.time() + 60  # the bundles load in the background
        while "still loading" in c.get("/readyz").text:
            assert time.time() < end
            time.sleep(0.1)
        r = c.get("/readyz")
        assert r.status_code == 503 and "no valid bundle" in r.json()["detail"] and "retry-after" in r.headers
        assert _post(c, "Broken", query_png).status_code == 503
        assert c.get("/healthz").status_code == 200
    # The operator's log says so at start, not only a probe's answer.
    assert any("serving nothing" in rec.getMessage() and "Broken" in rec.getMessage() for rec in caplog.records)


def test_bundles_are_warmed_up_before_ready_and_a_failing_one_is_refused(
        tiny_release: Path, category: str, query_png: bytes, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from models.inspector import Inspector

    calls = []
    real = Inspector.warm_up

    def warm_up(self, batch=1):
        calls.append(batch)
        return real(self, batch)

    monkeypatch.setattr(Inspector, "warm_up", warm_up)
    with _client(tiny_release.parent, max_batch=3) as c:
        _wait_ready(c)
        assert calls == [3]  # once, before ready, at the micro-batch size
        assert _post(c, category, query_png).status_code == 200

    def broken(self, batch=1):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Inspector, "warm_up", broken)
    with caplog.at_level(logging.ERROR, logger="rpe_pad.service"), _client(tiny_release.parent) as c:
        end = time.time() + 60
        while "no valid bundle" not in c.get("/readyz").text and time.time() < end:
            time.sleep(0.2)
        r = c.get("/readyz")
        assert r.status_code == 503 and "no valid bundle" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200
    assert any("warm-up failed: RuntimeError: out of memory" in rec.getMessage() for rec in caplog.records)


def test_concurrent_requests_are_batched(client: TestClient, category: str, query_png: bytes, defect_png: bytes) -> None:
    from tests.service.test_telemetry import _value

    answered, rendered = 'rpepad_requests_total{route="/inspect",status="200"}', 'rpepad_stage_seconds_count{stage="render"}'
    before = [_value(client.get("/metrics").text, name) for name in (answered, rendered)]
    single = {name: _post(client, category, data).json()["score"] for name, data in (("good", query_png), ("bad", defect_png))}
    jobs = [("good", query_png), ("bad", defect_png)] * 4
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda job: (job[0], _post(client, category, job[1])), jobs))
    assert all(r.status_code == 200 for _, r in responses)
    assert len({r.json()["request_id"] for _, r in responses}) == len(jobs)
    for name, r in responses:  # batching does not change any result
        assert r.json()["score"] == pytest.approx(single[name], rel=1e-4)
    metrics = client.get("/metrics").text
    # Each request counted once, by route and status, and each image's render timed once.
    assert [_value(metrics, name) for name in (answered, rendered)] == [b + 2 + len(jobs) for b in before]
    assert "rpepad_bundles_loaded 1.0" in metrics
    # Every image is counted once under its verdict, and its residual misalignment observed.
    verdicts = [line for line in metrics.splitlines() if line.startswith("rpepad_images_inspected_total")]
    assert sum(float(line.split()[-1]) for line in verdicts) >= len(jobs) + 2
    assert all(any(f'decision="{r.json()["verdict"]}"' in line for line in verdicts) for _, r in responses)
    assert "rpepad_misalignment_pixels_count" in metrics
    sizes = [line for line in metrics.splitlines() if line.startswith("rpepad_batch_size_sum")]
    counts = [line for line in metrics.splitlines() if line.startswith("rpepad_batch_size_count")]
    # Some model calls carried more than one image.
    assert float(sizes[0].split()[-1]) > float(counts[0].split()[-1])


def test_every_torch_op_runs_on_the_inference_thread(tiny_release: Path, query_png: bytes, monkeypatch) -> None:
    """Loading, warm-up, batching and inference share one thread (State.executor; a query's
    resize runs no torch op: tests/models/test_inspector.py):
    torch's OpenMP keeps a thread team per calling thread, and more teams than cores slow
    every parallel op (docs/SERVICE.md)."""
    import threading

    import torch

    import service.app as app_module
    from models.inspector import Inspector

    seen: dict[str, set[str]] = {}

    def spy(name, fn):
        def wrapper(*args, **kwargs):
            seen.setdefault(name, set()).add(threading.current_thread().name)
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(app_module, "load_each", spy("load_each", app_module.load_each))
    for name in ("warm_up", "inspect"):
        monkeypatch.setattr(Inspector, name, spy(name, getattr(Inspector, name)))
    monkeypatch.setattr(torch, "stack", spy("torch.stack", torch.stack))  # the batcher's, and the pipeline's
    with _client(tiny_release.parent, warmup=True) as c:
        _wait_ready(c)
        assert _post(c, tiny_release.name, query_png).status_code == 200
    assert set(seen) == {"load_each", "warm_up", "inspect", "torch.stack"}, seen
    assert all(n.startswith("inference") for names in seen.values() for n in names), seen


def test_a_photo_from_another_camera_is_refused_with_a_clear_message(tiny_release: Path, tmp_path: Path,
                                                                      query_png: bytes) -> None:
    """A bundle of prepared photos knows their camera (EXIF); a photo whose EXIF names another
    camera is a 422 that says which, the same camera (or a photo without EXIF) is inspected."""
    import json
    import shutil

    from models.bundle import MANIFEST

    bundle = tmp_path / "bundles" / tiny_release.name
    shutil.copytree(tiny_release, bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["camera"]["exif_camera"] = "Acme C1"
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    image = np.asarray(Image.open(io.BytesIO(query_png)).convert("RGB"))

    def photo(make: str, model: str) -> bytes:
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = make, model
        return _png(image, exif=exif)

    with _client(bundle.parent) as c:
        _wait_ready(c)
        refused = _post(c, bundle.name, photo("Other", "Cam"), name="side.png")
        assert refused.status_code == 422 and refused.headers["content-type"].startswith(PROBLEM)
        assert "side.png: the photo was taken with a Other Cam, but this bundle was trained on photos from a " \
               "Acme C1" in refused.json()["detail"]
        assert _post(c, bundle.name, photo("Acme", "C1")).status_code == 200
        assert _post(c, bundle.name, query_png).status_code == 200


def test_threads_set_the_inference_threads_cpu_budget(tmp_path: Path) -> None:
    """RPEPAD_THREADS sizes torch's team on the one inference thread, and ONNX Runtime's pool
    follows torch's count there (replicas sharing a host's cores)."""
    import torch

    from service.app import State

    state = State(Settings(bundles=tmp_path, device="cpu", threads=1, records=False))
    try:
        assert state.executor.submit(torch.get_num_threads).result() == 1
    finally:
        state.executor.shutdown()
    with pytest.raises(ValueError):
        Settings(bundles=tmp_path, threads=0)


def test_the_service_runs_without_swagger_ui(tiny_release: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment made from a partial set of wheels (a lent GPU machine) may lack
    swagger-ui-py: the service still starts and inspects, and /docs says what is missing."""
    import sys

    monkeypatch.setitem(sys.modules, "swagger_ui", None)  # import swagger_ui raises ImportError
    app = create_app(Settings(bundles=tiny_release.parent, device="cpu", records=False))
    with TestClient(app) as c:
        docs = c.get("/docs")
        assert docs.status_code == 503 and "swagger-ui-py" in docs.text and "/openapi.json" in docs.text
        assert c.get("/static/swagger/swagger-ui-bundle.js").status_code == 404
        assert c.get("/openapi.json").status_code == 200


def test_a_refused_request_is_counted_by_its_route_and_status(client: TestClient, category: str) -> None:
    from tests.service.test_telemetry import _value

    names = ('rpepad_errors_total{status="400"}', 'rpepad_requests_total{route="/inspect",status="400"}')
    before = [_value(client.get("/metrics").text, name) for name in names]
    body = b'--right\r\nContent-Disposition: form-data; name="category"\r\n\r\n' + category.encode() + b"\r\n--right--\r\n"
    r = client.post("/inspect", content=body, headers={"content-type": "multipart/form-data; boundary=wrong"})
    assert r.status_code == 400
    after = [_value(client.get("/metrics").text, name) for name in names]
    assert after == [b + 1 for b in before]
