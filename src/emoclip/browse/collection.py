"""The browsable columns of a shard folder, held compactly in memory and refreshed as shards land.

Filtering and sorting a million rows per page request must take milliseconds, so the few columns
every query touches are read once (pyarrow, shard by shard, only those columns) into NumPy arrays:
the top label as a small integer code, the probabilities as float32, each coarse level's label and
probabilities, the error flag, and the path and error texts as Arrow arrays. About 50 bytes a row
for a 8-class taxonomy: 1,000,000 rows are ~60 MB. The CLIP features (2 KB a row at 512-d) are
never loaded here: search reads them through ``index.py``.

Rows are identified by a stable global id, ``shard index * shard size + row in shard`` (shard *i*
always holds items ``[i*S, (i+1)*S)``), so an id means the same row whatever order shards are
committed in; arrays are kept in id order.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emoclip.browse.folder import FolderState, read_folder
from emoclip.core.errors import EmoclipError

log = logging.getLogger("emoclip")

READ_THREADS = 4
NO_LABEL = -1


@dataclass(frozen=True)
class Layout:
    """The classes and coarse levels of the folder's rows, read from the shards' own schema."""

    classes: tuple[str, ...]
    levels: dict[str, tuple[str, ...]]
    has_features: bool
    has_multi: bool

    @classmethod
    def from_schema(cls, names: list[str]) -> Layout:
        if not {"path", "label", "probability", "error"} <= set(names):
            raise EmoclipError("the shards lack emoclip's columns (path, label, probability, error); is this "
                               "folder written by `emoclip predict --output-dir`?")
        classes = tuple(n[2:] for n in names if n.startswith("p_"))
        levels = {}
        for name in names:
            if name.endswith("_label") and name != "label":
                level = name[: -len("_label")]
                levels[level] = tuple(n[len(level) + 3:] for n in names if n.startswith(f"{level}_p_"))
        return cls(classes, levels, "feature" in names, "multi" in names)

    def columns(self) -> list[str]:
        cols = ["path", "label", "probability", "error", *(f"p_{c}" for c in self.classes)]
        for level, names in self.levels.items():
            cols += [f"{level}_label", *(f"{level}_p_{c}" for c in names)]
        return cols


@dataclass
class Block:
    """The columns of some rows (one shard, or the concatenation of all)."""

    ids: np.ndarray                  # int64 global ids
    label: np.ndarray                # int16 class index, NO_LABEL for error rows
    probability: np.ndarray          # float32 (NaN for error rows)
    probs: np.ndarray                # float32 rows × classes
    level_label: dict[str, np.ndarray]
    level_probs: dict[str, np.ndarray]
    error: np.ndarray                # bool
    margin: np.ndarray               # float32 top-1 minus top-2 probability (NaN for error rows)
    paths: Any                       # pyarrow string array
    errors: Any                      # pyarrow string array

    def __len__(self) -> int:
        return len(self.ids)


def _codes(column: Any, names: tuple[str, ...]) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(names)}
    values = column.to_pylist()
    return np.fromiter((lookup.get(v, NO_LABEL) for v in values), np.int16, len(values))


def _floats(table: Any, names: list[str]) -> np.ndarray:
    if not names:
        return np.zeros((table.num_rows, 0), np.float32)
    return np.column_stack([table.column(n).to_numpy(zero_copy_only=False).astype(np.float32) for n in names])


def read_block(path: Path, index: int, shard_size: int, layout: Layout) -> Block:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=layout.columns())
    except Exception as exc:
        raise EmoclipError(f"cannot read shard '{path}' ({exc}); rerun the folder's `emoclip predict` command to "
                           "recompute it") from None
    n = table.num_rows
    if n > shard_size:
        raise EmoclipError(f"shard '{path}' holds {n} rows, more than the folder's shard size {shard_size}; the "
                           "folder is damaged: rerun its `emoclip predict` command with --overwrite")
    errors = table.column("error").combine_chunks()
    error_flags = np.asarray([bool(e) for e in errors.to_pylist()], bool)
    probs = _floats(table, [f"p_{c}" for c in layout.classes])
    label = _codes(table.column("label"), layout.classes)
    return Block(
        ids=np.arange(index * shard_size, index * shard_size + n, dtype=np.int64),
        label=label,
        probability=table.column("probability").to_numpy(zero_copy_only=False).astype(np.float32),
        probs=probs,
        level_label={lv: _codes(table.column(f"{lv}_label"), names) for lv, names in layout.levels.items()},
        level_probs={lv: _floats(table, [f"{lv}_p_{c}" for c in names]) for lv, names in layout.levels.items()},
        error=error_flags, margin=margins(probs, label), paths=table.column("path").combine_chunks(), errors=errors)


def margins(probs: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row (computed once per shard: "uncertain" filters on it)."""
    if probs.shape[1] < 2:
        return np.full(len(probs), np.nan, np.float32)
    two = -np.partition(-np.nan_to_num(probs, nan=-1.0), 1, axis=1)[:, :2]
    margin = (two[:, 0] - two[:, 1]).astype(np.float32)
    margin[label == NO_LABEL] = np.nan
    return margin


