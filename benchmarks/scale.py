"""Tagging at scale: single-process vs Ray Data on this machine, and the time to resume after kill -9.

On N synthesised photos (noise JPEGs, so no dataset is needed), without the feature cache:

1. the single-process engine (``--output-dir``, in this process): total time and images/s;
2. ``--engine ray`` on a local Ray: Ray's start-up, the job's total time, and one actor's rate while
   tagging (from the per-shard times in the manifest) — the figure the README's "Scaling out" plan
   multiplies by the number of GPUs or CPU groups of a cluster;
3. ``emoclip predict --output-dir`` in a subprocess, killed with SIGKILL once half the shards are
   committed, then rerun: the rerun's wall time (start-up included) and whether its result is
   identical to the uninterrupted run of step 1.

    python benchmarks/scale.py --n 256 --model ViT-B-32

4. a driver that starts its own local Ray, killed with SIGKILL after its first commit: how many of
   the processes it started still run 60 s later (``ray_reaper`` should leave none).

``per_core_vs_local`` compares an actor per core with the single process per core, each at its rate
while tagging: (actor img/s ÷ its CPUs) ÷ (single-process img/s ÷ its torch threads).

The last line: local_img_s=… ray_img_s=… ray_overhead_s=… per_actor_img_s=… resume_s=… full_run_s=…
identical=yes|no cpu=KIND ray_startup_s=… per_core_vs_local=… leftover_processes=N
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthesise(folder: Path, n: int, width: int = 320, height: int = 240) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{i:06d}.jpg",
                                                                                          quality=85)


def actor_rate(folder: Path) -> float:
    """Images/s of one engine worker while tagging (the shards' own times in the commit log: start-up,
    queueing and the driver's commits excluded) — the per-actor rate r of the README's plan."""
    from emoclip.tagging.shards import committed_shards

    done = committed_shards(folder)
    return sum(d.rows for d in done) / max(sum(d.seconds for d in done), 1e-9)


def committed(out: Path) -> int:
    try:
        return (out / "_emoclip_commits.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def leftover_after_kill(command: list[str], out: Path) -> int:
    """Start a driver that runs its own local Ray, SIGKILL it after its first commit, and count the
    processes it started that are still running 60 s later (zombies count as ended)."""
    import psutil

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    started = []
    try:
        while process.poll() is None and committed(out) < 1:
            time.sleep(0.05)
        started = psutil.Process(process.pid).children(recursive=True)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()

    def running(p) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(running(p) for p in started):
        time.sleep(0.5)
    left = [p for p in started if running(p)]
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return len(left)


def kill_at_half(command: list[str], out: Path, shards: int) -> float:
    """Run ``command`` and SIGKILL it once half the shards are committed; seconds it ran."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None:
            if committed(out) >= shards / 2:
                break
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=256, help="images to synthesise (default 256)")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--actors", type=int, default=None, help="Ray actors (default: the engine's choice)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--precision", default="fp32",
                        help="pinned, so both engines run the same kernels ('auto' may resolve per thread count)")
    args = parser.parse_args()

    import pandas as pd
    import ray

    from emoclip.core.hardware import cpu_info
    from emoclip.tagging.config import TaggerConfig
    from emoclip.tagging.inputs import collect_inputs
    from emoclip.tagging.shards import run_sharded

    work = Path(tempfile.mkdtemp(prefix="emoclip-scale-"))
    images = work / "images"
    synthesise(images, args.n)
    inputs = collect_inputs([str(images)])
    shards = -(-args.n // args.shard_size)
    config = TaggerConfig(model=args.model, pretrained="random", device="cpu", no_cache=True, precision=args.precision)
    job = {"shard_size": args.shard_size, "progress": False}
    print(f"{args.n} synthesised 320x240 JPEGs, {args.model} (random weights), shards of {args.shard_size}, "
          f"{os.cpu_count()} CPUs; {cpu_info().model}")

    import torch

    local_threads = torch.get_num_threads()
    local = run_sharded(config, inputs, work / "local", **job)
    local_rate = args.n / local.seconds
    local_tagging = actor_rate(work / "local")
    print(f"single process: {local.seconds:.1f} s ({local_rate:.2f} img/s; {actor_rate(work / 'local'):.2f} img/s "
          "while tagging)")

    started = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_startup = time.perf_counter() - started
    try:
        on_ray = run_sharded(config, inputs, work / "ray", engine="ray", actors=args.actors,
                             cpus_per_actor=args.cpus_per_actor, **job)
    finally:
        ray.shutdown()
    actors = args.actors or max(1, int((os.cpu_count() - 1) // args.cpus_per_actor))
    ray_rate = args.n / on_ray.seconds
    per_actor = actor_rate(work / "ray")
    # an actor per core against the single process per core: each one's rate while tagging
    per_core_vs_local = (per_actor / args.cpus_per_actor) / (local_tagging / local_threads)
    print(f"Ray local: start-up {ray_startup:.1f} s, job {on_ray.seconds:.1f} s ({ray_rate:.2f} img/s); "
          f"{per_actor:.2f} img/s per actor while tagging ({actors} actor(s) of {args.cpus_per_actor:g} CPU)")

    out = work / "killed"
    command = [sys.executable, "-c", "from emoclip.cli.main import main; main()", "predict", str(images),
               "--model", args.model, "--pretrained", "random", "--device", "cpu", "--precision", args.precision,
               "--no-cache",
               "--shard-size", str(args.shard_size), "--no-progress", "--output-dir", str(out)]
    ran = kill_at_half(command, out, shards)
    done_before = committed(out)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume = time.perf_counter() - started
    identical = pd.read_parquet(out).equals(pd.read_parquet(work / "local"))
    print(f"kill -9 after {ran:.1f} s with {done_before}/{shards} shards committed; the rerun took {resume:.1f} s "
          f"(start-up included) and its result is {'IDENTICAL' if identical else 'DIFFERENT'} to the uninterrupted run")
    killed = work / "ray-killed"
    leftover = leftover_after_kill([*command[:-1], str(killed), "--engine", "ray", "--ray-actors", "1",
                                    "--ray-cpus-per-actor", str(args.cpus_per_actor)], killed)
    print(f"driver with its own local Ray killed with SIGKILL after its first commit: {leftover} of its processes "
          "still running 60 s later")
    print(f"local_img_s={local_rate:.2f} ray_img_s={ray_rate:.2f} ray_overhead_s={on_ray.seconds - local.seconds:.1f} "
          f"per_actor_img_s={per_actor:.2f} resume_s={resume:.1f} full_run_s={local.seconds:.1f} "
          f"identical={'yes' if identical else 'no'} cpu={cpu_info().kind} ray_startup_s={ray_startup:.1f} "
          f"per_core_vs_local={per_core_vs_local:.2f} leftover_processes={leftover}")


if __name__ == "__main__":
    main()
