"""Turning command-line inputs (files, folders, globs) into a sorted list of image paths."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from ..errors import EmoclipError

IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
})
_GLOB_CHARS = set("*?[")


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files, folders (recursively, image suffixes only) and globs into unique sorted paths.

    A file named explicitly is always kept, whatever its suffix, so a bad file gets an error row
    rather than silently vanishing; an input that matches nothing is an error.
    """
    found: dict[Path, None] = {}
    for raw in inputs:
        text = str(raw)
        path = Path(text).expanduser()
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and _is_image_name(p))
        elif path.exists() or path.is_symlink():
            matches = [path]
        elif _GLOB_CHARS & set(text):
            hits = sorted(Path(p) for p in glob.glob(text, recursive=True))
            matches = [h for h in hits if h.is_file()]
            matches += [p for h in hits if h.is_dir() for p in sorted(h.rglob("*")) if _is_image_name(p)]
            if not matches:
                raise EmoclipError(f"no files match '{text}'; check the pattern (quote it to let emoclip expand it)")
        else:
            raise EmoclipError(f"'{text}' does not exist; give image files, folders or glob patterns")
        for m in matches:
            found.setdefault(m, None)
    return list(found)