def concat(blocks: list[Block], layout: Layout) -> Block:
    import pyarrow as pa

    if not blocks:
        empty = np.zeros(0, np.int16)
        return Block(np.zeros(0, np.int64), empty, np.zeros(0, np.float32),
                     np.zeros((0, len(layout.classes)), np.float32),
                     {lv: empty for lv in layout.levels},
                     {lv: np.zeros((0, len(n)), np.float32) for lv, n in layout.levels.items()},
                     np.zeros(0, bool), np.zeros(0, np.float32), pa.array([], pa.string()), pa.array([], pa.string()))
    return Block(
        ids=np.concatenate([b.ids for b in blocks]), label=np.concatenate([b.label for b in blocks]),
        probability=np.concatenate([b.probability for b in blocks]), probs=np.concatenate([b.probs for b in blocks]),
        level_label={lv: np.concatenate([b.level_label[lv] for b in blocks]) for lv in layout.levels},
        level_probs={lv: np.concatenate([b.level_probs[lv] for b in blocks]) for lv in layout.levels},
        error=np.concatenate([b.error for b in blocks]), margin=np.concatenate([b.margin for b in blocks]),
        paths=pa.concat_arrays([b.paths for b in blocks]), errors=pa.concat_arrays([b.errors for b in blocks]))


class Collection:
    """A shard folder's rows for browsing; ``refresh()`` takes in shards committed since."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        self.state: FolderState = read_folder(self.folder)
        self.layout: Layout | None = None
        self._blocks: dict[int, Block] = {}
        self._rows: Block | None = None
        self.refresh(self.state)

    @property
    def rows(self) -> Block:
        """Every committed row (set by the first ``refresh``, in ``__init__``)."""
        assert self._rows is not None, "refresh() runs in __init__"
        return self._rows

    # -- loading ---------------------------------------------------------------------------------
    def _layout_of(self, path: Path) -> Layout:
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
        except Exception as exc:
            raise EmoclipError(f"cannot read shard '{path}' ({exc}); rerun the folder's `emoclip predict` "
                               "command to recompute it") from None
        return Layout.from_schema(names)

    def refresh(self, state: FolderState | None = None) -> bool:
        """Read the folder again; load the shards committed since. True when rows were added."""
        state = state or read_folder(self.folder)
        self.state = state
        new = [(i, p) for i, p in state.shards if i not in self._blocks]
        if not new:
            if self._rows is None:
                self.layout = self.layout or Layout((), {}, False, False)
                self._rows = concat([], self.layout)
            return False
        if self.layout is None or not self._blocks:
            self.layout = self._layout_of(new[0][1])
        layout, size = self.layout, state.shard_size
        with ThreadPoolExecutor(READ_THREADS) as pool:
            for (index, _), block in zip(new, pool.map(lambda s: read_block(s[1], s[0], size, layout), new),
                                         strict=True):
                self._blocks[index] = block
        self._rows = concat([self._blocks[i] for i in sorted(self._blocks)], layout)
        log.info("browse: %d rows from %d shards", len(self.rows), len(self._blocks))
        return True

    def refresh_if_changed(self) -> bool:
        """Cheap check (one manifest read) before each query: new shards are loaded, others kept."""
        state = read_folder(self.folder)
        if state.signature() == self.state.signature():
            self.state = state
            return False
        return self.refresh(state)

    # -- lookups ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows) if self._rows is not None else 0

    def position(self, row_id: int) -> int:
        """The array position of global id ``row_id``, or a one-line refusal."""
        ids = self.rows.ids
        pos = int(np.searchsorted(ids, row_id))
        if pos >= len(ids) or ids[pos] != row_id:
            raise EmoclipError(f"no row {row_id} in '{self.folder}'; ids come from the grid or `emoclip search`")
        return pos

    def positions(self, row_ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.rows.ids, row_ids)

    def path(self, pos: int) -> str:
        return self.rows.paths[pos].as_py()

    def find_path(self, text: str) -> int | None:
        """The position of the row whose path is ``text`` (as written in the shards), if any."""
        import pyarrow.compute as pc

        hits = pc.indices_nonzero(pc.equal(self.rows.paths, text)).to_numpy()
        return int(hits[0]) if len(hits) else None

    def shard_of(self, row_id: int) -> tuple[Path, int]:
        """(shard file, row within it) of a global id."""
        size = self.state.shard_size
        index, offset = divmod(int(row_id), size)
        paths = dict(self.state.shards)
        if index not in paths:
            raise EmoclipError(f"row {row_id}'s shard is not committed in '{self.folder}'")
        return paths[index], offset

    def full_row(self, row_id: int) -> dict[str, Any]:
        """Every column of one row but the feature (the detail view): read from its shard."""
        import pyarrow.parquet as pq

        path, offset = self.shard_of(row_id)
        names = [n for n in pq.read_schema(path).names if n != "feature"]
        return pq.read_table(path, columns=names).slice(offset, 1).to_pylist()[0]
