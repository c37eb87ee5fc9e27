"""A disk cache of image features, so every image is encoded once across methods, runs and processes.

Layout: ``<cache_dir>/<backbone-key>/<aa>/<content-digest>.f32`` where

- the backbone key hashes the encoder spec (encoder_spec.py: architecture, the weights' identity
  — tag, seed, or the SHA-256 of a weights file —, preprocessing, decode mode, precision) and the
  decoder version: another backbone, decoding or number format can never read these features;
- the entry key is a BLAKE2b hash of the image file's bytes *and of its encoder batch* (the
  digests of the batch's images in order, its position there, the pixel limit: ``batch_keys``).
  A feature depends, in its last bits, on the batch it was computed in, and batches are fixed
  slices of the input list, so a hit is exactly what recomputing would give: rows never depend on
  the cache. A changed file has a new key; a moved or copied file in the same batch is still a hit.

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
from emoclip.encoder.backbone import Backbone
from emoclip.encoder.cache_dir import CACHE_ENV, default_cache_dir  # noqa: F401 - public here too
from emoclip.encoder.decode import DEFAULT_MAX_PIXELS, ImageBytes, ImageSource, as_source
from emoclip.encoder.pipeline import DEFAULT_BATCH_SIZE, default_workers, image_batch_size, iter_encoded

log = logging.getLogger("emoclip")

# Bump when decoding or preprocessing code changes what features an image gets.
DECODER_VERSION = 2  # 2: entries keyed by content and batch (batch_keys)

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


def batch_keys(digests: Sequence[str | None], max_pixels: int | None) -> list[str] | None:
    """Cache keys of one fixed encoder batch, or None when an item cannot be keyed (unreadable).

    A feature depends on the batch it was encoded in (the kernels block a batch of 16 differently
    from a batch of 3), so an entry is keyed by the image's content *and* its batch: every digest of
    the batch in order, the item's position and the pixel limit (which decides what the batch holds).
    A hit is then exactly the bytes this batch would compute again."""
    known = [d for d in digests if d is not None]
    if len(known) != len(digests):
        return None
    context = hashlib.blake2b(f"{max_pixels}\0{len(known)}\0{'|'.join(known)}".encode(), digest_size=16)
    keys = []
    for position, digest in enumerate(digests):
        key = context.copy()
        key.update(f"\0{position}\0{digest}".encode())
        keys.append(key.hexdigest())
    return keys


def iter_features(backbone: Backbone, paths: Sequence[str | Path | ImageBytes], cache: FeatureCache | None = None,
                  batch_size: int | None = DEFAULT_BATCH_SIZE, workers: int | None = None,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  progress: Callable[[int], None] | None = None
                  ) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """Yield ``(index, feature, error)`` for every path in order.

    The encoder batches are fixed slices of ``paths`` (``[k*B, (k+1)*B)``), whatever the cache
    holds: a batch whose every entry is cached (``batch_keys``) is read from the cache, any other is
    decoded and encoded whole, with the same checks (pixel limit, type) as without a cache. So the
    features — and the rows made from them — never depend on the cache's state."""
    items = [as_source(p) for p in paths]
    size = image_batch_size(backbone, batch_size)
    if cache is not None and cache.spec != backbone.spec:
        raise ValueError(f"the feature cache was opened for another encoder spec ({cache.spec}) than the "
                         f"backbone's ({backbone.spec})")
    starts = range(0, len(items), size)
    keys: list[list[str] | None] = [None] * len(starts)
    cached: list[list[np.ndarray] | None] = [None] * len(starts)
    if cache is not None:
        with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
            digests = list(pool.map(content_digest, items))
        for b, start in enumerate(starts):
            batch_key = keys[b] = batch_keys(digests[start:start + size], max_pixels)
            if batch_key is not None:
                found = [cache.get(k) for k in batch_key]
                hits = [f for f in found if f is not None]
                cached[b] = hits if len(hits) == len(found) else None
        hit = sum(len(c) for c in cached if c is not None)
        cache.hits += hit
        cache.misses += len(items) - hit
    missed = [b for b in range(len(starts)) if cached[b] is None]
    # Missed batches are whole fixed batches and only the last can be short, so encoding them one
    # after the other in batches of `size` gives exactly those batches (with decoding prefetched).
    encoded = iter_encoded(backbone, [item for b in missed for item in items[starts[b]:starts[b] + size]],
                           size, workers, max_pixels)
    for b, start in enumerate(starts):
        count = min(size, len(items) - start)
        hit_batch, batch_key = cached[b], keys[b]
        if hit_batch is not None:
            entries: list[tuple[np.ndarray | None, str | None]] = [(f, None) for f in hit_batch]
        else:
            batch = next(encoded)
            features = batch.features.numpy()
            entries = [(None, batch.errors.get(j, "unknown error")) for j in range(count)]
            for row, j in enumerate(batch.ok):
                entries[j] = (features[row], None)
            if cache is not None and batch_key is not None and not batch.errors:
                for j in range(count):
                    cache.put(batch_key[j], features[j])
        for j, (feature, error) in enumerate(entries):
            if progress:  # before the yield: a consumer that stops at the last row still counted it
                progress(1)
            yield start + j, feature, error


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
