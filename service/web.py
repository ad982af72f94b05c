"""The operator's page: ``GET /`` and its static files (``service/web/``).

The page is a client of the service's own JSON API (``/categories``, ``/inspect``,
``/inspections``): plain HTML, CSS and JavaScript written for this service, no framework,
no CDN and no build step, so it works on a line with no internet. What it shows and how
it re-decides at another threshold is described in docs/SERVICE.md ("The operator's page").
The page itself needs no API key (it holds no data); it asks for the key when the API
answers 401 and keeps it for the browser session.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.staticfiles import StaticFiles

WEB = Path(__file__).parent / "web"
SWAGGER_FILES = {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"}
# Only the page's own files run; images may be blob: or data: URLs made by the page.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
                               "style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class _StaticFiles(StaticFiles):
    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def install(app: FastAPI) -> None:
    """The page at ``/``, its files at ``/static``, and the OpenAPI page at ``/docs`` with
    Swagger UI 5's files from the ``swagger-ui-py`` package (FastAPI's default page loads them
    from a CDN, which a line with no internet cannot reach; Swagger UI 4 cannot read the
    OpenAPI 3.1 this service publishes). Create the app with ``docs_url=None`` and
    ``redoc_url=None``. Without the package (an environment made from a partial set of wheels,
    as on a lent GPU machine) the service runs and ``/docs`` says what is missing."""
    swagger = _swagger_files()

    @app.get("/static/swagger/{name}", include_in_schema=False)
    async def swagger_file(name: str) -> FileResponse:
        if swagger is None or name not in SWAGGER_FILES:  # only the three the page loads, not the package's demo
            raise HTTPException(404, f"no such file {name!r}")
        return FileResponse(swagger / name, headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/docs", include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        if swagger is None:
            return HTMLResponse("<p>The API page needs the swagger-ui-py package, which this environment lacks "
                                "(pip install swagger-ui-py). The API's schema is at <a href=\"/openapi.json\">"
                                "/openapi.json</a>.</p>", status_code=503)
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title}: API",
                                   swagger_js_url="/static/swagger/swagger-ui-bundle.js",
                                   swagger_css_url="/static/swagger/swagger-ui.css",
                                   swagger_favicon_url="/static/swagger/favicon-32x32.png")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html; charset=utf-8",
                            headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    app.mount("/static", _StaticFiles(directory=WEB / "static"), name="static")


def _swagger_files() -> Path | None:
    """Swagger UI's distribution folder, as the ``swagger-ui-py`` package ships it (None without it)."""
    try:
        import swagger_ui
    except ImportError:
        return None
    return Path(swagger_ui.__file__).parent / "static"
