"""Reverse-process samplers: DDPM ancestral sampling, DDIM and DPM-Solver++, and :func:`sample`.

The update rules are pure functions with one shape: ``*_step(schedule, x_t, t, [t_prev,] eps, ...)
-> StepOutput(x_prev, x0)``, where ``t`` is the timestep of x_t and ``t_prev`` the less noisy
timestep the step goes to (DDPM always goes to t - 1); clipping of x0 happens in :func:`denoise`
alone. They can be read, tested and re-implemented one at a time; the samplers are short loops
around them, and :func:`sample` picks one by name (:data:`SAMPLERS`). Randomness
enters only through ``generator`` (the initial noise x_T and the per-step noise), so the same
generator state gives the same samples. Samplers never plot: progress leaves through
``callback(i, t, x_t, x0)`` (step index, timestep, the sample the model saw, predicted x0).

Papers: DDPM = Ho et al. 2020 (Algorithm 2, eq. 11); DDIM = Song et al. 2021 (eq. 12, 16);
DPM-Solver++ = Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling" (Algorithm 2).
"""

from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple

import torch
from tqdm.auto import tqdm

from ._checks import check_choice, check_float, check_image_batch, check_int, check_shape, describe
from .guidance import predict_noise, prepare_labels
from .schedules import NoiseSchedule, extract

VARIANCES = ("posterior", "beta")


class StepOutput(NamedTuple):
    """One reverse step of any sampler: the next, less noisy sample and the x0 it was aimed at."""

    x_prev: torch.Tensor  # x_{t_prev}, the sample one step closer to the data, (B, C, H, W)
    x0: torch.Tensor      # the predicted x0 the step used (clipped to [-1, 1] if asked), (B, C, H, W)


