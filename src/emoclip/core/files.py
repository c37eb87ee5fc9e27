"""Turning command-line inputs (files, folders, globs) into a sorted list of image paths, and file
names into text that survives any output format.

A folder walk never drops a path in silence: every entry it passes over (a file whose name is not
an image type, a hidden file, an unreadable sub-folder, a symbolic-link loop, a broken link) is
counted in one warning per folder, and entries whose names say "image" are kept even when they are
broken links or special files, so they get an error row.

File names on Linux are bytes; Python holds the ones that are not UTF-8 with "surrogate escapes",
which no UTF-8 output can carry. ``name_text`` writes such a byte as ``\\xNN`` (and a backslash as
``\\\\``, so the text is unambiguous), and ``name_from_text`` turns it back into the same path.
"""

from __future__ import annotations

import glob
import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from emoclip.core.errors import EmoclipError

log = logging.getLogger("emoclip")

# Types photos come in; plus what Pillow can open (AVIF, QOI, JPEG 2000, PSD …) except data,
# vector and video formats. HEIC/HEIF/JPEG XL need a Pillow plugin: without it they get an error
# row saying the format is not recognised, which is better than vanishing.
_PHOTO_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm",
                   ".pgm", ".avif", ".heic", ".heif", ".jxl"}
_NOT_PHOTOS = {".eps", ".ps", ".pdf", ".h5", ".hdf", ".grib", ".bufr", ".fit", ".fits", ".mpeg", ".mpg", ".emf",
               ".wmf"}


def _pillow_suffixes() -> set[str]:
    from PIL import Image

    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN} - _NOT_PHOTOS


IMAGE_SUFFIXES = frozenset(_PHOTO_SUFFIXES | _pillow_suffixes())
_GLOB_CHARS = set("*?[")


def _needs_escape(ch: str) -> bool:
    return ch == "\\" or (not ch.isprintable() and ch != " ")


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch == "\\":
        return "\\\\"
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, held as a surrogate escape
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:  # C0 controls and DEL: \r, \n, \t, …
        return f"\\x{code:02x}"
    return f"\\U{code:08x}" if code > 0xFFFF else f"\\u{code:04x}"


def name_text(path: str | os.PathLike) -> str:
    """The file name as lossless, printable, one-line text.

    Undecodable bytes become ``\\xNN`` (NN ≥ 80), control characters ``\\xNN`` (NN < 80) or
    ``\\uNNNN``, and a backslash ``\\\\``; every other character is itself. ``name_from_text``
    inverts it exactly.
    """
    text = os.fspath(path)
    if not any(_needs_escape(ch) for ch in text):
        return text
    return "".join(_escape(ch) if _needs_escape(ch) else ch for ch in text)


_ESCAPE_WIDTH = {"x": 2, "u": 4, "U": 8}


def name_from_text(text: str) -> str:
    """Inverse of ``name_text`` (a backslash not starting an escape stays as it is)."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        ch, kind = text[i], text[i + 1:i + 2]
        if ch == "\\" and kind == "\\":
            out.append("\\")
            i += 2
            continue
        width = _ESCAPE_WIDTH.get(kind) if ch == "\\" else None
        digits = text[i + 2:i + 2 + width] if width else ""
        if width and _is_hex(digits, width):
            code = int(digits, 16)
            out.append(chr(0xDC00 + code) if kind == "x" and code >= 0x80 else chr(code))
            i += 2 + width
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _is_hex(digits: str, width: int) -> bool:
    return len(digits) == width and all(c in "0123456789abcdefABCDEF" for c in digits) and int(digits, 16) <= 0x10FFFF


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


class _Skipped:
    """What a walk passed over, by kind, with one example each (for the warning)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def add(self, kind: str, path: Path | str, detail: str = "") -> None:
        self.counts[kind] += 1
        self.examples.setdefault(kind, name_text(path) + (f" ({detail})" if detail else ""))

    def warn(self, folder: Path, hint: str = "name files explicitly to try them") -> None:
        if not self.counts:
            return
        parts = [f"{n} {kind} (e.g. {self.examples[kind]})" for kind, n in self.counts.most_common()]
        log.warning("%s: skipped %d entries: %s; %s", name_text(folder), sum(self.counts.values()),
                    "; ".join(parts), hint)


