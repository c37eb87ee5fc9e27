"""Adversarial images, file names, special files and sizes: every input gets exactly one row, the
row says why when the file cannot be used, nothing hangs, and every output format stays valid."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from emoclip.core.files import name_from_text, name_text
from tests.adversarial.conftest import TINY, assert_no_traceback, assert_refused, cli, good_jpeg
from tests.conftest import noise_image

pytestmark = pytest.mark.timeout(120)


# -- bad images: (name, bytes factory, expected reason) --------------------------------------------------------
def _jpeg_bytes(size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    noise_image(*size, seed=7).save(buffer, format="JPEG")
    return buffer.getvalue()


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _format_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    noise_image(64, 48, seed=8).save(buffer, format=fmt)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width``×``height`` and which has no image data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b""))


BAD_IMAGES = {
    "zero_bytes.jpg": (lambda: b"", r"empty file"),
    "truncated_half.jpg": (lambda: _jpeg_bytes((400, 300))[: len(_jpeg_bytes((400, 300))) // 2], r"truncated|decode"),
    "jpeg_soi_only.jpg": (lambda: b"\xff\xd8\xff", r"truncated|decode|not an image"),
    "text.jpg": (lambda: b"this is a text file, not a photo\n", r"not an image"),
    "html.png": (lambda: b"<!doctype html><html><body>404</body></html>", r"not an image"),
    "random.png": (lambda: os.urandom(0) + bytes(range(256)) * 8, r"not an image"),
    "truncated.png": (lambda: _png_bytes(noise_image(200, 150, seed=9))[:300], r"truncated|decode"),
    "png_header_only.png": (lambda: _png_header_only(64, 64), r"truncated|decode"),
    "png_claims_giant.png": (lambda: _png_header_only(100_000, 100_000), r"too large"),
    "truncated.gif": (lambda: _format_bytes("GIF")[:40], r"truncated|decode|not an image"),
    "truncated.webp": (lambda: _format_bytes("WEBP")[:30], r"truncated|decode|not an image"),
    "truncated.tif": (lambda: _format_bytes("TIFF")[:60], r"truncated|decode|not an image"),
    "truncated.bmp": (lambda: _format_bytes("BMP")[:80], r"truncated|decode|not an image"),
    "bomb_10000x10000.png": (lambda: _png_bytes(Image.new("1", (10_000, 10_000))), r"too large"),
    "thin_1x100000.png": (lambda: _png_bytes(Image.new("1", (1, 100_000))), r"too elongated.*32x3200000"),
    "garbage.avif": (lambda: b"\x00\x00\x00\x1cftypavif" + b"\x00" * 40, r"not an image|decode"),
    "garbage.heic": (lambda: b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40, r"not an image|decode"),
}
GOOD_ODD_IMAGES = {
    "one_pixel.png": lambda: _png_bytes(noise_image(1, 1, seed=1)),
    "tall_but_fine_20x400.png": lambda: _png_bytes(noise_image(20, 400, seed=2)),
    "animated.gif": lambda: _animated_gif(),
    "real.webp": lambda: _format_bytes("WEBP"),
}


def _animated_gif() -> bytes:
    buffer = io.BytesIO()
    frames = [noise_image(32, 32, seed=s).convert("P") for s in range(3)]
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad-images")
    for name, (make, _) in BAD_IMAGES.items():
        (folder / name).write_bytes(make())
    for name, make in GOOD_ODD_IMAGES.items():
        (folder / name).write_bytes(make())
    good_jpeg(folder / "good.jpg")
    return folder


@pytest.fixture(scope="module")
def bad_rows(bad_folder) -> dict[str, dict]:
    outcome = cli("predict", bad_folder, *TINY, "--no-cache", "--labels", "calm,tense")
    assert_no_traceback(outcome)
    assert outcome.status == 1, outcome.stderr
    assert f"{len(BAD_IMAGES)} of {len(BAD_IMAGES) + len(GOOD_ODD_IMAGES) + 1} files could not be read" in \
        outcome.stderr
    rows = outcome.rows()
    assert len(rows) == len(BAD_IMAGES) + len(GOOD_ODD_IMAGES) + 1
    return {Path(name_from_text(r["path"])).name: r for r in rows}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_gets_one_error_row(bad_rows, name):
    row = bad_rows[name]
    assert row["label"] is None and row["probability"] is None
    assert row["error"] and "\n" not in row["error"]
    import re

    assert re.search(BAD_IMAGES[name][1], row["error"]), row["error"]


@pytest.mark.parametrize("name", sorted([*GOOD_ODD_IMAGES, "good.jpg"]))
def test_odd_but_valid_image_is_tagged(bad_rows, name):
    row = bad_rows[name]
    assert row["error"] is None and row["label"] in ("calm", "tense") and 0 < row["probability"] <= 1


ELONGATED = {"thin_1x10000.png": (1, 10_000), "wide_10000x1.png": (10_000, 1)}


@pytest.mark.parametrize("name", sorted(ELONGATED))
def test_post_resize_size_is_bounded_at_vit_b32_input(tmp_path, name):
    from emoclip.core.errors import ImageDecodeError
    from emoclip.encoder.decode import load_rgb

    path = tmp_path / name
    path.write_bytes(_png_bytes(Image.new("L", ELONGATED[name])))
    assert path.stat().st_size < 200  # the 123-byte PNG
    with pytest.raises(ImageDecodeError, match=r"224x2240000|2240000x224"):
        load_rgb(path, resize_to=224)  # ViT-B/32: 501,760,000 pixels after the resize, over 89,478,485


@pytest.mark.parametrize("name", sorted(ELONGATED))
def test_post_resize_bound_uses_the_models_input_side(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(_png_bytes(Image.new("L", ELONGATED[name])))
    outcome = cli("predict", path, *TINY, "--no-cache", "--labels", "calm,tense", "--max-pixels", 10_000_000)
    assert_no_traceback(outcome)
    assert outcome.status == 1  # tiny's input side is 32: 32x320000 = 10,240,000 pixels
    assert "320000" in outcome.rows()[0]["error"] and "too elongated" in outcome.rows()[0]["error"]
    allowed = cli("predict", path, *TINY, "--no-cache", "--labels", "calm,tense", "--max-pixels", 20_000_000)
    assert allowed.status == 0 and allowed.rows()[0]["error"] is None


# -- hostile names --------------------------------------------------------------------------------------------
HOSTILE_NAMES = {
    "carriage_return": "a\rb.jpg",
    "newline": "a\nb.jpg",
    "tab": "a\tb.jpg",
    "comma_quote": 'a,"b".jpg',
    "semicolon_pipe": "a;b|c.jpg",
    "leading_space": " lead.jpg",
    "trailing_space": "trail .jpg",
    "leading_dash": "-o.jpg",
    "nfd_unicode": "cafe\u0301.jpg",
    "emoji": "\U0001F600.jpg",
    "rtl_override": "\u202egpj.exe.jpg",
    "zero_width": "zero\u200bwidth.jpg",
    "line_separator": "a\u2028b.jpg",
    "next_line_c1": "a\x85b.jpg",
    "backslash": "back\\slash.jpg",
    "backslash_x_literal": "\\xff.jpg",
    "format_braces": "{0}{}%s.jpg",
    "shell": "$(touch pwned).jpg",
    "glob_chars": "[a]*?.jpg",
    "non_utf8": os.fsdecode(b"caf\xe9.jpg"),
    "non_utf8_invalid_seq": os.fsdecode(b"\xff\xfe\xc3.jpg"),
    "long_255_bytes": "x" * 251 + ".jpg",
}
FORMATS = ("jsonl", "csv", "json", "parquet")


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile-names")
    data = good_jpeg(folder / "plain.jpg").read_bytes()
    for name in HOSTILE_NAMES.values():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def hostile_outputs(hostile_folder, tmp_path_factory) -> dict[str, list[str]]:
    """Format → the paths read back from its output file (csv via Python's csv *and* pandas)."""
    import pandas as pd

    out = tmp_path_factory.mktemp("hostile-out")
    paths: dict[str, list[str]] = {}
    for fmt in FORMATS:
        target = out / f"tags.{fmt}"
        outcome = cli("predict", hostile_folder, *TINY, "--labels", "calm,tense", "-o", target)
        assert_no_traceback(outcome)
        assert outcome.status == 0, outcome.stderr
        raw = target.read_bytes()
        if fmt == "jsonl":
            text = raw.decode("utf-8")  # strict: the file must be valid UTF-8
            paths[fmt] = [json.loads(line)["path"] for line in text.split("\n") if line]
        elif fmt == "json":
            paths[fmt] = [r["path"] for r in json.loads(raw.decode("utf-8"))]
        elif fmt == "csv":
            import csv

            rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))
            frame = pd.read_csv(target, keep_default_na=False)
            assert list(frame["path"]) == [r["path"] for r in rows]
            paths[fmt] = [r["path"] for r in rows]
        else:
            paths[fmt] = list(pd.read_parquet(target)["path"])
    return paths


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(HOSTILE_NAMES))
def test_hostile_name_round_trips_in_every_format(hostile_folder, hostile_outputs, case, fmt):
    expected = os.path.join(hostile_folder, HOSTILE_NAMES[case])
    written = [p for p in hostile_outputs[fmt] if name_from_text(p) == expected]
    assert len(written) == 1, (case, fmt)
    assert written[0] == name_text(expected) and written[0].isprintable()
    assert len(hostile_outputs[fmt]) == len(HOSTILE_NAMES) + 1  # one row per file, no extra rows


