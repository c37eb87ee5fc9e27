"""`emoclip serve` under abuse (issue 21, item 5): a real uvicorn on 127.0.0.1, real sockets.

Idle and slowloris connections, the header deadline and idle eviction, over-capacity answers,
malformed multipart bodies generated in code, unknown methods against the metric label space,
the per-request pixel budget and the queue's pixel/build accounting, cancellation of given-up
work, the Host/Origin guard, the live metrics, and the bind check before the heavy imports.
All traffic goes to 127.0.0.1; every socket and server opened here is closed by the test.
"""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from emoclip.core.errors import EmoclipError
from emoclip.serve.batcher import MicroBatcher, QueueFull
from emoclip.serve.settings import ServeSettings, check_bind
from tests.conftest import noise_image
from tests.serving import running_service

pytestmark = pytest.mark.timeout(180)
SOCKET_WAIT_S = 15   # the most a test waits for the server to close a socket (it should take ~0.5 s)


def jpeg(seed: int = 0, width: int = 96, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    noise_image(width, height, seed).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def predict(svc, *images: bytes, timeout: float = 60, **kwargs) -> httpx.Response:
    files = [("image", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    return httpx.post(f"{svc.url}/v1/predict", files=files, timeout=timeout, **kwargs)


def connect(svc) -> socket.socket:
    host, port = svc.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=SOCKET_WAIT_S)
    return sock


def closed_by_server(sock: socket.socket, trickle: bool = False) -> bool:
    """True once the server closes ``sock`` (bounded wait); ``trickle`` sends a header byte meanwhile."""
    deadline = time.monotonic() + SOCKET_WAIT_S
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if trickle:
                sock.sendall(b"a")
            if sock.recv(1024) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:  # reset or broken pipe: closed too
            return True
    return False


def series(svc, name: str) -> list[str]:
    text = httpx.get(f"{svc.url}/metrics", timeout=30).text
    return [line for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " ")]


# -- connections -----------------------------------------------------------------------------------
def test_idle_and_slowloris_connections_do_not_starve_probes_or_predict(tiny):
    with running_service(tiny) as svc:
        held: list[socket.socket] = []
        try:
            held += [connect(svc) for _ in range(200)]                    # open and say nothing
            for _ in range(50):                                          # headers that never end
                sock = connect(svc)
                sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                held.append(sock)
            for sock in held[200:]:
                sock.sendall(b"a")                                       # still trickling
            deadline = time.monotonic() + SOCKET_WAIT_S                 # the server has taken them all
            while svc.app.state.connections.open < 250 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert svc.app.state.connections.open >= 250
            health = httpx.get(f"{svc.url}/health", timeout=1.0)          # the bound: within 1 s
            assert health.status_code == 200 and health.json() == {"status": "ok"}
            assert httpx.get(f"{svc.url}/ready", timeout=5).status_code == 200
            answer = predict(svc, jpeg(1))
            assert answer.status_code == 200 and answer.json()["predictions"][0]["label"]
            assert float(series(svc, "emoclip_connections_open")[0].split()[-1]) >= 250
        finally:
            for sock in held:
                sock.close()


def test_the_header_deadline_closes_silent_and_slow_connections(tiny):
    with running_service(tiny, ServeSettings(header_timeout_s=0.5)) as svc:
        silent, slow = connect(svc), connect(svc)
        try:
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            assert closed_by_server(slow, trickle=True), "a trickling client must not extend the deadline"
            assert closed_by_server(silent)
            assert svc.app.state.connections.header_timeouts >= 2
            with httpx.Client(timeout=10) as client:                    # keep-alive: each request gets a deadline
                assert client.get(f"{svc.url}/health").status_code == 200
                assert client.get(f"{svc.url}/health").status_code == 200
        finally:
            silent.close()
            slow.close()


def test_over_the_connection_cap_the_longest_idle_connections_are_closed(tiny):
    with running_service(tiny, ServeSettings(max_open_connections=20)) as svc:
        idle = [connect(svc) for _ in range(60)]
        try:
            assert httpx.get(f"{svc.url}/health", timeout=5).status_code == 200
            assert predict(svc, jpeg(2)).status_code == 200
            assert closed_by_server(idle[0])                             # the oldest went first
            assert svc.app.state.connections.evicted >= 40
            deadline = time.monotonic() + SOCKET_WAIT_S                 # our own closed sockets, once seen
            while svc.app.state.connections.open > 20 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert svc.app.state.connections.open <= 20
        finally:
            for sock in idle:
                sock.close()


def test_over_capacity_is_a_json_503_with_retry_after_and_counted(tiny):
    with running_service(tiny, ServeSettings(max_connections=1)) as svc:
        slow = connect(svc)   # one request in progress: headers done, body still coming
        try:
            slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                         b"boundary=xyz\r\nContent-Length: 100000\r\n\r\n--xyz\r\n")
            deadline = time.monotonic() + SOCKET_WAIT_S
            while svc.sample("emoclip_requests_in_flight") < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            refused = httpx.get(f"{svc.url}/v1/taxonomies", timeout=10)
            assert refused.status_code == 503 and refused.json()["kind"] == "over_capacity"
            assert int(refused.headers["retry-after"]) >= 1
            assert httpx.get(f"{svc.url}/health", timeout=5).status_code == 200   # probes are never refused
            assert httpx.get(f"{svc.url}/ready", timeout=5).status_code == 200
            scraped = httpx.get(f"{svc.url}/metrics", timeout=10)               # nor is the scrape
            assert scraped.status_code == 200 and 'emoclip_over_capacity_total{reason="requests"}' in scraped.text
            assert svc.sample("emoclip_over_capacity_total", reason="requests") >= 1
        finally:
            slow.close()


