"""Sharded, resumable output: a folder of Parquet shards plus a manifest, committed shard by shard.

``emoclip predict … --output-dir DIR`` slices the ordered input list (``sources.InputSet``) into
shards of ``shard_size`` items. Shard *i* always holds items ``[i*S, (i+1)*S)`` and is tagged in
one ``Tagger.tag`` call, so its rows come from the same encoder batches whether it is computed in
an uninterrupted run, after a ``kill -9``, or by a Ray actor: a resumed job is identical to an
uninterrupted one (features from the cache are the bytes stored when they were computed).

Commit protocol (each step atomic, so a kill at any moment leaves a consistent folder):
1. the shard's Parquet bytes go to a hidden temporary file beside ``part-NNNNN.parquet``, are
   fsynced and renamed into place (``atomic.atomic_write``), and the folder is fsynced;
2. the manifest ``_emoclip_manifest.json`` is rewritten the same way with the shard marked done.
A shard file without its manifest entry (a kill between 1 and 2) is simply recomputed.

The manifest records the input fingerprint, the tagger options (``TaggerConfig.to_dict``), the
encoder identity, the shard size and the columns; a rerun with other inputs or options is refused
with the fix. pyarrow ignores names starting with ``_`` or ``.``, so ``pd.read_parquet(DIR)`` reads
the shards (in name order) as one table while the job runs or after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emoclip.core.atomic import atomic_write, atomic_write_bytes, atomic_write_text, fsync_dir
from emoclip.core.errors import EmoclipError
from emoclip.tagging.inputs import InputSet, Item, Loaded, tag_items

if TYPE_CHECKING:
    import pyarrow as pa

    from emoclip.tagging.config import TaggerConfig
    from emoclip.tagging.tagger import Prediction, Tagger

log = logging.getLogger("emoclip")

MANIFEST_NAME = "_emoclip_manifest.json"
LOCK_NAME = ".emoclip.lock"
MANIFEST_FORMAT = 1
DEFAULT_SHARD_SIZE = 1000
SHARD_PREFIX = "part-"
# Options that change how fast rows come, never what they are: a resumed job may change them.
RUNTIME_ONLY_OPTIONS = frozenset({"workers", "cache_dir", "no_cache"})


def shard_file_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:05d}.parquet"


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
        fields += [pa.field(name, pa.string()) for name in self.extra_columns]
        if self.feature_dim is not None:
            fields.append(pa.field("feature", pa.list_(pa.float32())))
        return pa.schema(fields)

    @property
    def columns(self) -> list[str]:
        return self.schema().names

    def table(self, rows: Sequence[Prediction], items: Sequence[Item]) -> pa.Table:
        import numpy as np
        import pyarrow as pa

        from emoclip.tagging.writers import flat_row

        records = []
        for pred, item in zip(rows, items, strict=True):
            if self.multi and pred.multi is None:  # an item that could not even be read
                pred = dataclasses.replace(pred, multi=[])
            record = flat_row(pred, self.class_names, self.levels, self.generated)
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
              loaded: Sequence[Loaded] | None = None, progress: Callable[[int], None] | None = None) -> ShardResult:
    """Tag one shard's items and encode its rows as Parquet: the one function both engines run."""
    import pyarrow.parquet as pq

    started = time.perf_counter()
    rows = tag_items(tagger, items, loaded, features=layout.feature_dim is not None, progress=progress)
    buffer = io.BytesIO()
    pq.write_table(layout.table(rows, items), buffer)
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


