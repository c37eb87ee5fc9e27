"""Choosing the torch device: ``auto`` takes CUDA when it works, else the CPU."""

from __future__ import annotations

import torch

from emoclip.core.errors import EmoclipError


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` → a usable ``torch.device``, or a clear error."""
    if isinstance(spec, torch.device):
        return spec
    text = spec.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise EmoclipError(f"unknown device '{spec}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EmoclipError("--device cuda was requested but no CUDA GPU is usable here "
                               "(torch.cuda.is_available() is False); use --device cpu or --device auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EmoclipError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) are visible")
    elif device.type != "cpu":
        raise EmoclipError(f"device type '{device.type}' is not supported; use auto, cpu or cuda")
    return device
