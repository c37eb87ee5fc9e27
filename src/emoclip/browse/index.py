"""Similarity search over a folder's CLIP features: exact for small folders, approximate for large ones.

Both indexes answer ``search(query, k, allowed)``: the ``k`` rows with the largest inner product
with the L2-normalised ``query`` (cosine similarity: the features are normalised too) among the
rows whose global id is set in the boolean bitmap ``allowed`` — so text search and "more like
this" combine with any emotion filter, applied *inside* the search, not after it.

* ``ExactIndex``: the features in a float32 matrix and one matrix-vector product (a folder of
  100,000 rows at 512-d is 200 MB and 45–125 ms a query on the loaded 2-core machine). Used below
  ``APPROX_MIN_ROWS``, and for every size when faiss is not installed.
* ``FaissIndex``: faiss ``IVF{nlist},SQ8`` (inverted lists over k-means cells, 8-bit scalar
  quantised vectors: 512 bytes a row, a million rows in ~0.5 GB). Chosen by measurement against
  IVF-PQ, HNSW and exact search (``benchmarks/browse.py --compare``; figures in docs/browse.md):
  on 100,000 rows SQ8 kept 0.98 of the true 10 neighbours where PQ64 kept 0.33 and HNSW32 0.80,
  trains in seconds, and the filter is faiss's own ``IDSelectorBitmap``, evaluated
  while the lists are scanned. When a filter leaves fewer than ``k`` rows in the probed cells,
  the search is repeated with four times the cells probed, up to all of them (then it is exact
  over the quantised vectors).

The approximate index is built from the committed shards, one shard's features in memory at a
time, and saved in the browse cache with the list of shards it holds (file size and mtime of
each); from then on it is memory-mapped read-only (a search reads only the pages of the cells it
probes: a million rows cost ~0.1 GB of memory instead of 0.5), and read whole only to be extended
shard by shard as new ones are committed. A shard that changed since, or an index file that does
not load, means a rebuild — what is read back is checked, not trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from emoclip.core.atomic import atomic_write, atomic_write_text
from emoclip.core.errors import EmoclipError

log = logging.getLogger("emoclip")

APPROX_MIN_ROWS = 100_000      # below: exact search (and the approximate one is not worth building)
FAISS_FACTORY = "IVF{nlist},SQ8"
TRAIN_PER_CELL = 40            # faiss wants ≥ 39 training points per k-means cell
NPROBE = 16
INDEX_FORMAT = 1

# (shard index, global ids of rows with a feature, their features float32 rows × D)
FeatureBatch = tuple[int, np.ndarray, np.ndarray]


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest finite scores, best first (ties: the lower position first)."""
    finite = np.flatnonzero(np.isfinite(scores))
    if len(finite) > k:
        part = np.argpartition(-scores[finite], k - 1)[:k]
        finite = finite[part]
    order = np.lexsort((finite, -scores[finite]))
    return finite[order]


class ExactIndex:
    """All features in memory; a matrix-vector product per query."""

    kind = "exact"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._ids: list[np.ndarray] = []
        self._vectors: list[np.ndarray] = []
        self.shards: set[int] = set()
        self.ids = np.zeros(0, np.int64)
        self.matrix = np.zeros((0, dim), np.float32)

    def add(self, batches: Iterator[FeatureBatch]) -> None:
        for shard, ids, vectors in batches:
            self._ids.append(ids)
            self._vectors.append(np.ascontiguousarray(vectors, np.float32))
            self.shards.add(shard)
        if self._ids:
            self.ids = np.concatenate(self._ids)
            self.matrix = np.concatenate(self._vectors)
            self._ids, self._vectors = [self.ids], [self.matrix]

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        scores = self.matrix @ np.asarray(query, np.float32)
        if allowed is not None:
            inside = self.ids < len(allowed)
            ok = np.zeros(len(self.ids), bool)
            ok[inside] = allowed[self.ids[inside]]
            scores = np.where(ok, scores, -np.inf)
        best = top_k(scores, k)
        return self.ids[best], scores[best]

    def vector(self, row_id: int) -> np.ndarray | None:
        hit = np.flatnonzero(self.ids == row_id)
        return self.matrix[hit[0]].copy() if len(hit) else None