# -- malformed requests ------------------------------------------------------------------------------
def _multipart_cases() -> dict[str, tuple[dict, bytes]]:
    """Malformed multipart bodies, generated: each must get a 4xx, never a 500."""
    good_part = b'Content-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n' + jpeg(3) + b"\r\n"
    cases: dict[str, tuple[dict, bytes]] = {}
    for size in (71, 256, 257, 300, 5000):
        boundary = "b" * size
        cases[f"boundary-{size}"] = ({"content-type": f"multipart/form-data; boundary={boundary}"},
                                     f"--{boundary}\r\n".encode() + good_part + f"--{boundary}--\r\n".encode())
    plain = {"content-type": "multipart/form-data; boundary=xyz"}
    cases["no-final-boundary"] = (plain, b"--xyz\r\n" + good_part)
    cases["header-without-colon"] = (plain, b"--xyz\r\nthis is not a header\r\n\r\ndata\r\n--xyz--\r\n")
    cases["garbage-before-boundary"] = (plain, b"\x00\xff" * 50 + b"--xyz\r\n" + good_part + b"--xyz--\r\n")
    cases["boundary-only"] = (plain, b"--xyz--\r\n")
    cases["wrong-boundary"] = (plain, b"--abc\r\n" + good_part + b"--abc--\r\n")
    cases["quoted-empty-boundary"] = ({"content-type": 'multipart/form-data; boundary=""'}, b"--\r\n")
    cases["bad-utf8-disposition"] = (plain, b"--xyz\r\nContent-Disposition: form-data; name=\"\xff\xfe\"; "
                                            b"filename=\"\xc3\x28.jpg\"\r\n\r\nabc\r\n--xyz--\r\n")
    return cases


@pytest.mark.parametrize("case", sorted(_multipart_cases()))
def test_malformed_multipart_is_4xx_never_500(tiny, case, request):
    svc = request.getfixturevalue("hardening_service")
    headers, body = _multipart_cases()[case]
    answer = httpx.post(f"{svc.url}/v1/predict", content=body, headers=headers, timeout=30)
    assert 400 <= answer.status_code < 500, (case, answer.status_code, answer.text)
    assert answer.json()["detail"]


