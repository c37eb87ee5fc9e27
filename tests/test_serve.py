"""`emoclip serve`: a real uvicorn on 127.0.0.1 (free port), the tiny model, real HTTP requests.

Every endpoint, every bad-upload answer, auth on a non-loopback bind, micro-batching, the bounded
queue, a bounded load, and a graceful stop on SIGTERM (in a subprocess). All traffic goes to
127.0.0.1 and every server started here stops by itself.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from emoclip.core.errors import EmoclipError
from emoclip.serve.settings import ServeSettings, check_bind, is_loopback
from tests.conftest import TINY_CLI, noise_image, run_cli
from tests.serving import TINY_CONFIG, running_service

# Rows are rounded to 6 digits; the service and `predict` may batch the same images differently,
# which moves probabilities by ~1e-7 (see FEATURE_ATOL): 1e-5 absorbs both, far below any real change.
ROW_ATOL = 1e-5
SVG_NAMESPACE = "http://www.w3.org/2000/svg"   # a name in an inline SVG, never fetched


def jpeg(seed: int = 0, width: int = 96, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    noise_image(width, height, seed).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def files(*items: tuple[str, bytes]) -> list:
    return [("image", (name, data, "application/octet-stream")) for name, data in items]


@pytest.fixture(scope="module")
def service(tiny):
    with running_service(tiny) as svc:
        yield svc


def post(svc, *items, timeout: float = 60, **kwargs) -> httpx.Response:
    return httpx.post(f"{svc.url}/v1/predict", files=files(*items), timeout=timeout, **kwargs)


# -- endpoints ------------------------------------------------------------------------------------
def test_health_ready_taxonomies_metrics_docs_page(service):
    assert httpx.get(f"{service.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{service.url}/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["taxonomy"] == "mikels8" and ready.json()["per_request_taxonomy"] is True
    listed = httpx.get(f"{service.url}/v1/taxonomies").json()
    names = {t["name"]: t for t in listed["taxonomies"]}
    assert {"mikels8", "emotionroi6", "polarity"} <= set(names)
    assert names["mikels8"]["parent"] == "polarity" and len(names["mikels8"]["classes"]) == 8
    spec = httpx.get(f"{service.url}/openapi.json").json()
    assert {"/v1/predict", "/v1/taxonomies", "/health", "/ready", "/metrics"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert httpx.get(f"{service.url}/docs").status_code == 200
    page = httpx.get(f"{service.url}/")
    assert page.status_code == 200 and 'id="file-input"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text), "the page must not load anything from elsewhere"
    for asset in ("app.js", "style.css"):
        body = httpx.get(f"{service.url}/static/{asset}")
        addresses = set(re.findall(r"https?://[^\s\"')]+", body.text)) - {SVG_NAMESPACE}
        assert body.status_code == 200 and not addresses, addresses
    post(service, ("a.jpg", jpeg(1)))
    metrics = httpx.get(f"{service.url}/metrics")
    assert metrics.status_code == 200
    assert 'emoclip_http_requests_total{method="POST",route="/v1/predict",status="200"}' in metrics.text
    for name in ("emoclip_http_request_seconds_bucket", "emoclip_batch_images_bucket", "emoclip_images_total",
                 "emoclip_queue_images"):
        assert name in metrics.text


def test_rows_have_exactly_the_schema_and_values_of_predict(service, tmp_path):
    data = {"first.jpg": jpeg(1), "second.jpg": jpeg(2, 120, 80)}
    for name, blob in data.items():
        (tmp_path / name).write_bytes(blob)
    answer = post(service, *data.items())
    assert answer.status_code == 200
    served = answer.json()["predictions"]
    result = run_cli("predict", *(tmp_path / n for n in data), *TINY_CLI, "--precision", "fp32", "--decode", "full",
                     "--no-cache", "--format", "jsonl")
    expected = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["path"] for row in served] == list(data)
    for got, want in zip(served, expected, strict=True):
        want["path"] = os.path.basename(want["path"])
        assert list(got) == list(want)   # the same keys in the same order
        assert got["label"] == want["label"] and got["error"] is None
        assert [t["label"] for t in got["top_k"]] == [t["label"] for t in want["top_k"]]
        assert list(got["distribution"]) == list(want["distribution"])
        for label, p in want["distribution"].items():
            assert got["distribution"][label] == pytest.approx(p, abs=ROW_ATOL)
        assert got["polarity"]["label"] == want["polarity"]["label"]


def test_per_request_taxonomy_and_labels_reuse_the_backbone(service):
    roi = post(service, ("a.jpg", jpeg(1)), data={"taxonomy": "emotionroi6"})
    assert roi.status_code == 200 and roi.json()["taxonomy"] == "emotionroi6"
    assert set(roi.json()["predictions"][0]["distribution"]) == {"anger", "disgust", "fear", "joy", "sadness",
                                                                 "surprise"}
    custom = httpx.post(f"{service.url}/v1/predict", params={"labels": "calm, tense,joyful"},
                        files=files(("a.jpg", jpeg(1))))
    row = custom.json()["predictions"][0]
    assert custom.status_code == 200 and list(row["distribution"]) == ["calm", "tense", "joyful"]
    assert sum(row["distribution"].values()) == pytest.approx(1, abs=1e-5)
    pool = service.app.state.pool
    assert all(twin.backbone is pool.default.backbone for twin in pool._twins.values())


# -- bad uploads ----------------------------------------------------------------------------------
def test_not_an_image_empty_and_not_multipart_are_415_with_the_reason(service):
    text = post(service, ("notes.jpg", b"this is a text file\n"))
    assert text.status_code == 415 and text.json()["kind"] == "not_an_image"
    assert "not an image" in text.json()["detail"] and text.json()["predictions"][0]["path"] == "notes.jpg"
    empty = post(service, ("empty.png", b""))
    assert empty.status_code == 415 and "0 bytes" in empty.json()["detail"]
    raw = httpx.post(f"{service.url}/v1/predict", content=jpeg(1), headers={"content-type": "image/jpeg"})
    assert raw.status_code == 415 and "multipart/form-data" in raw.json()["detail"]


def test_too_many_pixels_is_422_before_decoding(service, awkward_images):
    bomb = post(service, ("bomb.png", awkward_images["bomb"].read_bytes()))  # 10000x10000 = 1e8 > 89.5e6
    assert bomb.status_code == 422 and bomb.json()["kind"] == "too_many_pixels"
    assert "10000x10000" in bomb.json()["detail"]


def test_pixel_limit_follows_max_pixels(tiny):
    with running_service(tiny, config=TINY_CONFIG.replace(max_pixels=5000)) as svc:
        over = post(svc, ("big.jpg", jpeg(1, 100, 60)))       # 6000 pixels
        under = post(svc, ("small.jpg", jpeg(1, 60, 60)))     # 3600 pixels
    assert over.status_code == 422 and "limit 5,000" in over.json()["detail"]
    assert under.status_code == 200


def test_truncated_image_is_422_with_the_decoders_reason(service, awkward_images):
    answer = post(service, ("truncated.jpg", awkward_images["truncated"].read_bytes()))
    assert answer.status_code == 422 and answer.json()["kind"] == "undecodable"
    assert "truncated" in answer.json()["predictions"][0]["error"]


def test_one_bad_image_gets_an_error_row_and_the_others_are_answered(service, awkward_images):
    answer = post(service, ("good.jpg", jpeg(1)), ("text.jpg", b"hello"), ("bomb.png", awkward_images["bomb"]
                                                                           .read_bytes()), ("good2.jpg", jpeg(2)))
    assert answer.status_code == 200
    rows = answer.json()["predictions"]
    assert [r["path"] for r in rows] == ["good.jpg", "text.jpg", "bomb.png", "good2.jpg"]
    assert [r["error"] is None for r in rows] == [True, False, False, True]
    assert rows[1]["label"] is None and rows[1]["top_k"] == [] and "not an image" in rows[1]["error"]
    assert "too large" in rows[2]["error"]


def test_garbage_bodies_get_4xx_never_500(service):
    import random

    rng = random.Random(0)
    part = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    bodies = [b"", b"--b--\r\n", part, part + b"\xff\xd8\xff" + b"\r\n--b--\r\n", b"--b\r\n\r\n\r\n--b--",
              b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n"]
    bodies += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 400))) for _ in range(20)]
    bodies += [part[: rng.randrange(len(part))] + jpeg(1)[: rng.randrange(2000)] for _ in range(10)]
    for body in bodies:
        answer = httpx.post(f"{service.url}/v1/predict", content=body,
                            headers={"content-type": "multipart/form-data; boundary=b"})
        assert 400 <= answer.status_code < 500, (body[:60], answer.status_code, answer.text)
        assert answer.json()["detail"]
    assert service.sample("emoclip_errors_total", kind="internal") == 0


def test_a_row_is_named_after_the_upload_never_a_server_path():
    from emoclip.serve.uploads import display_name

    assert display_name("../../etc/passwd", 0) == "passwd"
    assert display_name("C:\\Users\\me\\photo.jpg", 0) == "photo.jpg"
    assert display_name("", 2) == "upload-3" and len(display_name("x" * 1000, 0)) == 255


def test_limits_on_body_size_and_image_count(tiny):
    settings = ServeSettings(max_upload_bytes=100_000, max_images=3)
    with running_service(tiny, settings) as svc:
        big = post(svc, ("big.bin", os.urandom(150_000)))
        assert big.status_code == 413 and big.json()["kind"] == "body_too_large"

        def stream():  # no Content-Length: the cap must hold while the body streams in
            boundary = b"--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n"
            yield boundary
            for _ in range(20):
                yield os.urandom(10_000)
            yield b"\r\n--x--\r\n"

        chunked = httpx.post(f"{svc.url}/v1/predict", content=stream(),
                             headers={"content-type": "multipart/form-data; boundary=x"})
        assert chunked.status_code == 413 and chunked.json()["kind"] == "body_too_large"
        many = post(svc, *[(f"{i}.jpg", jpeg(i, 32, 32)) for i in range(4)])
        assert many.status_code == 413 and many.json()["kind"] == "too_many_images"
        none = httpx.post(f"{svc.url}/v1/predict", data={"taxonomy": "mikels8"}, files={"x": (None, "y")})
        assert none.status_code == 422 and none.json()["kind"] == "no_images"
        assert svc.sample("emoclip_errors_total", kind="body_too_large") == 2


def test_bad_taxonomy_choices_are_422_and_no_file_is_read(service, tmp_path):
    taxonomy_file = tmp_path / "mine.yaml"
    taxonomy_file.write_text("name: mine\nclasses: [a, b]\n")
    for data in ({"taxonomy": str(taxonomy_file)}, {"taxonomy": "../../etc/passwd"}, {"taxonomy": "nope"},
                 {"labels": "only-one"}, {"labels": "a,a"}, {"labels": "x" * 101 + ",b"},
                 {"taxonomy": "mikels8", "labels": "a,b"}):
        answer = post(service, ("a.jpg", jpeg(1)), data=data)
        assert answer.status_code == 422, data
        assert answer.json()["kind"] in {"bad_taxonomy", "bad_labels"}


@pytest.mark.slow
def test_per_request_timeout_is_504_and_leaves_the_service_well(tiny):
    settings = ServeSettings(request_timeout_s=0.5, max_wait_ms=3000, max_batch=8)
    with running_service(tiny, settings) as svc:
        slow = post(svc, ("a.jpg", jpeg(1)))  # waits for company for 3 s: longer than the timeout
        assert slow.status_code == 504 and slow.json()["kind"] == "timeout"
        assert httpx.get(f"{svc.url}/ready").status_code == 200


# -- security -------------------------------------------------------------------------------------
def test_bind_rule():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    check_bind(ServeSettings())
    with pytest.raises(EmoclipError, match="--api-key"):
        check_bind(ServeSettings(host="0.0.0.0"))
    check_bind(ServeSettings(host="0.0.0.0", api_key="k"))
    check_bind(ServeSettings(host="0.0.0.0", insecure_no_auth=True))


def test_cli_refuses_a_public_bind_without_a_key():
    result = run_cli("serve", *TINY_CLI, "--host", "0.0.0.0")
    assert result.exit_code == 2
    assert result.output.startswith("emoclip: error: binding 0.0.0.0") and "--api-key" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_api_key_on_a_non_loopback_bind(tiny):
    # Bound on every interface (the case that needs a key), but every request goes to 127.0.0.1.
    settings = ServeSettings(api_key="s3cret-key")
    with running_service(tiny, settings, bind_host="0.0.0.0") as svc:
        image = files(("a.jpg", jpeg(1)))
        assert httpx.post(f"{svc.url}/v1/predict", files=image).status_code == 401
        wrong = httpx.post(f"{svc.url}/v1/predict", files=image, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{svc.url}/v1/taxonomies").status_code == 401
        assert httpx.get(f"{svc.url}/metrics").status_code == 401
        bearer = httpx.post(f"{svc.url}/v1/predict", files=image, headers={"Authorization": "Bearer s3cret-key"})
        assert bearer.status_code == 200
        header = httpx.get(f"{svc.url}/v1/taxonomies", headers={"X-API-Key": "s3cret-key"})
        assert header.status_code == 200
        assert httpx.get(f"{svc.url}/health").status_code == 200  # probes need no key
        assert svc.sample("emoclip_errors_total", kind="unauthorized") == 4


def test_cors_is_off_unless_an_origin_is_given(service, tiny):
    origin = {"Origin": "http://127.0.0.1:9999"}
    assert "access-control-allow-origin" not in httpx.get(f"{service.url}/health", headers=origin).headers
    with running_service(tiny, ServeSettings(cors_origins=("http://127.0.0.1:9999",))) as svc:
        allowed = httpx.get(f"{svc.url}/health", headers=origin)
        assert allowed.headers["access-control-allow-origin"] == "http://127.0.0.1:9999"
        other = httpx.get(f"{svc.url}/health", headers={"Origin": "http://127.0.0.1:1"})
        assert "access-control-allow-origin" not in other.headers


# -- micro-batching and the queue -----------------------------------------------------------------
def test_concurrent_requests_share_one_encoder_batch(tiny):
    settings = ServeSettings(max_batch=6, max_wait_ms=5000)  # the batch closes when the sixth arrives
    with running_service(tiny, settings) as svc:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: post(svc, (f"{i}.jpg", jpeg(i))), range(6)))
        assert all(a.status_code == 200 for a in answers)
        assert [a.json()["predictions"][0]["path"] for a in answers] == [f"{i}.jpg" for i in range(6)]
        # The first request waited for the others (up to 5 s): one batch of six images.
        assert svc.sample("emoclip_batch_images_count") == 1
        assert svc.sample("emoclip_batch_images_sum") == 6


@pytest.mark.slow
def test_a_full_queue_answers_503_with_retry_after(tiny):
    settings = ServeSettings(max_queue=2, max_batch=8, max_wait_ms=5000)
    with running_service(tiny, settings) as svc:
        first: dict = {}
        thread = threading.Thread(target=lambda: first.update(r=post(svc, ("a.jpg", jpeg(1)), ("b.jpg", jpeg(2)))))
        thread.start()
        deadline = time.monotonic() + 10
        while svc.app.state.pool is not None and _queued(svc) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = post(svc, ("c.jpg", jpeg(3)))
        thread.join()
    assert refused.status_code == 503 and refused.json()["kind"] == "queue_full"
    assert int(refused.headers["retry-after"]) >= 1
    assert first["r"].status_code == 200


def _queued(svc) -> int:
    return httpx.get(f"{svc.url}/ready").json().get("queued_images", 0)


@pytest.mark.slow
def test_bounded_load_with_bad_uploads_never_errors_5xx(tiny, awkward_images):
    bad = [("text.jpg", b"not an image"), ("bomb.png", awkward_images["bomb"].read_bytes())]
    with running_service(tiny, ServeSettings(max_batch=16, max_wait_ms=5)) as svc:
        def one(i: int) -> int:
            item = bad[(i // 10) % 2] if i % 10 == 0 else (f"{i}.jpg", jpeg(i % 7))
            return post(svc, item).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(one, range(80)))
        assert statuses.count(200) == 72 and sorted(set(statuses) - {200}) == [415, 422]
        assert svc.sample("emoclip_images_total", outcome="tagged") == 72
        assert svc.sample("emoclip_batch_images_sum") == 72


# -- graceful stop --------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_finishes_the_request_in_flight_and_exits_0(tmp_path):
    command = [sys.executable, "-m", "emoclip", "serve", *TINY_CLI, "--no-cache", "--port", "0",
               "--max-wait-ms", "4000"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stderr:
            found = re.search(r"serving (http://127\.0\.0\.1:\d+)", line)
            if found:
                url = found.group(1)
                break
        assert url, "the service did not say where it listens"
        answer: dict = {}
        thread = threading.Thread(target=lambda: answer.update(r=httpx.post(
            f"{url}/v1/predict", files=files(("a.jpg", jpeg(1))), timeout=30)))
        thread.start()
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/ready").json().get("queued_images", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # the request is waiting in the batcher (4 s)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=5)   # no longer accepting
        thread.join(30)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert answer["r"].status_code == 200 and answer["r"].json()["predictions"][0]["error"] is None
    assert "emoclip: stopped" in proc.stderr.read()


# -- trained checkpoints --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny trained runs: clipe-ce (its own taxonomy only) and clipe-contrastive (any taxonomy)."""
    from tests.conftest import make_split_data

    folder = tmp_path_factory.mktemp("serve-train")
    root, split = make_split_data(folder, per_class=4)
    runs = {}
    for method in ("clipe-ce", "clipe-contrastive"):
        runs[method] = folder / method
        result = run_cli("train", "--method", method, "-t", "emotionroi6", "--root", root, "--split-file", split,
                         *TINY_CLI, "--epochs", 1, "--no-progress", "--out", runs[method])
        assert result.exit_code == 0, result.output
    return runs


