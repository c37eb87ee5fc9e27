"""Where a folder's CLIP features come from: the shards' ``feature`` column, or computed on demand.

A folder tagged with ``--save-features`` carries each row's feature in its shard. One tagged
without them can still be searched: ``compute_features`` runs the folder's own tagger (the job's
options from its manifest, through ``build_tagger``: the same encoder spec, never a second way of
loading a model) over the paths its rows list, shard by shard with a progress bar, and keeps each
shard's features as ``.npy`` in the browse cache, recorded with the shard's size and mtime so a
recomputed shard is never paired with stale features.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from emoclip.browse.index import FeatureBatch
from emoclip.core.atomic import atomic_write, atomic_write_text
from emoclip.core.errors import EmoclipError

log = logging.getLogger("emoclip")

NO_FEATURES = ("this folder was tagged without --save-features, so it cannot be searched by text or likeness; "
               "rerun its `emoclip predict` with --save-features, or compute them now (`emoclip search DIR … "
               "--compute-features`, or the page's 'compute features' button)")


def _stamp(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


class FeatureSource:
    """Feature batches of a folder's shards, from the shards themselves or from the browse cache."""

    def __init__(self, shard_size: int, in_shards: bool, cache_dir: Path) -> None:
        self.shard_size = shard_size
        self.in_shards = in_shards
        self.dir = cache_dir / "features"

    def _cached(self, index: int, shard_path: Path) -> Path | None:
        meta = self.dir / f"part-{index:05d}.json"
        try:
            if json.loads(meta.read_text(encoding="utf-8")).get("stamp") == _stamp(shard_path):
                return self.dir / f"part-{index:05d}.npz"
        except (OSError, ValueError):
            pass
        return None

    def available(self, shards: list[tuple[int, Path]]) -> bool:
        return self.in_shards or (bool(shards) and all(self._cached(i, p) for i, p in shards))

    def missing(self, shards: list[tuple[int, Path]]) -> list[tuple[int, Path]]:
        return [] if self.in_shards else [(i, p) for i, p in shards if self._cached(i, p) is None]

    def batches(self, shards: list[tuple[int, Path]]) -> Iterator[FeatureBatch]:
        """(shard, global ids, features) of each shard's rows that have one; one shard in memory at a time."""
        for index, path in shards:
            yield self.read(index, path)

    def read(self, index: int, path: Path) -> FeatureBatch:
        base = index * self.shard_size
        if not self.in_shards:
            cached = self._cached(index, path)
            if cached is None:
                raise EmoclipError(NO_FEATURES)
            with np.load(cached) as data:
                return index, data["ids"].astype(np.int64), data["features"].astype(np.float32)
        import pyarrow.parquet as pq

        try:
            column = pq.read_table(path, columns=["feature"]).column("feature").combine_chunks()
        except Exception as exc:
            raise EmoclipError(f"cannot read the features of shard '{path}' ({exc}); rerun the folder's "
                               "`emoclip predict` command to recompute it") from None
        valid = ~column.is_null().to_numpy(zero_copy_only=False)
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        count = int(valid.sum())
        if count == 0:
            return index, np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        if values.size % count:
            raise EmoclipError(f"shard '{path}' holds features of unequal lengths; the folder is damaged: rerun "
                               "its `emoclip predict` command with --overwrite")
        ids = base + np.flatnonzero(valid).astype(np.int64)
        return index, ids, values.reshape(count, -1)

    def compute(self, collection, tagger, progress: bool | None = None,
                report: Callable[[int, int], None] | None = None) -> int:
        """Encode the rows of every shard without features yet; the number of images encoded.

        ``progress``: the terminal's bar; ``report(done, total)``: the page's progress."""
        from tqdm import tqdm

        todo = self.missing(list(collection.state.shards))
        self.dir.mkdir(parents=True, exist_ok=True)
        rows = collection.rows
        total = sum(int(((rows.ids // self.shard_size) == i).sum()) for i, _ in todo)
        done = 0
        with tqdm(total=total, unit="img", file=sys.stderr, desc="features",
                  disable=None if progress is None else not progress) as bar:
            def step(count: int) -> None:
                bar.update(count)
                if report:
                    report(int(bar.n), total)

            for index, path in todo:
                positions = np.flatnonzero((rows.ids // self.shard_size) == index)
                positions = positions[~rows.error[positions]]
                paths = [rows.paths[int(p)].as_py() for p in positions]
                ids, vectors = [], []
                for pos, pred in zip(positions, collection_tag(tagger, paths, step), strict=True):
                    if pred.feature is not None:
                        ids.append(int(rows.ids[pos]))
                        vectors.append(pred.feature)
                feats = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, 0), np.float32)
                with atomic_write(self.dir / f"part-{index:05d}.npz", "wb", encoding=None) as handle:
                    np.savez(handle, ids=np.asarray(ids, np.int64), features=feats)
                atomic_write_text(self.dir / f"part-{index:05d}.json", json.dumps({"stamp": _stamp(path)}) + "\n")
                done += len(paths)
        return done


def collection_tag(tagger, paths: list[str], progress) -> Iterator:
    """The rows' files through the tagger with features kept (a moved file is an error row, no feature)."""
    from emoclip.core.files import name_from_text

    return tagger.tag([name_from_text(p) for p in paths], progress=progress, features=True)