def test_hostile_names_to_stdout_are_valid_utf8_one_row_each(hostile_folder):
    outcome = cli("predict", hostile_folder, *TINY, "--labels", "calm,tense", "--format", "csv")
    assert_no_traceback(outcome)
    assert outcome.status == 0
    outcome.stdout.encode("utf-8")  # no lone surrogates reached the stream
    assert len(outcome.csv_rows()) == len(HOSTILE_NAMES) + 1
    assert not (hostile_folder / "pwned").exists()


def test_name_starting_with_dash_is_a_file_after_double_dash(hostile_folder):
    outcome = cli("predict", *TINY, "--labels", "calm,tense", "--", hostile_folder / "-o.jpg")
    assert outcome.status == 0 and len(outcome.rows()) == 1


# -- special files and folder walks ---------------------------------------------------------------------------
def _special(kind: str, folder: Path) -> Path:
    if kind == "fifo":
        os.mkfifo(folder / "pipe.jpg")
        return folder / "pipe.jpg"
    if kind == "socket":
        path = folder / "sock.jpg"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
        return path
    if kind == "broken_link":
        os.symlink(folder / "nowhere.jpg", folder / "broken.jpg")
        return folder / "broken.jpg"
    if kind == "link_loop":
        os.symlink(folder / "loop.jpg", folder / "loop.jpg")
        return folder / "loop.jpg"
    return Path({"dev_zero": "/dev/zero", "dev_null": "/dev/null", "dev_urandom": "/dev/urandom"}[kind])


