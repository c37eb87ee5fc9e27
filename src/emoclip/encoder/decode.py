"""Robust image decoding.

Real collections hold truncated downloads, zero-byte files, PNGs named ``.jpg``, CMYK and 16-bit
images, palettes with transparency, EXIF-rotated phone photos and the occasional decompression
bomb. ``load_rgb`` turns every image that *can* be decoded correctly into an upright 8-bit RGB
picture, and raises ``ImageDecodeError`` with a one-line reason for the rest, so a batch records
the failure and goes on.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from emoclip.core.errors import ImageDecodeError

# Pillow's own default (about 89 megapixels); above it an image is refused as a possible bomb.
DEFAULT_MAX_PIXELS = 89_478_485
_BACKGROUND = (255, 255, 255)
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
# The side CLIP models resize the short side to (ViT-B/32: 224); callers pass the model's own.
DEFAULT_RESIZE_TO = 224
_FILE_KINDS = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a named pipe (FIFO)", stat.S_ISCHR: "a character device",
               stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}

# emoclip enforces its own pixel limit (``check_header`` refuses larger images with a reason that
# quotes --max-pixels, read from the header before any pixel is decoded), so Pillow's own limit is
# switched off: left on, an image over twice *its* limit was refused inside ``Image.open`` with a
# message quoting Pillow's figure instead of the user's. Set once at import (a process-wide global;
# setting it per call from decoding threads raced). Its warning is redundant too.
Image.MAX_IMAGE_PIXELS = None
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _register_plugins() -> dict[str, bool]:
    """Register the optional Pillow plugins that are installed; which ones were found."""
    found = {}
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        found["heif"] = True
    except Exception:  # not installed, or a broken libheif: HEIC files then get a row naming the plugin
        found["heif"] = False
    return found


PLUGINS = _register_plugins()

# Formats Pillow cannot open without a plugin, recognised by their first bytes so the error row can
# name what to install instead of "format not recognised". ISO-BMFF brands (bytes 8-12 of the
# `ftyp` box) for HEIF/AVIF; JPEG XL's codestream and container signatures.
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_MISSING_PLUGIN_HINTS = {
    "HEIC/HEIF": "install the pillow-heif plugin: pip install 'emoclip[heif]'",
    "AVIF": "upgrade Pillow to 11.2 or later (its wheels decode AVIF), or pip install pillow-avif-plugin",
    "JPEG XL": "install a JPEG XL plugin (pip install pillow-jxl-plugin) or convert it to PNG/JPEG",
}


def sniff_format(head: bytes) -> str | None:
    """The name of a plugin-only format from an image's first 32 bytes, else None."""
    if head[4:8] == b"ftyp":
        brands = {head[8:12]} | {head[i:i + 4] for i in range(16, min(len(head), 32), 4)}
        if brands & _AVIF_BRANDS:
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIC/HEIF"
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return "JPEG XL"
    return None


def _unrecognised(head: bytes) -> ImageDecodeError:
    fmt = sniff_format(head)
    if fmt is None:
        return ImageDecodeError("not an image (format not recognised)")
    return ImageDecodeError(f"{fmt} image, but this installation cannot decode {fmt}; {_MISSING_PLUGIN_HINTS[fmt]}")


@dataclass(frozen=True)
class ImageBytes:
    """An image that arrives as bytes, not as a file: an HTTP upload, a member of a tar shard.

    ``name`` is what its output row calls it (the upload's file name, the shard key). Everything
    that takes a path (decoding, the feature cache, the Tagger) takes one of these too, so uploads
    and shards run the same code as files.
    """

    name: str
    data: bytes = b""

    def __str__(self) -> str:
        return self.name


ImageSource = Path | ImageBytes


def as_source(item: str | Path | ImageBytes) -> ImageSource:
    """A path-like input as a Path; an ImageBytes as it is."""
    return item if isinstance(item, ImageBytes) else Path(item)


