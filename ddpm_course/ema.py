"""Exponential moving average (EMA) of model weights, the weights DDPM samples with.

theta_ema <- decay * theta_ema + (1 - decay) * theta after every optimisation step. Early in
training the effective decay is min(decay, (1 + step) / (10 + step)) so that the average is not
dominated by the random initial weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_update(ema_param: torch.Tensor, param: torch.Tensor, decay: float) -> torch.Tensor:
    """One EMA step for one tensor: decay * ema_param + (1 - decay) * param (a new tensor).

    :meth:`EMA.update` does the same for every parameter at once, in place (``torch._foreach_lerp_``).
    """
    return torch.lerp(ema_param, param, 1.0 - decay)


def ema_decay_at(step: int, decay: float) -> float:
    """The decay used after ``step`` steps: warms up towards ``decay``."""
    return min(decay, (1 + step) / (10 + step))


class EMA:
    """Holds ``ema.model``, a frozen copy of a model whose weights track its moving average."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the EMA weights towards ``model``'s after step ``step`` (0-based)."""
        if self.decay == 0:
            self.model.load_state_dict(model.state_dict())
            return
        weight = 1.0 - ema_decay_at(step, self.decay)
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, weight)
        for ema_buf, buf in zip(self.model.buffers(), model.buffers()):
            ema_buf.copy_(buf)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
