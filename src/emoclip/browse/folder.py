"""What browsing reads of a shard folder: its committed shards, and the columns they hold.

Everything that knows the folder's on-disk layout is in ``committed_shards`` and ``read_manifest``
below, both reading through ``tagging.manifest`` (the plan and the append-only commit log). The
rest of ``emoclip.browse`` sees a ``FolderState``: the job's options and shard size, and
``(index, path)`` of each committed shard.

The manifest is written atomically (rename), but another writer may be replacing it while it is
read, and a folder may be anything a user typed: a manifest that does not parse is read again a few
times, then refused with one line; a committed shard whose file is missing is left out and named in
``problems`` (shown on the page), never trusted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emoclip.core.errors import EmoclipError

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
        return len(self.shards) == self.total_shards

    @property
    def total_shards(self) -> int:
        return int(self.manifest.get("shards", 0))

    def signature(self) -> tuple:
        """Changes whenever a shard is committed (what a reader compares to know it must refresh)."""
        return tuple(index for index, _ in self.shards)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The folder's plan (``tagging.manifest``: written once, checked), or a one-line refusal."""
    from emoclip.tagging.manifest import read_manifest as read_plan

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise EmoclipError(f"'{folder}' is not a folder; give the --output-dir of an `emoclip predict` run")
    return read_plan(folder)


def committed_shards(folder: str | Path, manifest: dict[str, Any]) -> tuple[list[tuple[int, Path]], list[str]]:
    """``(index, path)`` of every committed shard, in index order, and what is wrong with the others.

    The commit log (``tagging.manifest``) says what is committed; each file is checked to exist with
    its committed size on every read (cheap: no hashing per page request — ``emoclip merge`` and a
    resume verify the digests)."""
    from emoclip.tagging.manifest import folder_state

    state = folder_state(folder, check_files=False)
    shards, problems = [], []
    for index, entry in state.committed.items():
        try:
            size = entry.path.stat().st_size
        except OSError:
            problems.append(f"shard {index} is committed but {entry.path.name} is missing; rerun the folder's "
                            "`emoclip predict` command to recompute it")
            continue
        if size != entry.bytes:
            problems.append(f"shard {index} ({entry.path.name}) changed since its commit; rerun the folder's "
                            "`emoclip predict` command to recompute it")
            continue
        shards.append((index, entry.path))
    return shards, problems


def read_folder(folder: str | Path) -> FolderState:
    """The folder as it is now: manifest, committed shards, problems."""
    folder = Path(folder).expanduser()
    manifest = read_manifest(folder)
    shards, problems = committed_shards(folder, manifest)
    for problem in problems:
        log.warning("%s: %s", folder, problem)
    return FolderState(folder, manifest, tuple(shards), tuple(problems))
