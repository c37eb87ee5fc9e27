"""`emoclip serve` under connection abuse and hostile requests (issue 21's service figures).

Starts the real `emoclip serve` (a subprocess, 127.0.0.1, a free port), then measures:
- /health latency (median and worst of 20 probes, each on a new connection) and a good predict while
  IDLE idle sockets and SLOW slowloris sockets (headers that never end, a byte now and then) are held
  open, after the server has taken them all (settle_ms: how long that took);
- the answer to a 300-byte multipart boundary;
- /metrics size and series before and after 1,000 requests with distinct unknown methods;
- the answer and time for 32 PNGs just under --max-pixels in one request (the pixel budget);
- how long `emoclip serve --host 0.0.0.0` takes to refuse (no key);
- the server's RSS before and after (from /metrics).

    python benchmarks/serve_abuse.py                       # tiny random model, 200 idle + 50 slowloris
    python benchmarks/serve_abuse.py --model ViT-B-32

Only 127.0.0.1 is contacted; every socket is closed and the server stopped with SIGTERM. The last line:
serve_abuse idle=N slow=N health_p50_ms=… health_max_ms=… settle_ms=… predict=STATUS boundary300=STATUS
methods_series_added=N metrics_kb=A->B png32=STATUS/SECONDS refuse_host_s=… rss_mb=A->B cpu=KIND
"""

from __future__ import annotations

import argparse
import io
import re
import signal
import socket
import subprocess
import sys
import time


def start_server(model: str) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "emoclip", "serve", "--model", model, "--pretrained", "random",
               "--device", "cpu", "--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        found = re.search(r"serving (http://127\.0\.0\.1:\d+)", line)
        if found:
            return proc, found.group(1)
    raise SystemExit(f"the server did not start (exit status {proc.wait()})")


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else float("nan")


def main() -> None:
    import httpx
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--slow", type=int, default=50)
    args = parser.parse_args()

    started = time.perf_counter()
    refused = subprocess.run([sys.executable, "-m", "emoclip", "serve", "--host", "0.0.0.0"], capture_output=True,
                             text=True, timeout=300)
    refuse_s = time.perf_counter() - started
    assert refused.returncode == 2, refused.stderr

    proc, url = start_server(args.model)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    held: list[socket.socket] = []
    try:
        rss_before = metric(httpx.get(f"{url}/metrics").text, "process_resident_memory_bytes") / 2**20
        held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(args.idle)]
        for _ in range(args.slow):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            held.append(sock)
        t = time.perf_counter()   # until the server has taken every connection (its accept loop under load)
        while metric(httpx.get(f"{url}/metrics", timeout=60).text, "emoclip_connections_open") < len(held):
            time.sleep(0.05)
        settle_ms = (time.perf_counter() - t) * 1000
        latencies = []
        for _ in range(20):
            for sock in held[args.idle:]:
                sock.sendall(b"a")
            t = time.perf_counter()
            status = httpx.get(f"{url}/health", timeout=30).status_code
            latencies.append((time.perf_counter() - t) * 1000)
            assert status == 200, status
            time.sleep(0.1)
        photo = io.BytesIO()
        Image.new("RGB", (320, 240), (200, 120, 40)).save(photo, format="JPEG")
        predict = httpx.post(f"{url}/v1/predict", files={"image": ("a.jpg", photo.getvalue())}, timeout=120)
        for sock in held:
            sock.close()
        held = []

        boundary = "b" * 300
        boundary_status = httpx.post(f"{url}/v1/predict", content=f"--{boundary}--\r\n".encode(), timeout=30,
                                     headers={"content-type": f"multipart/form-data; boundary={boundary}"}).status_code

        def series(text: str) -> int:
            return sum(1 for line in text.splitlines() if line.startswith("emoclip_http_requests_total{"))

        httpx.get(f"{url}/metrics")
        before = httpx.get(f"{url}/metrics").text
        with httpx.Client(timeout=30) as client:
            for i in range(1000):
                client.request(f"M{i}X", f"{url}/v1/predict")
        after = httpx.get(f"{url}/metrics").text
        added = series(after) - series(before)

        png = io.BytesIO()
        Image.new("RGB", (9450, 9450), (10, 20, 30)).save(png, format="PNG")  # 89.3 Mpx: just under the limit
        files = [("image", (f"{i}.png", png.getvalue(), "image/png")) for i in range(32)]
        t = time.perf_counter()
        png32 = httpx.post(f"{url}/v1/predict", files=files, timeout=120).status_code
        png32_s = time.perf_counter() - t
        rss_after = metric(httpx.get(f"{url}/metrics").text, "process_resident_memory_bytes") / 2**20
    finally:
        for sock in held:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)

    from emoclip.core.hardware import cpu_info

    latencies.sort()
    print(f"serve_abuse idle={args.idle} slow={args.slow} health_p50_ms={latencies[len(latencies) // 2]:.1f} "
          f"health_max_ms={latencies[-1]:.1f} settle_ms={settle_ms:.0f} predict={predict.status_code} "
          f"boundary300={boundary_status} "
          f"methods_series_added={added} metrics_kb={len(before) / 1024:.1f}->{len(after) / 1024:.1f} "
          f"png32={png32}/{png32_s:.2f}s refuse_host_s={refuse_s:.2f} rss_mb={rss_before:.0f}->{rss_after:.0f} "
          f"cpu={cpu_info().kind}")


if __name__ == "__main__":
    main()
