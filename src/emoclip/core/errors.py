"""User-facing errors, and the one translation of every expected failure into one line.

Every problem a user can fix (a bad flag, a missing weights file, an unknown label) is raised as an
``EmoclipError`` whose message is one line that names the problem and the fix. The CLI prints it
without a traceback; Python callers can catch it like any exception.

Failures that come from the world rather than from emoclip's checks — a full disk, a read-only
folder, a file that is not UTF-8, a damaged safetensors file, a pickle that asks to run code — are
turned into the same kind of line by ``explain``: the CLI calls it in one place, so no command can
forget a case.
"""

from __future__ import annotations

import errno
import pickle

# Longest message the CLI prints: a hostile input (a 700-byte YAML alias bomb, a 1 MB label) must
# never turn into a megabyte-long error line.
MAX_MESSAGE_CHARS = 600


class EmoclipError(Exception):
    """A problem the user can fix; the message says how."""

    exit_status = 2  # the CLI's status for it: a usage error


class NothingReadableError(EmoclipError):
    """Not one image of a run could be read: there is nothing to score or train on."""

    exit_status = 1  # like "some files could not be read", all of them here


class WeightsUnavailableError(EmoclipError):
    """Pretrained weights could neither be found locally nor downloaded."""


class TaxonomyError(EmoclipError):
    """A taxonomy is malformed, or a label does not belong to it."""


class ImageDecodeError(EmoclipError):
    """One image could not be decoded; batches record it and go on."""


class DamagedFileError(EmoclipError):
    """A file emoclip wrote or reads (checkpoint, weights, training state) is truncated or corrupt."""


# errno → what the user can do about it.
_OS_FIXES: dict[int, str] = {
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "free some space (disk quota exceeded) or write somewhere else",
    errno.EFBIG: "the file is too large for this file system; write somewhere else",
    errno.EROFS: "the file system is read-only; write somewhere else",
    errno.EACCES: "check the permissions, or use another path",
    errno.EPERM: "check the permissions, or use another path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "it is a folder; give a file",
    errno.EEXIST: "something else already has that name; use another path",
    errno.ENAMETOOLONG: "use a shorter name",
    errno.ELOOP: "the path goes round a symbolic-link loop; fix the link",
    errno.EIO: "the device reported an I/O error; check the disk",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
}


def shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """One line of at most ``limit`` characters (control characters shown escaped)."""
    line = " ".join(str(text).split())
    line = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in line)
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ;,:") + "…"  # never mid-word when avoidable


def short_repr(value: object, limit: int = 80) -> str:
    """``repr`` of a value from a user's file, bounded in depth and length (no alias-bomb blow-up)."""
    import reprlib

    bounded = reprlib.Repr()
    bounded.maxlevel, bounded.maxstring, bounded.maxother = 3, limit, limit
    bounded.maxlist = bounded.maxdict = bounded.maxtuple = bounded.maxset = 6
    return shorten(bounded.repr(value), limit)


def _os_message(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename is not None else ""
    if exc.filename2 is not None:
        where += f" → {exc.filename2}"
    what = exc.strerror or type(exc).__name__
    fix = _OS_FIXES.get(exc.errno or 0, "check the path and try again")
    return f"{what}:{where}; {fix}" if where else f"{what}; {fix}"


def _decode_message(exc: UnicodeDecodeError) -> str:
    return (f"a file is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position {exc.start}); "
            "save it as UTF-8")


def _unpickle_message(exc: Exception) -> str:
    # torch's own text advises weights_only=False, i.e. running the file's code: never show it.
    if "weights only" in str(exc).lower() or "weights_only" in str(exc):
        return ("refused to load a file that holds pickled Python objects beyond plain tensors (emoclip never "
                "runs code from a file); convert it to .safetensors or use the original release file")
    return "not a valid weights file (damaged, truncated or of another format); download it again"


def explain(exc: BaseException) -> str | None:
    """The one-line message for an expected failure, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, EmoclipError):
        message = str(exc)
    elif isinstance(exc, pickle.UnpicklingError):
        message = _unpickle_message(exc)
    elif isinstance(exc, UnicodeDecodeError):
        message = _decode_message(exc)
    elif isinstance(exc, OSError):
        message = _os_message(exc)
    elif type(exc).__name__ == "SafetensorError":
        message = f"not a valid safetensors file ({exc}); the file is damaged or of another format"
    elif isinstance(exc, MemoryError):
        message = "out of memory; use a smaller --batch-size or fewer --workers"
    else:
        return None
    return shorten(message.replace("weights_only=False", "weights_only=True"))
