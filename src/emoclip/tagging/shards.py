"""Sharded, resumable output: a folder of Parquet shards, a manifest and a commit log.

``emoclip predict … --output-dir DIR`` slices the ordered input list (``inputs.InputSet``) into
shards of ``shard_size`` items. Shard *i* always holds items ``[i*S, (i+1)*S)`` and is tagged in
one ``Tagger.tag`` call whose encoder batches are fixed slices of those items (``encoder.cache``:
a cache hit never changes a batch), so its rows are the same bytes whether it is computed in an
uninterrupted run, after a ``kill -9``, with a warm, cold or other feature cache, or by a Ray actor
with the same thread count.

Commit protocol (each step atomic, so a kill at any moment leaves a consistent folder):
1. the shard's Parquet bytes go to a hidden temporary file beside ``part-….parquet``, are fsynced
   and renamed into place (``atomic.atomic_write``), and the folder is fsynced;
2. one line naming the shard, its row count and the file's SHA-256 is appended to the commit log
   and fsynced (``manifest.CommitLog``): constant cost, whatever the number of shards.
A shard file without its log line (a kill between 1 and 2) is simply recomputed, and so is one
whose file no longer matches its line (deleted, truncated, replaced): nothing is resumed on trust.

The manifest records the input fingerprint, the tagger options (``TaggerConfig.to_dict``), the
encoder identity, the column layout, the shard size and count; a rerun with other inputs or options
is refused with the fix. Every row carries ``row``, its position in the input list, so readers need
not rely on file names (which still sort: ``manifest.shard_file_name``). pyarrow ignores names
starting with ``_`` or ``.``, so ``pd.read_parquet(DIR)`` reads the shards as one table while the
job runs or after it. docs/scale.md describes the layout for readers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emoclip.core.atomic import atomic_write
from emoclip.core.errors import EmoclipError
from emoclip.tagging.inputs import InputSet, Item, Loaded, tag_items
from emoclip.tagging.manifest import (
    COMMITS_NAME,
    LOCK_NAME,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    ORDER_COLUMN,
    SHARD_FILE,
    SHARD_PREFIX,
    CommitLog,
    CommittedShard,
    committed_shards,
    folder_state,
    shard_file_name,
    write_manifest,
    write_shard_file,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from emoclip.tagging.config import TaggerConfig
    from emoclip.tagging.tagger import Prediction, Tagger

log = logging.getLogger("emoclip")

__all__ = ["COMMITS_NAME", "MANIFEST_NAME", "ORDER_COLUMN", "CommittedShard", "ShardFolder", "ShardLayout",
           "committed_shards", "merge_shards", "run_sharded", "shard_file_name", "tag_shard"]

DEFAULT_SHARD_SIZE = 1000
RAY_LOG_NAME = "_emoclip_ray.log"  # Ray's own log lines (ray_engine.ray_logs_to_file), without -v
# Options that change how fast rows come, never what they are: a resumed job may change them.
RUNTIME_ONLY_OPTIONS = frozenset({"workers", "cache_dir", "no_cache"})


# -- the rows of a shard ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardLayout:
    """The columns of every shard: ``output.flat_row``'s, then the inputs' extras, then the feature."""

    class_names: tuple[str, ...]
    levels: dict[str, tuple[str, ...]]
    extra_columns: tuple[str, ...] = ()
    feature_dim: int | None = None   # set: a float32 list column `feature`
    multi: bool = False              # the tagger lists every label above --multi P
    generated: bool = False          # the method writes a sentence (ugrie)

    @classmethod
    def for_tagger(cls, tagger: Tagger, extra_columns: Sequence[str] = (), save_features: bool = False
                   ) -> ShardLayout:
        tax = tagger.taxonomy
        levels = {name: tuple(tax.find_ancestor(name).names) for name in tagger.coarse_levels}
        return cls(tuple(tax.names), levels, tuple(extra_columns),
                   tagger.backbone.feature_dim if save_features else None, tagger.multi is not None,
                   tagger.generates_text)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardLayout:
        return cls(tuple(data["class_names"]), {k: tuple(v) for k, v in data["levels"].items()},
                   tuple(data["extra_columns"]), data["feature_dim"], data["multi"], data["generated"])

    def schema(self) -> pa.Schema:
        """Explicit types, so a shard of only error rows has the same schema as every other shard."""
        import pyarrow as pa

        from emoclip.tagging.tagger import Prediction
        from emoclip.tagging.writers import flat_row

        text_columns = {"path", "label", "top_k", "multi", "generated", "error"} | {
            f"{level}_label" for level in self.levels}
        empty = Prediction(path="", multi=[] if self.multi else None)
        fields = [pa.field(name, pa.string() if name in text_columns else pa.float64())
                  for name in flat_row(empty, self.class_names, self.levels, self.generated)]
        fields.insert(0, pa.field(ORDER_COLUMN, pa.int64()))  # the row's position in the input list
        fields += [pa.field(name, pa.string()) for name in self.extra_columns]
        if self.feature_dim is not None:
            fields.append(pa.field("feature", pa.list_(pa.float32())))
        return pa.schema(fields)

    @property
    def columns(self) -> list[str]:
        return self.schema().names

    def table(self, rows: Sequence[Prediction], items: Sequence[Item], first_row: int = 0) -> pa.Table:
        import numpy as np
        import pyarrow as pa

        from emoclip.tagging.writers import flat_row

        records = []
        for position, (pred, item) in enumerate(zip(rows, items, strict=True), start=first_row):
            if self.multi and pred.multi is None:  # an item that could not even be read
                pred = dataclasses.replace(pred, multi=[])
            record = {ORDER_COLUMN: position, **flat_row(pred, self.class_names, self.levels, self.generated)}
            record.update({name: getattr(item, name) for name in self.extra_columns})
            if self.feature_dim is not None:
                record["feature"] = None if pred.feature is None else np.asarray(pred.feature, np.float32)
            records.append(record)
        return pa.Table.from_pylist(records, schema=self.schema())


@dataclass(frozen=True)
class ShardResult:
    index: int
    parquet: bytes
    rows: int
    errors: int
    seconds: float = 0.0   # tagging time (reading included): a shard's own rate, whichever engine ran it


def tag_shard(tagger: Tagger, layout: ShardLayout, index: int, items: Sequence[Item],
              loaded: Sequence[Loaded] | None = None, progress: Callable[[int], None] | None = None,
              first_row: int = 0) -> ShardResult:
    """Tag one shard's items and encode its rows as Parquet: the one function both engines run."""
    import pyarrow.parquet as pq

    started = time.perf_counter()
    rows = tag_items(tagger, items, loaded, features=layout.feature_dim is not None, progress=progress)
    buffer = io.BytesIO()
    pq.write_table(layout.table(rows, items, first_row), buffer)
    return ShardResult(index, buffer.getvalue(), len(rows), sum(not r.ok for r in rows),
                       time.perf_counter() - started)


