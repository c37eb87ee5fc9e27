"""What this machine's CPU can do, read once and described in one line.

The machines emoclip runs on differ from session to session and from CI's earlier runs (an AMD EPYC
whose bf16 matmul was ~500× slower than fp32; an Intel Xeon with AVX-512/AMX where bf16 was 6×
faster). A failure or a speed figure is only readable next to the CPU it came from, so the test
command prints ``describe()`` first, benchmarks end with it, and fast paths are chosen from these
facts plus a measurement (see ``precision.py``), never from an assumption.

``python -m emoclip.core.hardware`` prints the line.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class CpuInfo:
    """The facts about the CPU that change which kernels run."""

    model: str
    flags: frozenset[str]
    threads: int
    torch_capability: str

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def amx(self) -> bool:
        return bool({"amx_bf16", "amx_tile"} & self.flags)

    @property
    def native_bf16(self) -> bool:
        """bf16 matmul in hardware (AVX512-BF16 or AMX); without it, bf16 is emulated and slow."""
        return self.amx or "avx512_bf16" in self.flags

    @property
    def kind(self) -> str:
        """A short name for the kind, used in benchmark summary lines: ``native-bf16`` or ``no-bf16``."""
        return "native-bf16" if self.native_bf16 else "no-bf16"


def _cpuinfo_text() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def _first_field(text: str, name: str) -> str:
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return ""


@cache
def cpu_info() -> CpuInfo:
    """Read the CPU model and feature flags (Linux ``/proc/cpuinfo``; elsewhere only the model name)."""
    import torch

    text = _cpuinfo_text()
    model = _first_field(text, "model name") or platform.processor() or platform.machine() or "unknown CPU"
    flags = frozenset(_first_field(text, "flags").split())
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = "unknown"
    return CpuInfo(model=" ".join(model.split()), flags=flags, threads=torch.get_num_threads(),
                   torch_capability=capability)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def describe() -> str:
    """One line naming the CPU and what decides its fast paths."""
    info = cpu_info()
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in info.flags]
    return (f"cpu: {info.model} | avx512={_yes(info.avx512)} amx={_yes(info.amx)} "
            f"native_bf16={_yes(info.native_bf16)}{' (' + ', '.join(bf16) + ')' if bf16 else ''} "
            f"| torch capability={info.torch_capability} threads={info.threads} cores={os.cpu_count()}")


if __name__ == "__main__":
    print(describe())
