"""A real emoclip service for tests: uvicorn on 127.0.0.1 at a free port, in a thread of this process."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import FastAPI

from emoclip.serve.app import create_app
from emoclip.serve.server import bind_socket, make_server, url_of
from emoclip.serve.settings import ServeSettings
from emoclip.serve.taggers import TaggerPool
from emoclip.tagging.config import TaggerConfig, build_tagger

# What the session's `tiny` backbone is (load_backbone's defaults: exact fp32, full decoding): the
# service reuses that backbone, so its config must describe it.
TINY_CONFIG = TaggerConfig(model="tiny", pretrained="random", device="cpu", precision="fp32", decode="full",
                           no_cache=True)
START_TIMEOUT_S = 30


@dataclass
class Service:
    url: str
    app: FastAPI

    def sample(self, name: str, **labels) -> float:
        """A metric's current value (0 when it has not been recorded yet)."""
        return self.app.state.metrics.registry.get_sample_value(name, labels or None) or 0.0


@contextlib.contextmanager
def running_service(backbone, settings: ServeSettings | None = None, config: TaggerConfig = TINY_CONFIG,
                    bind_host: str = "127.0.0.1") -> Iterator[Service]:
    """Serve ``config``'s tagger on ``backbone`` (already loaded) until the block ends.

    The service listens on ``bind_host`` (a free port); the URL it yields always points at 127.0.0.1."""
    settings = (settings or ServeSettings()).replace(host=bind_host, port=0)
    pool = TaggerPool(config, build_tagger(config, backbone=backbone), settings.max_taxonomies, settings.max_labels)
    app = create_app(pool, settings)
    server = make_server(app, settings)
    sock = bind_socket(bind_host, 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test service did not start")
        time.sleep(0.02)
    port = sock.getsockname()[1]
    try:
        yield Service(url_of(sock) if bind_host == "127.0.0.1" else f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)
        sock.close()
