"""Where the feature cache lives: ``$EMOCLIP_CACHE_DIR``, else ``features`` in the user cache dir (XDG).

A module of its own (no torch, nothing of the encoder) because the cache's neighbours need the
folder too — the hub's memo of verified downloads sits beside the features — without importing
the cache, which imports the backbone.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "EMOCLIP_CACHE_DIR"


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "emoclip" / "features"
