"""The FastAPI app: routes only; loading, batching, decoding and errors live beside it.

``create_app(settings)`` builds an app; the lifespan starts loading every bundle under
``settings.bundles`` (only ``settings.categories`` of them when set: a replica's shard) in
the background (``models.inspector.load_each``: a bad or missing bundle is logged and
refused) so ``/healthz`` answers at once and ``/readyz`` turns 200 when the bundles are in.
``rpe-pad serve`` runs it with uvicorn (``service/server.py``).

When ``settings.bundles`` is an ``s3://`` URL (``service/bundle_source.py``) the lifespan
looks at the store at start and then every ``bundles_poll_s``: a new version of a category
is fetched and verified into the cache, loaded and warmed up on the inference thread while
the old version keeps answering, then swapped in (``serve``); the old batcher drains. A
store that cannot be read, or a new version that is refused, leaves what is served as it
is; ``/categories`` (``refused``) and ``/readyz`` (``detail``) say why.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, get_origin

import numpy as np
import torch
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as FastPath
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from PIL import Image
from sqlalchemy.exc import SQLAlchemyError

from models.camera import parse_intrinsics
from models.compression import compression_of
from models.images import exif_camera_of, greyscale_file
from models.inspector import Inspection, InspectionError, Inspector, load_each
from models.results import resolve_threshold
from models.version import package_version
from service import problems, web
from service.batching import CategoryBatcher
from service.bundle_source import S3Location, S3Source, Snapshot, Version, local_bundles
from service.problems import ServiceError
from service.records import Evidence, FeedbackConflict, Filters, Pending, Record, RecordStore, clean_filename, new_id, utc_now
from service.sealing import Sealer
from service.schemas import (BatchOut, Categories, FeedbackIn, Health, InspectionOut, RecordDetail, RecordPage,
                             SealOut,
                             RecordSummary)
from service.settings import Settings, get_settings
from service.telemetry import Telemetry
from service.uploads import check_media_type, decode, read_limited

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
RECORD_ID = re.compile(r"^[0-9a-f]{32}$")
FORM_BYTES = 1 << 20  # a body's bytes besides its files (form fields, a feedback JSON)
RECORD_WAIT_S = 2.0  # how long opening a record waits for the writer to reach it
IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp", "image/bmp", "image/tiff"}
IMAGE_FIELDS = {"anomaly_map_png", "overlay_png", "reference_png"}  # answered, never stored in a record's result
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CSV_TYPE = "text/csv; charset=utf-8"
# The fields /inspect and /inspect/batch share, with the limits the OpenAPI schema states.
CategoryQuery = Annotated[str | None, Query(
    alias="category", min_length=1, max_length=128,
    description="a loaded category (GET /categories). Give it here or as the form field `category`; a load balancer "
                "routes by this one, as it does not read the body (docs/DEPLOY.md). Both given: they must be equal "
                "(else 422); neither: 422")]
CategoryForm = Annotated[str | None, Form(
    alias="category", min_length=1, max_length=128,
    description="a loaded category (GET /categories), when it is not in the query string (?category=NAME, which a "
                "load balancer routes by); both given: they must be equal")]
ThresholdForm = Annotated[float, Form(gt=0, allow_inf_nan=False, description="override the calibrated threshold "
                                      "(raw score units; above the category's lowest normal score and at most 1e9, else 422)")]
INTRINSICS_HELP = ("the photo's camera as 'fx,fy,cx,cy' in its own pixels, when it is not the bundle's camera at "
                   "another resolution (GET /categories gives the bundle's)")
IntrinsicsForm = Annotated[str, Form(max_length=200, description=INTRINSICS_HELP)]


@dataclass(frozen=True)
class Include:
    """The images a request asked to have in its answer."""

    map: bool = False
    overlay: bool = False
    reference: bool = False


def _cpu_threads(threads: int | None) -> None:
    """The inference thread's CPU budget: torch's team, and so ONNX Runtime's pool
    (models.onnx_runtime.session sizes it from torch's)."""
    if threads is not None:
        torch.set_num_threads(threads)


class State:
    """What the lifespan loads: inspectors and batchers by category, and why others were refused.

    ``inspectors[name]`` and ``batchers[name]`` are replaced together, in one step on the
    event loop, when a new bundle version is swapped in (``serve`` in ``create_app``); a
    request takes the pair once and keeps it to its answer (``CategoryBatcher.in_use``).
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.inspectors: dict[str, Inspector] = {}
        self.batchers: dict[str, CategoryBatcher] = {}
        self.refused: dict[str, str] = {}
        self.ready = False  # at least one bundle is served (once true, it stays true)
        self.load_error: str | None = None
        self.source: S3Source | None = None  # the object store, when settings.bundles is an s3:// URL
        self.source_error: str | None = None  # why the store could not be read at the last look
        self.tried_cache = False  # the cache was tried once, the store being unreadable with nothing served
        self.load_failures: dict[str, str] = {}  # bundle version (manifest sha256) -> why it did not load
        self.retiring: dict[CategoryBatcher, asyncio.Task] = {}  # replaced batchers, draining
        # Every torch op of the service runs on this one thread: loading, warm-up, stacking a
        # batch, inference, resampling a photo from another camera. libgomp (torch's OpenMP on
        # Linux) keeps a team of threads for each thread that ever ran a parallel op; once
        # those outnumber the cores, the teams stop spinning between ops, a medium-size op waits
        # on a futex wake-up, and the Lego render took 1.9x as long (docs/SERVICE.md, "Where a
        # request's time goes"). One such thread keeps one team.
        # Its team has settings.threads threads when set (replicas sharing a host's cores).
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference",
                                           initializer=_cpu_threads, initargs=(settings.threads,))
        self.telemetry = Telemetry()
        self.decoding = asyncio.Semaphore(settings.max_decodes)  # uploads decoded at once (their memory)
        self.records: RecordStore | None = None
        self.records_error: str | None = None  # why records are unavailable, when they are on but failed to open

    def problems(self) -> dict[str, str]:
        """What is not served and why: refused bundles by category, the store under its URL."""
        found = dict(self.refused)
        if self.source is not None and self.source_error is not None:
            served = ", ".join(f"{name}@{inspector.bundle_sha256[:12]}"
                               for name, inspector in sorted(self.inspectors.items()))
            found[str(self.source)] = self.source_error + (f" (serving the versions fetched before: {served})"
                                                           if served else "")
        return found

    def serving(self, category: str) -> tuple[Inspector, CategoryBatcher]:
        """The category's inspector and batcher, taken together (404 when not loaded)."""
        inspector = self.inspectors.get(category)
        if inspector is None:
            raise ServiceError(404, f"unknown category {category!r}; loaded: {sorted(self.inspectors)}")
        return inspector, self.batchers[category]


def open_records(settings: Settings, telemetry: Telemetry, log: logging.Logger) -> tuple[RecordStore | None, str | None]:
    """The records store, started; or None and the reason (the service runs on without records)."""
    if not settings.records:
        return None, None
    store = None
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)  # the SQLite file (by default) and the journal
        sealer = None if settings.records_key_file is None else Sealer.from_files([settings.records_key_file])
        store = RecordStore(settings.records_url(), settings.records_max_count, settings.records_max_age_days,
                            settings.records_queue,
                            on_failure=lambda reason: telemetry.records_failed.labels(reason).inc(),
                            journal=settings.data_dir / "records.journal", sealer=sealer)
        store.start()
        return store, None
    except Exception as exc:  # noqa: BLE001 (inspections go on; the records endpoints say why they cannot)
        log.error("inspection records unavailable: %s", exc)
        if store is not None:
            store.engine.dispose()
        return None, f"inspection records unavailable: {type(exc).__name__}: {exc}"


