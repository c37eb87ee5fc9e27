"""The FastAPI application: endpoints, authentication, CORS, metrics and the web page.

Every answer to a bad request is a 4xx with ``{"detail": <why and what to do>, "kind": <kind>}``;
a 5xx means the service itself is overloaded (503, with Retry-After), too slow (504) or broken
(500, logged with its traceback). Prediction rows are ``output.prediction_record`` — the very
rows ``emoclip predict`` writes as JSONL.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emoclip.encoder.decode import ImageBytes
from emoclip.labels.taxonomy import builtin_taxonomies, load_taxonomy
from emoclip.serve.batcher import MicroBatcher, QueueFull
from emoclip.serve.metrics import ServeMetrics
from emoclip.serve.settings import ServeSettings
from emoclip.serve.taggers import TaggerPool
from emoclip.serve.uploads import Refusal, UploadRejected, inspect_image, read_form
from emoclip.tagging.tagger import Prediction
from emoclip.tagging.writers import prediction_record

log = logging.getLogger("emoclip")

STATIC_PACKAGE = ("emoclip.serve", "static")
# The page loads nothing from elsewhere; the browser is told so too.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                                           "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
UNDECODABLE = Refusal(422, "undecodable", "")
PREDICT_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"],
    "properties": {
        "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                  "description": "One or more image files (any field name works; a part with a filename is an image)."},
        "taxonomy": {"type": "string", "description": "A built-in taxonomy (GET /v1/taxonomies), where the method "
                                                      "allows another taxonomy than the service's."},
        "labels": {"type": "string", "description": "Your own comma-separated labels, e.g. calm,tense,joyful."},
    }}}}}


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    return "/static" if scope.get("path", "").startswith("/static/") else "other"


class MetricsMiddleware:
    """Counts every HTTP answer and its latency (a plain ASGI middleware: bodies keep streaming)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = _route_label(scope)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def _require_key(settings: ServeSettings):
    expected = (settings.api_key or "").encode()

    async def check(request: Request) -> None:
        if not expected:
            return
        given = request.headers.get("x-api-key", "")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = token.strip()
        if not hmac.compare_digest(given.encode(), expected):  # constant time: no timing oracle on the key
            raise UploadRejected(401, "unauthorized", "missing or wrong API key; send 'Authorization: Bearer KEY' "
                                 "or 'X-API-Key: KEY'", {"WWW-Authenticate": "Bearer"})
    return check


