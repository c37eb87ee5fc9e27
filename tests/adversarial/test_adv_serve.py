"""Hostile HTTP against a running `emoclip serve` (issue 21): raw bytes on a socket, generated here.

Each class of case (request lines, headers, methods, framing, multipart, queries, who-may-call,
pixel bombs) is sent to one real service on 127.0.0.1. Every case must get a 4xx (or a 503 with
Retry-After, or a closed connection for bytes that are not HTTP), never a 5xx; after every case
``/health`` answers; and at the end the service has logged no internal error. Bounded: each read
waits at most READ_S, each test has a timeout, the service stops with the module.
"""

from __future__ import annotations

import contextlib
import io
import re
import socket

import httpx
import pytest
from PIL import Image

from emoclip.serve.settings import ServeSettings
from tests.conftest import noise_image
from tests.serving import running_service

pytestmark = pytest.mark.timeout(180)
READ_S = 5.0
STATUS = re.compile(rb"^HTTP/1\.[01] (\d{3})")


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    noise_image(64, 48, seed=5).save(buffer, format="JPEG")
    return buffer.getvalue()


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, format="PNG")  # compresses to a few KB
    return buffer.getvalue()


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "advxyz") -> tuple[bytes, str]:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _post(path: str, body: bytes, content_type: str, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode() + body


def _cases() -> dict[str, dict[str, bytes]]:
    """Raw requests by class; each is sent as-is on a fresh connection."""
    get = "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    image = _jpeg()
    ok_body, ok_type = _multipart([("image", "a.jpg", image)])
    cases: dict[str, dict[str, bytes]] = {}
    cases["request_line"] = {
        "nul-bytes": b"\x00\x01\x02\r\n\r\n", "method-only": b"GET\r\n\r\n", "http-9.9": b"GET / HTTP/9.9\r\n\r\n",
        "long-url": get.format("/" + "a" * 20000).encode(), "non-ascii-path": b"GET /\xff\xfe HTTP/1.1\r\nHost: "
        b"127.0.0.1\r\n\r\n", "absolute-form": get.format("http://evil.example/health").encode(),
        "tls-hello": bytes.fromhex("16030100a5010000a10303") + b"\x00" * 64,
        "encoded-traversal": get.format("/static/..%2f..%2fpyproject.toml").encode(),
        "dot-segments": get.format("/static/../../pyproject.toml").encode(),
    }
    cases["headers"] = {
        "one-huge-header": ("GET /v1/taxonomies HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + "h" * 40000
                            + "\r\n\r\n").encode(),
        "many-headers": ("GET /v1/taxonomies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         + "".join(f"X-H{i}: v\r\n" for i in range(2000)) + "\r\n").encode(),
        "space-in-name": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\r\n",
        "no-host": b"GET /v1/taxonomies HTTP/1.1\r\nConnection: close\r\n\r\n",
        "two-hosts": b"GET /v1/taxonomies HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n",
        "bare-lf": b"GET /v1/taxonomies HTTP/1.1\nHost: 127.0.0.1\n\n",
        "obs-fold": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\r\n b\r\n\r\n",
    }
    cases["methods"] = {f"method-{m.decode(errors='replace')[:20]}": m + b" /v1/predict HTTP/1.1\r\nHost: 127.0.0.1"
                        b"\r\nConnection: close\r\n\r\n"
                        for m in (b"get", b"PROPFIND", b"X" * 300, b"BREW", b"DELETE", b"PUT", b"TRACE")}
    cases["framing"] = {
        "cl-not-a-number": _post("/v1/predict", b"", ok_type).replace(b"Content-Length: 0", b"Content-Length: ab"),
        "cl-negative": _post("/v1/predict", b"", ok_type).replace(b"Content-Length: 0", b"Content-Length: -5"),
        "cl-conflicting": _post("/v1/predict", ok_body, ok_type, "Content-Length: 3\r\n"),
        "cl-huge": _post("/v1/predict", b"", ok_type).replace(b"Content-Length: 0", b"Content-Length: 9" * 20),
        "cl-and-chunked": _post("/v1/predict", ok_body, ok_type, "Transfer-Encoding: chunked\r\n"),
        "bad-chunk-size": (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ok_type}\r\n"
                           "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n").encode(),
        "chunked-garbage": (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ok_type}\r\n"
                            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n").encode(),
        "truncated-body": _post("/v1/predict", ok_body, ok_type)[:-200],
    }
    long_boundary = "B" * 300
    cases["multipart"] = {
        "boundary-300": _post("/v1/predict", f"--{long_boundary}--\r\n".encode(),
                              f"multipart/form-data; boundary={long_boundary}"),
        "boundary-quoted-specials": _post("/v1/predict", *_multipart([("image", "a.jpg", image)], 'a"b;c')),
        "no-boundary": _post("/v1/predict", ok_body, "multipart/form-data"),
        "part-header-huge": _post("/v1/predict", b"--advxyz\r\nX-Big: " + b"p" * 100000 + b"\r\n\r\nx\r\n--advxyz--"
                                  b"\r\n", ok_type),
        "thousands-of-fields": _post("/v1/predict", *_multipart([(f"f{i}", None, b"v") for i in range(5000)])),
        "field-too-large": _post("/v1/predict", *_multipart([("labels", None, b"a," * 40000)])),
        "filename-traversal": _post("/v1/predict", *_multipart([("image", "../../etc/passwd", image)])),
        "filename-nul": _post("/v1/predict", *_multipart([("image", "a\x00b.jpg", image)])),
        "not-an-image": _post("/v1/predict", *_multipart([("image", "a.jpg", b"GIF89a" + b"\x00" * 10)])),
        "urlencoded": _post("/v1/predict", b"image=abc", "application/x-www-form-urlencoded"),
    }
    cases["queries"] = {
        "taxonomy-path": get.format("/v1/taxonomies?x=../../etc/passwd").encode(),
        "predict-taxonomy-path": _post("/v1/predict?taxonomy=../../etc/passwd", ok_body, ok_type),
        "labels-thousands": _post("/v1/predict?labels=" + ",".join(f"l{i}" for i in range(3000)), ok_body, ok_type),
        "labels-duplicate": _post("/v1/predict?labels=a,a", ok_body, ok_type),
        "labels-and-taxonomy": _post("/v1/predict?labels=a,b&taxonomy=mikels8", ok_body, ok_type),
    }
    cases["who_may_call"] = {
        "rebound-host": b"GET /v1/taxonomies HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        "userinfo-host": b"GET /v1/taxonomies HTTP/1.1\r\nHost: 127.0.0.1@evil.example\r\nConnection: close\r\n\r\n",
        "empty-host": b"GET /v1/taxonomies HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
        "cross-origin-form": _post("/v1/predict", ok_body, ok_type, "Origin: http://evil.example\r\n"),
        "null-origin": _post("/v1/predict", ok_body, ok_type, "Origin: null\r\n"),
        "lookalike-origin": _post("/v1/predict", ok_body, ok_type, "Origin: http://127.0.0.1.evil.example\r\n"),
    }
    big = _png(2500, 2000)   # 5 Mpx each: the request's 8 exceed the test service's 20 Mpx budget
    cases["pixel_bombs"] = {
        "many-big-pngs": _post("/v1/predict", *_multipart([("image", f"{i}.png", big) for i in range(8)])),
        "one-over-max-pixels": _post("/v1/predict", *_multipart([("image", "huge.png", _png(6000, 6000))])),
    }
    return cases


CASES = _cases()
CLASSES = sorted(CASES)


def _exchange(url: str, raw: bytes) -> tuple[int | None, bytes]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=READ_S) as sock:
        with contextlib.suppress(OSError):  # the server may close before reading it all: the answer is readable
            sock.sendall(raw)
        answer = b""
        try:
            while len(answer) < 65536:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
                head, _, body = answer.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                if _ and length and len(body) >= int(length.group(1)):
                    break  # one whole answer: do not wait for a keep-alive connection to close
        except (TimeoutError, ConnectionResetError):
            pass
    found = STATUS.match(answer)
    return (int(found.group(1)) if found else None), answer