def _shard_stamp(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


class FaissIndex:
    """faiss IVF-SQ8 over inner products, ids = global row ids, kept in the browse cache."""

    kind = "approximate"

    def __init__(self, dim: int, folder_key: str, cache_dir: Path, factory: str = FAISS_FACTORY) -> None:
        self.dim = dim
        self.factory = factory
        self.dir = cache_dir / "index" / folder_key
        self.index: Any = None
        self.stamps: dict[int, list[int]] = {}
        self.nprobe = NPROBE
        self.mapped = False     # memory-mapped from the cache (read-only): searched in place, loaded to extend

    @property
    def shards(self) -> set[int]:
        return set(self.stamps)

    def __len__(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    # -- persistence ---------------------------------------------------------------------------------
    def load(self, shard_paths: dict[int, Path]) -> bool:
        """Take the saved index if it holds only shards unchanged since (True); else start afresh."""
        import faiss

        state_path, index_path = self.dir / "state.json", self.dir / "index.faiss"
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
            stamps = {int(k): v for k, v in state["shards"].items()}
            if state.get("format") != INDEX_FORMAT or state.get("factory") != self.factory or \
                    state.get("dim") != self.dim:
                return False
            for shard, stamp in stamps.items():
                if shard not in shard_paths or _shard_stamp(shard_paths[shard]) != stamp:
                    log.info("browse: shard %d changed since the index was built; rebuilding it", shard)
                    return False
            index = faiss.read_index(str(index_path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            if index.d != self.dim or index.ntotal != state["rows"]:
                return False
        except (OSError, ValueError, KeyError, TypeError, RuntimeError):
            return False
        self.index, self.stamps, self.mapped = index, stamps, True
        return True

    def _remap(self, writable: bool) -> None:
        """The saved index memory-mapped (only the probed cells' pages are ever read in: a million rows
        cost ~0.1 GB of memory instead of 0.5), or read whole to be extended."""
        import faiss

        flags = 0 if writable else faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
        self.index = faiss.read_index(str(self.dir / "index.faiss"), flags)
        self.mapped = not writable

    def save(self) -> None:
        import faiss

        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.dir / "index.faiss", "wb", encoding=None) as handle:   # streamed: no copy in memory
            faiss.write_index(self.index, faiss.PyCallbackIOWriter(handle.write))  # type: ignore[attr-defined]  # SWIG name, not in the stubs
        atomic_write_text(self.dir / "state.json", json.dumps(
            {"format": INDEX_FORMAT, "factory": self.factory, "dim": self.dim, "rows": len(self),
             "shards": {str(k): v for k, v in sorted(self.stamps.items())}}) + "\n")

    # -- building ------------------------------------------------------------------------------------
    def train(self, sample: np.ndarray, expected_rows: int) -> None:
        import faiss

        nlist = int(np.clip(np.sqrt(expected_rows), 16, 4096))
        nlist = max(1, min(nlist, len(sample) // TRAIN_PER_CELL))
        self.index = faiss.index_factory(self.dim, self.factory.format(nlist=nlist), faiss.METRIC_INNER_PRODUCT)
        self.index.train(np.ascontiguousarray(sample, np.float32))

    def add(self, batches: Iterator[FeatureBatch], shard_paths: dict[int, Path]) -> None:
        """Add shards' features, save, and map the saved index again."""
        if self.mapped:
            self._remap(writable=True)
        for shard, ids, vectors in batches:
            if len(ids):
                self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))
            self.stamps[shard] = _shard_stamp(shard_paths[shard])
        self.save()
        self._remap(writable=False)

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        q = np.ascontiguousarray(np.asarray(query, np.float32).reshape(1, -1))
        k = min(k, len(self))
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        selector = None
        if allowed is not None:
            bits = np.packbits(allowed.astype(np.uint8), bitorder="little")
            selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
            k = min(k, int(allowed.sum()))
            if k <= 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
        nlist = self.index.nlist if hasattr(self.index, "nlist") else faiss.extract_index_ivf(self.index).nlist
        nprobe = min(self.nprobe, nlist)
        while True:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)  # type: ignore[call-arg]  # SWIG kwargs
            scores, ids = self.index.search(q, k, params=params)
            found = ids[0] >= 0
            if found.sum() >= k or nprobe >= nlist:
                return ids[0][found], scores[0][found]
            nprobe = min(nlist, nprobe * 4)


def folder_key(folder: Path, manifest: dict[str, Any]) -> str:
    """Which cache entry belongs to a folder's job: its real path, inputs and encoder."""
    ident = json.dumps([str(folder.resolve()), manifest.get("inputs"), manifest.get("encoder"),
                        manifest.get("shard_size")], sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def sample_for_training(batches: Callable[[list[int]], Iterator[FeatureBatch]], shards: list[int], want: int,
                        seed: int = 0) -> np.ndarray:
    """About ``want`` feature rows drawn from shards spread over the folder (one shard in memory at a time)."""
    rng = np.random.default_rng(seed)
    chosen = list(rng.permutation(shards))
    parts, have = [], 0
    for _, _, vectors in batches(chosen):
        if have >= want:
            break
        take = min(len(vectors), want - have)
        parts.append(vectors[rng.choice(len(vectors), take, replace=False)] if take < len(vectors) else vectors)
        have += take
    if not parts:
        raise EmoclipError("no row of this folder has a saved feature to search; rerun its `emoclip predict` "
                           "with --save-features")
    return np.concatenate(parts)