@pytest.fixture(scope="module")
def hardening_service(tiny):
    with running_service(tiny) as svc:
        yield svc


def test_a_300_byte_boundary_is_400_with_the_fix(hardening_service):
    boundary = "q" * 300
    answer = httpx.post(f"{hardening_service.url}/v1/predict", content=f"--{boundary}--\r\n".encode(),
                        headers={"content-type": f"multipart/form-data; boundary={boundary}"}, timeout=30)
    assert answer.status_code == 400 and answer.json()["kind"] == "bad_multipart"
    assert "300 bytes" in answer.json()["detail"]


def test_a_thousand_unknown_methods_add_at_most_one_metric_series(hardening_service):
    svc = hardening_service
    series(svc, "emoclip_http_requests_total")    # the scrape itself is a series: let it exist first
    before = set(series(svc, "emoclip_http_requests_total"))
    with httpx.Client(timeout=30) as client:
        statuses = {client.request(f"X{i}M", f"{svc.url}/v1/predict").status_code for i in range(1000)}
    assert all(400 <= s < 500 for s in statuses), statuses
    after = series(svc, "emoclip_http_requests_total")
    new = {re.sub(r" .*$", "", line) for line in after} - {re.sub(r" .*$", "", line) for line in before}
    assert len(new) <= 1, new
    assert any('method="OTHER"' in line for line in after)


# -- pixels, builds, cancellation -------------------------------------------------------------------
def test_a_request_over_its_pixel_budget_is_413_before_queueing(tiny):
    with running_service(tiny, ServeSettings(max_request_pixels=10_000)) as svc:
        over = predict(svc, jpeg(1), jpeg(2))                        # 2 x 96x64 = 12,288 pixels
        assert over.status_code == 413 and over.json()["kind"] == "request_too_many_pixels"
        assert "--max-request-pixels" in over.json()["detail"]
        assert svc.sample("emoclip_batch_images_count") == 0         # nothing reached the model
        assert predict(svc, jpeg(1)).status_code == 200              # 6,144 pixels: within


def _blocked_batcher(**limits):
    """A batcher whose first run blocks until ``release`` is set (so later jobs stay queued)."""
    release, started, seen = threading.Event(), threading.Event(), []

    def run(key, items):
        started.set()
        release.wait(30)
        seen.append([getattr(i, "data", i) for i in items])
        return [f"{key}:{getattr(i, 'name', i)}" for i in items]

    batcher = MicroBatcher(run, max_batch=8, max_wait_s=0, max_queue=100, **limits)
    return batcher, release, started, seen


def test_the_queue_counts_pixels_and_classifier_builds():
    batcher, release, started, _ = _blocked_batcher(max_queue_pixels=100, max_pending_builds=1)
    try:
        running = batcher.submit("a", ["1"], pixels=10)
        assert started.wait(10)
        batcher.submit("a", ["2"], pixels=60)
        with pytest.raises(QueueFull):
            batcher.submit("a", ["3"], pixels=50)                    # 60 + 50 pixels > 100
        assert batcher.queued_pixels == 60
        batcher.submit("k1", ["4"], pixels=1, build=True)
        batcher.submit("k1", ["5"], pixels=1, build=True)            # the same build: no extra cost
        with pytest.raises(QueueFull) as refused:
            batcher.submit("k2", ["6"], pixels=1, build=True)        # a second label set waiting: refused
        assert refused.value.retry_after >= 1 and batcher.pending_builds == 1
        release.set()
        assert running.result(10) == ["a:1"]
    finally:
        release.set()
        batcher.close(10)
    assert batcher.queued == 0 and batcher.queued_pixels == 0 and batcher.pending_builds == 0


