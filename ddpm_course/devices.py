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
    """A short description of where training ran, for checkpoints and model cards.

    On the CPU it names the processor, the vector units torch uses and its bf16 units, e.g. "2-core
    AMD EPYC CPU (x86_64, AVX2)" or "(x86_64, AVX512, AVX512_BF16)": the 2-core machines of this
    project differ by up to 5x in training speed."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} GPU"
    if device.type != "cpu":
        return f"{os.cpu_count()}-core {cpu_model_name()} machine ({device.type})"
    units = [platform.machine(), torch.backends.cpu.get_cpu_capability()]
    if _cpu_feature("avx512_bf16"):
        units.append("AVX512_BF16")
    if cpu_has_amx():
        units.append("AMX")
    return f"{os.cpu_count()}-core {cpu_model_name()} CPU ({', '.join(u for u in units if u)})"


def _cpu_capabilities() -> dict:
    """``torch.cpu.get_capabilities()`` (the processor's name and instruction sets) where this torch has
    it, else {}."""
    probe = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    try:
        return dict(probe()) if probe is not None else {}
    except (RuntimeError, TypeError):
        return {}


def _cpuinfo(field: str) -> str:
    """The first ``field`` line of Linux's /proc/cpuinfo ("model name", "flags"), "" elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_model_name() -> str:
    """The processor's name ("AMD EPYC", "Intel(R) Xeon(R) ..."): torch's, else Linux's /proc/cpuinfo,
    else ``platform.processor()``, else the architecture ("x86_64")."""
    name = _cpu_capabilities().get("cpu_name") or _cpuinfo("model name") or platform.processor()
    return str(name).strip() or platform.machine()


def _cpu_feature(name: str) -> bool:
    """Whether this CPU has the instruction set ``name`` ("amx_bf16", "avx512_bf16"): asked of torch
    (``torch.cpu.get_capabilities()``), else of Linux's /proc/cpuinfo flags; where neither can say, no."""
    caps = _cpu_capabilities()
    if name in caps:
        return bool(caps[name])
    return name in _cpuinfo("flags").split()


def cpu_has_amx() -> bool:
    """Whether this CPU has Intel's AMX units for bf16 matrix products (Sapphire Rapids and newer
    Xeons), which make bf16 convolutions faster than float32 ones."""
    return _cpu_feature("amx_bf16")


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 dot products in hardware: AMX (:func:`cpu_has_amx`) or the
    AVX512_BF16 instructions (AMD Zen 4 and newer, Intel Cooper Lake and Sapphire Rapids). Without
    either, bf16 arithmetic is emulated and much slower than float32."""
    return cpu_has_amx() or _cpu_feature("avx512_bf16")


def resolve_precision(setting: str, device: torch.device) -> str:
    """The autocast dtype to use. "auto" is bf16 on Ampere or newer GPUs, fp16 on older ones (with a
    gradient scaler), bf16 on a CPU with bf16 units (AMX or AVX512_BF16, :func:`cpu_has_bf16_units`),
    and none (float32) elsewhere. On the CPU "bf16" may be asked for (CPU autocast), "fp16" may not.

    The CPU's bf16, with the GroupNorms and attention kept in float32
    (:class:`~ddpm_course.precision.GroupNorm32`; with them in bf16 it was 0.91x on the Xeon,
    docs/RESULTS.md, sessions 16 and 19): on a 2-core Intel Xeon with AMX the ``cpu`` profile trains
    1.5x as many images per second under bf16 autocast as in float32 (session 19); on a 2-core AMD
    EPYC with AVX512_BF16 the whole 1500-step run took 313-338 s against 439-440 s (1.3-1.4x, two
    training seeds each) and its models judged alike (session 22; a Zen 5), and on a Zen 4 one bf16
    trained 1.39x the float32 images/s (session 24). CPUs without either keep float32:
    on a 2-core AMD EPYC with AVX2 only, bf16 autocast trained 8.0 images per second against 86.8 in
    float32 (0.09x, session 20)."""
    if device.type != "cuda":
        if device.type == "cpu" and (setting == "bf16" or (setting == "auto" and cpu_has_bf16_units())):
            return "bf16"   # CPU autocast
        if setting in ("fp16", "bf16"):
            where = " (or the CPU, for bf16)" if setting == "bf16" else ""
            raise ValueError(f"mixed_precision={setting!r} needs a CUDA device{where}, got device {device}")
        return "no"
    if setting != "auto":
        return setting
    major, _ = torch.cuda.get_device_capability(device)
    return "bf16" if major >= 8 else "fp16"   # a T4 (sm_75) has no fast bf16