class ShardFolder:
    """A shard folder and its manifest: which shards exist, and committing new ones atomically."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        self.manifest_path = self.folder / MANIFEST_NAME
        self.manifest: dict[str, Any] = {}

    @classmethod
    def open_existing(cls, folder: str | Path) -> ShardFolder:
        shards = cls(folder)
        if not shards.manifest_path.is_file():
            raise EmoclipError(f"'{folder}' is not an emoclip shard folder (no {MANIFEST_NAME}); give the "
                               "--output-dir of an `emoclip predict` run")
        shards.manifest = json.loads(shards.manifest_path.read_text(encoding="utf-8"))
        return shards

    # the plan: a fresh folder, or the same job again
    def prepare(self, plan: dict[str, Any], overwrite: bool) -> None:
        """Start the job in the folder, or check that the folder holds this very job (to resume it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_temporaries()
        if self.manifest_path.is_file():
            existing = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            if overwrite:
                self._remove_shards(existing)
            else:
                changed = [key for key in plan if key != "shards" and existing.get(key) != plan[key]]
                if "options" in changed:  # name the options themselves
                    old, new = existing.get("options", {}), plan["options"]
                    changed.remove("options")
                    changed += [f"--{k.replace('_', '-')}" for k in sorted(set(old) | set(new))
                                if old.get(k) != new.get(k)]
                if changed:
                    raise EmoclipError(
                        f"'{self.folder}' holds a job with other {', '.join(changed)} than this one; "
                        "rerun the same command to resume it, or use a new --output-dir (or --overwrite to "
                        "start over)")
                self.manifest = existing
                return
        elif any(p for p in self.folder.iterdir() if p.name != LOCK_NAME):
            raise EmoclipError(f"'{self.folder}' is not empty and holds no emoclip job; give a new or empty "
                               "--output-dir")
        self.manifest = {"emoclip_shards": MANIFEST_FORMAT, **plan, "encoder": None, "done": {}, "complete": False}
        self._save()

    def check_encoder(self, identity: dict[str, Any]) -> None:
        """The encoder's identity (its spec, with the precision 'auto' resolved to on this device) is
        known only once the model is loaded: record it, or refuse to mix shards of another encoder."""
        identity = json.loads(json.dumps(identity))
        recorded = self.manifest.get("encoder")
        if recorded is None:
            self.manifest["encoder"] = identity
            self._save()
        elif recorded != identity:
            raise EmoclipError(f"'{self.folder}' was tagged with another encoder ({recorded}, now {identity}); "
                               "resume on the same kind of device, pin --precision, or use a new --output-dir "
                               "(or --overwrite to start over)")

    @property
    def done(self) -> dict[int, dict[str, int]]:
        return {int(k): v for k, v in self.manifest.get("done", {}).items()}

    def todo(self) -> list[int]:
        done = self.done
        return [i for i in range(self.manifest["shards"]) if i not in done]

    def commit(self, result: ShardResult) -> None:
        atomic_write_bytes(self.folder / shard_file_name(result.index), result.parquet)
        fsync_dir(self.folder)
        self.manifest["done"][str(result.index)] = {"rows": result.rows, "errors": result.errors,
                                                     "seconds": round(result.seconds, 3)}
        self.manifest["complete"] = len(self.manifest["done"]) == self.manifest["shards"]
        self._save()

    def shard_paths(self) -> list[Path]:
        return [self.folder / shard_file_name(i) for i in sorted(self.done)]

    def _save(self) -> None:
        atomic_write_text(self.manifest_path, json.dumps(self.manifest, sort_keys=True) + "\n")
        fsync_dir(self.folder)

    def _remove_temporaries(self) -> None:
        for tmp in self.folder.glob(".*.tmp"):  # what a killed atomic_write left behind
            if tmp.name.startswith((f".{SHARD_PREFIX}", f".{MANIFEST_NAME}")):
                tmp.unlink(missing_ok=True)

    def _remove_shards(self, manifest: dict[str, Any]) -> None:
        for i in range(manifest.get("shards", 0)):
            (self.folder / shard_file_name(i)).unlink(missing_ok=True)
        self.manifest_path.unlink(missing_ok=True)


# -- running a job -----------------------------------------------------------------------------------
@dataclass
class ShardJob:
    """Everything an engine needs: the folder, the items of each shard, the tagger's config and layout."""

    shards: ShardFolder
    inputs: InputSet
    shard_size: int
    config: TaggerConfig
    layout: ShardLayout

    def items(self, index: int) -> list[Item]:
        return self.inputs.items[index * self.shard_size:(index + 1) * self.shard_size]


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
    for index in job.shards.todo():
        result = tag_shard(tagger, job.layout, index, job.items(index), progress=progress.images)
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
    """Tag ``inputs`` into a shard folder, resuming where a previous run of the same job stopped."""
    from emoclip.tagging.config import build_tagger

    if engine not in ENGINES:
        raise EmoclipError(f"unknown engine '{engine}'; use one of {', '.join(ENGINES)}")
    started = time.perf_counter()
    shards = ShardFolder(output_dir)
    plan = {"inputs": {"fingerprint": inputs.fingerprint, "count": len(inputs)}, "shard_size": shard_size,
            "shards": -(-len(inputs) // shard_size), "options": job_options(config), "save_features": save_features}
    shards.folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(shards.folder):
        shards.prepare(plan, overwrite)
        # The Ray driver needs only the classes and feature width: a CPU fp32 build; its actors report
        # the identity of the encoder they really run (precision 'auto' resolves per device).
        tagger = build_tagger(config if engine == "local" else config.replace(device="cpu", no_cache=True,
                                                                               precision="fp32"))
        if engine == "local":
            shards.check_encoder(tagger.backbone.identity())
        layout = ShardLayout.for_tagger(tagger, inputs.extra_columns, save_features)
        job = ShardJob(shards, inputs, shard_size, config, layout)
        todo = shards.todo()
        if todo:
            bar = ShardProgress(job, progress)
            try:
                engine_function(engine)(job, tagger, bar, **engine_options)
            finally:
                bar.close()
    done = shards.done
    return JobSummary(shards.folder, sum(v["rows"] for v in done.values()), sum(v["errors"] for v in done.values()),
                      len(done), len(todo), time.perf_counter() - started)


# -- one file from a shard folder ---------------------------------------------------------------------
def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, list) else value


def merge_shards(folder: str | Path, output: str | Path, fmt: str | None = None) -> int:
    """Write a complete shard folder as one Parquet, CSV or JSON Lines file (atomically); the row count."""
    import csv

    import pyarrow.parquet as pq

    from emoclip.tagging.writers import choose_format

    shards = ShardFolder.open_existing(folder)
    if not shards.manifest.get("complete"):
        left = len(shards.todo())
        raise EmoclipError(f"'{folder}' is not complete ({left} of {shards.manifest['shards']} shards missing); "
                           "rerun its `emoclip predict` command to finish it")
    fmt = choose_format(fmt, output)
    if fmt not in ("parquet", "csv", "jsonl"):
        raise EmoclipError(f"merge writes parquet, csv or jsonl, not {fmt}; use one of those suffixes or --format")
    paths = shards.shard_paths()
    rows = 0
    if fmt == "parquet":
        with atomic_write(output, "wb") as handle:
            writer = None
            for path in paths:
                table = pq.read_table(path)
                writer = writer or pq.ParquetWriter(handle, table.schema)
                writer.write_table(table)
                rows += table.num_rows
            if writer:
                writer.close()
        return rows
    with atomic_write(output, "w", newline="") as handle:
        writer_csv = None
        for path in paths:
            records = pq.read_table(path).to_pylist()
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
