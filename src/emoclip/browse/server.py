"""Running the browse page under uvicorn with the service's own socket, stop and security rules."""

from __future__ import annotations

import sys

from emoclip.browse.app import create_app
from emoclip.browse.query import Browser
from emoclip.browse.thumbs import ThumbCache
from emoclip.serve.server import bind_socket, exit_quietly_after_stop, make_server, url_of
from emoclip.serve.settings import ServeSettings, check_bind


def browse(browser: Browser, settings: ServeSettings, thumb_bytes: int, log_level: str = "warning") -> None:
    """Serve ``browser``'s folder until SIGTERM/Ctrl-C."""
    check_bind(settings)
    sock = bind_socket(settings.host, settings.port)
    thumbs = ThumbCache(browser.entry_dir / "thumbs", thumb_bytes)
    server = make_server(create_app(browser, settings, thumbs), settings, log_level)
    sock.listen(server.config.backlog)
    auth = "API key required" if settings.auth_required else "no API key"
    print(f"emoclip: browsing {browser.folder} ({len(browser.collection):,} rows) at {url_of(sock)} ({auth}); "
          "Ctrl-C or SIGTERM stops it", file=sys.stderr, flush=True)
    with sock, exit_quietly_after_stop():
        server.run(sockets=[sock])
    print("emoclip: stopped", file=sys.stderr, flush=True)
