"""What the network predicts: the noise eps (DDPM), the velocity v, or the clean image x0.

All three carry the same information given x_t = a x0 + s eps, with a = sqrt(a-bar_t) and
s = sqrt(1 - a-bar_t) (so a^2 + s^2 = 1):

    eps                      the noise (Ho et al. 2020): the course's default
    v  = a eps - s x0        the "velocity" (Salimans & Ho 2022, "Progressive Distillation"), the
                             rate of change of x_t along the circle a^2 + s^2 = 1
    x0                       the clean image itself

and each converts to the noise that the samplers use:

    eps = s x_t + a v        (a v + s x_t = a^2 eps - a s x0 + s a x0 + s^2 eps = eps)
    eps = (x_t - a x0) / s

Written as eps = c_skip x_t + c_out F(x_t) with the network's raw output F, the v form is a
preconditioning in the sense of Karras et al. 2022: at high noise (a -> 0) the noise is mostly x_t
itself (c_skip = s -> 1) and F's error reaches eps scaled down by c_out = a; at low noise (a -> 1)
it is a plain noise prediction. The training loss compares F with its own target, which weights
the noise levels differently: for the same x_t, ||v - v_hat||^2 = ||eps - eps_hat||^2 / a^2 and
||x0 - x0_hat||^2 = ||eps - eps_hat||^2 / SNR_t, where SNR_t = a^2 / s^2.

Which of the three a model predicts is ``UNetConfig.prediction``; :func:`model_prediction`
reads it from any model (plain functions: "eps").
"""

from __future__ import annotations

import torch

from ._checks import check_choice
from .schedules import NoiseSchedule, extract

PREDICTIONS = ("eps", "v", "x0")


def model_prediction(model) -> str:
    """What ``model`` predicts: its ``config.prediction`` (a UNet, a torch.compile'd one, whose
    attributes are the UNet's, or a wrapper with ``.module`` such as DistributedDataParallel), or
    its own ``prediction`` attribute, else "eps" (the API's calling convention)."""
    for obj in (model, getattr(model, "module", None)):
        if obj is None:
            continue
        for source in (getattr(obj, "config", None), obj):
            value = getattr(source, "prediction", None) if source is not None else None
            if value is not None:
                check_choice(f"{type(source).__name__}.prediction", value, PREDICTIONS)
                return value
    return "eps"


def _scales(schedule: NoiseSchedule, t, x: torch.Tensor) -> tuple:
    """(a, s) = (sqrt(a-bar_t), sqrt(1 - a-bar_t)) broadcast against x (t: int or long (B,))."""
    return extract(schedule.sqrt_alphas_cumprod, t, x), extract(schedule.sqrt_one_minus_alphas_cumprod, t, x)


def training_target(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t, prediction: str) -> torch.Tensor:
    """What a ``prediction`` model should output for x_t = a x0 + s noise: noise, v = a noise - s x0, or x0.

    x0, noise: (B, C, H, W); t: long (B,) in [0, T - 1] or an int. Same shape as x0. For "v" this
    equals diffusers' ``DDPMScheduler.get_velocity(x0, noise, t)``.
    """
    check_choice("prediction", prediction, PREDICTIONS)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    a, s = _scales(schedule, t, x0)
    return a * noise - s * x0


def to_epsilon(schedule: NoiseSchedule, x_t: torch.Tensor, t, output: torch.Tensor, prediction: str) -> torch.Tensor:
    """The noise implied by a ``prediction`` model's ``output`` at x_t (see the module docstring).

    x_t, output: (B, C, H, W); t: long (B,) or an int. "eps" returns ``output`` itself. For "x0"
    the division by s = sqrt(1 - a-bar_t) amplifies the output's error at the cleanest steps
    (s = 0.01 at t = 0 of the linear schedule).
    """
    check_choice("prediction", prediction, PREDICTIONS)
    if prediction == "eps":
        return output
    a, s = _scales(schedule, t, x_t)
    if prediction == "v":
        return s * x_t + a * output
    return (x_t - a * output) / s

