"""The ``emoclip serve`` flags that are the service's own (the model's are cli.py's shared ones)."""

from __future__ import annotations

from collections.abc import Callable

import click

from emoclip.serve.settings import API_KEY_ENV, ServeSettings

_DEFAULTS = ServeSettings()


def serve_options(func: Callable) -> Callable:
    options = [
        click.option("--host", default=_DEFAULTS.host, show_default=True,
                     help="Address to listen on. Anything but loopback needs --api-key (or --insecure-no-auth)."),
        click.option("--port", default=_DEFAULTS.port, show_default=True, type=click.IntRange(0, 65535),
                     help="Port (0: a free one, printed at start)."),
        click.option("--api-key", default=None, envvar=API_KEY_ENV,
                     help=f"Require this key ('Authorization: Bearer KEY' or 'X-API-Key: KEY'). Prefer the "
                          f"{API_KEY_ENV} environment variable: command lines are visible to other users."),
        click.option("--insecure-no-auth", is_flag=True,
                     help="Allow a non-loopback --host without an API key (anyone who reaches it may use it)."),
        click.option("--cors-origin", "cors_origins", multiple=True,
                     help="Allow browser pages from this origin to call the API (repeatable); default: none."),
        click.option("--max-batch", default=None, type=click.IntRange(min=1),
                     help="Most images per encoder batch (default 16 on the CPU, 64 on CUDA)."),
        click.option("--max-wait-ms", default=_DEFAULTS.max_wait_ms, show_default=True, type=click.FloatRange(0),
                     help="How long a request waits for others to share its batch."),
        click.option("--max-queue", default=_DEFAULTS.max_queue, show_default=True, type=click.IntRange(min=1),
                     help="Most images waiting for the model; beyond it requests get 503 with Retry-After."),
        click.option("--max-upload-bytes", default=_DEFAULTS.max_upload_bytes, show_default=True,
                     type=click.IntRange(min=1), help="Largest request body (enforced while it streams in): 413."),
        click.option("--max-images", default=_DEFAULTS.max_images, show_default=True, type=click.IntRange(min=1),
                     help="Most images in one request: 413."),
        click.option("--max-connections", default=_DEFAULTS.max_connections, show_default=True,
                     type=click.IntRange(min=1), help="Requests handled at once (bodies are held in memory): 503."),
        click.option("--max-open-connections", default=_DEFAULTS.max_open_connections, show_default=True,
                     type=click.IntRange(min=1), help="Sockets held open; beyond it the longest-idle connection "
                                                      "is closed (idle clients cannot starve real ones)."),
        click.option("--header-timeout", default=_DEFAULTS.header_timeout_s, show_default=True,
                     type=click.FloatRange(min=0.1), help="Seconds a connection has to send its request headers "
                                                         "(slow or silent clients are closed)."),
        click.option("--max-request-pixels", default=_DEFAULTS.max_request_pixels, show_default=True,
                     type=click.IntRange(min=1), help="Decoded pixels of all images of one request together: 413."),
        click.option("--allowed-host", "allowed_hosts", multiple=True,
                     help="Also answer requests whose Host header names this host (repeatable); on a loopback "
                          "--host only loopback names are answered by default (against DNS rebinding)."),
        click.option("--request-timeout", default=_DEFAULTS.request_timeout_s, show_default=True,
                     type=click.FloatRange(min=0.1), help="Seconds to read, queue and tag one request: 408/504."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def settings_from(host, port, api_key, insecure_no_auth, cors_origins, max_batch, max_wait_ms, max_queue,
                  max_upload_bytes, max_images, max_connections, max_open_connections, header_timeout,
                  max_request_pixels, allowed_hosts, request_timeout) -> ServeSettings:
    return ServeSettings(host=host, port=port, api_key=api_key or None, insecure_no_auth=insecure_no_auth,
                         cors_origins=tuple(cors_origins), max_batch=max_batch, max_wait_ms=max_wait_ms,
                         max_queue=max_queue, max_upload_bytes=max_upload_bytes, max_images=max_images,
                         max_connections=max_connections, max_open_connections=max_open_connections,
                         header_timeout_s=header_timeout, max_request_pixels=max_request_pixels,
                         allowed_hosts=tuple(allowed_hosts), request_timeout_s=request_timeout)
