"""Shared helpers for the benchmarks: GEMM peak, model FLOPs, peak memory, child processes."""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from collections.abc import Callable

import torch


def best_gemm_gflops(seconds: float = 3.0) -> float:
    """The best fp32 matrix-multiply rate this machine reaches now, over a few shapes (GFLOP/s)."""
    best = 0.0
    for m, k, n in ((1600, 768, 3072), (2048, 2048, 2048), (1024, 4096, 1024)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 3:
            a @ b
            runs += 1
        best = max(best, 2 * m * k * n * runs / (time.perf_counter() - started) / 1e9)
    return best


def image_encoder_flops(model: torch.nn.Module, image_size: int) -> float:
    """FLOPs (multiply and add counted separately) of encoding one image, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.encode_image(torch.randn(1, 3, image_size, image_size))
    return float(counter.get_total_flops())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(conn, func, args) -> None:
    try:
        conn.send(("ok", func(*args)))
    except BaseException as exc:  # report instead of hanging the parent
        conn.send(("error", repr(exc)))


def in_fresh_process(func: Callable, *args):
    """Run ``func(*args)`` in a new process so its time and peak memory are its own."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child, func, args))
    proc.start()
    status, value = parent.recv()
    proc.join()
    if status != "ok":
        raise RuntimeError(value)
    return value
