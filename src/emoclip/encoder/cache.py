"""A disk cache of image features, so every image is encoded once across methods, runs and processes.

Layout: ``<cache_dir>/<backbone-key>/<aa>/<content-digest>.f32`` where

- the backbone key hashes the encoder spec (encoder_spec.py: architecture, the weights' identity
  — tag, seed, or the SHA-256 of a weights file —, preprocessing, decode mode, precision) and the
  decoder version: another backbone, decoding or number format can never read these features;
- the content digest is a BLAKE2b hash of the image file's bytes: a changed file has a new key,
  and a moved or copied file is still a hit.

Each entry is raw float32 written to a temporary file (in ``<backbone-key>/tmp``) and renamed into
place, so a killed run leaves no partial entry and two processes writing at once both produce whole
files (the last rename wins; the contents are identical); temporaries of killed runs are removed
when the cache is next opened. An entry of the wrong size, or holding NaN or infinity, is a miss.

The cache is an optimisation, never a reason to fail: a cache that cannot be created or written
(disk full, read-only, no permission) gives one warning and the run goes on without storing.
Only regular files are hashed (a FIFO or ``/dev/zero`` would block or never end).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emoclip.core.atomic import atomic_write_text, pid_alive
from emoclip.core.errors import ImageDecodeError
from emoclip.encoder.backbone import Backbone
from emoclip.encoder.decode import DEFAULT_MAX_PIXELS, ImageBytes, ImageSource, as_source, check_header
from emoclip.encoder.pipeline import DEFAULT_BATCH_SIZE, default_workers, iter_encoded

log = logging.getLogger("emoclip")

# Bump when decoding or preprocessing code changes what features an image gets.
DECODER_VERSION = 1
CACHE_ENV = "EMOCLIP_CACHE_DIR"


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "emoclip" / "features"


def content_digest(path: ImageSource) -> str | None:
    """BLAKE2b-128 of the file's bytes, or None if it cannot be read (decoding will say why)."""
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(path, ImageBytes):
        digest.update(path.data)
        return digest.hexdigest()
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except (OSError, ValueError):  # ValueError: a NUL byte in a listed name
        return None
    return digest.hexdigest()


