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

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

WEB = Path(__file__).parent / "web"
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
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html; charset=utf-8",
                            headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    app.mount("/static", _StaticFiles(directory=WEB / "static"), name="static")
