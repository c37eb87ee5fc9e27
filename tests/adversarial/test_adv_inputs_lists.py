"""Hostile inputs of every kind a run can be given — tar shards, ``--files-from`` lists (text and
Parquet), compressed shards, empty inputs, the formats phones and the web write — and the feature
cache: each gets the folder's rules. Every entry is a row (or a counted, reported skip), rows follow
the order inputs were named, nothing is read whole above the member cap, an empty input is one line
with exit 2, nothing is written outside the requested output, and a cache hit answers exactly as a
miss. Every case is generated here in code; each test has a timeout.

Test names start with the case's class (``test_<class>_…``), so ``pytest --junitxml`` results group
into the table of cases by class and outcome (see docs/inputs.md).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from tests.adversarial.conftest import REPO, TINY, assert_no_traceback, assert_refused, cli, good_jpeg
from tests.conftest import noise_image

pytestmark = pytest.mark.timeout(120)
LABELS = ("--labels", "calm,tense")
GIB = 1 << 30


def _jpeg(seed: int = 0, size: tuple[int, int] = (40, 32)) -> bytes:
    buffer = io.BytesIO()
    noise_image(*size, seed=seed).save(buffer, format="JPEG")
    return buffer.getvalue()


def _member(archive: tarfile.TarFile, name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE,
            linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    if data is not None:
        info.size = len(data)
    archive.addfile(info, io.BytesIO(data) if data is not None else None)


def _tar(path: Path, members: list[tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for member in members:
            _member(archive, *member)
    return path


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _run_rows(tmp_path: Path, *inputs, fmt: str = "jsonl", extra: tuple = ()) -> tuple[object, list[dict]]:
    """Tag ``inputs`` to ``out.<fmt>`` (no cache); the outcome and the rows read back."""
    out = tmp_path / f"out.{fmt}"
    outcome = cli("predict", *inputs, *TINY, "--no-cache", *LABELS, "-o", out, *extra)
    assert_no_traceback(outcome)
    if not out.exists():
        return outcome, []
    if fmt == "jsonl":
        return outcome, [json.loads(line) for line in out.read_text().splitlines()]
    if fmt == "json":
        return outcome, json.loads(out.read_text())
    if fmt == "csv":
        import csv

        return outcome, list(csv.DictReader(out.open(newline="")))
    import pyarrow.parquet as pq

    return outcome, pq.read_table(out).to_pylist()


# -- class tar_members: every member of a hostile shard is a row or a counted skip ---------------------------------
JPEG = _jpeg()
TAR_CASES: dict[str, tuple[list[tuple], list[str | None], str]] = {
    # name: (members, the error pattern of each row in order (None: tagged), warning pattern or "")
    "symlink_member": ([("a.jpg", JPEG), ("b.jpg", None, tarfile.SYMTYPE, "a.jpg")],
                       [None, r"symbolic link to 'a.jpg'"], ""),
    "symlink_escaping": ([("x.jpg", None, tarfile.SYMTYPE, "../../../../etc/passwd")],
                         [r"symbolic link to '\.\./\.\./"], ""),
    "hardlink_member": ([("a.jpg", JPEG), ("b.jpg", None, tarfile.LNKTYPE, "a.jpg")], [None, r"hard link"], ""),
    "char_device": ([("dev.jpg", None, tarfile.CHRTYPE)], [r"character device"], ""),
    "block_device": ([("blk.png", None, tarfile.BLKTYPE)], [r"block device"], ""),
    "fifo_member": ([("pipe.jpg", None, tarfile.FIFOTYPE)], [r"named pipe"], ""),
    "symlink_caption": ([("a.jpg", JPEG), ("a.txt", None, tarfile.SYMTYPE, "/etc/passwd")], [None],
                        r"1 members that are not regular files"),
    "macos_resource_fork": ([("a.jpg", JPEG), ("._a.jpg", b"\x00\x05\x16\x07junk")], [None], r"1 hidden members"),
    "no_image_member": ([("a.txt", b"caption only")], [r"no image member \(found: txt\)"], ""),
    "repeated_name": ([("a.jpg", JPEG), ("a.jpg", _jpeg(1))], [None, r"second member of this name"], ""),
    "two_images_one_key": ([("a.jpg", JPEG), ("a.png", JPEG)], [None], r"1 extra image members"),
    "dot_dot_key": ([("../../evil.jpg", JPEG)], [None], ""),
    "absolute_key": ([("/tmp/evil.jpg", JPEG)], [None], ""),
    "newline_in_key": ([("a\nb.jpg", JPEG)], [None], ""),
    "non_utf8_key": ([("caf\udce9.jpg", JPEG)], [None], ""),
    "corrupt_image": ([("a.jpg", JPEG), ("b.jpg", b"\xff\xd8\xff garbage")], [None, r"decode|not an image"], ""),
    "only_folders_and_images": ([("dir/", None, tarfile.DIRTYPE), ("dir/a.jpg", JPEG)], [None], ""),
    "giant_json_caption": ([("a.jpg", JPEG), ("a.json", b"[" * 200_000)], [None], ""),
    "oversized_caption": ([("a.jpg", JPEG), ("a.txt", b"x" * ((1 << 20) + 1))], [None], r"captions over"),
}


@pytest.mark.parametrize("case", sorted(TAR_CASES))
def test_tar_members_each_get_a_row_or_a_counted_skip(tmp_path, case):
    members, expected, warning = TAR_CASES[case]
    shard = _tar(tmp_path / "in" / "00000.tar", members)
    out = tmp_path / "out"
    before = _snapshot(tmp_path)
    outcome = cli("predict", shard, *TINY, "--no-cache", *LABELS, "--output-dir", out, "--shard-size", "4")
    assert_no_traceback(outcome)
    assert outcome.status == (1 if any(expected) else 0), outcome.stderr
    import pyarrow.parquet as pq

    rows = pq.ParquetDataset(str(out)).read().to_pylist() if out.exists() else []
    assert len(rows) == len(expected), rows
    for row, pattern in zip(rows, expected, strict=True):
        if pattern is None:
            assert not row["error"], row
        else:
            assert row["error"] and re.search(pattern, row["error"]), (pattern, row["error"])
        assert row["key"] is None or row["key"].isprintable(), row["key"]  # keys are lossless text
    if warning:
        assert re.search(warning, outcome.stderr), outcome.stderr
    new = _snapshot(tmp_path) - before
    assert all(p == "out" or p.startswith("out/") for p in new), new  # nothing written outside the output


def test_tar_members_keep_their_keys_and_captions_in_every_output_format(tmp_path):
    shard = _tar(tmp_path / "00000.tar", [("k1.jpg", JPEG), ("k1.txt", b"a caption\n"), ("k2.jpg", _jpeg(2)),
                                          ("k2.json", json.dumps({"caption": "from json"}).encode()),
                                          ("k3.jpg", b"not a jpeg")])
    for fmt in ("jsonl", "json", "csv", "parquet"):
        outcome, rows = _run_rows(tmp_path, shard, fmt=fmt)
        assert outcome.status == 1
        assert [r["key"] for r in rows] == ["k1", "k2", "k3"], fmt
        assert [r["caption"] or None for r in rows] == ["a caption", "from json", None], fmt


# -- class tar_size: a member of any size costs bounded memory ------------------------------------------------------
def _sparse_tar(path: Path, member_size: int, ext: str = "jpg") -> Path:
    """A shard whose one member claims ``member_size`` bytes, stored as a sparse file (nothing on disk)."""
    info = tarfile.TarInfo(f"huge.{ext}")
    info.size = member_size
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    end = len(header) + (member_size + 511) // 512 * 512
    with open(path, "wb") as handle:
        handle.write(header)
        handle.seek(end)
        handle.write(b"\0" * 1024)
    return path


def test_tar_size_a_1_5_gib_member_is_refused_without_being_read(tmp_path):
    shard = _sparse_tar(tmp_path / "huge.tar", 3 * GIB // 2)
    outcome, rows = _run_rows(tmp_path, shard)
    assert outcome.status == 1
    assert len(rows) == 1 and "over the 268,435,456-byte limit" in rows[0]["error"], rows


def test_tar_size_a_1_5_gib_caption_is_not_read_and_memory_stays_bounded(tmp_path):
    """In a child process: peak memory stays below what reading the 1.5 GiB member whole would need."""
    shard = _sparse_tar(tmp_path / "huge.tar", 3 * GIB // 2, ext="txt")
    with tarfile.open(tmp_path / "img.tar", "w") as archive:
        _member(archive, "huge.jpg", JPEG)
    script = ("import resource, sys; from emoclip.cli.main import main\n"
              "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
              "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", script, "predict", str(shard), str(tmp_path / "img.tar"), *TINY,
                           "--no-cache", *LABELS, "-o", str(tmp_path / "o.jsonl")], cwd=REPO,
                          capture_output=True, text=True, timeout=100)
    assert "Traceback" not in done.stderr, done.stderr
    rss_kib = int(done.stdout.split("MAXRSS")[-1])
    # torch and the tiny model peak at about 1 GiB here; read whole, the member would add 1.5 GiB to that
    assert rss_kib * 1024 < 2 * GIB, rss_kib
    assert "captions over" in done.stderr
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["error"] is not None for r in rows] == [True, False]  # caption-only sample, then the image


def test_tar_size_files_shipped_to_workers_are_bounded_and_never_block(tmp_path, monkeypatch):
    """What ``--engine ray`` reads into bytes: a FIFO would block, a huge file would be held whole."""
    import emoclip.tagging.inputs as inputs

    os.mkfifo(tmp_path / "pipe.jpg")
    big = tmp_path / "big.jpg"
    big.write_bytes(JPEG)
    monkeypatch.setattr(inputs, "MAX_MEMBER_BYTES", len(JPEG) - 1)
    loaded = inputs.load_items([inputs.Item(name=str(p), path=str(p)) for p in (tmp_path / "pipe.jpg", big)],
                               as_bytes=True)
    assert "named pipe" in loaded[0] and "over the" in loaded[1], loaded


def test_tar_size_chunks_are_bounded_in_bytes_at_whole_batches():
    from emoclip.tagging.inputs import Item, _chunks

    items = [Item(name=str(i), tar="t", size=100) for i in range(10)]
    chunks = [len(c) for c in _chunks(items, batch=2, most=8, budget=350)]
    assert chunks == [4, 4, 2]  # cut at the first whole batch past 350 bytes
    assert [len(c) for c in _chunks(items, batch=2, most=8, budget=10**9)] == [8, 2]


def test_tar_size_a_brace_range_of_a_billion_shards_is_one_line(tmp_path):
    assert_refused(cli("predict", str(tmp_path / "{000000000..999999999}.tar"), *TINY, "--no-cache"),
                   r"names more than 1,000,000 shards|does not exist")


# -- class compressed: compressed shards are one line, by name or by their bytes ----------------------------------
@pytest.mark.parametrize("name", ["a.tar.gz", "a.tgz", "a.tar.xz", "a.txz", "a.tar.bz2", "a.tar.zst"])
def test_compressed_shard_by_name_is_one_line(tmp_path, name):
    mode = {"gz": "w:gz", "tgz": "w:gz", "xz": "w:xz", "txz": "w:xz", "bz2": "w:bz2"}.get(name.rsplit(".", 1)[1])
    path = tmp_path / name
    if mode:
        with tarfile.open(path, mode) as archive:
            _member(archive, "a.jpg", JPEG)
    else:
        path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 64)
    assert_refused(cli("predict", path, *TINY, "--no-cache"), r"compressed tar; .* decompress it first")


@pytest.mark.parametrize("mode", ["w:gz", "w:xz", "w:bz2"])
def test_compressed_shard_named_tar_is_one_line(tmp_path, mode):
    path = tmp_path / "a.tar"
    with tarfile.open(path, mode) as archive:
        _member(archive, "a.jpg", JPEG)
    assert_refused(cli("predict", path, *TINY, "--no-cache"), r"-compressed tar; .*decompress it first")


def test_compressed_tar_named_as_an_image_is_an_error_row(tmp_path):
    path = tmp_path / "a.jpg"
    with tarfile.open(path, "w:xz") as archive:
        _member(archive, "a.jpg", JPEG)
    outcome, rows = _run_rows(tmp_path, path)
    assert outcome.status == 1 and "not an image" in rows[0]["error"]


# -- class empty: an input that holds nothing is exit 2 with one line ---------------------------------------------
def _empty_parquet(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": pa.array([], pa.string())}), path)
    return path


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


EMPTY_CASES = {
    "empty_tar": lambda d: (_tar(d / "e.tar", []),),
    "tar_of_folders": lambda d: (_tar(d / "f.tar", [("x/", None, tarfile.DIRTYPE), ("x/y/", None, tarfile.DIRTYPE)]),),
    "zero_byte_tar": lambda d: (_written(d / "z.tar", b""),),
    "empty_list": lambda d: ("--files-from", _written(d / "l.txt", b"")),
    "comments_only_list": lambda d: ("--files-from", _written(d / "l.txt", b"# nothing\n\n  \n")),
    "bom_only_list": lambda d: ("--files-from", _written(d / "l.txt", b"\xef\xbb\xbf\n")),
    "empty_parquet_list": lambda d: ("--files-from", _empty_parquet(d / "l.parquet")),
    "empty_folder": lambda d: (_folder(d / "empty"),),
}


@pytest.mark.parametrize("case", sorted(EMPTY_CASES))
def test_empty_input_is_exit_2_with_one_line(tmp_path, case):
    outcome = cli("predict", *EMPTY_CASES[case](tmp_path), *TINY, "--no-cache", "-o", tmp_path / "o.csv")
    if case == "zero_byte_tar":  # not a tar at all: a row saying so, like a broken image
        assert_no_traceback(outcome)
        assert outcome.status == 1 and (tmp_path / "o.csv").exists()
        return
    assert_refused(outcome, r"no images in ")
    assert not (tmp_path / "o.csv").exists()


def test_empty_input_among_others_is_a_warning(tmp_path):
    good = good_jpeg(tmp_path / "a.jpg")
    outcome, rows = _run_rows(tmp_path, _tar(tmp_path / "e.tar", []), good)
    assert outcome.status == 0 and len(rows) == 1
    assert "no images in" in outcome.stderr and "e.tar" in outcome.stderr


# -- class lists: --files-from in every encoding, with hostile lines, and broken Parquet ---------------------------
def _images(tmp_path: Path, n: int = 3) -> list[Path]:
    return [good_jpeg(tmp_path / f"img{i}.jpg", seed=i) for i in range(n)]


LIST_ENCODINGS = {
    "utf8": lambda text: text.encode("utf-8"),
    "utf8_bom": lambda text: b"\xef\xbb\xbf" + text.encode("utf-8"),
    "utf16_le_bom": lambda text: text.encode("utf-16"),   # Python writes the BOM, little-endian here
    "utf16_be_bom": lambda text: b"\xfe\xff" + text.encode("utf-16-be"),
    "utf32_bom": lambda text: text.encode("utf-32"),
    "crlf": lambda text: text.replace("\n", "\r\n").encode("utf-8"),
    "no_final_newline": lambda text: text.rstrip("\n").encode("utf-8"),
    "blank_and_comments": lambda text: ("# list\n\n" + text.replace("\n", "\n\n")).encode("utf-8"),
}


@pytest.mark.parametrize("encoding", sorted(LIST_ENCODINGS))
def test_lists_in_any_encoding_give_every_path_in_order(tmp_path, encoding):
    images = _images(tmp_path)[::-1]  # listed order, not sorted order
    listing = tmp_path / "list.txt"
    listing.write_bytes(LIST_ENCODINGS[encoding]("".join(f"{p}\n" for p in images)))
    outcome, rows = _run_rows(tmp_path, "--files-from", listing)
    assert outcome.status == 0, outcome.stderr
    assert [r["path"] for r in rows] == [str(p) for p in images]


def test_lists_with_a_non_utf8_file_name_find_the_file(tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9.jpg"
    with open(raw, "wb") as handle:
        handle.write(JPEG)
    listing = tmp_path / "list.txt"
    listing.write_bytes(raw + b"\n")
    outcome, rows = _run_rows(tmp_path, "--files-from", listing)
    assert outcome.status == 0 and rows[0]["path"].endswith("caf\\xe9.jpg") and rows[0]["error"] is None


@pytest.mark.parametrize(("content", "pattern"), [
    (b"a.jpg\nb\x00c.jpg\n", r"line 2 of --files-from .* holds a NUL byte"),
    (b"a.jpg\x00b.jpg\x00", r"line 1 .* NUL byte.*-print0"),
    (b"\xff\xfeab\x00", r"UTF-16 mark but is not UTF-16|NUL byte"),
])
def test_lists_with_nul_bytes_are_one_line(tmp_path, content, pattern):
    listing = tmp_path / "list.txt"
    listing.write_bytes(content)
    assert_refused(cli("predict", "--files-from", listing, *TINY, "--no-cache"), pattern)


def _parquet(path: Path, values, column: str = "path") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: values}), path)
    return path


def test_lists_parquet_nulls_and_empty_entries_get_rows_in_place(tmp_path):
    import pyarrow as pa

    a, b = _images(tmp_path, 2)
    listing = _parquet(tmp_path / "l.parquet", pa.array([str(a), None, "", str(b)], pa.string()))
    outcome, rows = _run_rows(tmp_path, "--files-from", listing)
    assert outcome.status == 1
    assert [r["path"] for r in rows][::3] == [str(a), str(b)]
    assert "row 1 of --files-from has no path (null" in rows[1]["error"]
    assert "row 2 of --files-from has no path (empty" in rows[2]["error"]


@pytest.mark.parametrize("cache", ["--no-cache", "--cache-dir"])
def test_lists_parquet_path_with_a_nul_byte_is_an_error_row(tmp_path, cache):
    import pyarrow as pa

    (a,) = _images(tmp_path, 1)
    listing = _parquet(tmp_path / "l.parquet", pa.array([str(a), "x\0y.jpg"], pa.string()))
    args = (cache, tmp_path / "cache") if cache == "--cache-dir" else (cache,)
    out = tmp_path / "o.jsonl"
    outcome = cli("predict", "--files-from", listing, *TINY, *LABELS, *args, "-o", out)
    assert_no_traceback(outcome)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert outcome.status == 1 and rows[0]["error"] is None and "NUL byte" in rows[1]["error"]


def test_lists_parquet_dictionary_and_binary_columns_are_paths(tmp_path):
    import pyarrow as pa

    a, b = _images(tmp_path, 2)
    for column in (pa.array([str(a), str(b)]).dictionary_encode(), pa.array([os.fsencode(a), os.fsencode(b)])):
        outcome, rows = _run_rows(tmp_path, "--files-from", _parquet(tmp_path / "l.parquet", column))
        assert outcome.status == 0 and [r["path"] for r in rows] == [str(a), str(b)]


def _truncated_parquet(path: Path) -> Path:
    import pyarrow as pa

    whole = _parquet(path, pa.array(["a.jpg"] * 100)).read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return path


BAD_PARQUET = {
    "random_bytes": (lambda p: _written(p, bytes(range(256)) * 4), r"cannot read .* as Parquet"),
    "truncated": (_truncated_parquet, r"cannot read .* as Parquet"),
    "magic_only": (lambda p: _written(p, b"PAR1"), r"cannot read .* as Parquet"),
    "zero_bytes": (lambda p: _written(p, b""), r"cannot read .* as Parquet"),
    "int_column": (lambda p: _parquet(p, [1, 2, 3]), r"holds int64 values, not paths"),
    "wrong_column": (lambda p: _parquet(p, ["a.jpg"], column="file"), r"has no column 'path' \(it has: file\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_PARQUET))
def test_lists_broken_parquet_is_one_line(tmp_path, case):
    make, pattern = BAD_PARQUET[case]
    listing = make(tmp_path / "l.parquet")
    assert_refused(cli("predict", "--files-from", listing, *TINY, "--no-cache"), pattern)


@pytest.mark.parametrize("kind", ["fifo", "folder", "missing"])
def test_lists_that_are_not_regular_files_are_one_line_without_hanging(tmp_path, kind):
    listing = tmp_path / "list.txt"
    if kind == "fifo":
        os.mkfifo(listing)
    elif kind == "folder":
        listing.mkdir()
    assert_refused(cli("predict", "--files-from", listing, *TINY, "--no-cache"),
                   r"not a regular file|does not exist|is a directory")


# -- class order: rows follow the order inputs were named ---------------------------------------------------------
def test_order_rows_follow_the_order_inputs_were_named(tmp_path):
    folder = tmp_path / "folder"
    in_folder = [good_jpeg(folder / f"{n}.jpg", seed=i) for i, n in enumerate("ba")]
    shard = _tar(tmp_path / "s.tar", [("k2.jpg", JPEG), ("k1.jpg", _jpeg(3))])
    single = good_jpeg(tmp_path / "0.jpg", seed=9)
    listed = good_jpeg(tmp_path / "listed.jpg", seed=8)
    (tmp_path / "list.txt").write_text(f"{listed}\n")
    outcome, rows = _run_rows(tmp_path, shard, folder, single, "--files-from", tmp_path / "list.txt")
    assert outcome.status == 0, outcome.stderr
    assert [r["path"] for r in rows] == [f"{shard}/k2.jpg", f"{shard}/k1.jpg", *map(str, sorted(in_folder)),
                                         str(single), str(listed)]
    assert [r["key"] for r in rows] == ["k2", "k1", None, None, None, None]


def test_order_a_file_named_twice_is_tagged_once_where_first_named(tmp_path):
    a, b = _images(tmp_path, 2)
    _, rows = _run_rows(tmp_path, b, a, b)
    assert [r["path"] for r in rows] == [str(b), str(a)]


# -- class formats: what phones and the web write decode, or name the missing plugin ------------------------------
def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    noise_image(48, 40, seed=4).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "suffix"), [("WEBP", ".webp"), ("AVIF", ".avif"), ("HEIF", ".heic")])
def test_formats_from_phones_and_the_web_decode(tmp_path, fmt, suffix):
    if fmt == "HEIF":
        pytest.importorskip("pillow_heif", reason="HEIC needs the optional extra emoclip[heif]")
    from PIL import features

    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support (Pillow >= 11.2 wheels have it)")
    path = tmp_path / f"photo{suffix}"
    path.write_bytes(_encoded(fmt))
    shard = _tar(tmp_path / "s.tar", [(f"k{suffix}", path.read_bytes())])
    outcome, rows = _run_rows(tmp_path, path, shard)
    assert outcome.status == 0 and [r["error"] for r in rows] == [None, None], rows


@pytest.mark.parametrize(("fmt", "plugin"), [("HEIF", r"pillow-heif.*emoclip\[heif\]"), ("AVIF", r"Pillow to 11\.2")])
def test_formats_without_their_plugin_get_a_row_naming_it(tmp_path, monkeypatch, fmt, plugin):
    try:
        data = _encoded(fmt)
    except (KeyError, OSError):
        pytest.skip(f"no {fmt} encoder here to make the case")
    monkeypatch.setattr(Image, "ID", [name for name in Image.ID if name != fmt])  # as if never installed
    path = tmp_path / "photo.img"
    path.write_bytes(data)
    outcome, rows = _run_rows(tmp_path, path)
    assert outcome.status == 1 and re.search(plugin, rows[0]["error"]), rows


def test_formats_jpeg_xl_bytes_name_a_plugin(tmp_path):
    path = tmp_path / "photo.jxl"
    path.write_bytes(b"\x00\x00\x00\x0cJXL \r\n\x87\n" + b"\x00" * 64)
    outcome, rows = _run_rows(tmp_path, path)
    assert outcome.status == 1 and ("JPEG XL" in rows[0]["error"] or "decode" in rows[0]["error"])


# -- class cache: a feature-cache hit answers exactly as a miss ---------------------------------------------------
@pytest.mark.parametrize(("size", "limit"), [((64, 64), 1_000), ((64, 64), 64 * 64 - 1), ((300, 300), 40_000),
                                             ((4, 400), 100_000)])
def test_cache_hit_applies_max_pixels_like_a_miss(tmp_path, size, limit):
    image = tmp_path / "img.png"
    noise_image(*size, seed=5).save(image)
    cache = tmp_path / "cache"
    warm = cli("predict", image, *TINY, *LABELS, "--cache-dir", cache)  # fills the cache, default limit
    assert warm.status == 0 and warm.rows()[0]["error"] is None
    hit = cli("predict", image, *TINY, *LABELS, "--cache-dir", cache, "--max-pixels", limit)
    miss = cli("predict", image, *TINY, *LABELS, "--no-cache", "--max-pixels", limit)
    assert_no_traceback(hit)
    assert hit.status == miss.status == 1
    assert hit.rows()[0]["error"] == miss.rows()[0]["error"]
    assert "--max-pixels" in hit.rows()[0]["error"] or "elongated" in hit.rows()[0]["error"]


def test_cache_hit_of_a_file_turned_into_a_fifo_is_refused_like_a_miss(tmp_path):
    image = good_jpeg(tmp_path / "a.jpg")
    cache = tmp_path / "cache"
    assert cli("predict", image, *TINY, *LABELS, "--cache-dir", cache).status == 0
    image.unlink()
    os.mkfifo(image)
    hit = cli("predict", image, *TINY, *LABELS, "--cache-dir", cache)
    assert hit.status == 1 and "named pipe" in hit.rows()[0]["error"]


def test_cache_message_over_twice_pillows_limit_quotes_max_pixels(tmp_path):
    """A header claiming 200 MP — over twice Pillow's own 89 MP limit — quotes --max-pixels."""
    from tests.adversarial.test_adv_images import _png_header_only

    path = tmp_path / "giant.png"
    path.write_bytes(_png_header_only(20_000, 10_000))
    for limit in ("1000", "89478485", "150000000"):
        _, rows = _run_rows(tmp_path, path, extra=("--max-pixels", limit))
        assert f"limit --max-pixels {int(limit):,}" in rows[0]["error"], rows[0]["error"]


