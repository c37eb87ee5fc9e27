"""How the image encoder's work is laid over the cores: lanes × threads, chosen by measurement.

A layout runs ``lanes`` batches at once, each in its own thread with ``threads`` intra-op threads
(lanes × threads = the threads torch may use). One lane with every thread is the obvious layout,
and it is slow on few cores: a ViT's hundreds of small operators each fork and join the threads,
and a thread that finishes its half waits for the other. Measured on the 2-core AMX Xeon (ViT-B/32,
bf16, batch 16): one lane × 2 threads encodes 87–99 images/s, two lanes × 1 thread 118–129; OpenVINO
int8 gains less (2 streams × 1 thread 219 against 203), since its graph is fused. On another CPU,
model or thread budget the answer may differ, so it is never assumed:

- ``encoder_layout`` times every candidate (each divisor of the thread budget, up to
  ``MAX_LANES`` lanes) on a batch of the real encoder, interleaved, best of ``PROBE_ROUNDS``, and
  takes more lanes only when they beat one lane by ``REQUIRED_SPEEDUP``;
- a layout whose features differ in any bit from one lane's on the probe batch is never chosen,
  so the layout decides speed only, never a feature (the cache and resumes rely on it);
- the answer is remembered per machine and encoder (measured.py): measured once, then stable.

Lane threads keep their own thread count: torch's OpenMP thread count is per calling thread (set by
``torch.set_num_threads`` in that thread, after torch's lazy per-thread initialisation), so a lane
pinned to one thread leaves the caller's count as it was (``LanePool`` restores the process-wide
default that new threads start from).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

if TYPE_CHECKING:
    from emoclip.encoder.backbone import Backbone

log = logging.getLogger("emoclip")

MAX_LANES = 8           # each lane holds a batch and its activations: memory grows with lanes
REQUIRED_SPEEDUP = 1.1  # more lanes must beat one lane by this much: a tie is not worth the memory
PROBE_ROUNDS = 3
WARM_UP_CALLS = 3


@dataclass(frozen=True, order=True)
class Layout:
    """``lanes`` batches encoded at once, each with ``threads`` intra-op threads."""

    lanes: int
    threads: int

    def __str__(self) -> str:
        return f"{self.lanes}x{self.threads}"


def single_lane(threads: int | None = None) -> Layout:
    return Layout(1, threads or torch.get_num_threads())


def candidate_layouts(threads: int) -> list[Layout]:
    """Every lanes × threads that uses exactly ``threads``, one lane first."""
    return [Layout(lanes, threads // lanes) for lanes in range(1, min(threads, MAX_LANES) + 1)
            if threads % lanes == 0]


def _pin(threads: int, ready: threading.Barrier) -> None:
    torch.get_num_threads()      # torch's per-thread initialisation first: it would reset the count later
    torch.set_num_threads(threads)
    ready.wait()                 # every lane thread is started and pinned before the caller goes on


class LanePool:
    """``lanes`` threads, each running torch with ``threads`` intra-op threads."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._executor = ThreadPoolExecutor(max_workers=layout.lanes, thread_name_prefix=f"lane{layout}")
        own = torch.get_num_threads()
        ready = threading.Barrier(layout.lanes + 1)
        pinned = [self._executor.submit(_pin, layout.threads, ready) for _ in range(layout.lanes)]
        ready.wait()
        for future in pinned:
            future.result()
        torch.set_num_threads(own)  # the default new threads start from, and the caller's own count

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._executor.submit(fn, *args)

    def threads_per_lane(self) -> list[int]:
        """What each lane thread really runs with (for tests and the benchmark)."""
        ready = threading.Barrier(self.layout.lanes)

        def count() -> int:
            ready.wait()  # one call per lane thread
            return torch.get_num_threads()

        return [f.result() for f in [self.submit(count) for _ in range(self.layout.lanes)]]


_POOLS: dict[Layout, LanePool] = {}
_POOLS_LOCK = threading.Lock()


def lane_pool(layout: Layout) -> LanePool:
    """The process's pool for ``layout`` (started once: pinning threads is not free)."""
    with _POOLS_LOCK:
        if layout not in _POOLS:
            _POOLS[layout] = LanePool(layout)
        return _POOLS[layout]


def run_lanes(encode: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, layout: Layout
              ) -> list[torch.Tensor]:
    """``encode(batch)`` once per lane, all lanes at once (one lane: in the calling thread)."""
    if layout.lanes == 1:
        return [encode(batch)]
    pool = lane_pool(layout)
    return [f.result() for f in [pool.submit(encode, batch) for _ in range(layout.lanes)]]


