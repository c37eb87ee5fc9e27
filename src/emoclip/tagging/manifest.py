"""The bookkeeping of a shard folder: a small manifest (the plan) and an append-only commit log.

A shard folder written by ``emoclip predict --output-dir DIR`` holds::

    DIR/_emoclip_manifest.json     the plan: inputs fingerprint and count, shard size and count, the
                                   options that decide the rows, the encoder identity and the
                                   column layout (written at the start, and once more when the
                                   encoder and layout become known — never per shard)
    DIR/_emoclip_commits.jsonl     one JSON line per committed shard, appended and fsynced:
                                   {"shard", "file", "first_row", "rows", "errors", "bytes",
                                    "sha256", "seconds"}
    DIR/part-00000.parquet …       the shards; names are zero-padded to the width of the job's
                                   last shard index (at least 5 digits), so they sort at any count

Committing shard *k* costs the same whatever *k* is: the shard file is written atomically, then one
line is appended to the log (the manifest is not rewritten), so a job of N shards spends O(N) time
on bookkeeping instead of O(N²). Reading the state is one linear pass over the log.

Nothing read back is trusted: the manifest is checked for shape and consistency (the shard count
must follow from the input count and shard size); a log line must name a shard of the plan with the
row count that shard must have; a shard is only *committed* when its file exists with the recorded
size and SHA-256. A torn last log line (a kill during the append) is ignored and cut off before the
next append; any other damage is one ``emoclip: error:`` line whose fix is ``--overwrite``.

This module imports neither torch nor pyarrow: ``merge``, refusals and readers (``emoclip browse``)
use it without loading a model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from emoclip.core.atomic import atomic_write_text, fsync_dir
from emoclip.core.errors import EmoclipError

log = logging.getLogger("emoclip")

MANIFEST_NAME = "_emoclip_manifest.json"
COMMITS_NAME = "_emoclip_commits.jsonl"
LOCK_NAME = ".emoclip.lock"
MANIFEST_FORMAT = 2
SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".parquet"
MIN_NAME_DIGITS = 5
# The column every shard carries: the item's position in the job's input list (0-based). Readers
# order rows by it, never by file names.
ORDER_COLUMN = "row"
SHARD_FILE = re.compile(rf"^{re.escape(SHARD_PREFIX)}\d+{re.escape(SHARD_SUFFIX)}$")
HASH_BLOCK = 1 << 20
VERIFY_THREADS = 8


def name_digits(shards: int) -> int:
    """Digits of every shard name of a job of ``shards`` shards: all names are equally wide, so they sort."""
    return max(MIN_NAME_DIGITS, len(str(max(shards - 1, 0))))


def shard_file_name(index: int, shards: int) -> str:
    return f"{SHARD_PREFIX}{index:0{name_digits(shards)}d}{SHARD_SUFFIX}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


_UMASK: list[int] = []


def write_shard_file(path: Path, data: bytes) -> None:
    """Write a shard atomically (temporary beside it, fsync, rename, fsync of the folder).

    Not ``atomic.atomic_write``: that one lists the folder on every call to remove killed runs'
    temporaries, which costs O(shards) per commit; ``ShardFolder.prepare`` removes them once."""
    if not _UMASK:
        mask = os.umask(0o022)
        os.umask(mask)
        _UMASK.append(mask)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK[0])
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def damaged(path: Path, why: str) -> EmoclipError:
    return EmoclipError(f"'{path}' is damaged ({why}); rerun the `emoclip predict` command with --overwrite to "
                        "start the job over")


# -- the manifest --------------------------------------------------------------------------------------
_PLAN_TYPES: dict[str, type | tuple[type, ...]] = {
    "emoclip_shards": int, "inputs": dict, "shard_size": int, "shards": int, "options": dict, "save_features": bool}


def check_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """The manifest if it is one this version wrote and it is self-consistent; else one clear error."""
    if not isinstance(manifest, dict):
        raise damaged(path, f"a JSON {type(manifest).__name__}, not an object")
    if manifest.get("emoclip_shards") != MANIFEST_FORMAT:
        version = manifest.get("emoclip_shards")
        if isinstance(version, int) and not isinstance(version, bool) and version < MANIFEST_FORMAT:
            raise EmoclipError(f"'{path}' was written by an older emoclip (format {version}); rerun the "
                               "`emoclip predict` command with --overwrite to tag it again in this format")
        raise damaged(path, "not an emoclip shard manifest")
    for key, kind in _PLAN_TYPES.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise damaged(path, f"'{key}' missing or of the wrong type")
    inputs = manifest["inputs"]
    count = inputs.get("count")
    if not isinstance(inputs.get("fingerprint"), str) or not isinstance(count, int) or isinstance(count, bool) \
            or count < 0:
        raise damaged(path, "'inputs' must hold a fingerprint and a count")
    if manifest["shard_size"] < 1 or manifest["shards"] != -(-count // manifest["shard_size"]):
        raise damaged(path, f"{manifest['shards']} shards do not follow from {count} inputs in shards of "
                            f"{manifest['shard_size']}")
    for key in ("encoder", "layout"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise damaged(path, f"'{key}' of the wrong type")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EmoclipError(f"'{folder}' is not an emoclip shard folder (no {MANIFEST_NAME}); give the "
                           "--output-dir of an `emoclip predict` run") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise damaged(path, getattr(exc, "strerror", None) or str(exc)) from None
    if not text.strip():
        raise damaged(path, "empty")
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise damaged(path, f"not valid JSON: {exc}") from None
    return check_manifest(manifest, path)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, sort_keys=True, allow_nan=False) + "\n")
    fsync_dir(folder)


# -- the commit log ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CommittedShard:
    """One committed shard: its file, where its rows sit in the job's input order, and its digest."""

    index: int
    path: Path
    first_row: int
    rows: int
    errors: int
    bytes: int
    sha256: str
    seconds: float = 0.0

    def to_line(self) -> str:
        record = {k: v for k, v in asdict(self).items() if k not in ("path", "index")}
        record.update(shard=self.index, file=self.path.name)
        return json.dumps(record, sort_keys=True, allow_nan=False) + "\n"


