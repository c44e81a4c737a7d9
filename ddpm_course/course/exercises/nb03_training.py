"""Checks of notebook 03 (training): the noise-prediction loss and one EMA update."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...ema import ema_update
from ...losses import epsilon_loss
from ...schedules import NoiseSchedule
from .framework import Mismatch, as_tensor, call, compare, exercise, gen


def _test_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed stand-in for the U-Net: depends on x_t and t, so every mistake shows."""
    return 0.5 * x + torch.sin(t.float() / 100).view(-1, 1, 1, 1)


@exercise("epsilon_loss", "03_training", "the noise-prediction loss", epsilon_loss)
def _check_epsilon_loss(fn) -> str:
    schedule = NoiseSchedule.linear(1000)
    g = gen(5)
    x0 = torch.rand(8, 1, 28, 28, generator=g) * 2 - 1
    noise = torch.randn(8, 1, 28, 28, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    x_t = schedule.add_noise(x0, noise, t)
    pred = _test_model(x_t, t)
    mistakes = {
        "the target should be the noise, not x0 (the model predicts epsilon)": F.mse_loss(pred, x0),
        "the target should be the noise, not x_t": F.mse_loss(pred, x_t),
        "the model must see the noised x_t, not the clean x0": F.mse_loss(_test_model(x0, t), noise),
        "use the mean of the squared errors, not the sum": F.mse_loss(pred, noise, reduction="sum"),
        "this is the mean absolute error (L1); the DDPM loss squares the error": F.l1_loss(pred, noise),
        "this is the root of the mean squared error; drop the square root": F.mse_loss(pred, noise).sqrt(),
    }
    out = call(fn, (_test_model, schedule, x0.clone(), t.clone(), noise.clone()),
                "epsilon_loss(model, schedule, x0, t, noise)")
    out = as_tensor(out, "the loss")
    if out.numel() != 1:
        raise Mismatch(f"the loss should be a single number (a 0-d tensor), got shape {tuple(out.shape)}")
    err = compare(out.reshape(()), epsilon_loss(_test_model, schedule, x0, t, noise), what="the loss",
                  where=lambda i: "", mistakes=mistakes)
    return f"a batch of 8, error {err:.1e}"


@exercise("ema_update", "03_training", "one exponential-moving-average update", ema_update)
def _check_ema(fn) -> str:
    g = gen(6)
    worst = 0.0
    for decay in (0.999, 0.9, 0.0):
        e, p = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
        mistakes = {
            "decay and 1 - decay are swapped: the average keeps `decay` of the old value": (1 - decay) * e + decay * p,
            "the new weights need the factor (1 - decay)": decay * e + p,
            "you returned the current weights unchanged": p,
            "you returned the old average unchanged": e,
        }
        out = call(fn, (e.clone(), p.clone(), decay), f"ema_update(ema_param, param, decay={decay})")
        worst = max(worst, compare(out, ema_update(e, p, decay), what=f"the average (decay={decay})",
                                   where=lambda i: f"at index {i}", mistakes=mistakes))
    return f"decay 0.999, 0.9 and 0, largest error {worst:.1e}"


