"""What browsing reads of a shard folder: its committed shards, and the columns they hold.

Everything that knows the folder's on-disk layout (the manifest's name and keys, which shards are
committed, the shard file names) is in ``committed_shards`` and ``read_manifest`` below, so when the
manifest becomes an append-only commit log (``tagging.shards.committed_shards``) only these two
functions change. The rest of ``emoclip.browse`` sees a ``FolderState``: the job's options and
shard size, and ``(index, path)`` of each committed shard.

The manifest is written atomically (rename), but another writer may be replacing it while it is
read, and a folder may be anything a user typed: a manifest that does not parse is read again a few
times, then refused with one line; a committed shard whose file is missing is left out and named in
``problems`` (shown on the page), never trusted.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emoclip.core.errors import EmoclipError
from emoclip.tagging.shards import MANIFEST_NAME, shard_file_name

log = logging.getLogger("emoclip")

MANIFEST_RETRIES = 5
MANIFEST_RETRY_S = 0.05


@dataclass(frozen=True)
class FolderState:
    """One consistent reading of a shard folder."""

    folder: Path
    manifest: dict[str, Any]
    shards: tuple[tuple[int, Path], ...]        # committed shards, by index
    problems: tuple[str, ...] = field(default=())

    @property
    def shard_size(self) -> int:
        return int(self.manifest["shard_size"])

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.manifest.get("options") or {})

    @property
    def save_features(self) -> bool:
        return bool(self.manifest.get("save_features"))

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def total_shards(self) -> int:
        return int(self.manifest.get("shards", 0))

    def signature(self) -> tuple:
        """Changes whenever a shard is committed (what a reader compares to know it must refresh)."""
        return tuple(index for index, _ in self.shards)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The folder's manifest, read whole (retried while a writer replaces it), or a one-line refusal."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise EmoclipError(f"'{folder}' is not a folder; give the --output-dir of an `emoclip predict` run")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise EmoclipError(f"'{folder}' is not an emoclip shard folder (no {MANIFEST_NAME}); give the --output-dir "
                           "of an `emoclip predict … --output-dir DIR` run")
    reason = ""
    for attempt in range(MANIFEST_RETRIES):
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = str(exc)
            time.sleep(MANIFEST_RETRY_S * (attempt + 1))
            continue
        if not isinstance(manifest, dict) or "emoclip_shards" not in manifest or "shard_size" not in manifest:
            raise EmoclipError(f"'{path}' is not an emoclip shard manifest; give the --output-dir of an "
                               "`emoclip predict` run")
        return manifest
    raise EmoclipError(f"the manifest '{path}' cannot be read ({reason}): it is being written or is damaged; "
                       "wait a moment and retry, or rerun the folder's `emoclip predict` command to repair it")


def committed_shards(folder: str | Path, manifest: dict[str, Any]) -> tuple[list[tuple[int, Path]], list[str]]:
    """``(index, path)`` of every committed shard, in index order, and what is wrong with the others.

    The one place that knows which shards count as committed (today: the manifest's ``done`` map)."""
    folder = Path(folder).expanduser()
    shards, problems = [], []
    done = manifest.get("done") or {}
    for key in sorted(done, key=lambda k: int(k) if str(k).isdigit() else -1):
        if not str(key).isdigit():
            problems.append(f"manifest entry '{key}' is not a shard number; ignored")
            continue
        path = folder / shard_file_name(int(key))
        if not path.is_file():
            problems.append(f"shard {key} is committed but {path.name} is missing; rerun the folder's "
                            "`emoclip predict` command to recompute it")
            continue
        shards.append((int(key), path))
    return shards, problems


def read_folder(folder: str | Path) -> FolderState:
    """The folder as it is now: manifest, committed shards, problems."""
    folder = Path(folder).expanduser()
    manifest = read_manifest(folder)
    shards, problems = committed_shards(folder, manifest)
    for problem in problems:
        log.warning("%s: %s", folder, problem)
    return FolderState(folder, manifest, tuple(shards), tuple(problems))
