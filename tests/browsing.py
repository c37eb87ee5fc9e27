"""A real browse page for tests: uvicorn on 127.0.0.1 at a free port, in a thread of this process."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from emoclip.browse.app import create_app
from emoclip.browse.query import Browser
from emoclip.browse.thumbs import ThumbCache
from emoclip.serve.server import bind_socket, make_server, url_of
from emoclip.serve.settings import ServeSettings
from emoclip.tagging.config import build_tagger
from tests.serving import TINY_CONFIG

START_TIMEOUT_S = 30


def tiny_browser(folder: Path, backbone, cache_dir: Path, **options) -> Browser:
    """A Browser whose text/image encoder is the session's tiny backbone (the config the folder records)."""
    return Browser(folder, cache_dir, tagger=build_tagger(TINY_CONFIG, backbone=backbone), **options)


@contextlib.contextmanager
def running_browse(browser: Browser, settings: ServeSettings | None = None,
                   thumb_bytes: int = 8 * 1024 * 1024) -> Iterator[str]:
    """Serve ``browser`` until the block ends; yields the page's URL on 127.0.0.1."""
    settings = (settings or ServeSettings()).replace(host="127.0.0.1", port=0)
    app = create_app(browser, settings, ThumbCache(browser.entry_dir / "thumbs", thumb_bytes))
    server = make_server(app, settings)
    sock = bind_socket("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test browse page did not start")
        time.sleep(0.02)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)
        sock.close()
