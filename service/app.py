"""The FastAPI app: routes only; loading, batching, decoding and errors live beside it.

``create_app(settings)`` builds an app; the lifespan starts loading every bundle under
``settings.bundles`` in the background (``models.inspector.load_bundles``: a bad bundle is
logged and skipped) so ``/healthz`` answers at once and ``/readyz`` turns 200 when the
bundles are in. ``rpe-pad serve`` runs it with uvicorn.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from PIL import Image

from models.camera import parse_intrinsics
from models.inspector import Inspection, InspectionError, Inspector, load_bundles
from models.results import resolve_threshold
from models.version import package_version
from service import problems
from service.batching import CategoryBatcher
from service.problems import ServiceError
from service.schemas import BatchOut, Categories, Health, InspectionOut
from service.settings import Settings, get_settings
from service.telemetry import Telemetry
from service.uploads import check_media_type, decode, read_limited

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
INTRINSICS_HELP = ("the photo's camera as 'fx,fy,cx,cy' in its own pixels, when it is not the bundle's camera at "
                   "another resolution (GET /categories gives the bundle's)")


class State:
    """What the lifespan loads: inspectors and batchers by category, and why others were refused."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.inspectors: dict[str, Inspector] = {}
        self.batchers: dict[str, CategoryBatcher] = {}
        self.refused: dict[str, str] = {}
        self.ready = False
        self.load_error: str | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.telemetry = Telemetry()


def get_state(request: Request) -> State:
    return request.app.state.svc


def authorised(request: Request, state: Annotated[State, Depends(get_state)]) -> None:
    """Inspection routes need header X-API-Key when a key is configured."""
    key = state.settings.api_key
    if key is None:
        return
    given = request.headers.get("x-api-key", "")
    if not secrets.compare_digest(given.encode(), key.get_secret_value().encode()):
        raise ServiceError(401, "missing or wrong API key (header X-API-Key)", headers={"WWW-Authenticate": "ApiKey"})


def ready_state(state: Annotated[State, Depends(get_state)]) -> State:
    if not state.ready:
        raise ServiceError(503, state.load_error or "bundles are still loading",
                           headers={"Retry-After": str(state.settings.retry_after_s)})
    return state