class FeatureCache:
    """Features of one backbone, keyed by image content."""

    def __init__(self, root: str | Path, backbone: Backbone) -> None:
        # The encoder spec is everything that changes a feature (weights, preprocessing, decode mode,
        # precision): features of two specs never share a folder.
        self.spec = backbone.spec
        identity = {**self.spec.identity(), "decoder": DECODER_VERSION}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root).expanduser() / f"{backbone.model_name.replace('/', '_')}-{key}"
        self.dim = backbone.feature_dim
        self.hits = 0
        self.misses = 0
        self.writable = True
        self.tmp = self.dir / "tmp"
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            meta = self.dir / "backbone.json"
            if not meta.exists():
                atomic_write_text(meta, json.dumps(identity, indent=2, sort_keys=True) + "\n")
            self._remove_stale_temporaries()
        except OSError as exc:
            self._stop_writing(exc)

    _TMP_NAME = re.compile(r"^\.[0-9a-f]+\.(\d+)\.[A-Za-z0-9_]+\.tmp$")

    def _remove_stale_temporaries(self) -> None:
        for entry in os.scandir(self.tmp):
            match = self._TMP_NAME.match(entry.name)
            if match and not pid_alive(int(match.group(1))):
                Path(entry.path).unlink(missing_ok=True)

    def _stop_writing(self, exc: OSError) -> None:
        if self.writable:
            log.warning("feature cache %s cannot be written (%s); going on without storing features "
                        "(use --cache-dir elsewhere, or --no-cache)", self.dir, exc.strerror or exc)
        self.writable = False

    def _entry(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.f32"

    def get(self, key: str) -> np.ndarray | None:
        try:
            data = np.fromfile(self._entry(key), dtype=np.float32)
        except (OSError, ValueError):
            return None
        return data if data.size == self.dim and np.isfinite(data).all() else None

    def put(self, key: str, feature: np.ndarray) -> None:
        """Store one feature; a failure (disk full, read-only) warns once and turns storing off."""
        if not self.writable:
            return
        target = self._entry(key)
        tmp = None
        try:
            target.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.{os.getpid()}.", suffix=".tmp", dir=self.tmp)
            with os.fdopen(fd, "wb") as handle:
                handle.write(np.ascontiguousarray(feature, dtype=np.float32).tobytes())
            os.replace(tmp, target)
        except OSError as exc:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
            self._stop_writing(exc)
        except BaseException:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
            raise


@dataclass
class FeatureTable:
    """Features for a list of paths: row ``i`` is valid where ``ok[i]``; ``errors[i]`` says why not."""

    paths: list[ImageSource]
    features: np.ndarray
    ok: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0


def _refused_hits(backbone: Backbone, items: Sequence[ImageSource], cached: Sequence[np.ndarray | None],
                  max_pixels: int | None, workers: int | None) -> dict[int, str]:
    """The cache hits that decoding would refuse now (``--max-pixels``, the resized shape, the file's
    kind), with decoding's reason: a hit answers exactly as a miss would (header reads only)."""
    hits = [i for i, c in enumerate(cached) if c is not None]

    def reason(i: int) -> str | None:
        try:
            check_header(items[i], max_pixels, backbone.spec.input_size)
        except ImageDecodeError as exc:
            return str(exc)
        return None

    if not hits:
        return {}
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        return {i: r for i, r in zip(hits, pool.map(reason, hits), strict=True) if r is not None}


def iter_features(backbone: Backbone, paths: Sequence[str | Path | ImageBytes], cache: FeatureCache | None = None,
                  batch_size: int | None = DEFAULT_BATCH_SIZE, workers: int | None = None,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  progress: Callable[[int], None] | None = None
                  ) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """Yield ``(index, feature, error)`` for every path in order: cached features first-class,
    the rest decoded in parallel, encoded in batches, and stored."""
    items = [as_source(p) for p in paths]
    refused: dict[int, str] = {}
    if cache is None:
        keys: list[str | None] = [None] * len(items)
        cached: list[np.ndarray | None] = [None] * len(items)
    else:
        with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
            keys = list(pool.map(content_digest, items))
        cached = [cache.get(k) if k else None for k in keys]
        cache.hits += sum(c is not None for c in cached)
        cache.misses += sum(c is None for c in cached)
        refused = _refused_hits(backbone, items, cached, max_pixels, workers)
    missing = [i for i, c in enumerate(cached) if c is None]
    if cache is not None and cache.spec != backbone.spec:
        raise ValueError(f"the feature cache was opened for another encoder spec ({cache.spec}) than the "
                         f"backbone's ({backbone.spec})")
    encoded = iter_encoded(backbone, [items[i] for i in missing], batch_size, workers, max_pixels)
    fresh: dict[int, tuple[np.ndarray | None, str | None]] = {}
    cursor = 0
    for i in range(len(items)):
        if cached[i] is not None:
            yield (i, None, refused[i]) if i in refused else (i, cached[i], None)
            if progress:
                progress(1)
            continue
        while i not in fresh:
            batch = next(encoded)
            features = batch.features.numpy()
            for row, j in enumerate(batch.ok):
                index = missing[cursor + j]
                fresh[index] = (features[row], None)
                key = keys[index]
                if cache is not None and key:
                    cache.put(key, features[row])
            for j, reason in batch.errors.items():
                fresh[missing[cursor + j]] = (None, reason)
            cursor += len(batch.paths)
        feature, error = fresh.pop(i)
        yield i, feature, error
        if progress:
            progress(1)


def compute_features(backbone: Backbone, paths: Sequence[str | Path | ImageBytes], cache: FeatureCache | None = None,
                     **kwargs) -> FeatureTable:
    """All features for ``paths`` as one table (cached where possible)."""
    items = [as_source(p) for p in paths]
    features = np.zeros((len(items), backbone.feature_dim), dtype=np.float32)
    ok = np.zeros(len(items), dtype=bool)
    errors: dict[int, str] = {}
    hits0, misses0 = (cache.hits, cache.misses) if cache else (0, 0)
    for i, feature, error in iter_features(backbone, items, cache, **kwargs):
        if feature is None:
            errors[i] = error or "unknown error"
        else:
            features[i], ok[i] = feature, True
    hits, misses = (cache.hits - hits0, cache.misses - misses0) if cache else (0, len(items))
    log.info("features: %d from cache, %d encoded", hits, misses)
    return FeatureTable(items, features, ok, errors, hits, misses)
