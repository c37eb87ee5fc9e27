"""Reading the small files users hand emoclip — taxonomies, configs, templates, split files,
checkpoint metadata — so that no such file can crash, hang or flood the run.

Each file is checked to be a regular file of bounded size (a FIFO would block, ``/dev/zero`` never
ends, a 2 GB "taxonomy" is a mistake), to be text (no NUL bytes) in UTF-8, and — for YAML, TOML and
JSON — to parse into a structure of bounded size *after* alias expansion: a 700-byte YAML alias
bomb expands to billions of nodes, which no later step (validation, error message, JSON dump)
may ever walk. Every failure is an ``EmoclipError`` naming the file and the fix.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import yaml

from emoclip.core.errors import EmoclipError, shorten

# Taxonomies, configs and template lists are hand-written: the largest built-in is about 3 KB.
MAX_SMALL_FILE_BYTES = 1 << 20
# Split files and manifests list every image of a dataset (EmoSet: 118k rows, ~10 MB).
MAX_TABLE_BYTES = 512 << 20
# Nodes a parsed document may expand to (aliases counted at every use).
MAX_DOCUMENT_NODES = 200_000


def read_text(path: str | Path, what: str, limit: int = MAX_SMALL_FILE_BYTES) -> str:
    """The UTF-8 text of a user's file (a BOM is dropped), or an ``EmoclipError`` saying what is wrong."""
    path = Path(path).expanduser()
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise EmoclipError(f"{what} {path} is not a regular file; give a text file")
        if info.st_size > limit:
            raise EmoclipError(f"{what} {path} is {info.st_size:,} bytes, more than the {limit:,} allowed; "
                               f"is it the right file?")
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise EmoclipError(f"cannot read {what} {path}: {exc.strerror or exc}; check the path") from None
    if len(data) > limit:
        raise EmoclipError(f"{what} {path} is more than {limit:,} bytes; is it the right file?")
    if b"\x00" in data:
        raise EmoclipError(f"{what} {path} is a binary file, not text; give a UTF-8 text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EmoclipError(f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                           "save it as UTF-8") from None


def _expanded_size(node: Any, limit: int, memo: dict[int, int], active: set[int]) -> int:
    if not isinstance(node, dict | list):
        return 1
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise ValueError("it refers to itself (a recursive alias)")
    active.add(key)
    total = 1
    for child in (node.values() if isinstance(node, dict) else node):
        total += _expanded_size(child, limit, memo, active)
        if total > limit:
            raise ValueError(f"it expands to more than {limit:,} entries (YAML aliases?)")
    active.discard(key)
    memo[key] = total
    return total


def parse_document(text: str, suffix: str, origin: str, what: str, error: type[EmoclipError] = EmoclipError
                   ) -> Any:
    """YAML (default), TOML or JSON text → plain data, bounded in expanded size and nesting."""
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
        _expanded_size(data, MAX_DOCUMENT_NODES, {}, set())
    except RecursionError:
        raise error(f"cannot use {what} {origin}: it is nested too deeply; is it the right file?") from None
    except (ValueError, yaml.YAMLError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise error(f"cannot parse {what} {origin}: {shorten(reason, 200)}; fix it (or is it the right file?)"
                    ) from None
    return data


def load_document(path: str | Path, what: str, limit: int = MAX_SMALL_FILE_BYTES) -> Any:
    """``read_text`` then ``parse_document`` (the format from the suffix; YAML otherwise)."""
    return parse_document(read_text(path, what, limit), Path(path).suffix.lower(), str(path), what)
