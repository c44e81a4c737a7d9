"""Checks of notebook 04 (sampling): predicted x0, one DDPM step, one DDIM step."""

from __future__ import annotations

import math

import torch

from ... import sampling
from ...schedules import NoiseSchedule
from .framework import call, compare, exercise, gen, pixel


def predict_x0_reference(x_t, t: int, eps, alphas_cumprod):
    """The package's :func:`~ddpm_course.predict_x0`, called as ``my_predict_x0`` is."""
    return sampling.predict_x0(NoiseSchedule.from_alphas_cumprod(alphas_cumprod), x_t, t, eps)


def _image_cases(seed: int, ts) -> list:
    g = gen(seed)
    return [(t, torch.randn(4, 1, 28, 28, generator=g), torch.randn(4, 1, 28, 28, generator=g),
             torch.randn(4, 1, 28, 28, generator=g)) for t in ts]


@exercise("predict_x0", "04_sampling", "x0 from x_t and the predicted noise", predict_x0_reference)
def _check_predict_x0(fn) -> str:
    abar = NoiseSchedule.linear(1000).alphas_cumprod
    worst = 0.0
    for t, x_t, eps, _ in _image_cases(7, (500, 990, 10, 0)):
        a = float(abar[t])
        mistakes = {
            "the square roots are missing: x0 = (x_t - sqrt(1 - alpha-bar_t) eps) / sqrt(alpha-bar_t)":
                (x_t - (1 - a) * eps) / a,
            "the noise term has the wrong sign: subtract sqrt(1 - alpha-bar_t) eps": (x_t + math.sqrt(1 - a) * eps)
            / math.sqrt(a),
            "sqrt(alpha-bar_t) and sqrt(1 - alpha-bar_t) are swapped": (x_t - math.sqrt(a) * eps)
            / math.sqrt(1 - a),
            "you forgot to divide by sqrt(alpha-bar_t)": x_t - math.sqrt(1 - a) * eps,
        }
        out = call(fn, (x_t.clone(), t, eps.clone(), abar.clone()), f"my_predict_x0(x_t, t={t}, eps, alphas_cumprod)")
        worst = max(worst, compare(out, predict_x0_reference(x_t, t, eps, abar), what=f"x0 at t={t}", where=pixel,
                                   mistakes=mistakes, rtol=1e-3, atol=1e-4))
    return f"t = 0, 10, 500, 990, largest error {worst:.1e}"


def ddpm_step_reference(x_t, t: int, eps, schedule: NoiseSchedule, noise):
    """The package's :func:`~ddpm_course.ddpm_step` with sigma_t^2 = beta_t and no clipping (DDPM
    Algorithm 2), called as ``my_ddpm_step`` is; no noise at t = 0."""
    return sampling.ddpm_step(schedule, x_t, t, eps, noise=noise if t > 0 else None, clip_x0=False,
                              variance="beta").x_prev


