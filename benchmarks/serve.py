"""`emoclip serve` under a bounded load, side by side with `emoclip predict` on the same images.

Starts `emoclip serve` on 127.0.0.1 (a free port; no feature cache, so every image is really
decoded and encoded), sends a fixed number of requests at a fixed concurrency — one image each,
with a share of bad uploads (not an image: 415; too many pixels: 422; truncated: 422; a body over
--max-upload-bytes: 413) — then stops the server with SIGTERM and checks that it exits 0. Before
that, `predict`'s own code path (build_tagger, Tagger.tag, the JSONL writer; no cache), in a fresh
process, tags the same good images once, for images/s in the same run on the same machine.

    python benchmarks/serve.py                                   # 2,000 requests, concurrency 32, ViT-B-32
    python benchmarks/serve.py --requests 300 --model tiny       # quick

Only 127.0.0.1 is contacted. The last line:
requests=N ok=… rejected_4xx=… errors_5xx=… p50_ms=… p99_ms=… images_per_s=… vs_cli=R cpu=KIND
where vs_cli is the served images/s over predict's images/s.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import in_fresh_process

EMOTION6 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "emotion6" / "images"
MAX_UPLOAD_BYTES = 4 * 1024 * 1024


def synthetic_images(folder: Path, count: int) -> list[Path]:
    """Photo-sized smooth JPEGs (where no real images are at hand)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((640, 480), Image.BICUBIC)
        path = folder / f"synthetic{i:03d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def bad_uploads(folder: Path) -> list[tuple[str, bytes, int]]:
    """(name, bytes, expected status) for each kind of bad upload the load mixes in."""
    from PIL import Image

    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, format="PNG", optimize=True)
    photo = io.BytesIO()
    Image.new("RGB", (400, 300), (200, 120, 40)).save(photo, format="JPEG", quality=95)
    truncated = photo.getvalue()[: len(photo.getvalue()) // 2]
    return [("notes.jpg", b"this is not an image\n" * 10, 415), ("bomb.png", bomb.getvalue(), 422),
            ("truncated.jpg", truncated, 422), ("huge.jpg", os.urandom(MAX_UPLOAD_BYTES + 1024), 413)]


def cli_rate(paths: list[str], model: str, pretrained: str, batch: int | None) -> dict:
    """`emoclip predict`'s path on ``paths`` (model loaded first, not timed): images/s."""
    from emoclip.tagging.config import TaggerConfig, build_tagger
    from emoclip.tagging.writers import open_writer

    tagger = build_tagger(TaggerConfig(model=model, pretrained=pretrained, device="cpu", no_cache=True,
                                       batch_size=batch))
    levels = {name: tagger.taxonomy.find_ancestor(name).names for name in tagger.coarse_levels}
    out = tempfile.mktemp(suffix=".jsonl")
    started = time.perf_counter()
    with open_writer("jsonl", out, tagger.taxonomy.names, levels) as writer:
        for row in tagger.tag(paths):
            writer.write(row)
    seconds = time.perf_counter() - started
    os.unlink(out)
    return {"images_per_s": len(paths) / seconds, "seconds": seconds}


def start_server(model: str, pretrained: str, max_batch: int | None, max_wait_ms: float) -> tuple[subprocess.Popen,
                                                                                                      str]:
    command = [sys.executable, "-m", "emoclip", "serve", "--model", model, "--pretrained", pretrained,
               "--device", "cpu", "--no-cache", "--host", "127.0.0.1", "--port", "0",
               "--max-upload-bytes", str(MAX_UPLOAD_BYTES), "--max-wait-ms", str(max_wait_ms)]
    if max_batch:
        command += ["--max-batch", str(max_batch)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        found = re.search(r"serving (http://127\.0\.0\.1:\d+)", line)
        if found:
            return proc, found.group(1)
    raise SystemExit(f"the server did not start (exit status {proc.wait()})")


async def load(url: str, uploads: list[tuple[str, bytes, int]], concurrency: int) -> tuple[list, float]:
    """Send every upload once, ``concurrency`` at a time; (status, seconds, expected) per request."""
    import httpx

    results: list[tuple[int, float, int]] = []
    todo = iter(uploads)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        async def worker() -> None:
            for name, data, expected in todo:
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/predict", files={"image": (name, data)})
                    status = response.status_code
                except httpx.TransportError:
                    status = 0   # the connection failed: counted apart, never as a success
                results.append((status, time.perf_counter() - started, expected))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--bad-fraction", type=float, default=0.10)
    parser.add_argument("--images", default=str(EMOTION6), help="a folder of images (default: Emotion6 if present, "
                        "else synthetic photos)")
    parser.add_argument("--limit", type=int, default=200, help="distinct images (default 200)")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="random")
    parser.add_argument("--max-batch", type=int, default=None, help="default: the service's (16 on the CPU)")
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    args = parser.parse_args()

    from emoclip.core.files import collect_images
    from emoclip.core.hardware import cpu_info

    work = Path(tempfile.mkdtemp(prefix="emoclip-serve-bench-"))
    source = args.images if Path(args.images).is_dir() else "synthetic"
    paths = ([str(p) for p in collect_images([args.images])][: args.limit] if source != "synthetic"
             else [str(p) for p in synthetic_images(work, args.limit)])
    good = [(Path(p).name, Path(p).read_bytes(), 200) for p in paths]
    bad = bad_uploads(work)
    n_bad = round(args.requests * args.bad_fraction)
    every = args.requests / n_bad if n_bad else float("inf")
    bad_slots = {int(i * every) for i in range(n_bad)}
    bad_order = {slot: k for k, slot in enumerate(sorted(bad_slots))}
    uploads = [bad[bad_order[i] % len(bad)] if i in bad_slots else good[i % len(good)] for i in range(args.requests)]
    print(f"{len(paths)} images ({source}), {args.model} ({args.pretrained} weights), CPU; {args.requests} requests, "
          f"concurrency {args.concurrency}, {n_bad} bad uploads", flush=True)

    cli = in_fresh_process(cli_rate, paths, args.model, args.pretrained, args.max_batch)
    print(f"emoclip predict (same code path, no cache): {cli['images_per_s']:.2f} images/s "
          f"({len(paths)} images in {cli['seconds']:.1f} s)", flush=True)

    proc, url = start_server(args.model, args.pretrained, args.max_batch, args.max_wait_ms)
    try:
        asyncio.run(load(url, good[: 2 * args.concurrency], args.concurrency))   # warm-up, not counted
        results, seconds = asyncio.run(load(url, uploads, args.concurrency))
        import httpx

        metrics = httpx.get(f"{url}/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        exit_status = proc.wait(120)
    statuses = [status for status, _, _ in results]
    ok = statuses.count(200)
    rejected = sum(400 <= s < 500 for s in statuses)
    errors = sum(s >= 500 for s in statuses)
    transport = statuses.count(0)
    wrong = sum(status != expected for status, _, expected in results)
    latencies = [t * 1000 for _, t, _ in results]
    served = ok / seconds
    batches = re.search(r"^emoclip_batch_images_sum (\S+)$", metrics, re.M), re.search(
        r"^emoclip_batch_images_count (\S+)$", metrics, re.M)
    mean_batch = float(batches[0].group(1)) / max(1.0, float(batches[1].group(1))) if all(batches) else float("nan")
    print(f"served: {ok} images in {seconds:.1f} s; mean encoder batch {mean_batch:.1f} images; "
          f"{wrong} answers other than expected, {transport} transport failures; server exit status {exit_status}")
    print(json.dumps({"statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))}}))
    print(f"requests={len(results)} ok={ok} rejected_4xx={rejected} errors_5xx={errors} "
          f"p50_ms={percentile(latencies, 50):.0f} p99_ms={percentile(latencies, 99):.0f} "
          f"images_per_s={served:.1f} vs_cli={served / cli['images_per_s']:.2f} cpu={cpu_info().kind}")


if __name__ == "__main__":
    main()
