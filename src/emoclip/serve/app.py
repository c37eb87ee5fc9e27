"""The FastAPI application: endpoints, authentication, CORS, metrics and the web page.

Every answer to a bad request is a 4xx with ``{"detail": <why and what to do>, "kind": <kind>}``;
a 5xx means the service itself is overloaded (503, with Retry-After), too slow (504) or broken
(500, logged with its traceback). Prediction rows are ``output.prediction_record`` — the very
rows ``emoclip predict`` writes as JSONL.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
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
from emoclip.serve.metrics import ServeMetrics, method_label
from emoclip.serve.settings import ServeSettings
from emoclip.serve.taggers import TaggerPool
from emoclip.serve.uploads import Refusal, UploadRejected, image_pixels, inspect_image, read_form
from emoclip.tagging.tagger import Prediction
from emoclip.tagging.writers import prediction_record

log = logging.getLogger("emoclip")

STATIC_PACKAGE = ("emoclip.serve", "static")
# The page loads nothing from elsewhere; the browser is told so too.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                                           "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
UNDECODABLE = Refusal(422, "undecodable", "")
PROBES = frozenset({"/health", "/ready"})        # always answered: never counted, limited or Host-checked
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
UNLIMITED = PROBES | {"/metrics"}                 # cheap, and needed most when the service is at capacity
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
            self.metrics.requests.labels(route, method_label(scope["method"]), str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


async def _answer(send: Send, status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> None:
    """A JSON error answer sent from a plain ASGI middleware (the app's own shape: detail + kind)."""
    body = json.dumps({"detail": detail, "kind": kind}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class ConcurrencyLimit:
    """At most ``limit`` requests in progress (probes and /metrics excepted); beyond it 503 with Retry-After.

    Counts requests, not connections: idle sockets are the connection guard's business. The count
    is the in-flight gauge of /metrics, and each refusal is counted there by reason."""

    def __init__(self, app: ASGIApp, limit: int, metrics: ServeMetrics) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            self.metrics.over_capacity.labels("requests").inc()
            self.metrics.errors.labels("over_capacity").inc()
            await _answer(send, 503, "over_capacity", f"{self.active} requests in progress, the most this service "
                          "handles at once; retry after the Retry-After seconds", {"Retry-After": "1"})
            return
        self.active += 1
        self.metrics.in_flight.set(self.active)
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            self.metrics.in_flight.set(self.active)


def _host_name(host: str) -> str:
    """``Host``/``Origin`` authority without its port, lower-case, IPv6 brackets removed."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class HostOriginGuard:
    """Against DNS rebinding and cross-site requests, on the default keyless loopback service too.

    - ``Host`` must name an allowed host (on a loopback bind: localhost, 127.0.0.1, ::1; plus
      ``--allowed-host``), else 421: a page on evil.example re-bound to 127.0.0.1 sends
      ``Host: evil.example`` and is refused;
    - a state-changing request (anything but GET/HEAD/OPTIONS) that carries an ``Origin`` must come
      from this service's own origin or a ``--cors-origin``, else 403: a cross-origin form POST
      (which browsers send without a preflight) is refused before it is read.
    The probes are exempt (they change nothing and reveal nothing)."""

    def __init__(self, app: ASGIApp, settings: ServeSettings, metrics: ServeMetrics) -> None:
        self.app = app
        self.hosts = settings.host_allow_list()
        self.origins = frozenset(o.rstrip("/").lower() for o in settings.cors_origins)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in (b"host", b"origin")}
        host = headers.get("host", "")
        if self.hosts is not None and _host_name(host) not in self.hosts:
            self.metrics.errors.labels("bad_host").inc()
            await _answer(send, 421, "bad_host", f"this service does not answer for host '{host[:100]}'; use "
                          "http://127.0.0.1:PORT, or start it with --allowed-host NAME")
            return
        origin = headers.get("origin")
        if origin is not None and scope["method"] not in SAFE_METHODS:
            own = {f"http://{host}".lower(), f"https://{host}".lower()}
            if origin.rstrip("/").lower() not in own | self.origins:
                self.metrics.errors.labels("foreign_origin").inc()
                await _answer(send, 403, "foreign_origin", f"requests from the page at '{origin[:100]}' are not "
                              "allowed; start the service with --cors-origin ORIGIN to allow that page")
                return
        await self.app(scope, receive, send)


def require_key(settings: ServeSettings):
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

    def live() -> dict:
        batcher: MicroBatcher | None = state["batcher"]
        guard = getattr(app.state, "connections", None)   # set by server.make_server
        hits, misses = pool.feature_cache_counts()
        values = {
            ("emoclip_queue_pixels", "Decoded pixels waiting for the model", "gauge", None):
                batcher.queued_pixels if batcher else 0,
            ("emoclip_queue_builds", "Classifiers (label sets) waiting to be built", "gauge", None):
                batcher.pending_builds if batcher else 0,
            ("emoclip_cache_hits", "Cache hits: image features, and classifiers already built", "counter",
             (("cache", "features"),)): hits,
            ("emoclip_cache_hits", "", "counter", (("cache", "classifiers"),)): pool.hits,
            ("emoclip_cache_misses", "Cache misses: features computed, classifiers built", "counter",
             (("cache", "features"),)): misses,
            ("emoclip_cache_misses", "", "counter", (("cache", "classifiers"),)): pool.builds,
        }
        if guard is not None:
            values[("emoclip_connections_open", "Open client connections", "gauge", None)] = guard.open
            values[("emoclip_connections_closed", "Connections the guard closed, by reason", "counter",
                    (("reason", "header_timeout"),))] = guard.header_timeouts
            values[("emoclip_connections_closed", "", "counter", (("reason", "evicted_idle"),))] = guard.evicted
        return values

    metrics.add_live(live)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["batcher"] = MicroBatcher(run_group, max_batch, settings.max_wait_ms / 1000, settings.max_queue,
                                        metrics.observe_batch, max_queue_pixels=settings.max_queue_pixels,
                                        max_batch_pixels=settings.max_batch_pixels,
                                        max_pending_builds=settings.max_pending_builds)
        try:
            yield
        finally:
            state["draining"] = True
            await asyncio.to_thread(state["batcher"].close)

    app = FastAPI(title="emoclip", summary="Tag images with the emotions they evoke (CLIP).", lifespan=lifespan)
    app.state.metrics = metrics
    app.state.pool = pool
    app.state.settings = settings
    # add_middleware wraps: the last added is the outermost. Order, outside in: metrics (sees every
    # answer), CORS (answers preflights), Host/Origin, the concurrency limit, the app.
    app.add_middleware(ConcurrencyLimit, limit=settings.max_connections, metrics=metrics)
    app.add_middleware(HostOriginGuard, settings=settings, metrics=metrics)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    authorized = [Depends(require_key(settings))]

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
                form = await read_form(request, settings.max_upload_bytes, settings.max_images,
                                       settings.body_idle_timeout_s)
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
        pixels = sum(image_pixels(form.images[i].data) for i in todo)
        if pixels > settings.max_request_pixels:
            raise UploadRejected(413, "request_too_many_pixels", f"the request's images hold {pixels:,} pixels "
                                 f"together, over the {settings.max_request_pixels:,} one request may; send fewer "
                                 "or smaller images per request (or raise --max-request-pixels)")
        if todo:
            batcher: MicroBatcher = state["batcher"]
            cancelled = threading.Event()
            items = [CancellableBytes(form.images[i].name, form.images[i].data, cancelled) for i in todo]
            try:
                future = batcher.submit(key, items, pixels=pixels, build=not pool.is_built(key))
            except QueueFull as exc:
                metrics.over_capacity.labels("queue").inc()
                raise UploadRejected(503, "queue_full", f"{exc} (the service is at capacity)",
                                     {"Retry-After": str(exc.retry_after)}) from None
            try:
                results = await asyncio.wait_for(asyncio.wrap_future(future), max(0.0, deadline - loop.time()))
            except (TimeoutError, asyncio.CancelledError) as exc:
                cancelled.set()   # a batch already running skips this request's images: no decoding after a 504
                future.cancel()   # one still queued never runs
                if isinstance(exc, asyncio.CancelledError):
                    raise
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


class CancellableBytes(ImageBytes):
    """An upload whose bytes vanish once its request is given up (timed out or disconnected).

    The model thread reads ``data`` only when it decodes the image; by then a cancelled request's
    images read as empty and fail at once instead of being decoded for nobody."""

    _bytes: bytes
    _cancelled: threading.Event

    def __init__(self, name: str, data: bytes, cancelled: threading.Event) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_bytes", data)
        object.__setattr__(self, "_cancelled", cancelled)

    @property
    def data(self) -> bytes:
        return b"" if self._cancelled.is_set() else self._bytes


def _taxonomy_name(pool: TaggerPool, key) -> str:
    if key is None:
        return pool.default.taxonomy.name
    return key[1] if key[0] == "taxonomy" else "custom"
