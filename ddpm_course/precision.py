"""Float32 islands under autocast: the layers whose arithmetic mixed precision must not lower.

Under bf16 autocast (the CPU with AMX units, Ampere GPUs) or fp16 (a T4) the convolutions and
linear layers run in low precision; the normalisations keep float32 statistics (guided-diffusion's
``GroupNorm32``, Dhariwal & Nichol 2021), and on the CPU they and the attention are also faster in
float32 (docs/RESULTS.md, session 19). :class:`~ddpm_course.unet.UNet` builds its norms from here.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def without_autocast(device_type: str):
    """A context that turns autocast off on the devices where training uses it (CPU, CUDA)."""
    if device_type in ("cpu", "cuda"):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (torch >= 2.4 asks by device; older torch has one
    function for the CPU and one for CUDA)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input's dtype; under autocast returned in float32.

    Under bf16 autocast the convolutions hand it bf16 maps and cast its float32 output back to bf16
    themselves; without autocast (a model cast to bf16 or fp16 as a whole) the output takes the
    input's dtype. Normalising in float32 keeps the mean and variance exact, and on the CPU it is also
    the fast path: there PyTorch's bf16 GroupNorm took four times as long as the float32 one, and
    SiLU and the elementwise ops that follow a norm are faster in float32 too (docs/RESULTS.md,
    session 19). Same parameters and state_dict as ``nn.GroupNorm``; on float32 input, identical.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with without_autocast(x.device.type):   # a guard, should autocast ever lower group_norm's precision
            weight = None if self.weight is None else self.weight.float()
            bias = None if self.bias is None else self.bias.float()
            out = F.group_norm(x.float(), self.num_groups, weight, bias, self.eps)
        # under autocast the next layer casts for itself; a model cast to bf16/fp16 as a whole gets its dtype back
        return out if autocast_enabled(x.device.type) else out.to(x.dtype)