def test_batches_are_packed_by_pixels_too():
    sizes: list[int] = []
    batcher = MicroBatcher(lambda key, items: list(items), max_batch=16, max_wait_s=0.5, max_queue=100,
                           on_batch=lambda n, s: sizes.append(n), max_batch_pixels=100)
    futures = [batcher.submit("a", [str(i)], pixels=60) for i in range(3)]
    assert [f.result(10) for f in futures] == [["0"], ["1"], ["2"]]
    batcher.close(10)
    assert sizes == [1, 1, 1]   # 60 + 60 pixels would pass the 100-pixel batch cap


def test_a_given_up_request_is_never_decoded():
    from emoclip.serve.app import CancellableBytes

    batcher, release, started, seen = _blocked_batcher()
    try:
        batcher.submit("a", [CancellableBytes("first", b"img0", threading.Event())])
        assert started.wait(10)
        queued_cancel, running_cancel = threading.Event(), threading.Event()
        queued = batcher.submit("a", [CancellableBytes("queued", b"img1", queued_cancel)])
        queued_cancel.set()
        assert queued.cancel()                                       # still queued: it never runs
        item = CancellableBytes("running", b"img2", running_cancel)
        assert item.data == b"img2"
        running_cancel.set()                                         # a running batch reads nothing
        assert item.data == b"" and item.name == "running"
        release.set()
    finally:
        release.set()
        batcher.close(10)
    assert seen == [[b"img0"]]


def test_after_a_504_the_request_is_never_run(tiny):
    # The batcher has taken the job and waits 2 s for company; the request gives up at 0.5 s.
    with running_service(tiny, ServeSettings(request_timeout_s=0.5, max_wait_ms=2000, max_batch=8)) as svc:
        started = time.monotonic()
        assert predict(svc, jpeg(1), jpeg(2)).status_code == 504
        while time.monotonic() - started < 3:                        # past the batch window
            time.sleep(0.1)
        assert svc.sample("emoclip_batch_images_count") == 0         # nothing was decoded or encoded for it
        fresh = httpx.get(f"{svc.url}/ready", timeout=10).json()
        assert fresh["status"] == "ready" and fresh["queued_images"] == 0


def test_a_new_label_set_waits_behind_at_most_max_pending_builds(tiny):
    with running_service(tiny) as svc:
        answer = predict(svc, jpeg(1), data={"labels": "calm,tense,joyful"})
        assert answer.status_code == 200
        again = predict(svc, jpeg(2), data={"labels": "calm,tense,joyful"})
        assert again.status_code == 200
        assert svc.sample("emoclip_cache_misses_total", cache="classifiers") == 1
        assert svc.sample("emoclip_cache_hits_total", cache="classifiers") >= 1


# -- who may call ------------------------------------------------------------------------------------
def test_a_foreign_host_header_is_refused_on_loopback(hardening_service):
    svc = hardening_service
    rebound = httpx.get(f"{svc.url}/v1/taxonomies", headers={"Host": "evil.example:8000"})
    assert rebound.status_code == 421 and rebound.json()["kind"] == "bad_host"
    assert httpx.post(f"{svc.url}/v1/predict", files=[("image", ("a.jpg", jpeg(1)))],
                      headers={"Host": "evil.example"}).status_code == 421
    assert httpx.get(f"{svc.url}/", headers={"Host": "rebind.attacker"}).status_code == 421
    assert httpx.get(f"{svc.url}/health", headers={"Host": "evil.example"}).status_code == 200  # probes exempt
    for name in ("localhost", "127.0.0.1:1234", "[::1]:8000"):
        assert httpx.get(f"{svc.url}/v1/taxonomies", headers={"Host": name}).status_code == 200, name


