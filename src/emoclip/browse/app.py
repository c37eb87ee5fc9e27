"""The browse page's FastAPI app: the grid, filters, search, charts and export over one ``Browser``.

Served like ``emoclip serve`` and with its security: the service's ``ServeSettings`` (127.0.0.1 by
default; any other address needs an API key or ``--insecure-no-auth``, checked by ``check_bind``),
its API-key check and its page headers (a Content-Security-Policy that allows nothing from
elsewhere: no CDN). Every endpoint answers the same ``Query`` (query.py) from URL parameters; a
bad query is a 400 with ``{"detail": …, "kind": "bad_query"}``. Pictures are asked for by row id,
so the browser can never make the service read a path the folder does not list.
"""

from __future__ import annotations

import logging
import re

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.staticfiles import StaticFiles

from emoclip.browse.query import Browser, Query
from emoclip.browse.thumbs import ThumbCache
from emoclip.core.errors import EmoclipError
from emoclip.serve.app import PAGE_HEADERS, require_key
from emoclip.serve.settings import ServeSettings
from emoclip.serve.uploads import UploadRejected

log = logging.getLogger("emoclip")

EXPORT_TYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json", "jsonl": "application/x-ndjson"}


def _params(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    return params


def create_app(browser: Browser, settings: ServeSettings, thumbs: ThumbCache) -> FastAPI:
    """The page and its JSON API over ``browser``."""
    app = FastAPI(title="emoclip browse", summary="Browse and search a tagged shard folder.")
    app.state.browser = browser
    authorized = [Depends(require_key(settings))]

    @app.exception_handler(UploadRejected)
    async def rejected(request: Request, exc: UploadRejected) -> JSONResponse:
        return JSONResponse({"detail": exc.message, "kind": exc.kind}, exc.status, headers=exc.headers)

    @app.exception_handler(EmoclipError)
    async def bad_query(request: Request, exc: EmoclipError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "kind": "bad_query"}, 400)

    @app.exception_handler(Exception)
    async def broken(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; see the server's log", "kind": "internal"}, 500)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        from importlib import resources

        html = resources.files("emoclip.browse").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(packages=[("emoclip.browse", "static")]), name="static")

    @app.get("/health", summary="Liveness")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/api/info", dependencies=authorized, summary="The folder: rows, shards, labels, levels")
    def info() -> dict:
        browser.refresh()
        return browser.describe()

    @app.post("/api/features", dependencies=authorized,
              summary="Compute the features of a folder tagged without --save-features (in the background)")
    def features() -> dict:
        return browser.start_computing_features()

    @app.get("/api/rows", dependencies=authorized, summary="One page of the rows a query selects")
    def rows(request: Request) -> dict:
        return browser.run(Query.from_params(_params(request))).to_dict()

    @app.get("/api/stats", dependencies=authorized, summary="Charts of the rows the filters select")
    def stats(request: Request) -> dict:
        return browser.stats(Query.from_params(_params(request)))

    @app.get("/api/row/{row_id}", dependencies=authorized, summary="One row in full")
    def row(row_id: int) -> dict:
        return browser.detail(row_id)

    @app.get("/api/thumb/{row_id}", dependencies=authorized, summary="A row's thumbnail (404 with the reason)")
    def thumb(row_id: int) -> Response:
        with browser.lock:
            path = browser.collection.path(browser.collection.position(row_id))
        data, reason = thumbs.get(path)
        if data is None:
            return JSONResponse({"detail": reason, "kind": "no_picture"}, 404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/export", dependencies=authorized, summary="The whole selection as CSV, JSON or JSON Lines")
    def export(request: Request) -> StreamingResponse:
        params = _params(request)
        fmt = (params.pop("format", None) or ["csv"])[-1]
        if fmt not in EXPORT_TYPES:
            raise EmoclipError(f"format={fmt!r}: use one of {', '.join(EXPORT_TYPES)}")
        query = Query.from_params(params)
        pieces = browser.export(query, fmt)
        first = next(pieces, "")     # a bad query fails here, as a 400, before the response starts
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", browser.folder.name or "selection")

        def stream():
            yield first
            yield from pieces

        return StreamingResponse(stream(), media_type=EXPORT_TYPES[fmt],
                                 headers={"Content-Disposition": f'attachment; filename="{name}.{fmt}"'})

    return app
