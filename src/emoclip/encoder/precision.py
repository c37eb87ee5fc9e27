"""Which number format the image encoder runs in: chosen from what this machine measurably does well.

``--precision auto|fp32|bf16|fp16``. ``auto`` never assumes: on the CPU it takes bf16 only where the
CPU has native bf16 matmul (AVX512-BF16 or AMX, read by ``hardware.cpu_info``) *and* a tiny timed
matmul confirms bf16 beats fp32 here. Both halves matter: an AMD EPYC without native bf16 ran bf16
matmul ~500x slower than fp32 (emulated), and a virtual Xeon that reports ``avx512_bf16`` but hides
AMX ran it about half as fast as fp32 (the AVX-512 bf16 dot product does not out-run two fp32 FMA
ports). The measurement is remembered per machine in a small JSON file (``precision.json`` in the
user cache dir, keyed by CPU model, flags and torch version), so it costs a fraction of a second
once. On CUDA, ``auto`` is fp16 (what CLIP tools run on GPUs); elsewhere fp32.

The format applies to the *image* encoder's weights and activations (``model.visual.to(dtype)``:
measured faster than autocast, 192 vs 135 images/s on an AMX Xeon, and half the memory). The text
encoder stays fp32: class weights and trained prompts stay exactly as trained, and it runs once per
taxonomy for zero-shot. LayerNorm and softmax keep float32 accumulation inside torch's bf16/fp16
kernels; features leave the encoder as float32, L2-normalised.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from emoclip.core.errors import EmoclipError
from emoclip.encoder.measured import precision_cache_path

if TYPE_CHECKING:
    import torch

    from emoclip.core.hardware import CpuInfo

log = logging.getLogger("emoclip")

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
RESOLVED = ("fp32", "bf16", "fp16", "int8")
# int8 is the image tower quantized by OpenVINO + NNCF (int8.py); torch keeps its fp32 weights for
# the text encoder and the agreement check, so the torch dtype of int8 is float32.
CUDA_AUTO = "fp16"
# bf16 must beat fp32 by this factor in the probe: a tie is not worth the rounding.
REQUIRED_SPEEDUP = 1.15
# The probe's matmul: one ViT-B/32 MLP layer for 8 images (8 x 50 tokens, 768 -> 3072), ~2 GFLOP.
PROBE_SHAPE = (400, 768, 3072)
PROBE_ROUNDS = 5


def torch_dtype(precision: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
            "int8": torch.float32}[check_precision(precision)]


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise EmoclipError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    return precision


def machine_key(info: CpuInfo) -> str:
    """What decides the probe's answer: the CPU model, its flags and the torch build (its kernels)."""
    import torch

    blob = json.dumps([info.model, sorted(info.flags), torch.__version__])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def measure_bf16_speedup(shape: tuple[int, int, int] = PROBE_SHAPE, rounds: int = PROBE_ROUNDS) -> float:
    """fp32 time / bf16 time of one matmul, best of ``rounds`` interleaved runs (noise only slows a run)."""
    import torch

    m, k, n = shape
    generator = torch.Generator().manual_seed(0)
    operands = {dtype: (torch.randn(m, k, generator=generator).to(dtype), torch.randn(k, n, generator=generator)
                        .to(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    best = dict.fromkeys(operands, float("inf"))
    for _ in range(rounds):
        for dtype, (a, b) in operands.items():
            started = time.perf_counter()
            a @ b
            best[dtype] = min(best[dtype], time.perf_counter() - started)
    return best[torch.float32] / best[torch.bfloat16]


def bf16_speedup(info: CpuInfo, measure: Callable[[], float] = measure_bf16_speedup, path: Path | None = None
                 ) -> float:
    """bf16's measured speedup over fp32 on this machine: remembered in ``path``, else measured and stored."""
    from emoclip.encoder.measured import remembered

    def probe() -> dict:
        speedup = measure()
        log.info("bf16 matmul is %.2fx fp32 on this CPU (remembered in %s)", speedup, path or precision_cache_path())
        return {"cpu": info.model, "bf16_speedup": round(speedup, 3)}

    entry = remembered(machine_key(info), probe, lambda e: isinstance(e.get("bf16_speedup"), int | float), path)
    return float(entry["bf16_speedup"])


def auto_cpu_precision(info: CpuInfo, speedup: Callable[[CpuInfo], float] = bf16_speedup) -> str:
    """bf16 where the CPU has native bf16 matmul and it measurably beats fp32; fp32 otherwise."""
    if not info.native_bf16:
        return "fp32"  # emulated bf16: never worth measuring
    return "bf16" if speedup(info) >= REQUIRED_SPEEDUP else "fp32"


def resolve_precision(requested: str, device: torch.device | str, info: CpuInfo | None = None,
                      speedup: Callable[[CpuInfo], float] = bf16_speedup) -> str:
    """``requested`` (auto or a format) on ``device`` → the format the encoder runs in."""
    check_precision(requested)
    kind = device if isinstance(device, str) else device.type
    if requested == "int8" and kind != "cpu":
        raise EmoclipError(f"--precision int8 runs on the CPU (OpenVINO), not on {kind}; on CUDA use fp16")
    if requested != "auto":
        return requested
    if kind == "cuda":
        return CUDA_AUTO
    if kind != "cpu":
        return "fp32"
    if info is None:
        from emoclip.core.hardware import cpu_info

        info = cpu_info()
    return auto_cpu_precision(info, speedup)


@cache
def resolved_for_this_machine(requested: str, device_type: str) -> str:
    """``resolve_precision`` for the real CPU, once per process."""
    return resolve_precision(requested, device_type)