@pytest.fixture(scope="module")
def hostile_service(tiny):
    settings = ServeSettings(max_request_pixels=20_000_000, max_upload_bytes=4 * 1024 * 1024, header_timeout_s=3,
                             body_idle_timeout_s=1)
    config_pixels = 30_000_000  # the one-over-max-pixels case (36 Mpx) is refused by --max-pixels
    from tests.serving import TINY_CONFIG

    with running_service(tiny, settings, config=TINY_CONFIG.replace(max_pixels=config_pixels)) as svc:
        yield svc


@pytest.mark.parametrize("kind", CLASSES)
def test_hostile_requests_get_4xx_and_the_service_holds(hostile_service, kind):
    svc = hostile_service
    outcomes = {}
    for name, raw in CASES[kind].items():
        status, answer = _exchange(svc.url, raw)
        outcomes[name] = status
        assert status is None or status < 500 or (status == 503 and b"retry-after" in answer.lower()), (
            kind, name, answer[:400])
        if status is not None and status >= 400 and b"application/json" in answer:
            assert b'"detail"' in answer, (name, answer[:400])
        assert httpx.get(f"{svc.url}/health", timeout=10).status_code == 200, (kind, name)
    if kind == "who_may_call":
        assert outcomes["rebound-host"] == 421 and outcomes["cross-origin-form"] == 403, outcomes
    if kind == "pixel_bombs":
        assert outcomes == {"many-big-pngs": 413, "one-over-max-pixels": 422}, outcomes
    if kind == "multipart":
        assert outcomes["boundary-300"] == 400 and outcomes["not-an-image"] == 415, outcomes
    if kind == "framing":
        assert outcomes["truncated-body"] == 408, outcomes   # a stalled body is answered, not held
    assert svc.sample("emoclip_errors_total", kind="internal") == 0


def test_after_the_campaign_a_good_request_is_tagged(hostile_service):
    files = [("image", ("a.jpg", _jpeg(), "image/jpeg"))]
    answer = httpx.post(f"{hostile_service.url}/v1/predict", files=files, timeout=60)
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"]
    assert hostile_service.sample("emoclip_errors_total", kind="internal") == 0