# -- the folder ---------------------------------------------------------------------------------------
def job_options(config: TaggerConfig) -> dict[str, Any]:
    """The options that decide the rows (``TaggerConfig.to_dict`` less the runtime-only ones)."""
    return {k: v for k, v in config.to_dict().items() if k not in RUNTIME_ONLY_OPTIONS}


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Hold a lock on the folder so two runs never interleave commits (released by the OS on kill)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one run at a time is then the user's job
        yield
        return
    with open(folder / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmoclipError(f"another emoclip run is writing '{folder}'; wait for it to finish, or use another "
                               "--output-dir") from None
        yield


def _ours(name: str) -> bool:
    """Files emoclip writes into a shard folder (what --overwrite may remove)."""
    return name in (MANIFEST_NAME, COMMITS_NAME, LOCK_NAME, RAY_LOG_NAME) or bool(SHARD_FILE.match(name))


class ShardFolder:
    """A shard folder: its verified state (manifest.py), and committing new shards in constant time."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        self.manifest_path = self.folder / MANIFEST_NAME
        self.manifest: dict[str, Any] = {}
        self.committed: dict[int, CommittedShard] = {}
        self._log: CommitLog | None = None
        self._log_bytes = 0

    @classmethod
    def open_existing(cls, folder: str | Path) -> ShardFolder:
        """The folder as it is, every committed shard verified (no lock, nothing written)."""
        shards = cls(folder)
        state = folder_state(shards.folder)
        shards.manifest, shards.committed = state.manifest, state.committed
        return shards

    # the plan: a fresh folder, or the same job again
    def prepare(self, plan: dict[str, Any], overwrite: bool) -> None:
        """Start the job in the folder, or check that the folder holds this very job (to resume it).

        Resuming relies only on shards whose file matches its commit (size and SHA-256); the others
        are removed and recomputed. ``overwrite`` removes emoclip's own files whatever their state."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_temporaries()
        entries = [p for p in self.folder.iterdir() if p.name != LOCK_NAME]
        if overwrite:
            for path in entries:
                if _ours(path.name):
                    path.unlink(missing_ok=True)
            entries = [p for p in entries if not _ours(p.name)]
        elif self.manifest_path.exists():
            state = folder_state(self.folder)
            self._refuse_other_job(state.manifest, plan)
            for index, reason in state.damaged.items():
                log.warning("%s: shard %d does not match its commit (%s); recomputing it", self.folder, index,
                            reason)
                (self.folder / shard_file_name(index, plan["shards"])).unlink(missing_ok=True)
            self.manifest, self.committed, self._log_bytes = state.manifest, state.committed, state.log_bytes
            self._log = CommitLog(self.folder, self._log_bytes)
            return
        if entries:
            raise EmoclipError(f"'{self.folder}' is not empty and holds no emoclip job; give a new or empty "
                               "--output-dir (or --overwrite, which removes only emoclip's own files)")
        self.manifest = {"emoclip_shards": MANIFEST_FORMAT, **plan, "encoder": None, "layout": None}
        write_manifest(self.folder, self.manifest)
        self._log = CommitLog(self.folder, 0)

    def _refuse_other_job(self, existing: dict[str, Any], plan: dict[str, Any]) -> None:
        changed = [key for key in plan if existing.get(key) != plan[key]]
        if "options" in changed:  # name the options themselves
            old, new = existing.get("options", {}), plan["options"]
            changed.remove("options")
            changed += [f"--{k.replace('_', '-')}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if changed:
            raise EmoclipError(
                f"'{self.folder}' holds a job with other {', '.join(changed)} than this one; "
                "rerun the same command to resume it, or use a new --output-dir (or --overwrite to "
                "start over)")

    def _record_once(self, key: str, value: dict[str, Any], what: str) -> None:
        """Record ``value`` under ``key`` in the manifest the first time, or refuse a different one."""
        value = json.loads(json.dumps(value))
        recorded = self.manifest.get(key)
        if recorded is None:
            self.manifest[key] = value
            write_manifest(self.folder, self.manifest)
        elif recorded != value:
            raise EmoclipError(f"'{self.folder}' was tagged with another {what} ({recorded}, now {value}); "
                               "resume on the same kind of device with the same files, pin --precision, or use a "
                               "new --output-dir (or --overwrite to start over)")

    def check_encoder(self, identity: dict[str, Any]) -> None:
        """The encoder's identity (its spec, with the precision 'auto' resolved to on this device) is
        known only once the model is loaded: record it, or refuse to mix shards of another encoder."""
        self._record_once("encoder", identity, "encoder")

    def check_layout(self, layout: ShardLayout) -> None:
        """The columns (class names, levels) come from the taxonomy's files: a taxonomy file edited
        between two runs would mix shards of two taxonomies, so it is recorded and compared too."""
        self._record_once("layout", layout.to_dict(), "taxonomy or column layout")

    @property
    def done(self) -> dict[int, dict[str, int]]:
        return {i: {"rows": e.rows, "errors": e.errors} for i, e in self.committed.items()}

    def todo(self) -> list[int]:
        return [i for i in range(self.manifest["shards"]) if i not in self.committed]

    def shard_path(self, index: int) -> Path:
        return self.folder / shard_file_name(index, self.manifest["shards"])

    def commit(self, result: ShardResult) -> None:
        """Shard file (atomic, fsynced), then one appended log line: the same cost for every shard."""
        if self._log is None:
            raise RuntimeError("commit() before prepare()")
        path = self.shard_path(result.index)
        write_shard_file(path, result.parquet)
        entry = CommittedShard(result.index, path, result.index * self.manifest["shard_size"], result.rows,
                               result.errors, len(result.parquet), hashlib.sha256(result.parquet).hexdigest(),
                               round(result.seconds, 3))
        self._log.append(entry)
        self.committed[result.index] = entry

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def shard_paths(self) -> list[Path]:
        return [self.committed[i].path for i in sorted(self.committed)]

    def _remove_temporaries(self) -> None:
        for tmp in self.folder.glob(".*.tmp"):  # what a killed atomic_write left behind
            if tmp.name.startswith((f".{SHARD_PREFIX}", f".{MANIFEST_NAME}")):
                tmp.unlink(missing_ok=True)


# -- running a job -----------------------------------------------------------------------------------
@dataclass
class ShardJob:
    """Everything an engine needs: the folder, the items of each shard, the tagger's config, and the
    column layout (known before tagging in this process; a Ray job learns it from its actors)."""

    shards: ShardFolder
    inputs: InputSet
    shard_size: int
    config: TaggerConfig
    layout: ShardLayout | None
    save_features: bool = False

    def items(self, index: int) -> list[Item]:
        return self.inputs.items[index * self.shard_size:(index + 1) * self.shard_size]

    def first_row(self, index: int) -> int:
        return index * self.shard_size


class ShardProgress:
    """Images and shards done, and the time left (a tqdm bar on a terminal, a log line per shard)."""

    def __init__(self, job: ShardJob, enabled: bool | None) -> None:
        import sys

        from tqdm import tqdm

        self.total_shards = job.shards.manifest["shards"]
        done = job.shards.done
        self.shards_done = len(done)
        self.started = time.perf_counter()
        self.rows_at_start = sum(v["rows"] for v in done.values())
        self.rows = self.rows_at_start   # counted here too: a disabled tqdm bar counts nothing
        self.total = len(job.inputs)
        self.bar = tqdm(total=len(job.inputs), initial=self.rows_at_start, unit="img", file=sys.stderr,
                        dynamic_ncols=True, disable=None if enabled is None else not enabled)
        self.bar.set_postfix_str(self._shards_text(), refresh=False)

    def _shards_text(self) -> str:
        return f"shards {self.shards_done}/{self.total_shards}"

    def images(self, count: int) -> None:
        self.rows += count
        self.bar.update(count)

    def shard(self, result: ShardResult, images_counted: bool) -> None:
        self.shards_done += 1
        if not images_counted:
            self.images(result.rows)
        self.bar.set_postfix_str(self._shards_text())
        rate = (self.rows - self.rows_at_start) / max(time.perf_counter() - self.started, 1e-9)
        left = (self.total - self.rows) / rate if rate else float("nan")
        log.info("shard %d committed (%s, %.1f img/s, about %.0f s left)", result.index, self._shards_text(), rate,
                 left)

    def close(self) -> None:
        self.bar.close()


def run_local(job: ShardJob, tagger: Tagger, progress: ShardProgress, **_: Any) -> None:
    """The single-process engine: shard after shard, in order, each committed as it is done."""
    assert job.layout is not None
    for index in job.shards.todo():
        result = tag_shard(tagger, job.layout, index, job.items(index), progress=progress.images,
                           first_row=job.first_row(index))
        job.shards.commit(result)
        progress.shard(result, images_counted=True)


# Engines by name; "module:function" entries are imported when chosen (Ray only for --engine ray),
# which also keeps this module from depending on the engines built on top of it.
ENGINES: dict[str, Callable[..., None] | str] = {"local": run_local, "ray": "emoclip.tagging.ray_engine:run_ray"}


def engine_function(name: str) -> Callable[..., None]:
    """The engine called ``name``: run(job, tagger, progress, **options)."""
    engine = ENGINES[name]
    if isinstance(engine, str):
        module, _, function = engine.partition(":")
        engine = getattr(importlib.import_module(module), function)
    return engine


@dataclass(frozen=True)
class JobSummary:
    folder: Path
    rows: int
    errors: int
    shards: int
    computed: int   # shards this run computed (the rest were committed before)
    seconds: float


def run_sharded(config: TaggerConfig, inputs: InputSet, output_dir: str | Path, shard_size: int = DEFAULT_SHARD_SIZE,
                save_features: bool = False, overwrite: bool = False, engine: str = "local",
                progress: bool | None = None, **engine_options: Any) -> JobSummary:
    """Tag ``inputs`` into a shard folder, resuming where a previous run of the same job stopped.

    Every check that can refuse the job (engine, folder, manifest, options) runs before torch is
    imported; the Ray engine's driver never builds a model (its actors report encoder and layout)."""
    if engine not in ENGINES:
        raise EmoclipError(f"unknown engine '{engine}'; use one of {', '.join(ENGINES)}")
    if shard_size < 1:
        raise EmoclipError(f"--shard-size must be at least 1, not {shard_size}")
    started = time.perf_counter()
    shards = ShardFolder(output_dir)
    plan = {"inputs": {"fingerprint": inputs.fingerprint, "count": len(inputs)}, "shard_size": shard_size,
            "shards": -(-len(inputs) // shard_size), "options": job_options(config), "save_features": save_features}
    shards.folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(shards.folder):
        try:
            shards.prepare(plan, overwrite)
            todo = shards.todo()
            if todo:
                tagger, layout = None, None
                if engine == "local":
                    from emoclip.tagging.config import build_tagger

                    tagger = build_tagger(config)
                    shards.check_encoder(tagger.backbone.identity())
                    layout = ShardLayout.for_tagger(tagger, inputs.extra_columns, save_features)
                    shards.check_layout(layout)
                job = ShardJob(shards, inputs, shard_size, config, layout, save_features)
                bar = ShardProgress(job, progress)
                try:
                    engine_function(engine)(job, tagger, bar, **engine_options)
                finally:
                    bar.close()
        finally:
            shards.close()
    done = shards.done
    return JobSummary(shards.folder, sum(v["rows"] for v in done.values()), sum(v["errors"] for v in done.values()),
                      len(done), len(todo), time.perf_counter() - started)


# -- one file from a shard folder ---------------------------------------------------------------------
MERGE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl"}


def _merge_format(fmt: str | None, output: Path) -> str:
    fmt = fmt or MERGE_FORMATS.get(output.suffix.lower())
    if fmt is None or fmt not in MERGE_FORMATS.values():
        raise EmoclipError(f"merge writes parquet, csv or jsonl, not '{fmt or output.suffix or output.name}'; "
                           "use one of those suffixes or --format")
    return fmt


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, list) else value


def _check_outside(folder: Path, output: Path) -> None:
    """``merge D -o D/all.parquet`` would make the output one of its own inputs (or replace the manifest)."""
    target = output.expanduser()
    with contextlib.suppress(OSError):
        target = target.resolve()
    root = folder.resolve()
    if target == root or root in target.parents:
        raise EmoclipError(f"the merged file '{output}' would be written inside the shard folder '{folder}' it "
                           "reads; give an -o outside that folder")


def merge_shards(folder: str | Path, output: str | Path, fmt: str | None = None) -> int:
    """Write a complete shard folder as one Parquet, CSV or JSON Lines file (atomically); the row count.

    Completeness is checked, not read from a flag: every shard of the plan must be committed and its
    file must match its commit (size and SHA-256); the rows come out in input order, without the
    ``row`` column (the same columns as ``predict -o FILE``). Needs no torch."""
    import csv

    import pyarrow.parquet as pq

    folder, output = Path(folder).expanduser(), Path(output)
    _check_outside(folder, output)
    fmt = _merge_format(fmt, output)
    state = folder_state(folder)
    total = state.shards
    for index, reason in state.damaged.items():
        raise EmoclipError(f"shard {shard_file_name(index, total)} of '{folder}' does not match its commit ({reason}); "
                           "rerun its `emoclip predict` command to recompute it, then merge again")
    if state.missing:
        first = shard_file_name(state.missing[0], total)
        raise EmoclipError(f"'{folder}' is not complete ({len(state.missing)} of {total} shards missing, the "
                           f"first {first}); rerun its `emoclip predict` command to finish it")
    entries = list(state.committed.values())
    expected = None

    def tables() -> Iterator[pa.Table]:
        nonlocal expected
        for entry in entries:
            table = pq.read_table(entry.path)
            if expected is None:
                expected = table.schema
            elif not table.schema.equals(expected):
                raise EmoclipError(f"shard {entry.path.name} of '{folder}' has other columns than the first shard "
                                   "(two taxonomies or options?); rerun its `emoclip predict` command with "
                                   "--overwrite")
            if table.num_rows != entry.rows:
                raise EmoclipError(f"shard {entry.path.name} of '{folder}' holds {table.num_rows} rows, committed "
                                   f"with {entry.rows}; rerun its `emoclip predict` command to recompute it")
            if ORDER_COLUMN in table.column_names:
                table = table.drop_columns([ORDER_COLUMN])
            yield table

    rows = 0
    if fmt == "parquet":
        with atomic_write(output, "wb") as handle:
            writer = None
            for table in tables():
                writer = writer or pq.ParquetWriter(handle, table.schema)
                writer.write_table(table)
                rows += table.num_rows
            if writer:
                writer.close()
        return rows
    with atomic_write(output, "w", newline="") as handle:
        writer_csv = None
        for table in tables():
            records = table.to_pylist()
            rows += len(records)
            for record in records:
                if fmt == "jsonl":
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    continue
                if writer_csv is None:
                    writer_csv = csv.DictWriter(handle, fieldnames=list(record), lineterminator="\n")
                    writer_csv.writeheader()
                writer_csv.writerow({k: _csv_value(v) for k, v in record.items()})
    return rows
