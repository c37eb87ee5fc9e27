"""Thumbnails made on demand from the files a folder's rows list, cached on disk under a size bound.

Only a path that a committed row holds is ever opened (the page asks by row id, never by path),
through the tagger's own robust decoder (``decode.load_rgb``: regular files only, a pixel bound, a
JPEG decoded at reduced size in the DCT). A file that moved or cannot be decoded gives a reason
instead of a picture; the page shows a placeholder with it. Cached thumbnails are keyed by the
file's path, size and mtime (a changed file gets a new one) and the oldest are removed once the
cache outgrows ``max_bytes``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from pathlib import Path

from emoclip.core.atomic import atomic_write_bytes
from emoclip.core.files import name_from_text

log = logging.getLogger("emoclip")

THUMB_SIDE = 256
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
JPEG_QUALITY = 82


class ThumbCache:
    """JPEG thumbnails in ``folder``, at most about ``max_bytes`` of them."""

    def __init__(self, folder: Path, max_bytes: int = DEFAULT_MAX_BYTES, side: int = THUMB_SIDE) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.side = side
        self._lock = threading.Lock()
        self._used: int | None = None

    def _key(self, path: Path, info: os.stat_result) -> Path:
        ident = f"{os.fsencode(path).hex()}|{info.st_size}|{info.st_mtime_ns}|{self.side}"
        digest = hashlib.sha256(ident.encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.jpg"

    def get(self, path_text: str) -> tuple[bytes | None, str | None]:
        """(JPEG bytes, None) or (None, why there is no picture)."""
        from emoclip.encoder.decode import ImageDecodeError, load_rgb

        path = Path(name_from_text(path_text))
        try:
            info = path.stat()
        except OSError as exc:
            return None, f"file missing: {path} ({exc.strerror or exc}); it was moved or deleted since tagging"
        cached = self._key(path, info)
        try:
            return cached.read_bytes(), None
        except OSError:
            pass
        try:
            image = load_rgb(path, draft=self.side, resize_to=None)
        except ImageDecodeError as exc:
            return None, str(exc)
        image.thumbnail((self.side, self.side))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
        data = buffer.getvalue()
        self._store(cached, data)
        return data, None

    def _store(self, target: Path, data: bytes) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)
        except OSError as exc:  # a full or read-only cache: the picture is still served
            log.warning("browse: cannot cache a thumbnail in %s (%s)", self.folder, exc)
            return
        with self._lock:
            if self._used is None:
                self._used = sum(p.stat().st_size for p in self.folder.glob("*/*.jpg"))
            else:
                self._used += len(data)
            if self._used > self.max_bytes:
                self._evict()

    def _evict(self) -> None:
        """Remove the oldest thumbnails until the cache is at 80 % of its bound."""
        files = []
        for p in self.folder.glob("*/*.jpg"):
            try:
                info = p.stat()
            except OSError:
                continue
            files.append((info.st_mtime_ns, info.st_size, p))
        files.sort()
        used = sum(size for _, size, _ in files)
        for _, size, p in files:
            if used <= self.max_bytes * 0.8:
                break
            p.unlink(missing_ok=True)
            used -= size
        self._used = used