def get_state(request: Request) -> State:
    return request.app.state.svc


def has_key(request: Request, settings: Settings) -> bool:
    """The request carries the configured X-API-Key (or none is configured)."""
    key = settings.api_key
    if key is None:
        return True
    return secrets.compare_digest(request.headers.get("x-api-key", "").encode(), key.get_secret_value().encode())


NO_KEY = "missing or wrong API key (header X-API-Key)"
NO_KEY_HEADERS = {"WWW-Authenticate": "ApiKey"}


def authorised(request: Request, state: Annotated[State, Depends(get_state)]) -> None:
    """Inspection routes need header X-API-Key when a key is configured."""
    if not has_key(request, state.settings):
        raise ServiceError(401, NO_KEY, headers=NO_KEY_HEADERS)


def _query_names(dependant) -> set[str]:
    """The query parameters a route (FastAPI's ``Dependant``) and its dependencies declare."""
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def declared_query(request: Request) -> None:
    """A route's query string holds only the parameters it declares, each once: a misspelt
    filter (``verdcit=``) would otherwise be dropped and every record listed, without a word."""
    declared = _query_names(request.scope["route"].dependant)
    query = request.query_params
    stray = sorted(set(query) - declared)
    if stray:
        reads = f"it reads {', '.join(sorted(declared))}" if declared else "it reads none"
        raise ServiceError(422, f"query parameter{'s' if len(stray) > 1 else ''} {', '.join(map(repr, stray))} not "
                                f"read by {request.url.path}: {reads}")
    twice = sorted(k for k in declared if len(query.getlist(k)) > 1)
    if twice:
        raise ServiceError(422, f"query parameter{'s' if len(twice) > 1 else ''} {', '.join(map(repr, twice))} given "
                                "more than once; give each once")