def _output_is_input(tmp_path: Path, which: str) -> tuple[tuple, Path, Path]:
    """(arguments, --output, the input it is): -o accepts .csv/.json/.parquet names, so the inputs
    are an image named .csv, a link named .json to a shard, and a Parquet list."""
    image = tmp_path / "a.csv"
    image.write_bytes(JPEG)
    if which == "image":
        return (image,), image, image
    if which == "image_by_link":
        (tmp_path / "link.csv").symlink_to(image)
        return (image,), tmp_path / "link.csv", image
    if which == "tar":
        shard = _tar(tmp_path / "s.tar", [("k.jpg", JPEG)])
        (tmp_path / "s.json").symlink_to(shard)
        return (shard,), tmp_path / "s.json", shard
    listing = _parquet(tmp_path / "l.parquet", [str(image)])
    return ("--files-from", listing), listing, listing


@pytest.mark.parametrize("which", ["image", "image_by_link", "tar", "parquet_list"])
def test_confinement_output_that_is_an_input_is_refused_and_the_input_kept(tmp_path, which):
    args, output, source = _output_is_input(tmp_path, which)
    before = source.read_bytes()
    assert_refused(cli("predict", *args, *TINY, "--no-cache", *LABELS, "-o", output), r"is one of the inputs")
    assert source.read_bytes() == before


