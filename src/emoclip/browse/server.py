"""Running the browse page under uvicorn with the service's own socket, stop and security rules."""

from __future__ import annotations

from emoclip.browse.app import create_app
from emoclip.browse.query import Browser
from emoclip.browse.thumbs import ThumbCache
from emoclip.serve.server import bind_socket, make_server, run_until_stopped, url_of
from emoclip.serve.settings import ServeSettings, check_bind


def browse(browser: Browser, settings: ServeSettings, thumb_bytes: int, log_level: str = "warning") -> None:
    """Serve ``browser``'s folder until SIGTERM/Ctrl-C."""
    check_bind(settings)
    sock = bind_socket(settings.host, settings.port)
    thumbs = ThumbCache(browser.entry_dir / "thumbs", thumb_bytes)
    server = make_server(create_app(browser, settings, thumbs), settings, log_level)
    run_until_stopped(server, sock, settings,
                      f"browsing {browser.folder} ({len(browser.collection):,} rows) at {url_of(sock)} ({{auth}})")
