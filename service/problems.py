"""Errors as RFC 9457 ``application/problem+json``, and the exceptions that map to them."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM = "application/problem+json"
WHEN = {  # what each status means on this service (the OpenAPI descriptions)
    400: "empty, undecodable, truncated or corrupt image, or a multipart body the parser cannot read",
    401: "missing or wrong API key (header X-API-Key)",
    404: "no such category, gallery view or record",
    409: "the record's feedback kept changing while this word was written; nothing stored, send it again",
    413: "too large: the body, a file, its pixels, or the number of files",
    415: "not an image, or a format the service does not read",
    422: "missing, invalid, unknown or repeated fields (the detail and errors say which)",
    500: "the service's own failure, logged (a stored record's images that no longer decode)",
    503: "not ready (loading, or no valid bundle), busy (Retry-After), or the records database is unavailable",
}


class Problem(BaseModel):
    """An error (RFC 9457)."""

    type: str = Field(description="always about:blank: the status says what kind of error")
    title: str = Field(description="the status's phrase")
    status: int
    detail: str = Field(description="what went wrong, for a person")
    instance: str = Field(description="the request's path")
    request_id: str | None = Field(description="X-Request-ID of the request")
    errors: list[dict] | None = Field(None, description="on 422: one entry per invalid field (loc, msg)")


def errors(*statuses: int) -> dict:
    """``responses=`` for a route that can answer these error statuses."""
    return {status: {"description": WHEN[status]} for status in statuses}


class ServiceError(Exception):
    """An error with an HTTP status and a message safe to show the client."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def problem(status: int, detail: str, request: Request, headers: dict[str, str] | None = None,
            errors: list | None = None) -> JSONResponse:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail,
            "instance": request.url.path, "request_id": getattr(request.state, "request_id", None)}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def document(app: FastAPI, limits: dict[tuple[str, str, str], dict] | None = None,
             closed_forms: tuple[str, ...] = ()) -> None:
    """The OpenAPI schema says what the service really answers: every error (4xx, 5xx) is
    ``application/problem+json`` with the ``Problem`` schema, on every route, and any route
    with a body may answer 413 (the size check runs before routing). ``limits``: JSON-schema
    keywords for a body field that come from the settings, by (path, method, field);
    ``closed_forms``: POST paths whose multipart form takes no field it does not declare."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            schemas["Problem"] = Problem.model_json_schema()
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            problem_content = {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
            for operation in (op for path in spec["paths"].values() for op in path.values()):
                responses = operation.setdefault("responses", {})
                if "requestBody" in operation:
                    responses.setdefault("413", {"description": WHEN[413]})
                for status, response in responses.items():
                    if status[0] in "45":
                        response["content"] = problem_content
                        if status == "422":
                            response["description"] = WHEN[422]
            for (path, method, field), keywords in (limits or {}).items():
                ref = spec["paths"][path][method]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
                schemas[ref.rsplit("/", 1)[-1]]["properties"][field].update(keywords)
            for path in closed_forms:  # their forms take no other field (service.app.one_reading refuses it)
                ref = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
                schemas[ref.rsplit("/", 1)[-1]]["additionalProperties"] = False
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi


def _plain(error: dict) -> str:
    """A validation error's message, for a person: an upload sent as text says how to send it."""
    msg = str(error.get("msg", ""))
    if "UploadFile" in msg:  # e.g. curl -F file=photo.png (without the @)
        return "expected a file, got text: send the photo as a file part (curl: -F file=@photo.png)"
    return msg


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        return problem(exc.status, exc.detail, request, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": _plain(e)} for e in exc.errors()]
        summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:3])
        return problem(422, f"invalid request: {summary}", request, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), request, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # our bug, never the user's
        request.app.state.log.exception("unexpected error on %s", request.url.path)
        return problem(500, "internal error (logged with this request id)", request)
