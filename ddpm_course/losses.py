"""The DDPM training objective: predict the noise that made x_t (Ho et al. 2020, Algorithm 1).

    t ~ Uniform{0, ..., T-1},  eps ~ N(0, I),  x_t = sqrt(a-bar_t) x0 + sqrt(1 - a-bar_t) eps
    loss = || eps - eps_theta(x_t, t) ||^2          ("simple" loss, DDPM eq. 14)

MSE is the default; L1 is an option. A model built to predict v or x0 instead
(``UNetConfig.prediction``) is compared with that target (:mod:`ddpm_course.targets`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._checks import check_choice, check_float, check_image_batch, check_int, check_labels
from .config import LOSS_TYPES, TIMESTEP_SAMPLERS
from .guidance import model_num_classes, null_label
from .schedules import NoiseSchedule
from .targets import PREDICTIONS, model_prediction, training_target


class NoisedBatch(NamedTuple):
    """A training example of the forward process: x_t, the t it came from, and its noise."""

    x_t: torch.Tensor    # (B, C, H, W)
    t: torch.Tensor      # long (B,)
    noise: torch.Tensor  # (B, C, H, W), standard normal


def sample_timesteps(batch_size: int, T: int, device, generator: torch.Generator | None = None, *,
                     method: str = "uniform") -> torch.Tensor:
    """The batch's timesteps: a long tensor (batch_size,) of values in [0, T - 1] on ``device``.

    "uniform": each t ~ Uniform{0, ..., T - 1} independently (DDPM, Algorithm 1).
    "stratified": one random offset u ~ U[0, 1) shared by the batch, t_i = floor(T * ((u + i / B) mod 1))
    for i = 0 .. B-1 (the low-discrepancy sampler of Kingma et al. 2021, "Variational Diffusion
    Models"): each t is still uniform, but every 1/B-th of [0, T) gets exactly one, so a batch never
    piles up on easy or hard noise levels and the loss estimate varies less from batch to batch.
    """
    check_choice("method", method, TIMESTEP_SAMPLERS)
    check_int("batch_size", batch_size, minimum=1)
    check_int("T", T, minimum=1)
    if method == "uniform":
        return torch.randint(0, T, (batch_size,), device=device, generator=generator)
    u = torch.rand((), device=device, generator=generator)
    grid = torch.arange(batch_size, device=device, dtype=torch.float32) / batch_size
    return (((u + grid) % 1.0) * T).floor().long().clamp_(max=T - 1)


def noise_batch(schedule: NoiseSchedule, x0: torch.Tensor, generator: torch.Generator | None = None, *,
                timesteps: str = "uniform") -> NoisedBatch:
    """Draw t (``timesteps``: see :func:`sample_timesteps`) and eps for every image of x0 (B, C, H, W)
    and noise it with q(x_t | x_0)."""
    t = sample_timesteps(x0.shape[0], schedule.T, x0.device, generator, method=timesteps)
    noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    return NoisedBatch(schedule.add_noise(x0, noise, t), t, noise)


def drop_labels(labels: torch.Tensor, p_uncond: float, null_label: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by the "no label" index with probability ``p_uncond`` (label dropout)."""
    if p_uncond <= 0:
        return labels
    drop = torch.rand(labels.shape, device=labels.device, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def min_snr_weights(schedule: NoiseSchedule, t: torch.Tensor, gamma: float, prediction: str = "eps") -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) for a loss on ``prediction``'s target.

    Min-SNR weights the x0 error by min(SNR_t, gamma): nearly clean steps, whose easy, conflicting
    gradients otherwise slow training down, count less. Since, for the same x_t, the x0 error is
    the eps error / SNR_t and the v error is the eps error * (1 + SNR_t) / SNR_t, the weights are
    eps: min(SNR, gamma) / SNR (in (0, 1], 1 for noisy steps); v: min(SNR, gamma) / (SNR + 1);
    x0: min(SNR, gamma). t: long (B,) -> (B,) float. (These equalities hold for squared errors;
    with ``loss_type="l1"`` the three weightings are not the same weighting.)
    """
    check_choice("prediction", prediction, PREDICTIONS)
    snr = schedule.snr.to(t.device)[t]
    clipped = snr.clamp(max=gamma)
    return {"eps": clipped / snr, "v": clipped / (snr + 1), "x0": clipped}[prediction]


def epsilon_loss(model, schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 labels: torch.Tensor | None = None, *, loss_type: str = "mse") -> torch.Tensor:
    """DDPM's simple loss for given t and noise (eq. 14): mean((eps_theta(x_t, t[, y]) - noise)^2).

    x0, noise: (B, C, H, W); t: long (B,); labels: long (B,) or None. Returns a scalar tensor
    (float32 whatever the model's precision). ``loss_type="l1"`` takes absolute errors instead.
    A model that predicts v or x0 (``UNetConfig.prediction``) is compared with that target instead
    (:func:`ddpm_course.targets.training_target`).
    """
    per_image = prediction_errors(model, schedule, x0, t, noise, labels, loss_type=loss_type)
    return per_image.mean()


def prediction_errors(model, schedule: NoiseSchedule, x0, t, noise, labels=None, *, loss_type: str = "mse"):
    """The per-image mean error of :func:`epsilon_loss` between the model's output and its target
    (the noise, v or x0, as the model predicts): (B,) float32."""
    x_t = schedule.add_noise(x0, noise, t)
    output = model(x_t, t) if labels is None else model(x_t, t, labels)
    target = training_target(schedule, x0, noise, t, model_prediction(model))
    error = F.mse_loss if loss_type == "mse" else F.l1_loss
    return error(output.float(), target.float(), reduction="none").flatten(1).mean(1)


def diffusion_loss(model, schedule: NoiseSchedule, x0: torch.Tensor, labels: torch.Tensor | None = None, *,
                   loss_type: str = "mse", p_uncond: float = 0.0, min_snr_gamma: float | None = None,
                   timesteps: str = "uniform", generator: torch.Generator | None = None,
                   shard: tuple | None = None) -> torch.Tensor:
    """The diffusion loss on one batch (a scalar tensor): the model's output against its target
    (the noise for DDPM's eps models; v or x0 for models that predict those).

    x0: (B, C, H, W) in [-1, 1]; labels: long (B,) for a conditional model, else None;
    p_uncond: probability of replacing a label by "no label" (for classifier-free guidance);
    min_snr_gamma: weight each image's loss by :func:`min_snr_weights` (None: DDPM's uniform weights);
    timesteps: "uniform" or "stratified", how t is drawn (:func:`sample_timesteps`);
    shard: (start, stop) to compute the loss on those images only, after drawing t, the noise and
    the label dropout for the whole batch (data-parallel training: every process draws the same).
    """
    check_image_batch("x0", x0)
    check_choice("loss_type", loss_type, LOSS_TYPES)
    check_float("p_uncond", p_uncond, minimum=0.0, maximum=1.0)
    if min_snr_gamma is not None:
        check_float("min_snr_gamma", min_snr_gamma, minimum=0.0, open_min=True)
    batch = noise_batch(schedule, x0, generator, timesteps=timesteps)
    if labels is not None:
        check_labels("labels", labels, x0.shape[0], model_num_classes(model), allow_null=True,
                     values=labels.device.type == "cpu")
        if p_uncond > 0:
            labels = drop_labels(labels, p_uncond, null_label(model), generator)
    part = slice(*shard) if shard is not None else slice(None)
    t = batch.t[part]
    per_image = prediction_errors(model, schedule, x0[part], t, batch.noise[part],
                                  labels[part] if labels is not None else None, loss_type=loss_type)
    if min_snr_gamma is None:
        return per_image.mean()
    return (min_snr_weights(schedule, t, min_snr_gamma, model_prediction(model)) * per_image).mean()