def test_a_cross_origin_form_post_is_refused_before_it_is_read(hardening_service):
    svc = hardening_service
    tagged = svc.sample("emoclip_images_total", outcome="tagged")
    for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example"):
        answer = predict(svc, jpeg(1), headers={"Origin": origin})
        assert answer.status_code == 403 and answer.json()["kind"] == "foreign_origin", origin
    assert svc.sample("emoclip_images_total", outcome="tagged") == tagged
    own = svc.url  # the page itself: same origin
    assert predict(svc, jpeg(1), headers={"Origin": own}).status_code == 200
    assert httpx.get(f"{svc.url}/v1/taxonomies", headers={"Origin": "http://evil.example"}).status_code == 200


def test_allowed_hosts_and_cors_origins_let_named_callers_in(tiny):
    settings = ServeSettings(allowed_hosts=("emoclip.lan",), cors_origins=("http://tool.lan",))
    with running_service(tiny, settings) as svc:
        assert httpx.get(f"{svc.url}/v1/taxonomies", headers={"Host": "emoclip.lan:8000"}).status_code == 200
        assert httpx.get(f"{svc.url}/v1/taxonomies", headers={"Host": "other.lan"}).status_code == 421
        assert predict(svc, jpeg(1), headers={"Origin": "http://tool.lan"}).status_code == 200
        assert predict(svc, jpeg(1), headers={"Origin": "http://other.lan"}).status_code == 403


def test_bad_host_and_auth_combinations_are_refused_before_the_heavy_imports():
    script = ("import sys\nfrom click.testing import CliRunner\nfrom emoclip.cli.main import main\n"
              "r = CliRunner().invoke(main, sys.argv[1:])\n"
              "heavy = sorted(m for m in ('torch', 'fastapi', 'uvicorn', 'open_clip') if m in sys.modules)\n"
              "print(r.exit_code, ','.join(heavy) or '-')\nprint(r.output.strip())\n")
    for args in (["--host", "0.0.0.0"], ["--host", ""], ["--api-key", " "],
                 ["--host", "0.0.0.0", "--api-key", "k", "--insecure-no-auth"]):
        done = subprocess.run([sys.executable, "-c", script, "serve", "--model", "tiny", *args],
                              capture_output=True, text=True, timeout=120)
        status, heavy = done.stdout.splitlines()[0].split()
        message = done.stdout.splitlines()[1:]
        assert status == "2" and heavy == "-", (args, done.stdout, done.stderr)
        assert len(message) == 1 and message[0].startswith("emoclip: error: ") and ";" in message[0], message


def test_check_bind_rules():
    check_bind(ServeSettings())
    for bad in (ServeSettings(host=""), ServeSettings(api_key=""), ServeSettings(host="0.0.0.0"),
                ServeSettings(api_key="k", insecure_no_auth=True)):
        with pytest.raises(EmoclipError):
            check_bind(bad)


# -- what /metrics shows -------------------------------------------------------------------------------
def test_metrics_show_the_process_in_flight_requests_connections_and_caches(hardening_service):
    svc = hardening_service
    assert predict(svc, jpeg(4)).status_code == 200
    text = httpx.get(f"{svc.url}/metrics").text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "emoclip_requests_in_flight",
                 "emoclip_connections_open", 'emoclip_cache_hits_total{cache="features"}',
                 'emoclip_cache_hits_total{cache="classifiers"}', "emoclip_queue_pixels", "emoclip_queue_builds",
                 'emoclip_connections_closed_total{reason="header_timeout"}'):
        assert name in text, name
    assert svc.sample("emoclip_cache_hits_total", cache="classifiers") >= 1


def test_the_serve_command_keeps_no_feature_cache_unless_told(monkeypatch, tmp_path):
    import emoclip.serve.server as server
    from tests.conftest import run_cli

    seen = []
    monkeypatch.setattr(server, "serve", lambda config, settings, log_level: seen.append(config))
    assert run_cli("serve", "--model", "tiny", "--pretrained", "random").exit_code == 0
    assert run_cli("serve", "--model", "tiny", "--cache-dir", tmp_path / "c").exit_code == 0
    assert seen[0].no_cache is True and seen[1].no_cache is False and seen[1].cache_dir == str(tmp_path / "c")