def expected_rows(manifest: dict[str, Any], index: int) -> int:
    size, count = manifest["shard_size"], manifest["inputs"]["count"]
    return max(0, min(size, count - index * size))


_ENTRY_TYPES = {"shard": int, "first_row": int, "rows": int, "errors": int, "bytes": int, "sha256": str,
                "file": str}


def _entry(folder: Path, manifest: dict[str, Any], record: Any) -> CommittedShard | str:
    """A log line as a ``CommittedShard``, or why it is not one of this job's shards."""
    if not isinstance(record, dict):
        return "not an object"
    for key, kind in _ENTRY_TYPES.items():
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            return f"'{key}' missing or of the wrong type"
    index = record["shard"]
    if not 0 <= index < manifest["shards"]:
        return f"shard {index} is not one of the job's {manifest['shards']}"
    if record["file"] != shard_file_name(index, manifest["shards"]):
        return f"shard {index} names the file '{record['file']}'"
    if record["first_row"] != index * manifest["shard_size"] or record["rows"] != expected_rows(manifest, index):
        return f"shard {index} claims {record['rows']} rows from row {record['first_row']}"
    if not 0 <= record["errors"] <= record["rows"]:
        return f"shard {index} claims {record['errors']} errors"
    seconds = record.get("seconds", 0.0)
    return CommittedShard(index, folder / record["file"], record["first_row"], record["rows"], record["errors"],
                          record["bytes"], record["sha256"], float(seconds) if isinstance(seconds, int | float)
                          else 0.0)


