"""Inputs at scale: folders, file lists and WebDataset tar shards as one ordered list of items.

A large collection arrives as a folder tree, a list of paths (a text file, or a column of a Parquet
table), or WebDataset tar shards (img2dataset's output: ``00000.tar`` … holding ``<key>.jpg`` with
an optional ``<key>.txt`` / ``<key>.json`` caption). ``collect_inputs`` turns any mix of them into
an ``InputSet``: the items in a fixed order plus a fingerprint of that order, so a resumed job can
prove it is reading the same inputs (``shards.py`` slices the list into output shards).

An item is a *reference*, not the bytes: a local path, or a tar member's offset and size. Tars are
indexed once (headers only), and a member is read later by seeking straight to it, so any slice of
the list can be loaded on its own — by this process or by a Ray task on another node. A member that
cannot be indexed (a truncated tar) or a sample without an image becomes an item with an ``error``,
which becomes an error row: one bad member never fails a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from emoclip.core import files as input_files
from emoclip.core.errors import EmoclipError, ImageDecodeError
from emoclip.core.files import IMAGE_SUFFIXES
from emoclip.core.userfiles import MAX_TABLE_BYTES
from emoclip.encoder.decode import ImageBytes, regular_file_size
from emoclip.tagging.rows import Prediction

if TYPE_CHECKING:
    from emoclip.tagging.rows import ImageTagger as Tagger

log = logging.getLogger("emoclip")

TAR_SUFFIXES = (".tar",)
# Compressed shards cannot be read member by member at an offset (the point of an index: any slice
# of a job loads on its own); each gets one line saying how to decompress it.
COMPRESSED_TARS = {".tar.gz": "gunzip", ".tgz": "gunzip", ".tar.xz": "xz -d", ".txz": "xz -d",
                   ".tar.bz2": "bunzip2", ".tbz2": "bunzip2", ".tbz": "bunzip2", ".tar.zst": "zstd -d",
                   ".tzst": "zstd -d", ".tar.lz4": "lz4 -d", ".tar.lzma": "unlzma"}
_COMPRESSION_MAGIC = {b"\x1f\x8b": "gzip (gunzip)", b"\xfd7zXZ\x00": "xz (xz -d)", b"BZh": "bzip2 (bunzip2)",
                      b"\x28\xb5\x2f\xfd": "zstd (zstd -d)", b"\x04\x22\x4d\x18": "lz4 (lz4 -d)"}
IMAGE_EXTENSIONS = frozenset(s.lstrip(".") for s in IMAGE_SUFFIXES)
CAPTION_EXTENSIONS = ("txt", "json")  # in order of preference
DEFAULT_PATH_COLUMN = "path"
# The largest tar member (or file shipped as bytes to a Ray actor) held in memory whole; above it
# the member gets an error row without being read. A 256 MiB member is a ~90-megapixel PNG;
# img2dataset's resized members are ~50 KB. Captions are read whole at indexing, so they are capped
# far lower (a longer one is not read, and counted in the warning).
MAX_MEMBER_BYTES = 256 << 20
MAX_CAPTION_BYTES = 1 << 20
# Tar bytes one chunk of ``iter_tagged`` holds at most (beyond one encoder batch).
CHUNK_BYTES = 256 << 20
# What a non-regular tar member is, for its error row.
_MEMBER_KINDS = (("issym", "a symbolic link"), ("islnk", "a hard link"), ("ischr", "a character device"),
                 ("isblk", "a block device"), ("isfifo", "a named pipe (FIFO)"), ("issparse", "a sparse file"))


@dataclass(frozen=True, slots=True)  # slots: ~300 bytes less per item (10 M-path jobs)
class Item:
    """One input image: a local file (``path``) or a tar member (``tar`` at ``offset``, ``size`` bytes)."""

    name: str                   # what the output row's `path` says
    path: str | None = None
    tar: str | None = None
    offset: int = 0
    size: int = 0
    key: str | None = None      # WebDataset sample key (as lossless text: files.name_text)
    caption: str | None = None
    error: str | None = None    # known to be unreadable before decoding

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, 0)}

    @classmethod
    def from_dict(cls, data: dict) -> Item:
        return cls(**data)


@dataclass
class InputSet:
    """The ordered items of a job, what extra columns they carry, and a fingerprint of the list."""

    items: list[Item]
    fingerprint: str
    extra_columns: tuple[str, ...] = ()   # ("key",) or ("key", "caption") for WebDataset inputs
    described: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)


def split_key(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the member's path up to the first dot of its file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


# Shards one pattern may name: {00000..99999999} must be one line, not 100 million names in memory.
MAX_SHARDS_PER_PATTERN = 1_000_000


_NUMERIC_RANGE = re.compile(r"\{(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?\}")


def _range_size(pattern: str) -> int:
    """How many names the numeric ``{a..b[..step]}`` ranges of ``pattern`` multiply to (an upper
    bound's main factor: comma alternatives are not counted)."""
    total = 1
    for start, stop, step in _NUMERIC_RANGE.findall(pattern):
        total *= abs(int(stop) - int(start)) // max(1, abs(int(step or 1))) + 1
    return total


def expand_braces(pattern: str, check: Callable[[str], None] | None = None) -> list[str]:
    """``shards/{00000..00999}.tar`` → the 1000 names (braceexpand, as webdataset does), at most
    ``MAX_SHARDS_PER_PATTERN``. Expanded lazily, each name passed to ``check`` as it comes, so a
    huge range whose first shard is missing is refused at once, without being built."""
    from braceexpand import braceexpand

    if _range_size(pattern) > MAX_SHARDS_PER_PATTERN:  # braceexpand builds a whole range at once
        raise EmoclipError(f"'{input_files.name_text(pattern)}' names more than {MAX_SHARDS_PER_PATTERN:,} "
                           "shards; check the brace range, or give a --files-from list")
    names: list[str] = []
    for name in braceexpand(pattern):
        if check is not None:
            check(name)
        if len(names) == MAX_SHARDS_PER_PATTERN:
            raise EmoclipError(f"'{input_files.name_text(pattern)}' names more than {MAX_SHARDS_PER_PATTERN:,} "
                               "shards; check the brace range, or give a --files-from list")
        names.append(name)
    return names


def _compressed_suffix(text: str) -> str | None:
    lower = text.lower()
    return next((suffix for suffix in COMPRESSED_TARS if lower.endswith(suffix)), None)


def _is_tar_pattern(text: str) -> bool:
    return text.lower().endswith(TAR_SUFFIXES) or _compressed_suffix(text) is not None


def _refuse_compressed(name: str, kind: str, tool: str) -> EmoclipError:
    return EmoclipError(f"'{input_files.name_text(name)}' is a {kind}-compressed tar; emoclip reads members of "
                        f"uncompressed .tar shards by offset (img2dataset's default): decompress it first ({tool})")


def _check_shard(name: str) -> None:
    """A named shard exists, is a regular file and is not compressed (by name or by its first bytes)."""
    suffix = _compressed_suffix(name)
    if suffix:
        raise _refuse_compressed(name, suffix.lstrip(".").replace("tar.", ""), COMPRESSED_TARS[suffix])
    shown = input_files.name_text(name)
    if not Path(name).is_file():
        raise EmoclipError(f"tar shard '{shown}' does not exist or is not a file; check the pattern (brace "
                           "ranges like {00000..00099} are expanded by emoclip: quote them)")
    try:
        with open(name, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise EmoclipError(f"cannot read tar shard '{shown}': {exc.strerror or exc}; check its permissions") from None
    for magic, what in _COMPRESSION_MAGIC.items():
        if head.startswith(magic):
            kind, tool = what.split(" ", 1)
            raise _refuse_compressed(name, kind, tool.strip("()"))


def _caption_of(ext: str, data: bytes) -> str | None:
    text = data.decode("utf-8", errors="replace")
    if ext == "txt":
        return text.strip()
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    caption = value.get("caption") if isinstance(value, dict) else None
    return caption if isinstance(caption, str) else None


def _member_kind(member: tarfile.TarInfo) -> str | None:
    """What a member that is not a plain regular file is, or None for a regular one."""
    for test, kind in _MEMBER_KINDS:
        if getattr(member, test)():
            return kind
    return None if member.isreg() else f"a tar entry of type {member.type!r}"


def _is_image_ext(ext: str) -> bool:
    return ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS


class _Sample:
    """The members of one WebDataset sample, in tar order."""

    def __init__(self) -> None:
        self.images: list[tarfile.TarInfo] = []
        self.others: list[str] = []
        self.captions: dict[str, str | None] = {}


def index_tar(path: str) -> list[Item]:
    """The samples of one WebDataset shard, in member order: image member by reference, caption read.

    Like a folder walk, nothing vanishes in silence: a sample whose image member is a link, a device,
    a sparse file or larger than ``MAX_MEMBER_BYTES`` gets an error item; a sample with no image
    member, or a repeated key, is an error item too; a tar that breaks part-way keeps the samples
    read so far and adds one error item saying where; other members passed over (hidden members
    such as macOS ``._`` files, non-regular non-image members, extra images of one sample,
    oversized captions) are counted in one warning.
    """
    samples: dict[str, _Sample] = {}
    skipped = input_files._Skipped()
    broken: str | None = None
    members = 0
    try:
        with tarfile.open(path, "r:") as archive:
            while True:
                try:
                    member = archive.next()
                except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
                    broken = f"corrupt tar after {members} members: {exc}"
                    break
                if member is None:
                    break
                if member.isdir():
                    continue
                members += 1
                base = member.name.rpartition("/")[2]
                if base.startswith("."):
                    skipped.add("hidden members", member.name)
                    continue
                key, ext = split_key(member.name)
                sample = samples.setdefault(key, _Sample())
                kind = _member_kind(member)
                if _is_image_ext(ext):
                    sample.images.append(member)
                elif kind is not None:
                    skipped.add("members that are not regular files", member.name, kind)
                    sample.others.append(f"{ext} ({kind})")
                elif ext in CAPTION_EXTENSIONS:
                    if member.size > MAX_CAPTION_BYTES:
                        skipped.add(f"captions over {MAX_CAPTION_BYTES:,} bytes (not read)", member.name)
                        sample.others.append(f"{ext} (over {MAX_CAPTION_BYTES:,} bytes)")
                        continue
                    handle = archive.extractfile(member)
                    sample.captions[ext] = _caption_of(ext, handle.read(MAX_CAPTION_BYTES)) if handle else None
                else:
                    sample.others.append(ext)
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        broken = f"cannot read tar: {exc}"
    items = [item for key, sample in samples.items() for item in _sample_items(path, key, sample, skipped)]
    if broken:
        items.append(Item(name=path, tar=path, error=broken))
    skipped.warn(Path(path), "store each image as a regular member named <key>.<image type> to tag it")
    return items


def _sample_items(path: str, key: str, sample: _Sample, skipped: input_files._Skipped) -> list[Item]:
    """The item of one sample (an error item when it cannot be tagged), and one per repeated key."""
    text_key = input_files.name_text(key)
    caption = next((c for ext in CAPTION_EXTENSIONS if (c := sample.captions.get(ext)) is not None), None)
    if not sample.images:
        found = ", ".join(sorted({*sample.others, *sample.captions})) or "nothing"
        return [Item(name=f"{path}/{key}", tar=path, key=text_key, caption=caption,
                     error=f"sample has no image member (found: {found})")]
    info, *extra = sample.images
    items = [_image_item(path, text_key, caption, info)]
    for other in extra:
        if split_key(other.name)[1] == split_key(info.name)[1]:  # the very same name again: its own row
            items.append(Item(name=f"{path}/{other.name}", tar=path, key=text_key, caption=caption,
                              error="a second member of this name in the tar; only the first is tagged"))
        else:
            skipped.add("extra image members of one sample (the first is tagged)", other.name)
    return items


def _image_item(path: str, key: str, caption: str | None, info: tarfile.TarInfo) -> Item:
    name = f"{path}/{info.name}"
    kind = _member_kind(info)
    if kind is not None:
        target = f" to '{input_files.name_text(info.linkname)}'" if info.linkname else ""
        return Item(name=name, tar=path, key=key, caption=caption,
                    error=f"tar member is {kind}{target}, not a regular file; store the image itself in the tar")
    if info.size > MAX_MEMBER_BYTES:
        return Item(name=name, tar=path, key=key, caption=caption,
                    error=f"tar member is {info.size:,} bytes, over the {MAX_MEMBER_BYTES:,}-byte limit for one "
                          "image member; extract it and name the file")
    return Item(name=name, tar=path, offset=info.offset_data, size=info.size, key=key, caption=caption)


def _decode_list(data: bytes, shown: str) -> str:
    """A text list's bytes → text: a UTF-8 BOM dropped, UTF-16/32 with a BOM decoded, names that are
    not UTF-8 kept as the bytes they are (surrogate escapes: ``find > list`` writes raw names)."""
    for bom, codec in ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
                       (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError as exc:
                raise EmoclipError(f"--files-from '{shown}' starts with a {codec.upper()} mark but is not "
                                   f"{codec.upper()} (at byte {exc.start}); save it as UTF-8") from None
    return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="surrogateescape")


def _read_text_list(source: Path, shown: str) -> list[str]:
    try:
        size = os.stat(source).st_size
        if size > MAX_TABLE_BYTES:
            raise EmoclipError(f"--files-from '{shown}' is {size:,} bytes, more than the {MAX_TABLE_BYTES:,} "
                               "allowed; split the list")
        data = source.read_bytes()
    except OSError as exc:
        raise EmoclipError(f"cannot read --files-from '{shown}': {exc.strerror or exc}; check the path") from None
    text = _decode_list(data, shown)
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if "\0" in line:
            raise EmoclipError(f"line {number} of --files-from '{shown}' holds a NUL byte, which no file name "
                               "can; give one path per line (find -print, not -print0)")
    names = (line.rstrip("\r") for line in lines)
    return [name.strip() for name in names if name.strip() and not name.lstrip().startswith("#")]


def _read_parquet_list(source: Path, shown: str, path_column: str) -> list[str | None]:
    """The path column of a Parquet list, one entry per row (None where a row has no path)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(source).names
        if path_column not in names:
            raise EmoclipError(f"'{shown}' has no column '{path_column}' (it has: {', '.join(names)}); "
                               "name the column of paths with --path-column")
        column = pq.read_table(source, columns=[path_column]).column(0)
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise EmoclipError(f"cannot read --files-from '{shown}' as Parquet ({reason}); is it a whole Parquet "
                           "file? rewrite it, or give a text file of paths") from None
    kind = column.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)):
        raise EmoclipError(f"column '{path_column}' of '{shown}' holds {column.type} values, not paths; name the "
                           "column of paths with --path-column")
    values = column.to_pylist()
    return [v.decode("utf-8", errors="surrogateescape") if isinstance(v, bytes) else v for v in values]


def read_path_list(list_file: str, path_column: str = DEFAULT_PATH_COLUMN) -> list[str | None]:
    """Paths from a text file (one per line; blank lines and '#' comments skipped) or a Parquet column
    (one entry per row: None where the row has no path, so that row still gets an error row)."""
    source = Path(list_file).expanduser()
    shown = input_files.name_text(list_file)
    try:
        info = os.stat(source)
    except OSError:
        raise EmoclipError(f"--files-from '{shown}' does not exist; give a text file of paths or a Parquet "
                           "file") from None
    if not stat.S_ISREG(info.st_mode):
        raise EmoclipError(f"--files-from '{shown}' is not a regular file; give a text file of paths or a "
                           "Parquet file")
    if source.suffix.lower() == ".parquet":
        return _read_parquet_list(source, shown, path_column)
    return list(_read_text_list(source, shown))


def _stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return f"{path}\0missing"
    return f"{path}\0{st.st_size}\0{st.st_mtime_ns}"


def _list_items(files_from: str, path_column: str) -> list[Item]:
    items = []
    for row, p in enumerate(read_path_list(files_from, path_column)):
        if p:
            items.append(Item(name=p, path=p))
        else:
            items.append(Item(name=f"{files_from}#row{row}", error=f"row {row} of --files-from has no path "
                              f"({'null' if p is None else 'empty'} '{path_column}')"))
    return items


def collect_inputs(paths: Sequence[str], files_from: str | None = None,
                   path_column: str = DEFAULT_PATH_COLUMN) -> InputSet:
    """Every input in the order it was named: a folder's or a glob's images sorted (as
    ``collect_images``; a file named twice is kept once), a tar shard's samples in member order
    (brace patterns expanded), then the paths of ``files_from`` as listed.

    An input that gives nothing (an empty folder, tar or list) is warned about; when the whole input
    is empty the run is refused. The fingerprint hashes each item's identity with its file's size
    and modification time, so a resumed job notices inputs that were added, removed, reordered or
    rewritten.
    """
    if not paths and not files_from:
        raise EmoclipError("no inputs; give image files, folders, globs, tar shards or --files-from LIST")
    groups: list[tuple[str, list[str]]] = []   # ("tar", names) or ("plain", [arg]), in the order given
    for arg in paths:
        if _is_tar_pattern(arg):
            groups.append(("tar", expand_braces(arg, _check_shard)))
        else:
            groups.append(("plain", [arg]))
    digest = hashlib.sha256()
    items: list[Item] = []
    seen_files: set[str] = set()
    seen_tars: set[str] = set()
    empty: list[str] = []
    tars = 0
    for kind, names in groups:
        if kind == "plain":
            found = input_files.collect_images(names, allow_empty=True)
            fresh = [str(p) for p in found if str(p) not in seen_files]
            seen_files.update(fresh)
            if not found:
                empty.append(names[0])
            for p in fresh:
                items.append(Item(name=p, path=p))
                digest.update(_stamp(p).encode("utf-8", "surrogateescape") + b"\n")  # names may not be UTF-8
            continue
        for name in names:
            if name in seen_tars:
                continue
            seen_tars.add(name)
            tars += 1
            digest.update(f"tar\0{_stamp(name)}\n".encode("utf-8", "surrogateescape"))
            members = index_tar(name)
            if not members:
                empty.append(name)
            items.extend(members)
            for item in members:
                digest.update(f"{item.name}\0{item.offset}\0{item.size}\n".encode("utf-8", "surrogateescape"))
    if files_from:
        listed = _list_items(files_from, path_column)
        if not listed:
            empty.append(files_from)
        items.extend(listed)
        for item in listed:
            digest.update((_stamp(item.path) if item.path else f"{item.name}\0{item.error}").encode(
                "utf-8", "surrogateescape") + b"\n")
    shown = ", ".join(input_files.name_text(e) for e in empty)
    if not items:
        raise EmoclipError(f"no images in {shown}; give folders, tar shards or lists that hold images (types: "
                           ".jpg, .png, .webp, … — see the README) or name the files")
    if empty:
        log.warning("no images in %s", shown)
    extra: tuple[str, ...] = ()
    if tars:
        extra = ("key", "caption") if any(i.caption is not None for i in items) else ("key",)
    described = {"paths": list(paths), "files_from": files_from, "tars": tars, "count": len(items)}
    return InputSet(items, digest.hexdigest(), extra, described)


def refuse_output_among_inputs(inputs: InputSet, output: str | os.PathLike | None) -> None:
    """Refuse an ``--output`` file that is one of the inputs (an image, a tar shard, the list): the
    atomic replace at the end would destroy what the user gave. Only same-named inputs are compared
    (by device and inode, so another spelling or a link is caught too): cheap for any input count."""
    if output is None or os.fspath(output) == "-":
        return
    try:
        target = os.stat(output)
    except (OSError, ValueError):
        return  # not there yet: it cannot be an input
    bases = {os.path.basename(os.fspath(output)), os.path.basename(os.path.realpath(output))}
    files_from = inputs.described.get("files_from")
    candidates = {files_from} if files_from else set()
    candidates |= {source for item in inputs.items for source in (item.path, item.tar)
                   if source and os.path.basename(source) in bases}
    for candidate in candidates:
        try:
            same = os.path.samestat(target, os.stat(candidate))
        except (OSError, ValueError):
            continue
        if same:
            raise EmoclipError(f"--output '{input_files.name_text(output)}' is one of the inputs "
                               f"('{input_files.name_text(candidate)}'): writing it would destroy it; "
                               "write the output elsewhere")


Loaded = Path | ImageBytes | str   # what to tag, or (a str) why the item has an error row


def load_items(items: Iterable[Item], as_bytes: bool = False) -> list[Loaded]:
    """What ``Tagger.tag`` takes for each item: a Path for a file (or its bytes with ``as_bytes``, for
    shipping to another node), ``ImageBytes`` for a tar member — or the reason it cannot be read.

    Tar members are read by seeking to their offset, each tar opened once per call.
    """
    loaded: list[Loaded] = []
    handles: dict[str, IO[bytes]] = {}
    try:
        for item in items:
            if item.error is not None:
                loaded.append(item.error)
            elif item.tar is None:
                loaded.append(_read_file(item) if as_bytes else Path(item.path or item.name))
            else:
                loaded.append(_read_member(item, handles))
    finally:
        for handle in handles.values():
            handle.close()
    return loaded


def _read_file(item: Item) -> ImageBytes | str:
    """A file's bytes (to ship to another node), never more than ``MAX_MEMBER_BYTES`` and only from a
    regular file (a FIFO would block, /dev/zero never ends)."""
    path = Path(item.path or item.name)
    try:
        size = regular_file_size(path)
        if size > MAX_MEMBER_BYTES:
            return (f"file is {size:,} bytes, over the {MAX_MEMBER_BYTES:,}-byte limit for an image shipped to "
                    "a worker; tag it with --engine local")
        with open(path, "rb") as handle:
            data = handle.read(MAX_MEMBER_BYTES + 1)
    except ImageDecodeError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"
    if len(data) > MAX_MEMBER_BYTES:
        return f"file grew past the {MAX_MEMBER_BYTES:,}-byte limit while being read"
    return ImageBytes(item.name, data)


def _read_member(item: Item, handles: dict[str, IO[bytes]]) -> ImageBytes | str:
    if item.size > MAX_MEMBER_BYTES:  # an index from elsewhere (a manifest) is not trusted either
        return f"tar member is {item.size:,} bytes, over the {MAX_MEMBER_BYTES:,}-byte limit for one image member"
    assert item.tar is not None  # a tar member (index_tar) names its tar
    try:
        if item.tar not in handles:
            handles[item.tar] = open(item.tar, "rb")  # noqa: SIM115 (closed by load_items)
        handle = handles[item.tar]
        handle.seek(item.offset)
        data = handle.read(item.size)
    except OSError as exc:
        return f"cannot read tar member: {exc.strerror or exc}"
    if len(data) != item.size:
        return f"cannot read tar member: truncated ({len(data)} of {item.size} bytes)"
    return ImageBytes(item.name, data)


def tag_items(tagger: Tagger, items: Sequence[Item], loaded: Sequence[Loaded] | None = None,
              features: bool = False, progress: Callable[[int], None] | None = None) -> list[Prediction]:
    """One ``Prediction`` per item, in order: the loadable ones through ``tagger.tag`` (one call, so the
    encoder batches are the same whoever calls this on the same items), the rest as error rows."""
    loaded = load_items(items) if loaded is None else loaded
    todo = [source for source in loaded if not isinstance(source, str)]
    tagged = iter(tagger.tag(todo, progress=progress, features=features))
    rows = []
    for item, source in zip(items, loaded, strict=True):
        if isinstance(source, str):
            rows.append(Prediction(path=item.name, error=source))
            if progress:
                progress(1)
        else:
            rows.append(next(tagged))
    return rows


def _chunks(items: Sequence[Item], batch: int, most: int, budget: int) -> Iterator[Sequence[Item]]:
    """Consecutive slices of at most ``most`` items, cut early (at a whole number of ``batch``) once
    the tar bytes they hold pass ``budget``."""
    start, held = 0, 0
    for end in range(1, len(items) + 1):
        held += items[end - 1].size if items[end - 1].tar else 0
        count = end - start
        if count >= most or (held >= budget and count % batch == 0):
            yield items[start:end]
            start, held = end, 0
    if start < len(items):
        yield items[start:]


def iter_tagged(tagger: Tagger, items: Sequence[Item], progress: Callable[[int], None] | None = None,
                chunk_batches: int = 64, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Prediction]:
    """Rows for any number of items with bounded memory: tar members are read a chunk at a time (a
    whole number of encoder batches, so the batches are those of one call over everything), and a
    chunk holds at most about ``chunk_bytes`` of member bytes plus one batch."""
    batch = tagger.batch_size
    for chunk in _chunks(items, batch, batch * chunk_batches, chunk_bytes):
        yield from tag_items(tagger, chunk, progress=progress)