Ready = Annotated[State, Depends(ready_state)]
StateDep = Annotated[State, Depends(get_state)]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    log = logging.getLogger("rpe_pad.service")

    async def load(state: State) -> None:
        try:
            loaded, refused = await asyncio.to_thread(
                load_bundles, settings.bundles, settings.device,
                lambda path, reason: log.error("bundle refused: %s", reason), pose=settings.pose)
        except Exception as exc:  # noqa: BLE001 (the service stays up and says why it is not ready)
            state.load_error = str(exc)
            log.error("loading bundles failed: %s", exc)
            return
        for name, inspector in list(loaded.items()) if settings.warmup else []:
            try:  # on the inference thread, where the buffers will be reused
                seconds = await asyncio.get_running_loop().run_in_executor(state.executor, inspector.warm_up,
                                                                           settings.max_batch)
                log.info("warmed %s up in %.1f s (batch %d)", name, seconds, settings.max_batch)
            except Exception as exc:  # noqa: BLE001 (a bundle that cannot run is refused, the rest served)
                refused[name] = f"warm-up failed: {type(exc).__name__}: {exc}"
                del loaded[name]
                log.error("bundle refused: %s", refused[name])
        for name, inspector in loaded.items():
            batcher = CategoryBatcher(name, inspector, settings, state.executor, state.telemetry)
            batcher.start()
            state.batchers[name] = batcher
            log.info("serving %s (%s)", name, inspector.describe())
        state.inspectors, state.refused = loaded, refused
        state.telemetry.bundles.set(len(loaded))
        state.telemetry.refused.set(len(refused))
        state.ready = bool(loaded)
        if not loaded:
            state.load_error = f"no valid bundle in {settings.bundles}"

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = State(settings)
        app.state.svc, app.state.log = state, log
        loader = asyncio.create_task(load(state))
        yield
        loader.cancel()
        for batcher in state.batchers.values():
            await batcher.stop()
        state.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="RPE-PAD inspection service", version=package_version(), lifespan=lifespan,
                  description="Pose-agnostic anomaly detection: upload a photo of an object from any viewpoint; "
                              "the service finds its pose, renders the normal object there and compares.")
    app.state.log = log
    problems.install(app)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        given = request.headers.get("x-request-id", "")
        request.state.request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        start = request.state.started = time.perf_counter()
        limit = settings.max_files_per_batch * settings.max_upload_bytes + (1 << 20)  # + form fields
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:  # before Starlette parses (and spools) the body
            response = problems.problem(413, f"request body of {declared} bytes is over {limit}", request)
        else:
            try:
                response = await call_next(request)
            except Exception:  # our bug: still a problem+json with the request id, and counted
                log.exception("unexpected error on %s", request.url.path)
                response = problems.problem(500, "internal error (logged with this request id)", request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        svc: State | None = getattr(request.app.state, "svc", None)
        answered = getattr(request.state, "answered", None)  # set by POST /inspect when its result is ready
        if svc is not None and answered is not None:
            svc.telemetry.phase.labels("serialise").observe(time.perf_counter() - answered)
        if svc is not None:
            svc.telemetry.requests.labels(path, str(response.status_code)).inc()
            svc.telemetry.latency.labels(path).observe(time.perf_counter() - start)
            if response.status_code >= 400:
                svc.telemetry.errors.labels(str(response.status_code)).inc()
        response.headers["X-Request-ID"] = request.state.request_id
        return response

    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> Health:
        """The process is alive (bundles may still be loading)."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["operations"],
             responses={503: {"description": "bundles still loading, or none could be loaded"}})
    async def readyz(state: Ready) -> Health:
        """Bundles are loaded and inspections are accepted."""
        return Health(status="ready", bundles_loaded=len(state.inspectors))

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics(state: StateDep) -> Response:
        """Prometheus text format: requests, latency per route and per stage, errors, bundles."""
        return Response(state.telemetry.render(), media_type="text/plain; version=0.0.4")

    @app.get("/categories", response_model=Categories, dependencies=[Depends(authorised)], tags=["inspection"])
    async def categories(state: Ready) -> Categories:
        """The loaded categories (and the bundles that were refused, with the reason)."""
        return Categories(categories=[i.describe() for i in state.inspectors.values()],
                          refused=state.refused)

    async def _prepare(state: State, category: str, upload: UploadFile, intrinsics: str | None = None,
                       phases: dict[str, float] | None = None):
        """The upload as the bundle's camera sees it; ``phases`` gets the seconds of read and decode."""
        inspector = state.inspectors.get(category)
        if inspector is None:
            raise ServiceError(404, f"unknown category {category!r}; loaded: {sorted(state.inspectors)}")
        check_media_type(upload)
        t0 = time.perf_counter()
        data = await read_limited(upload, state.settings.max_upload_bytes)
        t1 = time.perf_counter()
        name = upload.filename or "upload"
        camera = _parse_intrinsics(intrinsics)

        def decode_and_prepare():
            image = decode(data, name, state.settings, inspector.scene.background)
            try:
                return inspector.prepare(image, camera)
            except InspectionError as exc:
                raise ServiceError(422, f"{name}: {exc}") from exc

        prepared = await run_in_threadpool(decode_and_prepare)  # off the event loop: decoding and resizing
        if phases is not None:
            phases.update(read=t1 - t0, decode=time.perf_counter() - t1)
        return prepared

    def _check_threshold(inspector: Inspector, threshold: float | None) -> None:
        if threshold is None:
            return
        try:
            resolve_threshold(inspector.calibration, threshold)  # the one check, before any work
        except InspectionError as exc:
            raise ServiceError(422, f"threshold: {exc}") from exc

    async def _run(state: State, category: str, images: list) -> list[Inspection]:
        try:
            results = await state.batchers[category].submit(images)
        except InspectionError as exc:
            raise ServiceError(422, str(exc)) from exc
        for r in results:
            for stage, ms in r.timings_ms.items():
                state.telemetry.stage.labels(stage).observe(ms / 1000)
            state.telemetry.images.labels(category, r.verdict).inc()
            if r.verification.misalignment_px is not None:
                state.telemetry.misalignment.labels(category).observe(r.verification.misalignment_px)
        return results

    def _out(request: Request, category: str, filename: str | None, result: Inspection, image, include_map: bool,
             include_overlay: bool, inspector: Inspector) -> InspectionOut:
        norm = result.normalised_map() if include_map else None
        return InspectionOut(
            **result.model_dump(), request_id=request.state.request_id, category=category, filename=filename,
            anomaly_map_png=None if norm is None else _png_b64(Image.fromarray(np.round(norm * 255).astype(np.uint8),
                                                                               mode="L")),
            overlay_png=_png_b64(inspector.figure(image.numpy(), result)) if include_overlay else None)

    @app.post("/inspect", response_model=InspectionOut, dependencies=[Depends(authorised)], tags=["inspection"],
              responses={s: {"description": d, "content": {problems.PROBLEM: {}}} for s, d in (
                  (400, "undecodable or truncated image"), (401, "wrong or missing API key"),
                  (404, "unknown category"), (413, "too large, in bytes or pixels"), (415, "not an image"),
                  (422, "missing or invalid fields, wrong aspect ratio, too small"), (503, "not ready or busy"))})
    async def inspect(request: Request, state: Ready, file: Annotated[UploadFile, File(description="the query image")],
                      category: Annotated[str, Form(description="a loaded category")],
                      threshold: Annotated[float | None, Form(description="override the calibrated threshold")] = None,
                      intrinsics: Annotated[str | None, Form(description=INTRINSICS_HELP)] = None,
                      include_map: Annotated[bool, Form(description="add the anomaly map as base64 PNG")] = False,
                      include_overlay: Annotated[bool, Form(description="add the overlay figure as base64 PNG")] = False,
                      ) -> InspectionOut:
        """Inspect one image: pose from the gallery and IRPRN, render of the normal object
        there, feature comparison, score, decision and (optionally) the anomaly map."""
        phases = {"receive": time.perf_counter() - request.state.started}
        image = await _prepare(state, category, file, intrinsics, phases)
        inspector = state.inspectors[category]
        _check_threshold(inspector, threshold)
        result = (await _run(state, category, [image]))[0].decided(threshold)
        t0 = time.perf_counter()
        out = await run_in_threadpool(_out, request, category, file.filename, result, image, include_map,
                                      include_overlay, inspector)
        request.state.answered = time.perf_counter()
        phases["respond"] = request.state.answered - t0
        for phase, seconds in phases.items():
            state.telemetry.phase.labels(phase).observe(seconds)
        return out

    @app.post("/inspect/batch", response_model=BatchOut, dependencies=[Depends(authorised)], tags=["inspection"])
    async def inspect_batch(request: Request, state: Ready,
                            files: Annotated[list[UploadFile], File(description="query images, one category")],
                            category: Annotated[str, Form()],
                            threshold: Annotated[float | None, Form()] = None,
                            intrinsics: Annotated[str | None, Form(description=INTRINSICS_HELP)] = None,
                            include_map: Annotated[bool, Form()] = False,
                            include_overlay: Annotated[bool, Form()] = False) -> BatchOut:
        """Inspect several images of one category; any bad file fails the request with its name."""
        if len(files) > state.settings.max_files_per_batch:
            raise ServiceError(413, f"{len(files)} files; at most {state.settings.max_files_per_batch} per request")
        images = [await _prepare(state, category, f, intrinsics) for f in files]
        inspector = state.inspectors[category]
        _check_threshold(inspector, threshold)
        results = await _run(state, category, images)
        outs = [await run_in_threadpool(_out, request, category, f.filename, r.decided(threshold), im,
                                        include_map, include_overlay, inspector)
                for f, r, im in zip(files, results, images)]
        return BatchOut(request_id=request.state.request_id, category=category, results=outs)

    return app


def _parse_intrinsics(text: str | None) -> tuple[float, float, float, float] | None:
    """The form field ``intrinsics`` ('fx,fy,cx,cy'); 422 when it is not four numbers."""
    if text is None or not text.strip():
        return None
    try:
        return parse_intrinsics(text)
    except ValueError as exc:
        raise ServiceError(422, str(exc)) from exc


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
