"""Where computations run: choosing the device, its precision, and describing the machine.

``resolve_device("auto")`` prefers CUDA, then Apple's MPS, then the CPU; model cards and checkpoints
record :func:`describe_machine`; :func:`resolve_precision` picks the autocast dtype for training.
"""

from __future__ import annotations

import os
import platform

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA if available, then Apple's MPS, then the CPU; otherwise ``torch.device(name)``."""
    if name != "auto":
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={name!r}, but this machine has no CUDA GPU that torch can use; "
                             "use 'auto' or 'cpu'")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe_machine(device: torch.device) -> str:
    """A short description of where training ran, for checkpoints and model cards."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} GPU"
    return f"{os.cpu_count()}-core {platform.machine()} CPU ({device.type})"


def resolve_precision(setting: str, device: torch.device) -> str:
    """The autocast dtype to use: "auto" is bf16 on Ampere or newer GPUs, fp16 on older ones (with a
    gradient scaler), none off CUDA. On the CPU "bf16" may be asked for (CPU autocast), "fp16" may
    not; bf16 was measured 0.91x the float32 speed of the ``cpu`` profile on a 2-core Intel Xeon
    with AMX bf16 units (docs/RESULTS.md, session 16), so "auto" stays float32 there."""
    if device.type != "cuda":
        if setting == "bf16" and device.type == "cpu":
            return "bf16"   # CPU autocast
        if setting in ("fp16", "bf16"):
            where = " (or the CPU, for bf16)" if setting == "bf16" else ""
            raise ValueError(f"mixed_precision={setting!r} needs a CUDA device{where}, got device {device}")
        return "no"
    if setting != "auto":
        return setting
    major, _ = torch.cuda.get_device_capability(device)
    return "bf16" if major >= 8 else "fp16"   # a T4 (sm_75) has no fast bf16