def read_log(folder: Path, manifest: dict[str, Any]) -> tuple[dict[int, CommittedShard], int]:
    """The log's entries by shard (a later line for a shard replaces an earlier one) and the byte
    length of its whole lines (a torn last line, from a kill during an append, is not counted)."""
    path = folder / COMMITS_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}, 0
    except OSError as exc:
        raise damaged(path, exc.strerror or str(exc)) from None
    entries: dict[int, CommittedShard] = {}
    good = 0
    for number, line in enumerate(_lines(data), start=1):
        if not line.endswith(b"\n"):
            log.warning("%s: ignoring a torn last line (a run was killed while committing)", path)
            break
        try:
            entry = _entry(folder, manifest, json.loads(line))
        except ValueError:
            entry = "not valid JSON"
        if isinstance(entry, str):
            raise damaged(path, f"line {number}: {entry}")
        entries[entry.index] = entry
        good += len(line)
    return entries, good


def _lines(data: bytes) -> Iterator[bytes]:
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end + 1
        yield data[start:end]
        start = end


def verify(entry: CommittedShard) -> str | None:
    """Why ``entry``'s file is not the one committed (missing, other size, other digest), or None."""
    try:
        size = entry.path.stat().st_size
    except FileNotFoundError:
        return "file missing"
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    if size != entry.bytes:
        return f"{size} bytes, committed with {entry.bytes}"
    try:
        digest = file_sha256(entry.path)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    return None if digest == entry.sha256 else "contents differ from the committed ones (SHA-256)"


@dataclass
class FolderState:
    """What a shard folder holds, verified: the plan, the good shards, and the damaged ones with why."""

    folder: Path
    manifest: dict[str, Any]
    committed: dict[int, CommittedShard]
    damaged: dict[int, str]
    log_bytes: int

    @property
    def shards(self) -> int:
        return self.manifest["shards"]

    @property
    def missing(self) -> list[int]:
        return [i for i in range(self.shards) if i not in self.committed]

    @property
    def complete(self) -> bool:
        return len(self.committed) == self.shards


def folder_state(folder: str | Path, check_files: bool = True) -> FolderState:
    """Read the manifest and log of ``folder`` and verify every committed shard's file (one pass)."""
    folder = Path(folder).expanduser()
    manifest = read_manifest(folder)
    entries, good = read_log(folder, manifest)
    bad: dict[int, str] = {}
    if check_files:  # file reads and hashing release the GIL: a few threads overlap them
        with ThreadPoolExecutor(max_workers=VERIFY_THREADS) as pool:
            reasons = list(pool.map(verify, entries.values(), chunksize=64))
        for entry, reason in zip(list(entries.values()), reasons, strict=True):
            if reason:
                bad[entry.index] = reason
                del entries[entry.index]
    return FolderState(folder, manifest, dict(sorted(entries.items())), bad, good)


def committed_shards(folder: str | Path) -> list[CommittedShard]:
    """The verified committed shards of a shard folder, in row order (``first_row`` ascending).

    Each has its ``path``, ``rows`` (its row count), ``sha256`` (of the file) and ``first_row`` (its
    first row's position in the job's input order; the ``row`` column of its rows counts on from
    there). A shard whose file is missing or differs from its commit is left out with a warning; a
    damaged manifest or log raises ``EmoclipError`` (one line, with the fix). Needs neither torch
    nor pyarrow.
    """
    state = folder_state(folder)
    for index, reason in state.damaged.items():
        log.warning("%s: shard %d left out (%s); rerun its `emoclip predict` command to recompute it",
                    state.folder, index, reason)
    return list(state.committed.values())


class CommitLog:
    """Appends commit lines: one ``write`` and one ``fsync`` of the open log per shard."""

    def __init__(self, folder: Path, valid_bytes: int) -> None:
        self.path = folder / COMMITS_NAME
        existed = self.path.exists()
        self.handle = open(self.path, "ab")  # noqa: SIM115 (closed by close())
        if self.handle.tell() != valid_bytes:  # cut a torn last line so the next one starts clean
            self.handle.truncate(valid_bytes)
            self.handle.seek(valid_bytes)
        if not existed:
            fsync_dir(folder)

    def append(self, entry: CommittedShard) -> None:
        self.handle.write(entry.to_line().encode("utf-8"))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()