def multipart_body(request: Request, _: Ready) -> None:
    """An inspection's body is a multipart form: any other (a JSON body, say) is a 422 that
    says so, before its missing fields are listed one by one (after the API key and readiness
    checks: 401, 503 first)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        raise ServiceError(422, "send a multipart/form-data body with the photo as a file part and the category as a "
                                f"field (curl -F file=@photo.png -F category=NAME); this request's body is "
                                f"{media or 'not declared'}")


def requested_category(query: CategoryQuery = None, form: CategoryForm = None) -> str:
    """The category of an inspection request: ``?category=`` or the form field, the one
    place they are reconciled (different values, or neither: 422)."""
    if query is not None and form is not None and query != form:
        raise ServiceError(422, f"two categories: {query!r} in the query string and {form!r} in the form; give one, "
                                "or the same in both")
    if query is None and form is None:
        raise ServiceError(422, "no category: give ?category=NAME in the query string (what a load balancer routes "
                                "by) or the form field category (GET /categories lists them)")
    return query if query is not None else form


def ready_state(state: Annotated[State, Depends(get_state)]) -> State:
    if not state.ready:
        raise ServiceError(503, state.load_error or "bundles are still loading",
                           headers={"Retry-After": str(state.settings.retry_after_s)})
    return state


def records_of(state: Annotated[State, Depends(get_state)]) -> RecordStore:
    """The records store, or 503 with the reason it is unavailable."""
    if state.records is None:
        raise ServiceError(503, state.records_error or "inspection records are off (RPEPAD_RECORDS=false)")
    return state.records


Ready = Annotated[State, Depends(ready_state)]
RequestedCategory = Annotated[str, Depends(requested_category)]
StateDep = Annotated[State, Depends(get_state)]
Records = Annotated[RecordStore, Depends(records_of)]


def _form_fields(route) -> dict[str, bool]:
    """The form fields an inspection route reads, by name: whether each may repeat (a list)."""
    model = route.body_field.field_info.annotation  # FastAPI's model of the route's whole form
    return {f.alias or name: get_origin(f.annotation) is list for name, f in model.model_fields.items()}


async def one_reading(request: Request, _: Ready) -> None:
    """Every part of an inspection request is read, and read once. The form parser would keep one
    value of a field sent twice, and drop a misspelt field or a form field sent in the query
    string, all without a word. Each is the client's mistake, answered 422 with what would have
    been dropped. (A multipart body the parser cannot read, such as one whose boundary is not the
    one its Content-Type names, is FastAPI's 400 before this runs.) It runs after the API key and
    readiness checks (401, 503 first). FastAPI has parsed the form before this runs;
    ``request.form()`` returns it."""
    fields = _form_fields(request.scope["route"])
    query = request.query_params
    stray = sorted(set(query) - {"category"})
    if stray:
        raise ServiceError(422, f"query parameter{'s' if len(stray) > 1 else ''} {', '.join(map(repr, stray))} not read: "
                                "only category is read from the query string; the request's other fields go in the "
                                f"multipart form ({', '.join(sorted(fields))})")
    if len(query.getlist("category")) > 1:
        raise ServiceError(422, "category is given more than once in the query string; give it once")
    form = await request.form()
    unknown = sorted(set(form.keys()) - set(fields))
    if unknown:
        hint = {"file": " (POST /inspect/batch takes its images as files)",
                "files": " (POST /inspect takes one image as file; POST /inspect/batch takes files)"}
        raise ServiceError(422, f"unknown form field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
                                f"this route reads {', '.join(sorted(fields))}"
                                + "".join(hint[k] for k in unknown if k in hint))
    twice = sorted(k for k, repeats in fields.items() if not repeats and len(form.getlist(k)) > 1)
    if twice:
        hint = " (POST /inspect/batch takes several files)" if "file" in twice else ""
        raise ServiceError(422, f"{', '.join(map(repr, twice))} given more than once; give each once{hint}")


class ChunkedBodyLimit:
    """A body sent without a Content-Length (chunked) is counted as it arrives and refused
    with 413 once over ``limit``, before the form parser has spooled it all (one with a
    Content-Length is refused from it, unread, in ``create_app``'s ``observe``). FastAPI hands
    an ``HTTPException`` raised while it reads the body on to the problem handlers. (Starlette's
    ``RequestBodyLimitMiddleware``, behind FastAPI's ``max_body_size``, sits outside the app's
    middleware and answers in plain text, replacing the problem+json of every declared-size 413.)"""

    def __init__(self, app, limit: Callable[[str], int]) -> None:
        self.app, self.limit = app, limit  # ``limit``: the largest body a path takes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or any(k == b"content-length" for k, _ in scope.get("headers", ())):
            return await self.app(scope, receive, send)
        seen, limit = 0, self.limit(scope.get("path", ""))

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body over {limit} bytes (sent without a Content-Length)")
            return message

        await self.app(scope, counted, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    log = logging.getLogger("rpe_pad.service")

    async def warm_up(state: State, name: str, inspector: Inspector) -> str | None:
        """Warm ``inspector`` up on the inference thread (where its buffers will be reused);
        the reason when it fails (the bundle is refused, the rest served)."""
        if not settings.warmup:
            return None
        try:
            seconds = await asyncio.get_running_loop().run_in_executor(state.executor, inspector.warm_up,
                                                                       settings.max_batch)
        except Exception as exc:  # noqa: BLE001 (a bundle that cannot run is refused)
            return f"warm-up failed: {type(exc).__name__}: {exc}"
        log.info("warmed %s up in %.1f s (batch %d)", name, seconds, settings.max_batch)
        return None

    def serve(state: State, name: str, inspector: Inspector) -> None:
        """Serve ``name`` with ``inspector`` from now on; a batcher it replaces drains.

        The swap is two dictionary assignments with no ``await`` between them, on the event
        loop: a request sees the old inspector and batcher or the new ones, never a mix. A
        request that took the old pair keeps it to its answer; the old batcher stops when
        the last of them is answered (``CategoryBatcher.drain``), so no request is dropped.
        """
        batcher = CategoryBatcher(name, inspector, settings, state.executor, state.telemetry)
        batcher.start()
        old = state.batchers.get(name)
        state.inspectors[name], state.batchers[name] = inspector, batcher
        if old is not None:
            task = asyncio.create_task(old.drain(), name=f"drain-{name}")
            state.retiring[old] = task
            task.add_done_callback(lambda _: state.retiring.pop(old, None))
        log.info("serving %s (%s)", name, inspector.describe())

    async def load(state: State) -> None:
        """A local bundles directory (this replica's categories of it), once at start."""
        def load_local():
            paths, missing = local_bundles(settings.bundles, settings.categories)
            for reason in missing.values():
                log.error("bundle refused: %s", reason)
            loaded, refused = load_each(paths, settings.device, lambda path, reason: log.error("bundle refused: %s",
                                        reason), pose=settings.pose)
            return loaded, {**missing, **refused}

        try:  # on the inference thread
            loaded, refused = await asyncio.get_running_loop().run_in_executor(state.executor, load_local)
        except Exception as exc:  # noqa: BLE001 (the service stays up and says why it is not ready)
            state.load_error = str(exc)
            log.error("loading bundles failed: %s", exc)
            return
        for name, inspector in list(loaded.items()):
            reason = await warm_up(state, name, inspector)
            if reason is not None:
                refused[name] = reason
                del loaded[name]
                log.error("bundle refused: %s", reason)
        for name, inspector in loaded.items():
            serve(state, name, inspector)
        state.refused = refused
        state.telemetry.bundles.set(len(loaded))
        state.telemetry.refused.set(len(refused))
        state.ready = bool(loaded)
        if not loaded:
            why = "; ".join(f"{name}: {reason}" for name, reason in refused.items())
            state.load_error = f"no valid bundle in {settings.bundles}" + (f" ({why})" if why else "")
            log.error("%s: serving nothing; /readyz answers 503 until a valid bundle is there", state.load_error)

    async def bring_up(state: State, version: Version) -> str | None:
        """Load a fetched version and warm it up on the inference thread, then swap it in;
        the reason when it is refused. The version in service answers meanwhile."""
        name = version.category
        loaded, refused = await asyncio.get_running_loop().run_in_executor(
            state.executor, lambda: load_each({name: version.path}, settings.device, pose=settings.pose))
        if name in refused:
            return refused[name]
        reason = await warm_up(state, name, loaded[name])
        if reason is None:
            serve(state, name, loaded[name])
        return reason

    async def sync(state: State) -> None:
        """One look at the object store: every category whose newest version is not the one
        served is fetched, verified, loaded and swapped in; nothing served is ever dropped."""
        source = state.source
        serving = {name: inspector.bundle_sha256 for name, inspector in state.inspectors.items()}
        in_use = [b.inspector.bundle_dir for b in (*state.batchers.values(), *state.retiring)]
        try:  # network and hashing on a worker thread: no torch op there
            snapshot = await asyncio.to_thread(source.sync, serving, in_use)
        except Exception as exc:  # noqa: BLE001 (e.g. the cache directory cannot be written)
            snapshot = Snapshot(error=f"{type(exc).__name__}: {exc}")
        if snapshot.error is not None:
            if snapshot.error != state.source_error:
                log.error("bundle store %s: %s", source, snapshot.error)
            state.source_error = snapshot.error
            if not state.inspectors and not state.tried_cache:  # a restart during an outage: the cache, once
                state.tried_cache = True
                cached = await asyncio.to_thread(source.cached)
                state.refused = dict(cached.refused)
                for name, version in cached.versions.items():
                    reason = await bring_up(state, version)
                    if reason is not None:
                        state.refused[name] = f"cached version {version.sha256[:12]}: {reason}"
                if state.inspectors:
                    log.warning("bundle store %s unreadable at start: serving the cached versions of %s",
                                source, ", ".join(sorted(state.inspectors)))
        else:
            state.source_error = None
            refused = dict(snapshot.refused)
            for name, version in snapshot.versions.items():
                if serving.get(name) == version.sha256:
                    continue
                reason = state.load_failures.get(version.sha256)
                if reason is None:
                    reason = await bring_up(state, version)
                    if reason is not None:
                        state.load_failures[version.sha256] = reason  # not loaded again by this process
                if reason is not None:
                    refused[name] = reason
            for name, reason in refused.items():
                if name in state.inspectors:
                    refused[name] = f"{reason} (still serving version {state.inspectors[name].bundle_sha256[:12]})"
                if state.refused.get(name) != refused[name]:
                    log.error("bundle refused: %s: %s", name, refused[name])
            state.refused = refused
        state.telemetry.bundles.set(len(state.inspectors))
        state.telemetry.refused.set(len(state.refused))
        state.ready = bool(state.inspectors)
        if not state.ready:
            retry = (f"; looking again every {settings.bundles_poll_s:g} s" if settings.bundles_poll_s > 0
                     else "; not looking again (RPEPAD_BUNDLES_POLL_S=0)")
            problems = "; ".join(f"{name}: {reason}" for name, reason in state.problems().items())
            state.load_error = f"no valid bundle in {source}" + (f" ({problems})" if problems else "") + retry

    async def watch(state: State) -> None:
        """An object store: a look at start, then one every ``bundles_poll_s`` (0: at start only)."""
        while True:
            try:
                await sync(state)
            except Exception as exc:  # noqa: BLE001 (our bug: logged, and the next look happens anyway)
                log.exception("looking at the bundle store failed")
                if not state.ready:
                    state.load_error = f"looking at the bundle store failed: {type(exc).__name__}: {exc}"
            if settings.bundles_poll_s <= 0:
                return
            await asyncio.sleep(settings.bundles_poll_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = State(settings)
        app.state.svc, app.state.log = state, log
        state.records, state.records_error = await asyncio.to_thread(open_records, settings, state.telemetry, log)
        source = settings.bundle_source()
        if isinstance(source, S3Location):
            state.source = S3Source(source, settings.bundles_cache_dir(), categories=settings.categories)
            loader = asyncio.create_task(watch(state))
        else:
            loader = asyncio.create_task(load(state))
        yield
        loader.cancel()
        for task in list(state.retiring.values()):
            task.cancel()
        for batcher in [*state.batchers.values(), *state.retiring]:
            await batcher.stop()
        state.executor.shutdown(wait=False, cancel_futures=True)
        if state.records is not None:
            await asyncio.to_thread(state.records.stop)

    def body_limit(path: str) -> int:
        """The largest body a path takes: its files and 1 MiB of form fields (a batch's files,
        one photo, or none: feedback is a short JSON)."""
        path = path.rstrip("/")  # read by its end: the same under a proxy's path prefix (a root path)
        files = settings.max_files_per_batch if path.endswith("/inspect/batch") else int(path.endswith("/inspect"))
        return files * settings.max_upload_bytes + FORM_BYTES

    version = package_version()  # read once: a metadata lookup, not for every answer
    app = FastAPI(title="RPE-PAD inspection service", version=version, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # /docs is served without a CDN (service.web)
                  description="Pose-agnostic anomaly detection: upload a photo of an object from any viewpoint; "
                              "the service finds its pose, renders the normal object there and compares.")
    app.state.log = log
    app.state.draining = False  # set by service/server.py on SIGTERM: /readyz says 503, everything else is served
    problems.install(app)
    problems.document(app, limits={("/inspect/batch", "post", "files"): {"maxItems": settings.max_files_per_batch}},
                      closed_forms=("/inspect", "/inspect/batch"))
    web.install(app)
    app.add_middleware(ChunkedBodyLimit, limit=body_limit)  # inside `observe`: its 413 is a problem like the others

    @app.middleware("http")
    async def observe(request: Request, call_next):
        given = request.headers.get("x-request-id", "")
        request.state.request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        start = request.state.started = time.perf_counter()
        declared, limit = request.headers.get("content-length", ""), body_limit(request.url.path)
        if request.method == "POST" and not has_key(request, settings):  # every POST needs it: refused unread
            response = problems.problem(401, NO_KEY, request, headers=NO_KEY_HEADERS)
        elif declared.isdigit() and int(declared) > limit:  # before Starlette parses (and spools) the body
            response = problems.problem(413, f"request body of {declared} bytes is over {limit} for "
                                             f"{request.url.path}", request)
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
        response.headers.setdefault("X-Content-Type-Options", "nosniff")  # every answer is what its type says
        return response

    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> Health:
        """The process is alive (bundles may still be loading)."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["operations"], responses=problems.errors(503))
    async def readyz(request: Request, state: StateDep) -> Health:
        """Bundles are loaded and inspections are accepted; ``detail`` names what is not served
        and why (refused bundles, a bundle store that cannot be read). 503 while loading, and
        while draining before a shutdown (``RPEPAD_DRAIN_S``: requests are still served then).
        Where a key is configured, the reasons (paths, hosts) are given with it only: a probe
        without it gets the names."""
        if app.state.draining:
            raise ServiceError(503, f"shutting down: draining for {settings.drain_s:g} s (RPEPAD_DRAIN_S); "
                                    "requests in flight and arriving are still served")
        keyed = has_key(request, settings)
        try:
            ready_state(state)
        except ServiceError as exc:
            if keyed or not state.load_error:
                raise
            raise ServiceError(503, "no bundle is served (the reason with X-API-Key)", headers=exc.headers) from None
        found = state.problems()
        records = state.records_error or (state.records.health() if state.records is not None else None)
        if records is not None:
            found["records"] = records
        if not keyed:
            records = records and "unavailable or behind (the reason with X-API-Key)"
            found = {name: records if name == "records" else "not served (the reason with X-API-Key)"
                     for name in found}
        problems = "; ".join(f"{name}: {reason}" for name, reason in found.items())
        return Health(status="ready", bundles_loaded=len(state.inspectors), detail=problems or None, records=records)

    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"description": "Prometheus text format", "content": {METRICS_TYPE: {}}}})
    async def metrics(state: StateDep) -> Response:
        """Prometheus text format: requests, latency per route and per stage, errors, bundles."""
        if state.records is not None:
            state.telemetry.records_numbered.labels(state.records.chain_id).set(state.records.chain_numbered)
        return Response(state.telemetry.render(), media_type=METRICS_TYPE)

    reads = [Depends(authorised), Depends(declared_query)]  # every GET and the feedback: known parameters only
    inspects = [Depends(authorised), Depends(multipart_body), Depends(one_reading)]  # /inspect and /inspect/batch

    @app.get("/categories", response_model=Categories, dependencies=reads, tags=["inspection"],
             responses=problems.errors(401, 422, 503))
    async def categories(state: Ready) -> Categories:
        """The loaded categories (and the bundles that were refused, with the reason)."""
        return Categories(categories=[i.describe() for i in state.inspectors.values()],
                          refused=state.problems())

    async def _prepare(state: State, inspector: Inspector, batcher: CategoryBatcher, upload: UploadFile,
                       intrinsics: str | None = None, phases: dict[str, float] | None = None):
        """The upload as the bundle's camera sees it; ``phases`` gets the seconds of read and decode."""
        check_media_type(upload)
        with batcher.arriving():  # a batch being formed waits for this one
            t0 = time.perf_counter()
            data = await read_limited(upload, state.settings.max_upload_bytes)
            t1 = time.perf_counter()
            name = upload.filename or "upload"
            camera = _parse_intrinsics(intrinsics)

            def to_camera(image):
                try:
                    return inspector.prepare(image, camera, exif_camera_of(data), greyscale_file(data), compression_of(data))
                except InspectionError as exc:
                    raise ServiceError(422, f"{name}: {exc}") from exc

            # Off the event loop. A query of the bundle's camera is decoded and resized by Pillow and
            # numpy in the thread pool; resampling another camera's photo takes torch ops, which run
            # on the one inference thread (State.executor says why).
            async with state.decoding:  # a full-size photo's pixels live until it is the bundle's size
                if camera is None:
                    prepared = await run_in_threadpool(lambda: to_camera(decode(data, name, state.settings,
                                                                                inspector.scene.background)))
                else:
                    image = await run_in_threadpool(decode, data, name, state.settings, inspector.scene.background)
                    prepared = await asyncio.get_running_loop().run_in_executor(state.executor, to_camera, image)
                    del image
        if phases is not None:
            phases.update(read=t1 - t0, decode=time.perf_counter() - t1)
        return prepared, data

    def _check_threshold(inspector: Inspector, threshold: float | None) -> None:
        if threshold is None:
            return
        try:
            resolve_threshold(inspector.calibration, threshold)  # the one check, before any work
        except InspectionError as exc:
            raise ServiceError(422, f"threshold: {exc}") from exc

    async def _run(batcher: CategoryBatcher, images: list, threshold: float | None) -> list[Inspection]:
        """The pipeline over ``images``, each decided at ``threshold`` (None: the calibrated one)."""
        try:
            return [r.decided(threshold) for r in await batcher.submit(images)]
        except InspectionError as exc:
            raise ServiceError(422, str(exc)) from exc

    def _out(request: Request, category: str, filename: str | None, result: Inspection, image, data: bytes,
             camera: list[float] | None, include: Include, inspector: Inspector,
             record_id: str | None = None) -> InspectionOut:
        norm = result.normalised_map() if include.map else None
        reference = np.round(np.clip(result.reference, 0, 1) * 255).astype(np.uint8) if include.reference else None
        return InspectionOut(
            **result.model_dump(), request_id=request.state.request_id, category=category,
            filename=clean_filename(filename),
            record_id=record_id, bundle_sha256=inspector.bundle_sha256,
            query_sha256=hashlib.sha256(data).hexdigest(), service_version=version, intrinsics=camera,
            score_floor=inspector.calibration.score_floor, map_floor=inspector.calibration.map_floor,
            reference_png=None if reference is None else _png_b64(Image.fromarray(reference)),
            anomaly_map_png=None if norm is None else _png_b64(Image.fromarray(np.round(norm * 255).astype(np.uint8),
                                                                               mode="L")),
            overlay_png=_png_b64(inspector.figure(image.numpy(), result)) if include.overlay else None)

    @app.post("/inspect", response_model=InspectionOut, dependencies=inspects,
              tags=["inspection"],
              responses=problems.errors(400, 401, 404, 413, 415, 422, 503))
    async def inspect(request: Request, state: Ready,
                      file: Annotated[UploadFile, File(description="the query image (PNG, JPEG, WebP, BMP or TIFF)",
                                                       json_schema_extra={"minLength": 1})],
                      category: RequestedCategory, threshold: ThresholdForm = None, intrinsics: IntrinsicsForm = None,
                      include_map: Annotated[bool, Form(description="add the anomaly map as base64 PNG")] = False,
                      include_overlay: Annotated[bool, Form(description="add the overlay figure as base64 PNG")] = False,
                      include_reference: Annotated[bool, Form(description="add the rendered reference as base64 "
                                                                          "PNG")] = False,
                      ) -> InspectionOut:
        """Inspect one image: pose from the gallery and IRPRN, render of the normal object
        there, feature comparison, score, decision and (optionally) the anomaly map.

        The category goes in the query string (`?category=NAME`, what a load balancer routes
        by) or in the form field `category`."""
        phases = {"receive": time.perf_counter() - request.state.started}
        inspector, batcher = state.serving(category)
        with batcher.in_use():  # this bundle version to the answer, even if a new one is swapped in
            image, data = await _prepare(state, inspector, batcher, file, intrinsics, phases)
            _check_threshold(inspector, threshold)
            result = (await _run(batcher, [image], threshold))[0]
            t0 = time.perf_counter()
            record_id = new_id() if state.records is not None else None
            include = Include(include_map, include_overlay, include_reference)
            out = await run_in_threadpool(_out, request, category, file.filename, result, image, data,
                                          _request_camera(intrinsics), include, inspector, record_id)
            state.telemetry.observe(category, result)  # counted and recorded once answered
            _record(state, record_id, out, result, image, data, file, inspector)
        request.state.answered = time.perf_counter()
        phases["respond"] = request.state.answered - t0
        for phase, seconds in phases.items():
            state.telemetry.phase.labels(phase).observe(seconds)
        return out

    @app.post("/inspect/batch", response_model=BatchOut, dependencies=inspects,
              tags=["inspection"],
              responses=problems.errors(400, 401, 404, 413, 415, 422, 503))
    async def inspect_batch(request: Request, state: Ready,
                            files: Annotated[list[UploadFile], File(
                                description="query images, one category (at most RPEPAD_MAX_FILES_PER_BATCH)",
                                min_length=1)],
                            category: RequestedCategory, threshold: ThresholdForm = None,
                            intrinsics: IntrinsicsForm = None,
                            include_map: Annotated[bool, Form()] = False,
                            include_overlay: Annotated[bool, Form()] = False,
                            include_reference: Annotated[bool, Form()] = False) -> BatchOut:
        """Inspect several images of one category (`?category=NAME` or the form field
        `category`); any bad file fails the request with its name."""
        if len(files) > state.settings.max_files_per_batch:
            raise ServiceError(413, f"{len(files)} files; at most {state.settings.max_files_per_batch} per request")
        inspector, batcher = state.serving(category)
        with batcher.in_use():  # this bundle version to the answer, even if a new one is swapped in
            prepared = [await _prepare(state, inspector, batcher, f, intrinsics) for f in files]
            images = [image for image, _ in prepared]
            _check_threshold(inspector, threshold)
            results = await _run(batcher, images, threshold)
            include = Include(include_map, include_overlay, include_reference)
            camera = _request_camera(intrinsics)
            outs = [await run_in_threadpool(_out, request, category, f.filename, result, im, data, camera,
                                            include, inspector, new_id() if state.records is not None else None)
                    for f, result, (im, data) in zip(files, results, prepared)]
            # counted and recorded once the whole answer is built: not a batch that was not answered
            for f, result, out, (im, data) in zip(files, results, outs, prepared):
                state.telemetry.observe(category, result)
                _record(state, out.record_id, out, result, im, data, f, inspector)
        return BatchOut(request_id=request.state.request_id, category=category, results=outs)

    @app.get("/categories/{category}/gallery/{view_id}.png", dependencies=reads,
             tags=["inspection"], response_class=Response,
             responses={200: {"content": {"image/png": {}}, "description": "the gallery view"},
                        **problems.errors(401, 404, 422, 503)})
    async def gallery_view(category: str, view_id: Annotated[int, FastPath(ge=0, le=1_000_000)],
                           state: Ready, v: Annotated[str | None, Query(
                               pattern="^[0-9a-f]{12,64}$",
                               description="the bundle version the view is asked of: the first characters (12 or "
                                           "more) of a result's bundle_sha256. With it, the view is that version's "
                                           "or a 404 once another is served, and may be cached; without it, the "
                                           "view is the version served now, revalidated each time")] = None,
                           ) -> Response:
        """A gallery view of a loaded category, as a result's ``matches[].id`` names it."""
        inspector, _ = state.serving(category)
        if v is not None and not inspector.bundle_sha256.startswith(v):  # a result of an earlier version
            raise ServiceError(404, f"category {category!r} now serves bundle {inspector.bundle_sha256[:12]}, not "
                                    f"{v}: that version's gallery view {view_id} is gone (inspect again)")
        png = await asyncio.to_thread(inspector.gallery_view_png, view_id)
        if png is None:
            raise ServiceError(404, f"category {category!r} has no gallery view {view_id}")
        cache = "private, max-age=86400, immutable" if v is not None else "private, no-cache"
        return Response(png, media_type="image/png", headers={"Cache-Control": cache})

    # ------------------------------------------------------------ records
    def _record(state: State, record_id: str | None, out: InspectionOut, result: Inspection, image, data: bytes,
                upload: UploadFile, inspector: Inspector) -> None:
        """Hand the inspection to the records writer (never blocks, never raises)."""
        if state.records is None or record_id is None:
            return
        keep = state.settings.store_queries and len(data) <= state.settings.max_stored_query_bytes
        state.records.submit(Pending(
            id=record_id, created=utc_now(), request_id=out.request_id, category=out.category, filename=out.filename,
            bundle_id=inspector.bundle_id, bundle_sha256=inspector.bundle_sha256,
            result=out.model_dump(mode="json", exclude=IMAGE_FIELDS),
            evidence=lambda: Evidence.encode(image.numpy(), result.reference, result.normalised_map()),
            query_bytes=data if keep else None,
            query_media_type=(upload.content_type or "application/octet-stream") if keep else None))

    def _summary(r: Record) -> dict:
        return dict(id=r.id, created=_utc(r.created), request_id=r.request_id, category=r.category, verdict=r.verdict,
                    score=r.score, threshold=r.threshold, normalised_score=r.normalised_score, filename=r.filename,
                    bundle_id=r.bundle_id, bundle_sha256=r.bundle_sha256, feedback=r.feedback,
                    feedback_note=r.feedback_note, feedback_at=_utc(r.feedback_at), feedback_by=r.feedback_by,
                    has_overlay=r.has_overlay,
                    has_query=r.has_query)

    def _filters(category: str | None, verdict: str | None, since: datetime | None, until: datetime | None,
                 feedback: str | None) -> Filters:
        # since at or after until is an empty range: no records, not an error
        return Filters(category=category, verdict=verdict, since=since, until=until, feedback=feedback)

    def filter_query() -> dict:  # fresh Query objects for each route that filters
        return dict(
            category=Query(None, max_length=128, description="only this category"),
            verdict=Query(None, pattern="^(normal|anomalous|review)$", description="normal, anomalous or review"),
            since=Query(None, description="from this time (ISO 8601; UTC when no zone is given)"),
            until=Query(None, description="before this time (ISO 8601)"),
            feedback=Query(None, pattern="^(confirmed_defect|false_alarm|none|any)$",
                           description="confirmed_defect, false_alarm, none (no feedback yet) or any"))

    FilterQuery = filter_query()

    @app.get("/inspections", response_model=RecordPage, dependencies=reads, tags=["records"],
             responses=problems.errors(401, 404, 422, 503))
    async def list_inspections(store: Records, category: str | None = FilterQuery["category"],
                               verdict: str | None = FilterQuery["verdict"],
                               since: datetime | None = FilterQuery["since"],
                               until: datetime | None = FilterQuery["until"],
                               feedback: str | None = FilterQuery["feedback"],
                               limit: int = Query(50, ge=1, le=500),
                               offset: int = Query(0, ge=0, le=1_000_000_000),
                               before: str | None = Query(None, pattern=RECORD_ID.pattern, description=(
                                   "start after this record (the last page's next_before): pages read this way "
                                   "neither repeat nor skip a record when new ones arrive, as pages by offset "
                                   "do"))) -> RecordPage:
        """Stored inspections, newest first, filtered and paginated."""
        filters = _filters(category, verdict, since, until, feedback)

        def page():
            cursor = store.position(before) if before is not None else None
            if before is not None and cursor is None:
                raise ServiceError(404, f"no inspection {before} to page from (deleted by retention?): start again "
                                        "from the newest, without before")
            # one row more than the page: whether a next page exists
            return store.list(filters, limit + 1, offset, before=cursor), store.count(filters)

        rows, total = await _database(page)
        more, rows = len(rows) > limit, rows[:limit]
        return RecordPage(items=[RecordSummary(**_summary(r)) for r in rows], total=total, limit=limit, offset=offset,
                          next_before=rows[-1].id if more else None)

    FilterQuery = filter_query()

    @app.get("/inspections.csv", dependencies=reads, tags=["records"], response_class=Response,
             responses={200: {"description": "CSV, one row a record", "content": {CSV_TYPE: {}}},
                        **problems.errors(401, 422, 503)})
    async def export_inspections(store: Records, category: str | None = FilterQuery["category"],
                                 verdict: str | None = FilterQuery["verdict"],
                                 since: datetime | None = FilterQuery["since"],
                                 until: datetime | None = FilterQuery["until"],
                                 feedback: str | None = FilterQuery["feedback"]) -> Response:
        """The filtered records as CSV (newest first; no images)."""
        filters = _filters(category, verdict, since, until, feedback)
        text = await _database(lambda: "".join(store.csv_rows(filters)))
        return Response(text, media_type=CSV_TYPE,
                        headers={"Content-Disposition": 'attachment; filename="inspections.csv"'})

    async def _get_record(store: RecordStore, record_id: str) -> Record:
        """The record, once the writer has it in the database (an answer's ``record_id`` may be
        opened at once: a record still on its way is waited for, briefly). 503 while it waits
        for a retry, 404 with the reason when it was refused or is not there."""
        if not RECORD_ID.fullmatch(record_id):
            raise ServiceError(404, f"no inspection record {record_id!r}")
        waiting = await asyncio.to_thread(store.wait_written, record_id, RECORD_WAIT_S)
        record = await _database(store.get, record_id)
        if record is not None:
            return record
        if waiting is not None and waiting[0] == "rejected":
            raise ServiceError(404, f"inspection record {record_id} was not stored: {waiting[1]}")
        if waiting is not None:
            raise ServiceError(503, f"inspection record {record_id} is {waiting[1]}", headers={"Retry-After": "5"})
        raise ServiceError(404, f"no inspection record {record_id!r} (not stored by this service, or past the "
                                "retention limit)")

    @app.get("/inspections/{record_id}", response_model=RecordDetail, dependencies=reads,
             tags=["records"], responses=problems.errors(401, 404, 422, 503))
    async def get_inspection(record_id: str, store: Records) -> RecordDetail:
        """One stored inspection: its result, feedback, and where its images are."""
        r = await _get_record(store, record_id)
        result = {k: v for k, v in json.loads(r.result_json).items() if k not in IMAGE_FIELDS}  # older records kept one
        status, reason = store.seal_status(r)
        return RecordDetail(**_summary(r), result=result, feedback_history=json.loads(r.feedback_history or "[]"),
                            overlay_url=f"/inspections/{r.id}/overlay.png" if r.has_overlay else None,
                            query_url=f"/inspections/{r.id}/query" if r.query_bytes is not None else None,
                            seal=SealOut(status=status, reason=reason, key=r.seal_key, chain_id=r.chain_id,
                                         chain_seq=r.chain_seq))

    @app.get("/inspections/{record_id}/overlay.png", dependencies=reads, tags=["records"],
             response_class=Response, responses={200: {"description": "PNG", "content": {"image/png": {}}},
                                                 **problems.errors(401, 404, 422, 500, 503)})
    async def get_overlay(record_id: str, store: Records) -> Response:
        """The inspection's overlay: query | rendered reference | overlay with the decision contour
        (drawn from the record's evidence; a record never changes, so browsers may keep it)."""
        r = await _get_record(store, record_id)
        try:
            png = await asyncio.to_thread(r.overlay)
        except Exception as exc:  # noqa: BLE001 (a stored image that no longer decodes: say which, count it)
            log.error("the overlay of inspection %s cannot be drawn: %s", record_id, exc)
            store.on_failure("overlay")
            raise ServiceError(500, f"inspection {record_id}: its stored images cannot be drawn "
                                    f"({type(exc).__name__}); the record's result is intact") from exc
        if png is None:
            raise ServiceError(404, f"inspection {record_id} has no overlay (its images were not stored: "
                                    "the service stopped before writing them, or encoding them failed)")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/inspections/{record_id}/query", dependencies=reads, tags=["records"],
             response_class=Response,
             responses={200: {"description": "the image's own type",
                              "content": {t: {} for t in sorted(IMAGE_TYPES | {"application/octet-stream"})}},
                        **problems.errors(401, 404, 422, 503)})
    async def get_query(record_id: str, store: Records) -> Response:
        """The uploaded query image as it arrived."""
        r = await _get_record(store, record_id)
        if r.query_bytes is None:
            raise ServiceError(404, f"inspection {record_id} was stored without its query image "
                                    "(RPEPAD_STORE_QUERIES off, or larger than RPEPAD_MAX_STORED_QUERY_BYTES)")
        media = r.query_media_type if r.query_media_type in IMAGE_TYPES else "application/octet-stream"
        return Response(r.query_bytes, media_type=media, headers={"X-Content-Type-Options": "nosniff"})

    @app.post("/inspections/{record_id}/feedback", response_model=RecordDetail, dependencies=reads,
              tags=["records"], responses=problems.errors(401, 404, 409, 422, 503))
    async def give_feedback(record_id: str, feedback: FeedbackIn, store: Records) -> RecordDetail:
        """The operator's word on an inspection: a confirmed defect, or a false alarm, with a note;
        a null label clears it. The word it replaces is kept in the record's feedback history."""
        await _get_record(store, record_id)
        try:
            await _database(store.set_feedback, record_id, feedback.label, feedback.note, feedback.by)
        except FeedbackConflict as exc:
            raise ServiceError(409, str(exc)) from exc
        return await get_inspection(record_id, store)

    return app


async def _database(fn, *args):
    """``fn(*args)`` on a worker thread; a failing records database is a 503 that says so, not a 500."""
    try:
        return await asyncio.to_thread(fn, *args)
    except SQLAlchemyError as exc:
        logging.getLogger("rpe_pad.records").error("records database error: %s", exc)
        raise ServiceError(503, f"the inspection records database failed ({type(exc).__name__}); inspections "
                                "still run, see the service log") from exc


def _parse_intrinsics(text: str | None) -> tuple[float, float, float, float] | None:
    """The form field ``intrinsics`` ('fx,fy,cx,cy'); 422 when it is not four numbers."""
    if text is None or not text.strip():
        return None
    try:
        return parse_intrinsics(text)
    except ValueError as exc:
        raise ServiceError(422, str(exc)) from exc


def _request_camera(intrinsics: str | None) -> list[float] | None:
    """The request's ``intrinsics`` as the answer and its record carry them (checked already)."""
    camera = _parse_intrinsics(intrinsics)
    return None if camera is None else list(camera)


def _utc(moment: datetime | None) -> datetime | None:
    """A stored time (naive, in UTC on every backend) with its zone, so JSON shows it as UTC."""
    return moment.replace(tzinfo=UTC) if moment is not None else None


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