@exercise("ddpm_step", "04_sampling", "one DDPM reverse step (Algorithm 2)", ddpm_step_reference)
def _check_ddpm_step(fn) -> str:
    schedule = NoiseSchedule.linear(1000)
    worst = 0.0
    for t, x_t, eps, z in _image_cases(8, (999, 500, 1, 0)):
        a, ab, b = (float(schedule.alphas[t]), float(schedule.alphas_cumprod[t]), float(schedule.betas[t]))
        mean = (x_t - b / math.sqrt(1 - ab) * eps) / math.sqrt(a)
        sigma = math.sqrt(b) if t > 0 else 0.0
        mistakes = {
            "at t = 0 the last step adds no noise: return the mean": mean + math.sqrt(b) * z,
            "sigma_t is the square root of beta_t, not beta_t": mean + (b if t > 0 else 0.0) * z,
            "this uses the posterior variance beta-tilde_t; this exercise asks for sigma_t^2 = beta_t":
                mean + math.sqrt(float(schedule.posterior_variance[t])) * z,
            "divide by sqrt(alpha_t), the one-step alpha, not sqrt(alpha-bar_t)":
                (x_t - b / math.sqrt(1 - ab) * eps) / math.sqrt(ab) + sigma * z,
            "the noise coefficient is beta_t / sqrt(1 - alpha-bar_t): the square root is missing":
                (x_t - b / (1 - ab) * eps) / math.sqrt(a) + sigma * z,
            "the predicted noise must be subtracted, not added": (x_t + b / math.sqrt(1 - ab) * eps) / math.sqrt(a)
            + sigma * z,
            "the fresh noise sigma_t z is missing": mean,
        }
        if t > 0:   # a reader of Ho et al. who indexes the code's arrays with the paper's t (one step early)
            a1, ab1, b1 = (float(schedule.alphas[t - 1]), float(schedule.alphas_cumprod[t - 1]),
                           float(schedule.betas[t - 1]))
            mistakes["every coefficient is one step early: the code's t is the paper's t + 1, so the step from "
                     "timestep t uses betas[t], alphas[t] and alphas_cumprod[t] (not [t - 1]; see the convention "
                     "table in notebook 01)"] = (
                (x_t - b1 / math.sqrt(1 - ab1) * eps) / math.sqrt(a1) + math.sqrt(b1) * z)
            mistakes["alpha-bar is one step early: use alphas_cumprod[t], not [t - 1] (the code's t is the "
                     "paper's t + 1; see the convention table in notebook 01)"] = (
                (x_t - b / math.sqrt(1 - ab1) * eps) / math.sqrt(a) + sigma * z)
        out = call(fn, (x_t.clone(), t, eps.clone(), schedule, z.clone()),
                    f"my_ddpm_step(x_t, t={t}, eps, schedule, noise)")
        worst = max(worst, compare(out, ddpm_step_reference(x_t, t, eps, schedule, z), what=f"x_(t-1) at t={t}",
                                   where=pixel, mistakes=mistakes, rtol=1e-3, atol=1e-4))
    return f"t = 999, 500, 1, 0, largest error {worst:.1e}"


def ddim_step_reference(x_t, t: int, t_prev: int, eps, alphas_cumprod):
    """The package's :func:`~ddpm_course.ddim_step` at eta = 0 without clipping, called as
    ``my_ddim_step`` is: x_t -> x_{t_prev}; t_prev = -1 means clean data."""
    schedule = NoiseSchedule.from_alphas_cumprod(alphas_cumprod)
    return sampling.ddim_step(schedule, x_t, t, t_prev, eps, clip_x0=False).x_prev


@exercise("ddim_step", "04_sampling", "one deterministic DDIM step", ddim_step_reference)
def _check_ddim_step(fn) -> str:
    abar = NoiseSchedule.linear(1000).alphas_cumprod
    worst = 0.0
    pairs = ((999, 899), (500, 450), (99, -1))
    for (t, t_prev), (_, x_t, eps, _) in zip(pairs, _image_cases(9, range(3))):
        a = float(abar[t])
        a_prev = float(abar[t_prev]) if t_prev >= 0 else 1.0
        x0 = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
        mistakes = {
            "the direction term uses alpha-bar_t; it should use alpha-bar_{t_prev}: "
            "sqrt(1 - alpha-bar_prev) eps": math.sqrt(a_prev) * x0 + math.sqrt(1 - a) * eps,
            "the square roots are missing: sqrt(alpha-bar_prev) x0 + sqrt(1 - alpha-bar_prev) eps":
                a_prev * x0 + (1 - a_prev) * eps,
            "the predicted-noise term sqrt(1 - alpha-bar_prev) eps is missing": math.sqrt(a_prev) * x0,
        }
        if t_prev == -1:
            wrap = float(abar[-1])
            mistakes["t_prev = -1 means the clean image, where alpha-bar = 1; alphas_cumprod[-1] is the "
                     "*last* (noisiest) entry"] = math.sqrt(wrap) * x0 + math.sqrt(1 - wrap) * eps
        out = call(fn, (x_t.clone(), t, t_prev, eps.clone(), abar.clone()),
                    f"my_ddim_step(x_t, t={t}, t_prev={t_prev}, eps, alphas_cumprod)")
        worst = max(worst, compare(out, ddim_step_reference(x_t, t, t_prev, eps, abar),
                                   what=f"x_(t_prev) for t={t} -> t_prev={t_prev}", where=pixel,
                                   mistakes=mistakes, rtol=1e-3, atol=1e-4))
    return f"steps 999->899, 500->450, 99->-1, largest error {worst:.1e}"