def create_app(pool: TaggerPool, settings: ServeSettings) -> FastAPI:
    """The service around ``pool``'s tagger; the model thread starts and stops with the app's lifespan."""
    metrics = ServeMetrics()
    max_batch = settings.max_batch or pool.default.batch_size
    state: dict = {"batcher": None, "draining": False}

    def run_group(key, items: list[ImageBytes]) -> list[Prediction]:
        return list(pool.get(key).tag(items))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["batcher"] = MicroBatcher(run_group, max_batch, settings.max_wait_ms / 1000, settings.max_queue,
                                        metrics.observe_batch)
        try:
            yield
        finally:
            state["draining"] = True
            await asyncio.to_thread(state["batcher"].close)

    app = FastAPI(title="emoclip", summary="Tag images with the emotions they evoke (CLIP).", lifespan=lifespan)
    app.state.metrics = metrics
    app.state.pool = pool
    app.state.settings = settings
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    authorized = [Depends(_require_key(settings))]

    @app.exception_handler(UploadRejected)
    async def rejected(request: Request, exc: UploadRejected) -> JSONResponse:
        metrics.errors.labels(exc.kind).inc()
        return JSONResponse({"detail": exc.message, "kind": exc.kind}, exc.status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def broken(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error answering %s %s", request.method, request.url.path)
        metrics.errors.labels("internal").inc()
        return JSONResponse({"detail": "internal error; see the server's log", "kind": "internal"}, 500)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        from importlib import resources

        html = resources.files("emoclip.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(packages=[STATIC_PACKAGE]), name="static")

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: the model is loaded and its thread takes work")
    async def ready() -> JSONResponse:
        batcher: MicroBatcher | None = state["batcher"]
        if batcher is None or not batcher.alive or state["draining"]:
            return JSONResponse({"status": "not ready"}, 503)
        return JSONResponse({"status": "ready", "queued_images": batcher.queued, **pool.describe()})

    @app.get("/metrics", summary="Prometheus metrics", dependencies=authorized)
    async def prometheus() -> Response:
        if state["batcher"] is not None:
            metrics.queued.set(state["batcher"].queued)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/taxonomies", summary="The built-in taxonomies, and which one the service uses",
             dependencies=authorized)
    async def taxonomies() -> dict:
        listed = []
        for name in builtin_taxonomies():
            tax = load_taxonomy(name)
            listed.append({"name": name, "description": tax.description, "classes": tax.names,
                           "parent": tax.parent.name if tax.parent else None})
        return {**pool.describe(), "taxonomies": listed}

    @app.post("/v1/predict", summary="Tag one or many uploaded images", dependencies=authorized,
              openapi_extra={"requestBody": PREDICT_BODY},
              responses={413: {"description": "body or image count over the limits"},
                         415: {"description": "not multipart, or an upload that is not an image"},
                         422: {"description": "too many pixels, undecodable image, or bad taxonomy/labels"},
                         503: {"description": "queue full (see Retry-After)"}})
    async def predict(request: Request,
                      taxonomy: str | None = Query(None, description="A built-in taxonomy for this request."),
                      labels: str | None = Query(None, description="Comma-separated labels for this request.")
                      ) -> JSONResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.request_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                form = await read_form(request, settings.max_upload_bytes, settings.max_images)
        except TimeoutError:
            raise UploadRejected(408, "request_timeout", f"the upload took over {settings.request_timeout_s:g} s; "
                                 "send smaller images or a faster connection") from None
        key = pool.choose(form.fields.get("taxonomy", taxonomy), form.fields.get("labels", labels))
        if not form.images:
            raise UploadRejected(422, "no_images", "no image in the request; send file parts, e.g. "
                                 "curl -F image=@photo.jpg")
        refusals: list[Refusal | None] = [inspect_image(u.data, pool.default.max_pixels) for u in form.images]
        rows: list[Prediction | None] = [None if r is None else Prediction(path=u.name, error=r.reason)
                                         for u, r in zip(form.images, refusals, strict=True)]
        todo = [i for i, r in enumerate(refusals) if r is None]
        if todo:
            batcher: MicroBatcher = state["batcher"]
            try:
                future = batcher.submit(key, [ImageBytes(form.images[i].name, form.images[i].data) for i in todo])
            except QueueFull as exc:
                raise UploadRejected(503, "queue_full", f"{exc} (the service is at capacity)",
                                     {"Retry-After": str(exc.retry_after)}) from None
            try:
                results = await asyncio.wait_for(asyncio.wrap_future(future), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise UploadRejected(504, "timeout", f"no answer within {settings.request_timeout_s:g} s; the "
                                     "service is overloaded, retry later or send fewer images") from None
            for i, row in zip(todo, results, strict=True):
                rows[i] = row
                if not row.ok:
                    refusals[i] = UNDECODABLE
        for r in refusals:
            metrics.images.labels("tagged" if r is None else r.kind).inc()
            if r is not None:
                metrics.errors.labels(r.kind).inc()
        filled = [r for r in rows if r is not None]  # every row: refused up front, or tagged
        body: dict = {"taxonomy": _taxonomy_name(pool, key), "predictions": [prediction_record(r) for r in filled]}
        status = 200
        first_refusal = next((r for r in refusals if r is not None), None)
        if all(r is not None for r in refusals) and first_refusal is not None:  # nothing tagged: the first reason
            first = refusals.index(first_refusal)
            status = first_refusal.status
            body = {"detail": f"{filled[first].path}: {filled[first].error}", "kind": first_refusal.kind, **body}
        return JSONResponse(body, status)

    return app


def _taxonomy_name(pool: TaggerPool, key) -> str:
    if key is None:
        return pool.default.taxonomy.name
    return key[1] if key[0] == "taxonomy" else "custom"