SPECIAL = {"fifo": r"not a regular file \(a named pipe", "socket": r"not a regular file \(a socket",
           "broken_link": r"cannot read file: No such file", "link_loop": r"cannot read file: Too many levels",
           "dev_zero": r"not a regular file \(a character device", "dev_null": r"character device",
           "dev_urandom": r"character device"}


@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_special_file_named_explicitly_gets_an_error_row_and_never_hangs(tmp_path, kind):
    import re

    target = _special(kind, tmp_path)
    good = good_jpeg(tmp_path / "good.jpg")
    outcome = cli("predict", target, good, *TINY, "--labels", "calm,tense", "--cache-dir", tmp_path / "cache")
    assert_no_traceback(outcome)
    assert outcome.status == 1
    rows = outcome.rows()
    assert [r["error"] is None for r in rows] == [False, True]
    assert re.search(SPECIAL[kind], rows[0]["error"]), rows[0]["error"]


@pytest.mark.parametrize("kind", ["fifo", "socket", "broken_link", "link_loop"])
def test_special_file_with_image_name_in_a_walk_gets_a_row(tmp_path, kind):
    folder = tmp_path / "walk"
    folder.mkdir()
    _special(kind, folder)
    good_jpeg(folder / "good.jpg")
    outcome = cli("predict", folder, *TINY, "--labels", "calm,tense", "--no-cache")
    assert_no_traceback(outcome)
    assert outcome.status == 1 and len(outcome.rows()) == 2