def _to_eight_bit_gray(img: Image.Image) -> Image.Image:
    """16/32-bit grayscale → 8-bit by scaling the full range (Pillow's convert would clip at 255)."""
    array = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite transparent images on white, as viewers show them, instead of dropping alpha."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB, with transparency flattened and deep grayscale rescaled."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES:
        return _to_eight_bit_gray(img).convert("RGB")
    if img.mode == "F":
        return _to_eight_bit_gray(img.point(lambda v: v * 255.0).convert("I")).convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        return _flatten_alpha(img)
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def regular_file_size(path: str | Path) -> int:
    """The size of a regular file; anything else (a FIFO would block, /dev/zero never ends) is refused
    with a reason *before* it is opened."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file: {exc.strerror or exc}") from None
    except ValueError:  # a name from a list or a Parquet column may hold what no file name can
        raise ImageDecodeError("no such file: the name holds a NUL byte") from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _FILE_KINDS.items() if test(info.st_mode)), "not a regular file")
        raise ImageDecodeError(f"not a regular file ({kind}); only image files are read")
    return info.st_size


def check_resized_size(width: int, height: int, max_pixels: int | None, resize_to: int | None) -> None:
    """Refuse a shape whose picture *after* the model's resize (short side → ``resize_to``) would
    exceed ``max_pixels``: a 123-byte 1×10000 PNG becomes 224×2,240,000 pixels there."""
    if max_pixels is None or not resize_to or min(width, height) <= 0:
        return
    scale = resize_to / min(width, height)
    resized = (round(width * scale), round(height * scale))
    if resized[0] * resized[1] > max_pixels:
        raise ImageDecodeError(
            f"image shape {width}x{height} is too elongated: the model's resize would make it "
            f"{resized[0]}x{resized[1]} = {resized[0] * resized[1]:,} pixels (limit {max_pixels:,}); crop it, "
            "or raise --max-pixels if you trust it")


def uses_draft(img: Image.Image, draft: int | None) -> bool:
    """Whether ``img`` (opened, not loaded) decodes at reduced size: a JPEG at least twice ``draft``."""
    return draft is not None and draft > 0 and img.format == "JPEG" and min(img.size) >= 2 * draft


def _open_source(path: str | Path | ImageBytes) -> io.BytesIO | Path:
    """What Pillow opens for ``path``: bytes in memory, or a regular, non-empty file (checked first)."""
    source = as_source(path)
    opened: io.BytesIO | Path
    if isinstance(source, ImageBytes):
        size, opened = len(source.data), io.BytesIO(source.data)
    else:
        size, opened = regular_file_size(source), source
    if size == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    return opened


def _check_shape(width: int, height: int, max_pixels: int | None, resize_to: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(
            f"image too large ({width}x{height} = {width * height:,} pixels, limit --max-pixels {max_pixels:,}); "
            "possible decompression bomb — raise --max-pixels if you trust it")
    check_resized_size(width, height, max_pixels, resize_to)


def _head(opened: io.BytesIO | Path) -> bytes:
    if isinstance(opened, io.BytesIO):
        return opened.getvalue()[:32]
    try:
        with open(opened, "rb") as handle:
            return handle.read(32)
    except OSError:
        return b""


def _decode_errors(opened: io.BytesIO | Path, exc: BaseException) -> ImageDecodeError:
    """Pillow's exceptions → one reason each (the caller raises it ``from None``)."""
    if isinstance(exc, UnidentifiedImageError):
        return _unrecognised(_head(opened))
    reason = str(exc) or type(exc).__name__
    if "truncated" in reason.lower() or isinstance(exc, EOFError):
        reason = f"truncated or corrupt image ({reason})"
    return ImageDecodeError(f"cannot decode image: {reason}")


_PILLOW_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)


def check_header(path: str | Path | ImageBytes, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 resize_to: int | None = DEFAULT_RESIZE_TO) -> None:
    """Every refusal of ``load_rgb`` that does not need the pixels — the file's kind, emptiness, the
    format, ``max_pixels`` and the resized shape — from the header alone, raising the same
    ``ImageDecodeError``.

    A feature-cache hit runs this instead of decoding, so the cache never changes an answer: the
    same image is tagged or refused with the same reason whether its features were cached or not
    (the cache key is the content, so the checks that depend on the bytes alone gave the same
    answer when the entry was stored; the limits are the caller's and are checked here).
    """
    opened = _open_source(path)
    try:
        with Image.open(opened) as img:
            width, height = img.size
    except _PILLOW_ERRORS as exc:
        raise _decode_errors(opened, exc) from None
    _check_shape(width, height, max_pixels, resize_to)


def load_rgb(path: str | Path | ImageBytes, max_pixels: int | None = DEFAULT_MAX_PIXELS, draft: int | None = None,
             resize_to: int | None = DEFAULT_RESIZE_TO) -> Image.Image:
    """Decode ``path`` (a file, or an ``ImageBytes``) into an upright RGB image, or raise
    ``ImageDecodeError`` with the reason.

    ``draft`` (the model input size, or None for exact decoding; changes pixels slightly): a JPEG
    whose sides are both at least twice ``draft`` decodes at 1/2, 1/4 or 1/8 scale in the DCT while
    both sides stay at least ``draft`` pixels — a 12-megapixel photo decodes ~4x faster, and the
    model's resize shrinks it anyway. Smaller JPEGs and other formats decode exactly.
    ``resize_to`` is the model's input side: the picture it will become is bounded by
    ``max_pixels`` too. Only regular files are opened.
    """
    opened = _open_source(path)
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated image is an error, never a half-grey picture
    try:
        img = Image.open(opened)  # the format is read from the bytes, not the file name
        with img:
            _check_shape(*img.size, max_pixels, resize_to)
            if getattr(img, "is_animated", False):
                img.seek(0)
            if draft is not None and uses_draft(img, draft):
                img.draft("RGB", (draft, draft))
            img.load()
            upright = ImageOps.exif_transpose(img) or img
            return to_rgb(upright).copy()
    except ImageDecodeError:
        raise
    except _PILLOW_ERRORS as exc:
        raise _decode_errors(opened, exc) from None
