"""Reading uploads: a multipart body as a stream under a byte cap, and a quick look at each image.

Frameworks usually parse a form only after the whole body has arrived (and spool big files to
disk); here the body is parsed as it streams in, so a client that sends too much is stopped at
``max_bytes`` + one chunk, and one that sends too many images at the first one too many. Nothing
touches the disk: the service never reads or writes server paths on a request's behalf.

``inspect_image`` then reads each image's header (never its pixels): an upload that is not an
image is refused with 415, one with too many pixels with 422, before it takes a place in the
model's queue. Images that pass are decoded by the Tagger, as ``predict`` decodes files.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, cast

from PIL import Image, UnidentifiedImageError
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

MAX_FIELD_BYTES = 64 * 1024   # a text field (taxonomy, labels): far more than any sensible value
MAX_NAME_CHARS = 255
MAX_BOUNDARY_BYTES = 70       # RFC 2046 §5.1.1: 1 to 70 characters (python-multipart raises on > 256)


class UploadRejected(Exception):
    """A request the service will not process; ``status`` and ``kind`` say which answer it gets."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers or {}


@dataclass
class Upload:
    """One uploaded image as it arrived: the client's file name (a label only) and the bytes."""

    name: str
    data: bytes


@dataclass
class Form:
    images: list[Upload] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


def display_name(filename: str, index: int) -> str:
    """The row's ``path``: the file name the client gave (its last component), or ``upload-N``."""
    name = PureWindowsPath(PurePosixPath(filename).name).name.strip() if filename else ""
    return (name or f"upload-{index + 1}")[:MAX_NAME_CHARS]


class _FormBuilder:
    """Callbacks for python-multipart's streaming parser, collecting parts in memory."""

    def __init__(self, max_images: int) -> None:
        self.max_images = max_images
        self.form = Form()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._data = bytearray()
        self._name, self._filename = "", cast("str | None", None)

    def callbacks(self) -> Any:  # python_multipart.MultipartCallbacks (a TypedDict)
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field_data,
                "on_header_value": self._header_value_data, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end}

    def _part_begin(self) -> None:
        self._headers, self._data = {}, bytearray()

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field, self._header_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._filename = None if filename is None else filename.decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]
        if self._filename is None and len(self._data) > MAX_FIELD_BYTES:
            raise UploadRejected(413, "field_too_large", f"form field '{self._name}' is over {MAX_FIELD_BYTES} "
                                 "bytes; send images as file parts (with a filename)")

    def _part_end(self) -> None:
        name, filename = self._name, self._filename
        if filename is None:
            self.form.fields[name] = self._data.decode("utf-8", "replace")
            return
        if not filename and not self._data:
            return  # a browser's empty file input
        if len(self.form.images) >= self.max_images:
            raise UploadRejected(413, "too_many_images", f"more than {self.max_images} images in one request; "
                                 "send them in several requests (or raise --max-images)")
        self.form.images.append(Upload(display_name(filename, len(self.form.images)), bytes(self._data)))


async def read_form(request: Request, max_bytes: int, max_images: int, idle_s: float | None = None) -> Form:
    """The request's multipart form, read as it streams in; ``UploadRejected`` for anything over the limits.

    ``idle_s``: the longest pause between two pieces of the body; a client that stalls mid-body
    (slow POST) is answered 408 then, instead of holding a request slot for the whole request timeout."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UploadRejected(415, "not_multipart", "send multipart/form-data with one or more image file parts "
                             "(e.g. curl -F image=@photo.jpg)")
    if len(boundary) > MAX_BOUNDARY_BYTES:
        raise UploadRejected(400, "bad_multipart", f"multipart boundary of {len(boundary)} bytes (at most "
                             f"{MAX_BOUNDARY_BYTES}); let your HTTP client choose the boundary")
    too_large = UploadRejected(413, "body_too_large", f"request body over {max_bytes:,} bytes; send fewer or "
                               "smaller images (or raise --max-upload-bytes)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large  # refused before reading a byte of it
    builder = _FormBuilder(max_images)
    received = 0
    try:
        parser = MultipartParser(boundary, builder.callbacks())
        stream = request.stream()
        while True:
            try:
                async with asyncio.timeout(idle_s):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise UploadRejected(408, "body_stalled", f"no part of the body arrived for {idle_s:g} s; send the "
                                     "request without pauses") from None
            received += len(chunk)
            if received > max_bytes:
                raise too_large
            parser.write(chunk)
        parser.finalize()
    except (MultipartParseError, ValueError, UnicodeError) as exc:  # the parser's every complaint is the client's
        raise UploadRejected(400, "bad_multipart", f"malformed multipart body: {exc}; send a well-formed "
                             "multipart/form-data body (curl -F image=@photo.jpg)") from None
    except ClientDisconnect:
        raise UploadRejected(400, "client_disconnected", "the client closed the connection mid-upload") from None
    return builder.form


@dataclass(frozen=True)
class Refusal:
    """Why an upload will not be tagged, and the status it answers with when it is alone."""

    status: int
    kind: str
    reason: str


def image_pixels(data: bytes) -> int:
    """Width x height from the header (0 when it cannot be read): what decoding the upload will cost."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size[0] * img.size[1]
    except Exception:  # any unreadable header costs nothing: inspect_image refuses it before decoding
        return 0


def inspect_image(data: bytes, max_pixels: int | None) -> Refusal | None:
    """Read only the header: None when the upload is an image within ``max_pixels``."""
    if not data:
        return Refusal(415, "not_an_image", "empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:  # parses the header; no pixels are decoded
            width, height = img.size
            fmt = img.format
    except UnidentifiedImageError:
        return Refusal(415, "not_an_image", "not an image (format not recognised)")
    except Image.DecompressionBombError as exc:
        return Refusal(422, "too_many_pixels", f"image too large: {exc}")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return Refusal(415, "not_an_image", f"cannot read the image header: {exc or type(exc).__name__}")
    if max_pixels is not None and width * height > max_pixels:
        return Refusal(422, "too_many_pixels", f"image too large ({width}x{height} = {width * height:,} pixels, "
                       f"limit {max_pixels:,}); send a smaller image (the model sees about 224x224 anyway)")
    if width < 1 or height < 1:
        return Refusal(422, "empty_image", f"{fmt} image has no pixels ({width}x{height})")
    return None