# -- class confinement: names from inputs never become paths outside the output -----------------------------------
@pytest.mark.parametrize("name", ["../x", "/etc/x", "a/../../x", "", "a\0b", "C:evil", "~/x", "a//b", "./a"])
def test_confinement_refuses_names_that_leave_the_folder(tmp_path, name):
    from emoclip.core.errors import EmoclipError
    from emoclip.core.files import confined

    with pytest.raises(EmoclipError, match="would leave"):
        confined(tmp_path, name, "key")


def test_confinement_accepts_plain_relative_names(tmp_path):
    from emoclip.core.files import confined

    assert confined(tmp_path, "a/b.jpg") == tmp_path / "a" / "b.jpg"


def test_confinement_hostile_keys_write_only_inside_the_output(tmp_path):
    shard = _tar(tmp_path / "in.tar", [("../../../up.jpg", JPEG), ("/abs.jpg", _jpeg(1)),
                                       ("a/../../b.jpg", _jpeg(2)), ("_emoclip_manifest.json.jpg", _jpeg(3))])
    out = tmp_path / "out"
    before = _snapshot(tmp_path)
    outcome = cli("predict", shard, *TINY, *LABELS, "--cache-dir", tmp_path / "cache", "--output-dir", out,
                  "--shard-size", "2", "--save-features")
    assert outcome.status == 0, outcome.stderr
    new = {p for p in _snapshot(tmp_path) - before if not p.startswith("cache")}
    assert new and all(p == "out" or p.startswith("out/") for p in new), new
    assert not (tmp_path.parent / "up.jpg").exists()
