"""Atomic outputs: a file or a run folder a user asked for appears whole or not at all.

A file's content goes to a temporary file beside the target, is flushed to disk, and is renamed
over the target only on success; a run folder is assembled beside its target and switched in with
one exchange of names. An interrupted or failed run removes its temporary file; one killed outright
(SIGKILL, power loss) leaves a hidden ``.<name>.<pid>.….tmp`` that the next write of the same
target removes (its process is gone). Any previous version of the target stays untouched until
the switch.

Targets behave as users expect of a shell redirection: ``-o link`` writes through a symbolic link
to the file it points at (the link stays); ``-o /dev/stdout`` or a named pipe is written directly
(there is nothing to rename over); new files get the permissions the umask allows (``mkstemp``
alone would give 0600), and a replaced file keeps its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_RENAME_EXCHANGE = 2  # renameat2 flag (Linux ≥ 3.15): swap two names atomically
_AT_FDCWD = -100


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


def _stale_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.(\d+)\.[A-Za-z0-9_]+(\.old)?\.tmp$")


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove temporaries of ``target`` left by killed runs (their process no longer exists).

    A folder whose switch was cut between its two renames (no exchange support) is put back
    first, so a previous run folder is never lost. Returns what was removed.
    """
    pattern = _stale_pattern(target.name)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or pid_alive(int(match.group(1))):  # a live process may still be writing it
            continue
        path = Path(entry.path)
        if match.group(2) and not os.path.lexists(target):
            with contextlib.suppress(OSError):
                os.rename(path, target)
                continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def _writable_target(path: str | Path) -> Path:
    """The path to replace: symbolic links are followed to the file they name."""
    target = Path(path).expanduser()
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    return target


def _with_target(exc: OSError, target: Path) -> OSError:
    """An OSError about a temporary file or without a name, re-addressed to what the user asked for."""
    if exc.filename is None or ".tmp" in str(exc.filename):
        return OSError(exc.errno, exc.strerror or str(exc), str(target))
    return exc


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where a folder cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8",
                 newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file for writing; on success it replaces ``path`` in one rename."""
    requested = Path(path).expanduser()
    binary = "b" in mode
    text_args: dict[str, Any] = {} if binary else {"encoding": encoding, "newline": newline}
    try:
        info = os.stat(requested)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise _with_target(exc, requested) from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(requested))
    if info is not None and not stat.S_ISREG(info.st_mode):  # /dev/stdout, a pipe, a terminal: write to it
        with open(requested, mode, **text_args) as handle:
            yield handle
        return
    target = _writable_target(requested)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target.name), suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _with_target(exc, target) from None
    try:
        os.fchmod(fd, stat.S_IMODE(info.st_mode) if info is not None else 0o666 & ~_current_umask())
        with os.fdopen(fd, mode, **text_args) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
        fsync_dir(target.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS):
            raise _with_target(exc, target) from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


# -- whole folders ---------------------------------------------------------------------------------
def _exchange(a: Path, b: Path) -> bool:
    """Swap two names in one step (renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _carry_over(old: Path, staging: Path) -> None:
    """Entries of the old folder the new one does not replace (a checkpoint beside a report) come
    along as hard links: no copying, and the old folder stays whole until the switch."""
    for entry in os.scandir(old):
        destination = staging / entry.name
        if os.path.lexists(destination) or _stale_pattern_any.match(entry.name):
            continue
        source = Path(entry.path)
        if entry.is_symlink():
            os.symlink(os.readlink(source), destination)
        elif entry.is_dir():
            shutil.copytree(source, destination, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(source, destination)


_stale_pattern_any = re.compile(r"^\..+\.\d+\.[A-Za-z0-9_]+(\.old)?\.tmp$")


def _link_or_copy(source: str | Path, destination: str | Path) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Assemble a folder's new contents in the yielded staging folder; on success switch it in whole.

    Files already in the target that the new contents do not replace are kept. An interrupted or
    failed run leaves the target exactly as it was.
    """
    target = _writable_target(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and not target.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(target))
        remove_stale_temporaries(target)
        staging = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name), suffix=".tmp", dir=target.parent))
        os.chmod(staging, 0o777 & ~_current_umask())
    except OSError as exc:
        raise _with_target(exc, target) from None
    try:
        yield staging
        if not target.exists():
            os.rename(staging, target)
        else:
            _carry_over(target, staging)
            if _exchange(staging, target):
                shutil.rmtree(staging, ignore_errors=True)  # now the old contents
            else:
                backup = staging.with_name(staging.name[: -len(".tmp")] + ".old.tmp")
                os.rename(target, backup)
                os.rename(staging, target)
                shutil.rmtree(backup, ignore_errors=True)
        fsync_dir(target.parent)
    except BaseException as exc:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _with_target(exc, target) from None
        raise