def walk_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, following links to folders once), sorted.

    Everything passed over is counted in one warning. Broken links and special files with an image
    name are kept: decoding gives them an error row.
    """
    found: list[Path] = []
    skipped = _Skipped()
    try:
        top = os.stat(folder)
    except OSError as exc:
        raise EmoclipError(f"cannot read folder {name_text(folder)}: {exc.strerror}; check the path") from None
    visited = {(top.st_dev, top.st_ino)}

    def visit(directory: Path) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            skipped.add("unreadable folders", directory, exc.strerror or "")
            return
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                skipped.add("hidden entries", path)
                continue
            try:
                is_dir = entry.is_dir()
            except OSError as exc:  # a link loop (ELOOP) and the like
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    found.append(path)
                else:
                    skipped.add("unresolvable links", path, exc.strerror or "")
                continue
            if is_dir:
                try:
                    info = entry.stat()
                except OSError as exc:
                    skipped.add("unreadable folders", path, exc.strerror or "")
                    continue
                key = (info.st_dev, info.st_ino)
                if key in visited:
                    skipped.add("links back to a folder already walked", path)
                    continue
                visited.add(key)
                visit(path)
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                found.append(path)
            elif entry.is_symlink() and not os.path.exists(path):
                skipped.add("broken links", path)
            else:
                skipped.add("files not named as images", path)

    visit(folder)
    skipped.warn(folder)
    return sorted(found)


def collect_images(inputs: Iterable[str | Path], allow_empty: bool = False) -> list[Path]:
    """Expand files, folders (recursively, image types only) and globs into unique sorted paths.

    A file named explicitly is always kept, whatever its suffix or kind, so a bad file gets an error
    row rather than silently vanishing; an input that matches nothing is an error, and so is a run
    that finds no images at all — unless ``allow_empty`` (the caller collects other kinds of input
    too, and says itself when the whole input is empty).
    """
    found: dict[Path, None] = {}
    empty: list[str] = []
    for raw in inputs:
        text = os.fspath(raw)
        path = Path(text).expanduser()
        if path.is_dir():
            matches = walk_images(path)
            if not matches:
                empty.append(name_text(text))
        elif os.path.lexists(path):
            matches = [path]
        elif _GLOB_CHARS & set(text):
            hits = sorted(Path(p) for p in glob.glob(text, recursive=True))
            matches = [h for h in hits if not h.is_dir()]
            matches += [p for h in hits if h.is_dir() for p in walk_images(h)]
            if not matches:
                raise EmoclipError(f"no files match '{name_text(text)}'; check the pattern (quote it to let "
                                   "emoclip expand it)")
        else:
            raise EmoclipError(f"'{name_text(text)}' does not exist; give image files, folders or glob patterns")
        for m in matches:
            found.setdefault(m, None)
    if allow_empty:
        return list(found)
    if not found:
        raise EmoclipError(f"no images in {', '.join(empty)}; give folders that hold images (types: "
                           ".jpg, .png, .webp, … — see the README) or name the files")
    if empty:
        log.warning("no images in %s", ", ".join(empty))
    return list(found)


def confined(root: str | Path, name: str, what: str = "name") -> Path:
    """``root / name`` for a user-supplied ``name`` (a WebDataset key, a list entry, a run name) that
    becomes a file name, refused unless it stays inside ``root``: no absolute path, no ``..``, no
    NUL byte, no empty part. Checked on the text, before anything exists, so no symlink or later
    file can make the answer differ."""
    text = os.fspath(name)
    parts = text.replace("\\", "/").split("/")
    if (not text or "\0" in text or text.startswith(("/", "~")) or any(p in ("", ".", "..") for p in parts)
            or (len(text) > 1 and text[1] == ":")):
        raise EmoclipError(f"{what} '{name_text(text)}' would leave {name_text(root)}; use a relative name "
                           "without '..', '/' at the start or empty parts")
    return Path(root) / text