def measure_layouts(encoder_for: Callable[[Layout], Callable[[torch.Tensor], torch.Tensor]], batch: torch.Tensor,
                    candidates: list[Layout], rounds: int = PROBE_ROUNDS) -> dict[Layout, dict[str, Any]]:
    """Images/s of each layout (best of ``rounds``, interleaved so a noisy moment hits all alike) and
    whether its features equal one lane's bit for bit."""
    encoders = {layout: encoder_for(layout) for layout in candidates}
    reference = None
    results: dict[Layout, dict[str, Any]] = {}
    for layout, encode in encoders.items():  # warm-up: kernels, weight reorders, lane threads
        for _ in range(WARM_UP_CALLS - 1):  # (OpenVINO reaches its speed after a few calls)
            run_lanes(encode, batch, layout)
        outputs = run_lanes(encode, batch, layout)
        reference = outputs[0] if reference is None else reference
        results[layout] = {"images_per_s": 0.0,
                           "identical": all(torch.equal(reference, out) for out in outputs)}
    for _ in range(rounds):
        for layout, encode in encoders.items():
            started = time.perf_counter()
            run_lanes(encode, batch, layout)
            rate = layout.lanes * len(batch) / (time.perf_counter() - started)
            results[layout]["images_per_s"] = max(results[layout]["images_per_s"], rate)
    return results


def pick_layout(results: dict[Layout, dict[str, Any]]) -> Layout:
    """The fastest layout whose features equal one lane's, if it beats one lane by REQUIRED_SPEEDUP."""
    one = min(results)
    eligible = [layout for layout, r in results.items() if r["identical"]]
    best = max(eligible, key=lambda layout: results[layout]["images_per_s"])
    if results[best]["images_per_s"] < REQUIRED_SPEEDUP * results[one]["images_per_s"]:
        return one
    return best


def layout_key(backbone: Backbone, batch_size: int, threads: int) -> str:
    """What decides the answer: this machine (CPU, flags, torch), the encoder's compute and the budget."""
    from emoclip.core.hardware import cpu_info
    from emoclip.encoder.precision import machine_key

    spec = backbone.spec
    blob = json.dumps([machine_key(cpu_info()), spec.model, spec.precision, spec.input_size, spec.activation,
                       batch_size, threads, _runtime_versions(spec.precision)])
    return "layout:" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _runtime_versions(precision: str) -> str:
    if precision != "int8":
        return torch.__version__
    from importlib.metadata import version

    return f"{torch.__version__}+openvino{version('openvino')}"


def encoder_layout(backbone: Backbone, batch_size: int) -> Layout:
    """The layout ``backbone`` encodes in on this machine: measured once (a second or two), then
    remembered. Not on CUDA (the GPU does the work) and not with one thread (nothing to lay out)."""
    threads = torch.get_num_threads()
    if backbone.device.type != "cpu" or threads == 1:
        return single_lane(threads)
    memo = ("chosen", batch_size, threads)
    if memo in backbone.layouts:
        return cast(Layout, backbone.layouts[memo])
    from emoclip.encoder.measured import remembered

    def probe() -> dict[str, Any]:
        size = backbone.spec.input_size
        batch = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
        results = measure_layouts(lambda layout: backbone.for_layout(layout).encode_pixels, batch,
                                  candidate_layouts(threads))
        chosen = pick_layout(results)
        log.info("encoder layout %s (lanes x threads), measured: %s", chosen,
                 ", ".join(f"{layout} {r['images_per_s']:.0f} img/s{'' if r['identical'] else ' (features differ)'}"
                           for layout, r in results.items()))
        return {"lanes": chosen.lanes, "threads": chosen.threads,
                "measured_images_per_s": {str(k): round(v["images_per_s"], 1) for k, v in results.items()},
                "identical": {str(k): v["identical"] for k, v in results.items()}}

    def valid(entry: dict) -> bool:
        lanes, per_lane = entry.get("lanes"), entry.get("threads")
        return (isinstance(lanes, int) and isinstance(per_lane, int)
                and Layout(lanes, per_lane) in candidate_layouts(threads))

    entry = remembered(layout_key(backbone, batch_size, threads), probe, valid)
    layout = backbone.layouts[memo] = Layout(entry["lanes"], entry["threads"])
    for key in [k for k in backbone.layouts if k[0] == "tower" and k[1] != layout]:
        del backbone.layouts[key]  # the towers the probe compiled for other layouts
    return layout


def warm_up(backbone: Backbone, batch_size: int) -> Layout:
    """Choose the layout (``encoder_layout``) and run one batch through every lane: each lane thread
    creates its kernels on its first batch (~0.1 s for ViT-B/32), which a service's first request or
    a short job would otherwise wait for."""
    layout = encoder_layout(backbone, batch_size)
    if backbone.device.type == "cpu":
        size = backbone.spec.input_size
        run_lanes(backbone.for_layout(layout).encode_pixels, torch.zeros(batch_size, 3, size, size), layout)
    return layout


__all__ = ["MAX_LANES", "REQUIRED_SPEEDUP", "LanePool", "Layout", "candidate_layouts", "encoder_layout",
           "lane_pool", "measure_layouts", "pick_layout", "run_lanes", "single_lane", "warm_up"]
