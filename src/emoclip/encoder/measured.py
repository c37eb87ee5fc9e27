"""What this machine measured, remembered: speed probes run once, not on every start.

emoclip picks its fast paths by measuring them (precision.py: is bf16 faster here; layout.py: how
the encoder's work is best laid over the cores), and a measurement's answer only changes with the
hardware or the software. So each answer is kept in one small JSON file in the user cache dir
(``$EMOCLIP_PRECISION_CACHE``, else ``~/.cache/emoclip/precision.json``), under a key naming what
decides it (the CPU model and flags, the torch build, and for a layout the encoder). Remembering
also keeps a choice stable: a resumed job runs the layout the first run measured. The file is read
back as untrusted data: an entry that does not look like the answer is measured again, and a file
that cannot be written (a read-only home) only costs the probe next time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("emoclip")

PRECISION_CACHE_ENV = "EMOCLIP_PRECISION_CACHE"  # (named for its first measurement, the bf16 probe)


def precision_cache_path() -> Path:
    """``$EMOCLIP_PRECISION_CACHE``, else ``precision.json`` in the user cache dir (XDG)."""
    if os.environ.get(PRECISION_CACHE_ENV):
        return Path(os.environ[PRECISION_CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "emoclip" / "precision.json"


def _read_memory(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remembered(key: str, measure: Callable[[], dict[str, Any]], valid: Callable[[dict], bool],
               path: Path | None = None) -> dict[str, Any]:
    """The entry remembered under ``key`` if ``valid`` accepts it, else ``measure()``, stored and returned."""
    from emoclip.core.atomic import atomic_write_text

    path = path or precision_cache_path()
    entry = _read_memory(path).get(key)
    if isinstance(entry, dict) and valid(entry):
        return entry
    entry = {**measure(), "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    memory = _read_memory(path)  # again: another process may have added its own answers meanwhile
    memory[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(memory, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        log.info("could not remember a measurement in %s: %s", path, exc)
    return entry


__all__ = ["PRECISION_CACHE_ENV", "precision_cache_path", "remembered"]
