"""Running the service under uvicorn: one bound socket, a graceful stop, exit status 0.

The socket is bound here, before uvicorn starts, so an address in use or a refused bind is a
one-line ``EmoclipError`` (and ``--port 0`` picks a free port, printed at start). On SIGTERM or
Ctrl-C uvicorn stops accepting, lets in-flight requests finish (up to the request timeout), runs
the app's shutdown (the model thread finishes its queue) and returns; the process then exits 0.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from emoclip.core.errors import EmoclipError
from emoclip.serve.app import create_app
from emoclip.serve.guard import ConnectionGuard, guarded_protocol
from emoclip.serve.settings import ServeSettings, check_bind
from emoclip.serve.taggers import TaggerPool
from emoclip.tagging.config import TaggerConfig, build_tagger

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
GRACE_EXTRA_S = 5.0   # beyond the request timeout, for the last responses to be written


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port`` (port 0: a free one), or a one-line error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise EmoclipError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                           "(0 picks a free one) or --host") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def make_server(app: FastAPI, settings: ServeSettings, log_level: str = "warning") -> uvicorn.Server:
    """uvicorn with the connection guard (header deadline, idle eviction) as its HTTP protocol.

    uvicorn's own ``limit_concurrency`` is left off: it counts idle connections as requests and
    refuses the probes too; the app's ConcurrencyLimit counts requests in progress instead."""
    guard = ConnectionGuard(settings.header_timeout_s, settings.max_open_connections)
    app.state.connections = guard
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level, access_log=False,
                            server_header=False, http=guarded_protocol(guard),
                            timeout_keep_alive=int(settings.keep_alive_s),
                            timeout_graceful_shutdown=int(settings.request_timeout_s + GRACE_EXTRA_S))
    return uvicorn.Server(config)


@contextlib.contextmanager
def exit_quietly_after_stop() -> Iterator[None]:
    """uvicorn re-raises the stop signal once it has shut down gracefully; with no-op handlers beneath
    its own, that re-raise ends nothing, and the process exits 0 after a clean stop."""
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(config: TaggerConfig, settings: ServeSettings, log_level: str = "warning") -> None:
    """Load the tagger once and serve it until SIGTERM/Ctrl-C."""
    check_bind(settings)  # the CLI checked already; the Python API gets the same rule
    sock = bind_socket(settings.host, settings.port)
    tagger = build_tagger(config)
    pool = TaggerPool(config, tagger, settings.max_taxonomies, settings.max_labels)
    server = make_server(create_app(pool, settings), settings, log_level)
    run_until_stopped(server, sock, settings, f"serving {url_of(sock)} ({tagger.taxonomy.name}, {{auth}}; "
                                              "page at /, API docs at /docs)")


def run_until_stopped(server: uvicorn.Server, sock: socket.socket, settings: ServeSettings, what: str) -> None:
    """Listen on ``sock``, say what is served (``{auth}`` in ``what`` says whether a key is needed) and
    run until SIGTERM/Ctrl-C: the one start-and-stop of ``emoclip serve`` and ``emoclip browse``."""
    sock.listen(server.config.backlog)  # from here on connections queue (for ms) instead of being refused
    auth = "API key required" if settings.auth_required else "no API key"
    print(f"emoclip: {what.format(auth=auth)}; Ctrl-C or SIGTERM stops it", file=sys.stderr, flush=True)
    with sock, exit_quietly_after_stop():
        server.run(sockets=[sock])
    print("emoclip: stopped", file=sys.stderr, flush=True)
