"""Checks of notebook 01 (forward diffusion): alpha-bar and q(x_t | x_0)."""

from __future__ import annotations

import torch

from ...schedules import NoiseSchedule
from .framework import call, compare, exercise, gen


def alpha_bar_reference(betas: torch.Tensor) -> torch.Tensor:
    """The package's alpha-bar for ``betas`` (T,): ``NoiseSchedule(betas).alphas_cumprod``."""
    return NoiseSchedule(betas).alphas_cumprod.to(betas.dtype)


def _schedule_cases() -> list:
    betas = torch.rand(7, generator=gen(0)) * 0.3 + 0.01
    return [("the linear schedule, T=1000", NoiseSchedule.linear(1000).betas),
            ("the cosine schedule, T=50", NoiseSchedule.cosine(50).betas),
            ("7 random betas", betas)]


@exercise("alpha_bar", "01_forward_diffusion", "alpha-bar from the betas", alpha_bar_reference)
def _check_alpha_bar(fn) -> str:
    worst = 0.0
    for label, betas in _schedule_cases():
        expected = alpha_bar_reference(betas)
        a = 1.0 - betas.double()
        mistakes = {
            "this is the product of the betas; alpha-bar multiplies the alphas, alpha_t = 1 - beta_t":
                torch.cumprod(betas.double(), 0),
            "this is alpha_t = 1 - beta_t; alpha-bar_t is the cumulative product of the alphas up to t":
                a,
            "off by one step: your entry t is the alpha-bar of the step before (the first entry should already "
            "be 1 - beta_1 = 1 - betas[0], not 1)":
                torch.cat([torch.ones(1, dtype=a.dtype), torch.cumprod(a, 0)[:-1]]),
            "this is sqrt(alpha-bar_t); alpha-bar itself has no square root (it appears in add_noise)":
                torch.cumprod(a, 0).sqrt(),
            "this is 1 - alpha-bar_t, the variance of the noise; return alpha-bar_t itself":
                1 - torch.cumprod(a, 0),
            "this is 1 - sum(beta): the first-order approximation; multiply the (1 - beta_s) instead":
                1 - torch.cumsum(betas.double(), 0),
            "you summed the alphas; alpha-bar is their product (torch.cumprod)": torch.cumsum(a, 0),
        }
        out = call(fn, (betas.clone(),), f"alpha_bar(betas) on {label}")
        worst = max(worst, compare(out, expected, what=f"alpha_bar on {label}", where=lambda i: f"at t={i[0]}",
                                   mistakes=mistakes, rtol=1e-4, atol=1e-6))
    return f"3 schedules, largest error {worst:.1e}"


def add_noise_reference(x0, noise, t, alphas_cumprod):
    """The package's q(x_t | x_0) sample, called as the exercise is: ``NoiseSchedule.add_noise``."""
    return NoiseSchedule.from_alphas_cumprod(alphas_cumprod).add_noise(x0, noise, t)


@exercise("add_noise", "01_forward_diffusion", "sample q(x_t | x_0) in closed form", add_noise_reference)
def _check_add_noise(fn) -> str:
    abar = NoiseSchedule.linear(1000).alphas_cumprod
    worst = 0.0
    for B, seed in ((28, 2), (6, 1)):  # B = 28 = W catches alpha-bar broadcast along the width
        g = gen(seed)
        x0 = torch.rand(B, 1, 28, 28, generator=g) * 2 - 1
        noise = torch.randn(B, 1, 28, 28, generator=g)
        t = torch.randint(1, 999, (B,), generator=g)
        t[0], t[1] = 0, 999
        a = abar[t].view(-1, 1, 1, 1)
        prev = abar[t - 1].view(-1, 1, 1, 1)  # t = 0 wraps to the last entry, as a student's code would
        nxt = abar[(t + 1).clamp(max=999)].view(-1, 1, 1, 1)
        mistakes = {
            "the square roots are missing: x_t = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) noise":
                a * x0 + (1 - a) * noise,
            "the noise coefficient needs a square root: sqrt(1 - alpha-bar_t), not 1 - alpha-bar_t":
                a.sqrt() * x0 + (1 - a) * noise,
            "the signal coefficient needs a square root: sqrt(alpha-bar_t), not alpha-bar_t":
                a * x0 + (1 - a).sqrt() * noise,
            "the two coefficients are swapped: x0 gets sqrt(alpha-bar_t), the noise sqrt(1 - alpha-bar_t)":
                (1 - a).sqrt() * x0 + a.sqrt() * noise,
            "alpha-bar is off by one step: you used alpha-bar_{t-1}; index alphas_cumprod[t]":
                prev.sqrt() * x0 + (1 - prev).sqrt() * noise,
            "alpha-bar is off by one step: you used alpha-bar_{t+1}; index alphas_cumprod[t]":
                nxt.sqrt() * x0 + (1 - nxt).sqrt() * noise,
        }
        if B == 28:
            w = abar[t].view(1, 1, 1, -1)
            mistakes["alpha-bar_t was broadcast along the image width: reshape it to (B, 1, 1, 1) so "
                     "that each image gets its own t"] = w.sqrt() * x0 + (1 - w).sqrt() * noise
        out = call(fn, (x0.clone(), noise.clone(), t.clone(), abar.clone()),
                    f"add_noise(x0, noise, t, alphas_cumprod) with B={B}")
        worst = max(worst, compare(out, add_noise_reference(x0, noise, t, abar), what=f"x_t (B={B})",
                                   where=lambda i, t=t: f"in image {i[0]} (t={int(t[i[0]])})",
                                   mistakes=mistakes))
    return f"batches of 28 and 6 with t from 0 to 999, largest error {worst:.1e}"


