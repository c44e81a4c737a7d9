"""Reverse-process samplers: DDPM ancestral sampling and DDIM.

The update rules are pure functions of (schedule, x_t, t, eps[, noise]) so that one step can be
read, tested and re-implemented on its own; the samplers are short loops around them. Randomness
enters only through ``generator`` (the initial noise x_T and the per-step noise), so the same
generator state gives the same samples. Samplers never plot: progress leaves through
``callback(i, t, x_t, x0)`` (step index, timestep, the sample the model saw, predicted x0).

Papers: DDPM = Ho et al. 2020 (Algorithm 2, eq. 11); DDIM = Song et al. 2021 (eq. 12, 16);
DPM-Solver++ = Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling" (Algorithm 2).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, NamedTuple

import torch
from tqdm.auto import tqdm

from ._checks import check_choice, check_float, check_image_batch, check_int, check_shape, describe
from .guidance import predict_noise, prepare_labels
from .schedules import NoiseSchedule, extract

VARIANCES = ("posterior", "beta")


class StepOutput(NamedTuple):
    """One reverse step: the next, less noisy sample and the x0 it was aimed at."""

    x_prev: torch.Tensor  # x_{t-1} (DDPM) or x_{t_prev} (DDIM), (B, C, H, W)
    x0: torch.Tensor      # predicted x0 (clipped to [-1, 1] if asked), (B, C, H, W)


def _coef(table: torch.Tensor, t, x: torch.Tensor):
    """table[t] as a float when t is an int, or shaped (B, 1, 1, 1) when t is a (B,) tensor.

    Samplers keep the schedule on the CPU and pass int timesteps, so reading a coefficient never
    waits for a GPU.
    """
    if isinstance(t, torch.Tensor):
        return extract(table, t, x.ndim).to(x.dtype)
    return float(table[t])


def predict_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """Invert q(x_t | x_0) for x0 given the noise (DDPM eq. 4 solved for x0, eq. 15):

    x0 = (x_t - sqrt(1 - a-bar_t) eps) / sqrt(a-bar_t). t: an int or a long (B,) tensor.
    """
    return (x_t - _coef(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / _coef(
        schedule.sqrt_alphas_cumprod, t, x_t
    )


def eps_from_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
    """The noise that takes x0 to x_t: eps = (x_t - sqrt(a-bar_t) x0) / sqrt(1 - a-bar_t)."""
    return (x_t - _coef(schedule.sqrt_alphas_cumprod, t, x_t) * x0) / _coef(
        schedule.sqrt_one_minus_alphas_cumprod, t, x_t
    )


def ddpm_step(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, eps: torch.Tensor, *,
              noise: torch.Tensor | None = None, clip_x0: bool = True,
              variance: str = "posterior") -> StepOutput:
    """One ancestral step x_t -> x_{t-1} of DDPM, sampling p(x_{t-1} | x_t) = N(mu, sigma_t^2 I).

    1. predict x0 from eps (eq. 15), optionally clipped to [-1, 1];
    2. mu = coef1 * x0 + coef2 * x_t, the mean of the posterior q(x_{t-1} | x_t, x0) (eq. 7);
    3. x_{t-1} = mu + sigma_t * noise, with sigma_t^2 = beta-tilde_t ("posterior") or beta_t
       ("beta"); no noise is added at t = 0.
    t: int in [0, T - 1]; eps and noise: same shape as x_t.
    """
    check_int("t", t, minimum=0, maximum=schedule.T - 1)
    check_choice("variance", variance, VARIANCES)
    x0 = predict_x0(schedule, x_t, t, eps)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    mean = float(schedule.posterior_mean_coef1[t]) * x0 + float(schedule.posterior_mean_coef2[t]) * x_t
    if t == 0:
        return StepOutput(mean, x0)
    if noise is None:
        raise ValueError(f"noise must be given for t > 0 (got t={t}); only the last step t=0 is noiseless")
    var_table = schedule.posterior_variance if variance == "posterior" else schedule.betas
    return StepOutput(mean + math.sqrt(float(var_table[t])) * noise, x0)


def ddim_step(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor, *,
              eta: float = 0.0, noise: torch.Tensor | None = None, clip_x0: bool = True) -> StepOutput:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12); t_prev = -1 jumps to x0.

    1. predict x0 from eps; if clipped, re-derive eps from the clipped x0 so both agree;
    2. sigma = eta * sqrt((1 - a-bar_prev) / (1 - a-bar_t)) * sqrt(1 - a-bar_t / a-bar_prev) (eq. 16);
    3. x_prev = sqrt(a-bar_prev) x0 + sqrt(1 - a-bar_prev - sigma^2) eps + sigma * noise.
    eta = 0 is deterministic DDIM; eta = 1 with consecutive steps is DDPM with the posterior variance.
    """
    check_int("t", t, minimum=0, maximum=schedule.T - 1)
    check_int("t_prev", t_prev, minimum=-1, maximum=t - 1)
    abar_t = float(schedule.alphas_cumprod[t])
    abar_prev = float(schedule.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
    x0 = predict_x0(schedule, x_t, t, eps)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = eps_from_x0(schedule, x_t, t, x0)
    sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
    x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
    if sigma > 0:
        if noise is None:
            raise ValueError(f"noise must be given when eta > 0 (got eta={eta}, t={t}, t_prev={t_prev})")
        x_prev = x_prev + sigma * noise
    return StepOutput(x_prev, x0)


def ddim_timesteps(T: int, steps: int) -> list:
    """The ``steps`` timesteps a few-step sampler visits, from T - 1 down, evenly spaced.

    "Trailing" spacing (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed"): T - 1, T - 1 - T/steps, ..., T/steps - 1, then the sampler jumps to x0. It starts
    from pure noise and spends no model call on t = 0, where nothing is left to remove. With
    steps = T every timestep is visited, so DDIM with eta = 1 retraces DDPM.
    """
    check_int("steps", steps, minimum=1, maximum=T)
    return [round(T - i * T / steps) - 1 for i in range(steps)]


def log_snr(schedule: NoiseSchedule, t: int) -> float:
    """lambda_t = log(alpha_t / sigma_t) = 0.5 * log(a-bar_t / (1 - a-bar_t)); +inf for t = -1 (clean)."""
    if t < 0:
        return math.inf
    abar = float(schedule.alphas_cumprod[t])
    return 0.5 * (math.log(abar) - math.log1p(-abar))


def dpm_solver_step(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, t_next: int, x0: torch.Tensor, *,
                    x0_prev: torch.Tensor | None = None, t_prev: int | None = None) -> torch.Tensor:
    """One DPM-Solver++(2M) step x_t -> x_{t_next} from data predictions (Lu et al. 2022, Alg. 2).

    With a = sqrt(a-bar), s = sqrt(1 - a-bar), lambda = log(a / s) and h = lambda_next - lambda_t:

        x_next = (s_next / s_t) x_t - a_next (exp(-h) - 1) D

    where D = x0 (first order: this is DDIM with eta = 0) or, given the previous step's x0_prev
    at t_prev, D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev with r = h_prev / h (second order).
    t_next = -1 returns x0 itself (the last step is first order).
    """
    check_int("t", t, minimum=0, maximum=schedule.T - 1)
    check_int("t_next", t_next, minimum=-1, maximum=t - 1)
    if t_next < 0:
        return x0
    lam_t, lam_next = log_snr(schedule, t), log_snr(schedule, t_next)
    h = lam_next - lam_t
    abar_t, abar_next = float(schedule.alphas_cumprod[t]), float(schedule.alphas_cumprod[t_next])
    D = x0
    if x0_prev is not None:
        r = (lam_t - log_snr(schedule, t_prev)) / h
        D = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
    return math.sqrt((1 - abar_next) / (1 - abar_t)) * x_t - math.sqrt(abar_next) * math.expm1(-h) * D


# ---------------------------------------------------------------------------- sampler plumbing
def infer_device(model, x_T=None, generator=None) -> torch.device:
    """Where to sample: x_T's device, else the model's parameters', else the generator's, else CPU."""
    if isinstance(x_T, torch.Tensor):
        return x_T.device
    if isinstance(model, torch.nn.Module):
        param = next(model.parameters(), None)
        if param is not None:
            return param.device
    if generator is not None:
        return generator.device
    return torch.device("cpu")


def randn(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (so a CPU generator can drive a GPU
    sampler reproducibly), then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def initial_noise(shape, device, generator, x_T) -> torch.Tensor:
    """x_T: the caller's tensor, checked against ``shape``, or fresh N(0, I) noise."""
    if x_T is None:
        return randn(shape, generator, device)
    check_image_batch("x_T", x_T)
    if tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T must have the sampler's shape {tuple(shape)}, got {tuple(x_T.shape)}")
    return x_T.to(torch.float32)


@contextlib.contextmanager
def eval_mode(model):
    """Put an nn.Module in eval mode (no dropout) for sampling and restore its mode afterwards."""
    if not isinstance(model, torch.nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check_common(model, schedule, shape, guidance_scale, callback):
    if not callable(model):
        raise TypeError(f"model must be callable as model(x_t, t[, y]), got {describe(model)}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {describe(schedule)}")
    shape = check_shape("shape", shape)
    check_float("guidance_scale", guidance_scale)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable as callback(i, t, x_t, x0), got {describe(callback)}")
    return shape


# ---------------------------------------------------------------------------- samplers
@torch.no_grad()
def sample_ddpm(model, schedule: NoiseSchedule, shape, *, labels=None, guidance_scale: float = 1.0,
                generator: torch.Generator | None = None, x_T: torch.Tensor | None = None,
                clip_x0: bool = True, callback: Callable | None = None, progress: bool = False,
                variance: str = "posterior") -> torch.Tensor:
    """DDPM ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2).

    shape: (B, C, H, W); labels: None, an int, or long (B,); returns x_0, (B, C, H, W), roughly
    in [-1, 1] (exactly, with clip_x0). variance: "posterior" (beta-tilde_t) or "beta" (beta_t).
    """
    shape = _check_common(model, schedule, shape, guidance_scale, callback)
    check_choice("variance", variance, VARIANCES)
    device = infer_device(model, x_T, generator)
    x = initial_noise(shape, device, generator, x_T)
    labels = prepare_labels(labels, shape[0], device, model)
    with eval_mode(model):
        for i, t in enumerate(tqdm(range(schedule.T - 1, -1, -1), desc="DDPM", disable=not progress)):
            t_batch = torch.full((shape[0],), t, dtype=torch.long, device=device)
            eps = predict_noise(model, x, t_batch, labels, guidance_scale).float()
            noise = randn(shape, generator, device) if t > 0 else None
            x_prev, x0 = ddpm_step(schedule, x, t, eps, noise=noise, clip_x0=clip_x0, variance=variance)
            if callback is not None:
                callback(i, t, x, x0)
            x = x_prev
    return x


@torch.no_grad()
def sample_ddim(model, schedule: NoiseSchedule, shape, *, steps: int = 50, eta: float = 0.0, labels=None,
                guidance_scale: float = 1.0, generator: torch.Generator | None = None,
                x_T: torch.Tensor | None = None, clip_x0: bool = True, callback: Callable | None = None,
                progress: bool = False) -> torch.Tensor:
    """DDIM sampling in ``steps`` steps (Song et al. 2021); eta = 0 is deterministic given x_T.

    Visits :func:`ddim_timesteps` (T - 1 down to 0) and ends with a jump to x0. Same arguments
    and return value as :func:`sample_ddpm`.
    """
    shape = _check_common(model, schedule, shape, guidance_scale, callback)
    check_int("steps", steps, minimum=1, maximum=schedule.T)
    check_float("eta", eta, minimum=0.0)
    device = infer_device(model, x_T, generator)
    x = initial_noise(shape, device, generator, x_T)
    labels = prepare_labels(labels, shape[0], device, model)
    timesteps = ddim_timesteps(schedule.T, steps)
    with eval_mode(model):
        for i, t in enumerate(tqdm(timesteps, desc="DDIM", disable=not progress)):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            t_batch = torch.full((shape[0],), t, dtype=torch.long, device=device)
            eps = predict_noise(model, x, t_batch, labels, guidance_scale).float()
            noise = randn(shape, generator, device) if eta > 0 and t_prev >= 0 else None
            x_prev, x0 = ddim_step(schedule, x, t, t_prev, eps, eta=eta, noise=noise, clip_x0=clip_x0)
            if callback is not None:
                callback(i, t, x, x0)
            x = x_prev
    return x


@torch.no_grad()
def sample_dpm_solver(model, schedule: NoiseSchedule, shape, *, steps: int = 20, labels=None,
                      guidance_scale: float = 1.0, generator: torch.Generator | None = None,
                      x_T: torch.Tensor | None = None, clip_x0: bool = True, callback: Callable | None = None,
                      progress: bool = False, order: int = 2) -> torch.Tensor:
    """DPM-Solver++(2M) in ``steps`` model evaluations (Lu et al. 2022): a deterministic
    multistep solver of the diffusion ODE, good samples in 10-20 steps.

    Visits :func:`ddim_timesteps` (T - 1 down to 0), then returns the last x0 prediction.
    order=1 is DDIM with eta = 0. Same other arguments and return value as :func:`sample_ddim`.
    """
    shape = _check_common(model, schedule, shape, guidance_scale, callback)
    check_int("steps", steps, minimum=1, maximum=schedule.T)
    check_choice("order", order, (1, 2))
    device = infer_device(model, x_T, generator)
    x = initial_noise(shape, device, generator, x_T)
    labels = prepare_labels(labels, shape[0], device, model)
    timesteps = ddim_timesteps(schedule.T, steps)
    x0_prev, t_prev = None, None
    with eval_mode(model):
        for i, t in enumerate(tqdm(timesteps, desc="DPM-Solver++", disable=not progress)):
            t_next = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            t_batch = torch.full((shape[0],), t, dtype=torch.long, device=device)
            eps = predict_noise(model, x, t_batch, labels, guidance_scale).float()
            x0 = predict_x0(schedule, x, t, eps)
            if clip_x0:
                x0 = x0.clamp(-1.0, 1.0)
            second = order == 2 and x0_prev is not None
            x_next = dpm_solver_step(schedule, x, t, t_next, x0, x0_prev=x0_prev if second else None,
                                     t_prev=t_prev if second else None)
            if callback is not None:
                callback(i, t, x, x0)
            x, x0_prev, t_prev = x_next, x0, t
    return x