def test_a_checkpoint_is_served_and_its_taxonomy_rules_hold(tiny, checkpoints):
    emotions = {"anger", "disgust", "fear", "joy", "sadness", "surprise"}
    fixed = TINY_CONFIG.replace(checkpoint=str(checkpoints["clipe-ce"]))
    with running_service(tiny, config=fixed) as svc:
        assert httpx.get(f"{svc.url}/ready").json()["per_request_taxonomy"] is False
        own = post(svc, ("a.jpg", jpeg(1)))
        assert own.status_code == 200 and set(own.json()["predictions"][0]["distribution"]) == emotions
        other = post(svc, ("a.jpg", jpeg(1)), data={"taxonomy": "mikels8"})
        assert other.status_code == 422 and other.json()["kind"] == "fixed_taxonomy"
    flexible = TINY_CONFIG.replace(checkpoint=str(checkpoints["clipe-contrastive"]))
    with running_service(tiny, config=flexible) as svc:
        mikels = post(svc, ("a.jpg", jpeg(1)), data={"taxonomy": "mikels8"})
        assert mikels.status_code == 200 and len(mikels.json()["predictions"][0]["distribution"]) == 8
        custom = post(svc, ("a.jpg", jpeg(1)), data={"labels": "calm,tense"})
        assert custom.status_code == 200 and set(custom.json()["predictions"][0]["distribution"]) == {"calm",
                                                                                                     "tense"}