def test_walk_counts_everything_it_skips(tmp_path):
    folder = tmp_path / "walk"
    (folder / "sub").mkdir(parents=True)
    good_jpeg(folder / "sub" / "good.jpg")
    (folder / "notes.txt").write_text("hi")
    (folder / ".hidden.jpg").write_bytes(b"")
    os.symlink(folder / "missing", folder / "dangling")
    os.symlink(folder, folder / "sub" / "back_to_top")  # a folder loop
    outcome = cli("predict", folder, *TINY, "--labels", "calm,tense", "--no-cache")
    assert_no_traceback(outcome)
    assert outcome.status == 0 and len(outcome.rows()) == 1
    warning = next(line for line in outcome.stderr.splitlines() if "skipped" in line)
    assert "skipped 4 entries" in warning
    for kind in ("files not named as images", "hidden entries", "broken links", "links back to a folder"):
        assert kind in warning


def test_unreadable_subfolder_is_counted(tmp_path, monkeypatch):
    folder = tmp_path / "walk"
    (folder / "locked").mkdir(parents=True)
    good_jpeg(folder / "good.jpg")
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    outcome = cli("predict", folder, *TINY, "--labels", "calm,tense", "--no-cache")
    assert outcome.status == 0 and len(outcome.rows()) == 1
    assert "1 unreadable folders" in outcome.stderr and "Permission denied" in outcome.stderr


def test_linked_folder_is_walked_once(tmp_path):
    real = tmp_path / "real"
    good_jpeg(real / "a.jpg")
    top = tmp_path / "top"
    top.mkdir()
    os.symlink(real, top / "linked")
    outcome = cli("predict", top, *TINY, "--labels", "calm,tense", "--no-cache")
    assert outcome.status == 0 and len(outcome.rows()) == 1


@pytest.mark.parametrize("suffix", [".avif", ".qoi", ".jp2", ".heic"])
def test_image_types_pillow_may_open_are_considered(tmp_path, suffix):
    folder = tmp_path / "types"
    folder.mkdir()
    try:
        noise_image(32, 32, seed=3).save(folder / f"x{suffix}")
        readable = True
    except (KeyError, OSError, ValueError):  # no encoder for it here: a renamed JPEG must still get a row
        good_jpeg(folder / f"x{suffix}")
        readable = suffix != ".heic"
    outcome = cli("predict", folder, *TINY, "--labels", "calm,tense", "--no-cache")
    assert_no_traceback(outcome)
    rows = outcome.rows()
    assert len(rows) == 1  # considered, never silently dropped
    assert (rows[0]["error"] is None) == readable or rows[0]["error"] is None


def test_empty_folder_named_explicitly_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_refused(cli("predict", tmp_path / "empty", *TINY), r"no images in .*empty")


def test_folder_of_non_images_is_refused_and_counted(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    outcome = cli("predict", tmp_path / "docs", *TINY)
    assert_refused(outcome, r"no images in")
    assert "1 files not named as images" in outcome.stderr


def test_glob_matching_nothing_is_refused(tmp_path):
    assert_refused(cli("predict", str(tmp_path / "*.jpg"), *TINY), r"no files match")


def test_missing_path_is_refused(tmp_path):
    assert_refused(cli("predict", tmp_path / "nope.jpg", *TINY), r"does not exist")