def predict_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """Invert q(x_t | x_0) for x0 given the noise (DDPM eq. 4 solved for x0, eq. 15):

    x0 = (x_t - sqrt(1 - a-bar_t) eps) / sqrt(a-bar_t). t: an int or a long (B,) tensor.
    """
    return (x_t - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / extract(
        schedule.sqrt_alphas_cumprod, t, x_t)


def eps_from_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
    """The noise that takes x0 to x_t: eps = (x_t - sqrt(a-bar_t) x0) / sqrt(1 - a-bar_t)."""
    return (x_t - extract(schedule.sqrt_alphas_cumprod, t, x_t) * x0) / extract(
        schedule.sqrt_one_minus_alphas_cumprod, t, x_t)


def denoise(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, eps: torch.Tensor, clip_x0: bool) -> tuple:
    """(x0, eps) that every step function starts from: the predicted x0, clipped to [-1, 1] when
    ``clip_x0`` (the one place where clipping happens), and the noise re-derived from the clipped
    x0 so that the pair stays consistent with x_t."""
    check_image_batch("x_t", x_t)
    if not isinstance(eps, torch.Tensor) or eps.shape != x_t.shape:
        raise ValueError(f"eps must be a tensor of x_t's shape {tuple(x_t.shape)}, got {describe(eps)}")
    x0 = predict_x0(schedule, x_t, t, eps)
    if not clip_x0:
        return x0, eps
    x0 = x0.clamp(-1.0, 1.0)
    return x0, eps_from_x0(schedule, x_t, t, x0)


def _alpha_bar(schedule: NoiseSchedule, t: int) -> torch.Tensor:
    """a-bar_t as a 0-d float64 CPU tensor, for the coefficients of one step; t = -1 is the clean
    data, a-bar = 1. (Coefficients are combined in float64 and cast once, by :func:`_like`.)"""
    if t < 0:
        return torch.ones((), dtype=torch.float64)
    return schedule.alphas_cumprod[t].detach().to("cpu", torch.float64)


def _like(coefficient: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 0-d coefficient on x's device and in x's dtype."""
    return coefficient.to(x.device, x.dtype)


def _add_noise_term(x: torch.Tensor, sigma, noise, what: str) -> torch.Tensor:
    if noise is None:
        raise ValueError(f"noise must be given {what}")
    if not isinstance(noise, torch.Tensor) or noise.shape != x.shape:
        raise ValueError(f"noise must be a tensor of x_t's shape {tuple(x.shape)}, got {describe(noise)}")
    return x + sigma * noise


def ddpm_step(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, eps: torch.Tensor, *,
              noise: torch.Tensor | None = None, clip_x0: bool = True,
              variance: str = "posterior") -> StepOutput:
    """One ancestral step x_t -> x_{t-1} of DDPM, sampling p(x_{t-1} | x_t) = N(mu, sigma_t^2 I).

    1. predict x0 from eps (eq. 15), optionally clipped to [-1, 1] (:func:`denoise`);
    2. mu = coef1 * x0 + coef2 * x_t, the mean of the posterior q(x_{t-1} | x_t, x0) (eq. 7);
    3. x_{t-1} = mu + sigma_t * noise, with sigma_t^2 = beta-tilde_t ("posterior") or beta_t
       ("beta"); no noise is added at t = 0.
    t: int in [0, T - 1]; eps and noise: same shape as x_t.
    """
    check_int("t", t, minimum=0, maximum=schedule.T - 1)
    check_choice("variance", variance, VARIANCES)
    x0, _ = denoise(schedule, x_t, t, eps, clip_x0)
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    if t == 0:
        return StepOutput(mean, x0)
    var = extract(schedule.posterior_variance if variance == "posterior" else schedule.betas, t, x_t)
    return StepOutput(_add_noise_term(mean, var.sqrt(), noise, f"for t > 0 (got t={t})"), x0)


def ddim_step(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor, *,
              eta: float = 0.0, noise: torch.Tensor | None = None, clip_x0: bool = True) -> StepOutput:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12); t_prev = -1 jumps to x0.

    1. predict x0 from eps; if clipped, re-derive eps from the clipped x0 (:func:`denoise`);
    2. sigma = eta * sqrt((1 - a-bar_prev) / (1 - a-bar_t)) * sqrt(1 - a-bar_t / a-bar_prev) (eq. 16);
    3. x_prev = sqrt(a-bar_prev) x0 + sqrt(1 - a-bar_prev - sigma^2) eps + sigma * noise.
    eta = 0 is deterministic DDIM; eta = 1 with consecutive steps is DDPM with the posterior variance.
    """
    check_int("t", t, minimum=0, maximum=schedule.T - 1)
    check_int("t_prev", t_prev, minimum=-1, maximum=t - 1)
    check_float("eta", eta, minimum=0.0)
    x0, eps = denoise(schedule, x_t, t, eps, clip_x0)
    abar_t, abar_prev = _alpha_bar(schedule, t), _alpha_bar(schedule, t_prev)
    sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
    direction = (1 - abar_prev - sigma**2).clamp(min=0.0).sqrt()   # the part of x_prev along eps
    x_prev = _like(abar_prev.sqrt(), x0) * x0 + _like(direction, eps) * eps
    if eta > 0 and t_prev >= 0:
        x_prev = _add_noise_term(x_prev, _like(sigma, x_prev), noise,
                                 f"when eta > 0 (got eta={eta}, t={t}, t_prev={t_prev})")
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


def log_snr(schedule: NoiseSchedule, t: int) -> torch.Tensor:
    """lambda_t = log(alpha_t / sigma_t) = 0.5 * log(a-bar_t / (1 - a-bar_t)), a 0-d float64 tensor (t >= 0)."""
    abar = _alpha_bar(schedule, t)
    return 0.5 * (abar.log() - (-abar).log1p())


def dpm_solver_step(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor, *,
                    clip_x0: bool = True, x0_earlier: torch.Tensor | None = None,
                    t_earlier: int | None = None) -> StepOutput:
    """One DPM-Solver++(2M) step x_t -> x_{t_prev} (Lu et al. 2022, Algorithm 2).

    With a = sqrt(a-bar), s = sqrt(1 - a-bar), lambda = log(a / s) and h = lambda_prev - lambda_t:

        x_prev = (s_prev / s_t) x_t - a_prev (exp(-h) - 1) D

    where D = x0 (first order: this is DDIM with eta = 0) or, given the x0 that the previous model
    call predicted at the noisier timestep ``t_earlier``, D = (1 + 1/(2r)) x0 - 1/(2r) x0_earlier
    with r = h_earlier / h (second order). t_prev = -1 returns x0 itself (the last step is first order).
    """
    check_int("t", t, minimum=0, maximum=schedule.T - 1)
    check_int("t_prev", t_prev, minimum=-1, maximum=t - 1)
    if (x0_earlier is None) != (t_earlier is None):
        raise ValueError("x0_earlier and t_earlier go together: give both (second order) or neither (first order)")
    x0, _ = denoise(schedule, x_t, t, eps, clip_x0)
    if t_prev < 0:
        return StepOutput(x0, x0)
    lam_t, lam_prev = log_snr(schedule, t), log_snr(schedule, t_prev)
    h = lam_prev - lam_t
    D = x0
    if x0_earlier is not None:
        check_int("t_earlier", t_earlier, minimum=t + 1, maximum=schedule.T - 1)
        r = (lam_t - log_snr(schedule, t_earlier)) / h
        D = _like(1 + 1 / (2 * r), x0) * x0 - _like(1 / (2 * r), x0) * x0_earlier
    abar_t, abar_prev = _alpha_bar(schedule, t), _alpha_bar(schedule, t_prev)
    ratio = ((1 - abar_prev) / (1 - abar_t)).sqrt()                # s_prev / s_t
    x_prev = _like(ratio, x_t) * x_t - _like(abar_prev.sqrt() * torch.expm1(-h), D) * D
    return StepOutput(x_prev, x0)


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


def _check_common(model, schedule, shape, guidance_scale, callback, labels):
    if not callable(model):
        raise TypeError(f"model must be callable as model(x_t, t[, y]), got {describe(model)}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {describe(schedule)}")
    shape = check_shape("shape", shape)
    check_float("guidance_scale", guidance_scale)
    if labels is None and guidance_scale != 1.0:
        raise ValueError(f"guidance_scale={guidance_scale} needs labels: classifier-free guidance mixes the "
                         "conditional and unconditional predictions (use 1.0 without labels)")
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
    shape = _check_common(model, schedule, shape, guidance_scale, callback, labels)
    check_choice("variance", variance, VARIANCES)
    device = infer_device(model, x_T, generator)
    x = initial_noise(shape, device, generator, x_T)
    labels = prepare_labels(labels, shape[0], device, model)
    with eval_mode(model):
        for i, t in enumerate(tqdm(range(schedule.T - 1, -1, -1), desc="DDPM", disable=not progress)):
            t_batch = torch.full((shape[0],), t, dtype=torch.long, device=device)
            eps = predict_noise(model, x, t_batch, labels, guidance_scale, schedule).float()
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
    shape = _check_common(model, schedule, shape, guidance_scale, callback, labels)
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
            eps = predict_noise(model, x, t_batch, labels, guidance_scale, schedule).float()
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
    shape = _check_common(model, schedule, shape, guidance_scale, callback, labels)
    check_int("steps", steps, minimum=1, maximum=schedule.T)
    check_choice("order", order, (1, 2))
    device = infer_device(model, x_T, generator)
    x = initial_noise(shape, device, generator, x_T)
    labels = prepare_labels(labels, shape[0], device, model)
    timesteps = ddim_timesteps(schedule.T, steps)
    earlier = {}
    with eval_mode(model):
        for i, t in enumerate(tqdm(timesteps, desc="DPM-Solver++", disable=not progress)):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            t_batch = torch.full((shape[0],), t, dtype=torch.long, device=device)
            eps = predict_noise(model, x, t_batch, labels, guidance_scale, schedule).float()
            x_prev, x0 = dpm_solver_step(schedule, x, t, t_prev, eps, clip_x0=clip_x0, **earlier)
            if callback is not None:
                callback(i, t, x, x0)
            x = x_prev
            if order == 2:
                earlier = {"x0_earlier": x0, "t_earlier": t}
    return x


# ---------------------------------------------------------------------------- one entry point
SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim, "dpm_solver": sample_dpm_solver}
DEFAULT_STEPS = {"ddim": 50, "dpm_solver": 20}  # model calls when ``steps`` is None (DDPM: always T)


def num_model_calls(sampler: str, steps: int | None, T: int) -> int:
    """The model calls (denoising steps) ``sampler`` makes: T for DDPM, else ``steps`` (or the default).

    Raises ValueError for an unknown sampler, steps outside [1, T], or steps != T for DDPM.
    """
    check_choice("sampler", sampler, list(SAMPLERS))
    if sampler == "ddpm":
        if steps is not None and steps != T:
            raise ValueError(f"steps must be None or T={T} for the ddpm sampler (it visits every timestep), "
                             f"got {steps}; use sampler='ddim' with eta=1 for fewer ancestral steps")
        return T
    steps = DEFAULT_STEPS[sampler] if steps is None else steps
    return check_int("steps", steps, minimum=1, maximum=T)


def sample(model, schedule: NoiseSchedule, shape, *, sampler: str = "ddim", steps: int | None = None,
           eta: float | None = None, labels=None, guidance_scale: float = 1.0,
           generator: torch.Generator | None = None, x_T: torch.Tensor | None = None, clip_x0: bool = True,
           callback: Callable | None = None, progress: bool = False) -> torch.Tensor:
    """Draw samples with the sampler named ``sampler`` ("ddpm", "ddim" or "dpm_solver").

    steps: model calls (None: 50 for DDIM, 20 for DPM-Solver++; DDPM always takes T);
    eta: DDIM only (None = 0, deterministic; 1 = ancestral like DDPM); guidance_scale != 1 needs
    labels. Returns (B, C, H, W), roughly in [-1, 1] (exactly, with clip_x0). Other arguments as
    in :func:`sample_ddpm`.
    """
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {describe(schedule)}")
    steps = num_model_calls(sampler, steps, schedule.T)
    if eta is not None and sampler != "ddim":
        raise ValueError(f"eta is DDIM's parameter; sampler={sampler!r} has none (got eta={eta})")
    common = dict(labels=labels, guidance_scale=guidance_scale, generator=generator, x_T=x_T, clip_x0=clip_x0,
                  callback=callback, progress=progress)
    if sampler == "ddpm":
        return sample_ddpm(model, schedule, shape, **common)
    if sampler == "ddim":
        return sample_ddim(model, schedule, shape, steps=steps, eta=0.0 if eta is None else eta, **common)
    return sample_dpm_solver(model, schedule, shape, steps=steps, **common)