# -- the batcher on its own, and the command's start-up errors -------------------------------------
def _echo_batcher(**kwargs):
    from emoclip.serve.batcher import MicroBatcher

    seen: list[int] = []

    def run(key, items):
        if "boom" in items:
            raise RuntimeError("model failed")
        return [f"{key}:{item}" for item in items]

    defaults = {"max_batch": 4, "max_wait_s": 0.3, "max_queue": 100}
    return MicroBatcher(run, on_batch=lambda n, s: seen.append(n), **{**defaults, **kwargs}), seen


def test_batcher_packs_by_size_groups_by_key_and_keeps_order():
    batcher, seen = _echo_batcher()
    futures = [batcher.submit("a", ["1", "2"]), batcher.submit("b", ["3"]), batcher.submit("a", ["4", "5"])]
    assert [f.result(10) for f in futures] == [["a:1", "a:2"], ["b:3"], ["a:4", "a:5"]]
    # the first batch holds 3 items (the next job would overflow 4); keys "a" and "b" run as two groups
    assert seen == [2, 1, 2]
    batcher.close()
    assert not batcher.alive


def test_batcher_failure_reaches_every_job_of_its_group_and_the_thread_lives_on():
    batcher, _ = _echo_batcher()
    broken = [batcher.submit("a", ["boom"]), batcher.submit("a", ["x"])]
    for future in broken:
        with pytest.raises(RuntimeError, match="model failed"):
            future.result(10)
    assert batcher.submit("a", ["y"]).result(10) == ["a:y"]
    batcher.close()


def test_batcher_skips_cancelled_jobs_and_finishes_the_queue_on_close():
    batcher, seen = _echo_batcher(max_wait_s=5)
    first = batcher.submit("a", ["1"])
    dropped = batcher.submit("a", ["2"])
    assert dropped.cancel()          # a request that timed out before its batch ran
    last = batcher.submit("a", ["3"])
    batcher.close(10)                # no waiting for company once closing: the queue is finished at once
    assert first.result(0) == ["a:1"] and last.result(0) == ["a:3"] and seen == [2]
    assert batcher.queued == 0


def test_port_in_use_is_a_one_line_error():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("serve", *TINY_CLI, "--port", taken.getsockname()[1])
    assert result.exit_code == 2 and result.output.startswith("emoclip: error: cannot listen on 127.0.0.1:")
