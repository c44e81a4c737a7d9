"""Exercise checks: compare a student's function with the package's and say precisely what is wrong.

Each exercise of notebooks 01-05 ends with

    alpha_bar = check("alpha_bar", alpha_bar)

which calls the student's function on several test cases, compares it with the reference built
from ``ddpm_course``, prints one line of feedback and returns the function the notebook should
carry on with: the student's when it is right, the package's otherwise (so "Run all" completes in
the student edition). Feedback names the mistake when it is a known one (square root forgotten,
alpha-bar off by one step, guidance sign flipped, ...), else the test case and index where the
values differ most and by how much.

When ``$DDPM_COURSE_GRADE_LOG`` names a file, every result is also appended to it as one JSON
line; ``python -m ddpm_course exercises grade`` reads that file (see :mod:`ddpm_course.grading`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import sampling
from .guidance import guidance_combine as _guidance_combine
from .schedules import NoiseSchedule
from .unet import ResidualBlock
from .unet import sinusoidal_embedding as _sinusoidal_embedding

GRADE_LOG_ENV = "DDPM_COURSE_GRADE_LOG"
STATUSES = ("passed", "failed", "not attempted")
_MARK = {"passed": "✔", "failed": "✘", "not attempted": "…"}


class Mismatch(Exception):
    """Raised inside a checker: the student's output is wrong, and the message says how."""


@dataclass(frozen=True)
class Feedback:
    """The outcome of one check: a status from :data:`STATUSES` and a message for the student."""

    exercise: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __str__(self) -> str:
        return f"{_MARK[self.status]} {self.exercise}: {self.message}"


@dataclass(frozen=True)
class Exercise:
    """One exercise: where it lives, the reference function and the checker that compares."""

    name: str
    notebook: str
    summary: str
    reference: Callable
    checker: Callable  # checker(student_fn) -> str (what was tested); raises Mismatch when wrong


EXERCISES: dict[str, Exercise] = {}
RESULTS: dict[str, Feedback] = {}   # the results of this process, by exercise name


def exercise(name: str, notebook: str, summary: str, reference: Callable):
    """Register a checker function under ``name`` (decorator)."""
    def register(checker: Callable) -> Callable:
        EXERCISES[name] = Exercise(name, notebook, summary, reference, checker)
        return checker
    return register


def exercises_in(notebook: str) -> list:
    """The names of the exercises of one notebook (e.g. ``"01_forward_diffusion"``), in order."""
    return [e.name for e in EXERCISES.values() if e.notebook == notebook]


# ---------------------------------------------------------------------------------------------
# comparing tensors


def _as_tensor(got, what: str) -> torch.Tensor:
    if not isinstance(got, torch.Tensor):
        raise Mismatch(f"{what} should be a torch.Tensor, but your function returned {type(got).__name__}")
    return got


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol))


def compare(got, expected: torch.Tensor, *, what: str, where: Callable, mistakes: dict | None = None,
            rtol: float = 1e-4, atol: float = 1e-5) -> float:
    """Check ``got`` against ``expected``; return the largest error, or raise :class:`Mismatch`.

    where(index) turns the index (a tuple) of the worst element into words ("at t=17").
    mistakes: {explanation: tensor that this mistake would produce}; the first one that ``got``
    matches is named in the message.
    """
    got = _as_tensor(got, what)
    if got.shape != expected.shape:
        raise Mismatch(f"{what} has the wrong shape: expected {tuple(expected.shape)}, got {tuple(got.shape)}")
    got = got.detach().to("cpu")
    if not bool(torch.isfinite(got).all()):
        bad = tuple(int(i) for i in torch.nonzero(~torch.isfinite(got))[0])
        raise Mismatch(f"{what} contains NaN or inf, first {where(bad)}")
    for explanation, wrong in (mistakes or {}).items():
        if not _close(wrong, expected, rtol, atol) and _close(got, wrong, rtol, atol):
            raise Mismatch(f"{what}: {explanation}")
    err = (got.double() - expected.double()).abs()
    tolerance = atol + rtol * expected.double().abs()
    if bool((err <= tolerance).all()):
        return float(err.max()) if err.numel() else 0.0
    index = tuple(int(i) for i in torch.nonzero(err == err.max())[0])
    raise Mismatch(
        f"{what} has wrong values: the largest error is {float(err.max()):.3g} {where(index)} "
        f"(expected {float(expected[index]):.6g}, got {float(got[index]):.6g})"
    )


# ---------------------------------------------------------------------------------------------
# running a check


def _call(fn: Callable, args: tuple, call: str):
    """Call the student's function; NotImplementedError means "not attempted" and is passed on."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as err:  # noqa: BLE001 - any error of the student's code is feedback
        raise Mismatch(f"calling {call} raised {type(err).__name__}: {err}") from err


def run_check(name: str, fn: Callable) -> Feedback:
    """Check ``fn`` against exercise ``name``; return the :class:`Feedback` (prints nothing)."""
    if name not in EXERCISES:
        raise ValueError(f"name must be one of {list(EXERCISES)}, got {name!r}")
    if not callable(fn):
        raise TypeError(f"fn must be the function you wrote for {name!r}, got {type(fn).__name__}")
    try:
        tested = EXERCISES[name].checker(fn)
    except NotImplementedError:
        return Feedback(name, "not attempted", "not attempted yet: replace `raise NotImplementedError` "
                        "with your code. The notebook carries on with ddpm_course's version.")
    except Mismatch as err:
        return Feedback(name, "failed", f"{err}. The notebook carries on with ddpm_course's version; "
                        "fix your function and run both cells again.")
    return Feedback(name, "passed", f"correct ({tested}).")


def _log(feedback: Feedback) -> None:
    path = os.environ.get(GRADE_LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"exercise": feedback.exercise, "status": feedback.status,
                                "message": feedback.message}) + "\n")


def check(name: str, fn: Callable) -> Callable:
    """Check the student's ``fn`` for exercise ``name``, print the feedback, return what to use next.

    Returns ``fn`` when it passed, else the package's reference function.
    """
    feedback = run_check(name, fn)
    RESULTS[name] = feedback
    _log(feedback)
    print(feedback)
    return fn if feedback.passed else EXERCISES[name].reference


def assert_passed(*names: str) -> None:
    """Fail loudly unless each named exercise was checked in this process and passed.

    The solution edition of the notebooks calls this (the student edition does not), so that CI
    catches a solution that no longer matches the package.
    """
    for name in names:
        result = RESULTS.get(name)
        if result is None or not result.passed:
            raise AssertionError(f"exercise {name!r} did not pass: {result or 'not checked'}")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# 01 forward diffusion


def _alpha_bar_ref(betas: torch.Tensor) -> torch.Tensor:
    """alpha-bar_t = prod_{s <= t} (1 - beta_s): (T,) -> (T,)."""
    return torch.cumprod(1.0 - betas.double(), dim=0).to(betas.dtype)


def _schedule_cases() -> list:
    betas = torch.rand(7, generator=_gen(0)) * 0.3 + 0.01
    return [("the linear schedule, T=1000", NoiseSchedule.linear(1000).betas),
            ("the cosine schedule, T=50", NoiseSchedule.cosine(50).betas),
            ("7 random betas", betas)]


@exercise("alpha_bar", "01_forward_diffusion", "alpha-bar from the betas", _alpha_bar_ref)
def _check_alpha_bar(fn) -> str:
    worst = 0.0
    for label, betas in _schedule_cases():
        expected = _alpha_bar_ref(betas)
        a = 1.0 - betas.double()
        mistakes = {
            "this is the product of the betas; alpha-bar multiplies the alphas, alpha_t = 1 - beta_t":
                torch.cumprod(betas.double(), 0),
            "this is alpha_t = 1 - beta_t; alpha-bar_t is the cumulative product of the alphas up to t":
                a,
            "off by one step: your value at t is alpha-bar_{t-1} (at t=0 it should already be 1 - beta_0)":
                torch.cat([torch.ones(1, dtype=a.dtype), torch.cumprod(a, 0)[:-1]]),
            "this is sqrt(alpha-bar_t); alpha-bar itself has no square root (it appears in add_noise)":
                torch.cumprod(a, 0).sqrt(),
            "this is 1 - alpha-bar_t, the variance of the noise; return alpha-bar_t itself":
                1 - torch.cumprod(a, 0),
            "this is 1 - sum(beta): the first-order approximation; multiply the (1 - beta_s) instead":
                1 - torch.cumsum(betas.double(), 0),
            "you summed the alphas; alpha-bar is their product (torch.cumprod)": torch.cumsum(a, 0),
        }
        out = _call(fn, (betas.clone(),), f"alpha_bar(betas) on {label}")
        worst = max(worst, compare(out, expected, what=f"alpha_bar on {label}", where=lambda i: f"at t={i[0]}",
                                   mistakes=mistakes, rtol=1e-4, atol=1e-6))
    return f"3 schedules, largest error {worst:.1e}"


def _add_noise_ref(x0, noise, t, alphas_cumprod):
    """x_t = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) noise, for x0, noise (B, C, H, W) and t (B,)."""
    abar = alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.ndim - 1)))
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


@exercise("add_noise", "01_forward_diffusion", "sample q(x_t | x_0) in closed form", _add_noise_ref)
def _check_add_noise(fn) -> str:
    abar = NoiseSchedule.linear(1000).alphas_cumprod
    worst = 0.0
    for B, seed in ((28, 2), (6, 1)):  # B = 28 = W catches alpha-bar broadcast along the width
        g = _gen(seed)
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
        out = _call(fn, (x0.clone(), noise.clone(), t.clone(), abar.clone()),
                    f"add_noise(x0, noise, t, alphas_cumprod) with B={B}")
        worst = max(worst, compare(out, _add_noise_ref(x0, noise, t, abar), what=f"x_t (B={B})",
                                   where=lambda i, t=t: f"in image {i[0]} (t={int(t[i[0]])})",
                                   mistakes=mistakes))
    return f"batches of 28 and 6 with t from 0 to 999, largest error {worst:.1e}"


# ---------------------------------------------------------------------------------------------
# 02 U-Net


@exercise("sinusoidal_embedding", "02_unet", "the sinusoidal time embedding", _sinusoidal_embedding)
def _check_sinusoidal(fn) -> str:
    t = torch.tensor([0, 1, 7, 50, 999])
    worst = 0.0
    for dim in (16, 64):
        half = dim // 2
        k = torch.arange(half, dtype=torch.float64)
        args = t.double()[:, None] * torch.exp(-math.log(10000.0) * k / half)[None]
        args_dim = t.double()[:, None] * torch.exp(-math.log(10000.0) * k / dim)[None]
        mistakes = {
            "sin and cos are in the wrong order: the course puts [cos(t f), sin(t f)]":
                torch.cat([args.sin(), args.cos()], 1),
            "cos and sin are interleaved; concatenate them instead: [cos(t f_0..f_{d/2-1}), sin(...)]":
                torch.stack([args.cos(), args.sin()], 2).flatten(1),
            "the frequencies use k / dim; they should be 10000 ** (-k / (dim / 2)), k = 0 .. dim/2 - 1":
                torch.cat([args_dim.cos(), args_dim.sin()], 1),
            "the frequencies grow instead of shrinking: use 10000 ** (-k / (dim / 2)), a minus sign":
                torch.cat([(t.double()[:, None] / torch.exp(-math.log(1e4) * k / half)).cos(),
                           (t.double()[:, None] / torch.exp(-math.log(1e4) * k / half)).sin()], 1),
        }
        out = _call(fn, (t.clone(), dim), f"sinusoidal_embedding(t, dim={dim})")
        worst = max(worst, compare(out, _sinusoidal_embedding(t, dim), what=f"the embedding (dim={dim})",
                                   where=lambda i, dim=dim: f"for t={int(t[i[0]])}, column {i[1]} of {dim}",
                                   mistakes=mistakes, rtol=1e-4, atol=1e-4))
    return f"t in {t.tolist()}, dim 16 and 64, largest error {worst:.1e}"


def _residual_forward_ref(block: ResidualBlock, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """ResidualBlock.forward written with the block's layers: (B, in, H, W), (B, E) -> (B, out, H, W)."""
    return block(x, emb)


def _test_block(in_ch: int, out_ch: int, seed: int) -> ResidualBlock:
    torch.manual_seed(seed)
    block = ResidualBlock(in_ch, out_ch, emb_dim=32).eval()
    torch.nn.init.normal_(block.conv2.weight, std=0.1)  # zero at init; non-zero so every path counts
    return block


@exercise("residual_block", "02_unet", "a residual block's forward pass", _residual_forward_ref)
def _check_residual(fn) -> str:
    worst = 0.0
    for in_ch, out_ch, seed in ((16, 16, 3), (8, 16, 4)):
        block = _test_block(in_ch, out_ch, seed)
        g = _gen(seed)
        x, emb = torch.randn(3, in_ch, 7, 7, generator=g), torch.randn(3, 32, generator=g)
        with torch.no_grad():
            h = block.conv1(F.silu(block.norm1(x)))
            p = block.emb_proj(F.silu(emb))[:, :, None, None]
            scale, shift = p.chunk(2, dim=1)
            p_raw = block.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)

            def finish(hm, skip=True, block=block, x=x):
                out = block.conv2(F.silu(hm))
                return block.skip(x) + out if skip else out

            expected = block(x, emb)
            mistakes = {
                "the skip connection is missing: return skip(x) + h": finish(block.norm2(h) * (1 + scale) + shift,
                                                                         skip=False),
                "scale and shift are applied before norm2, which then removes them: normalise first, "
                "then h * (1 + scale) + shift": finish(block.norm2(h * (1 + scale) + shift)),
                "the scale needs a 1 +: h * (1 + scale) + shift, so that a zero embedding leaves h unchanged":
                    finish(block.norm2(h) * scale + shift),
                "scale and shift are swapped: chunk(2, dim=1) gives (scale, shift) in that order":
                    finish(block.norm2(h) * (1 + shift) + scale),
                "the embedding goes through SiLU before emb_proj": finish(block.norm2(h) * (1 + p_raw[0]) + p_raw[1]),
            }
            out = _call(fn, (block, x.clone(), emb.clone()), f"residual_block(block, x, emb) with {in_ch}->{out_ch}")
        worst = max(worst, compare(out, expected, what=f"the block's output ({in_ch}->{out_ch} channels)",
                                   where=lambda i: f"at image {i[0]}, channel {i[1]}, pixel ({i[2]}, {i[3]})",
                                   mistakes=mistakes))
    return f"blocks 16->16 and 8->16 channels, largest error {worst:.1e}"


# ---------------------------------------------------------------------------------------------
# 03 training


def _test_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed stand-in for the U-Net: depends on x_t and t, so every mistake shows."""
    return 0.5 * x + torch.sin(t.float() / 100).view(-1, 1, 1, 1)


def _epsilon_loss_ref(model, schedule: NoiseSchedule, x0, t, noise) -> torch.Tensor:
    """DDPM's simplified loss for given t and noise: mean((eps_theta(x_t, t) - noise)^2), a scalar."""
    return F.mse_loss(model(schedule.add_noise(x0, noise, t), t), noise)


@exercise("epsilon_loss", "03_training", "the noise-prediction loss", _epsilon_loss_ref)
def _check_epsilon_loss(fn) -> str:
    schedule = NoiseSchedule.linear(1000)
    g = _gen(5)
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
    out = _call(fn, (_test_model, schedule, x0.clone(), t.clone(), noise.clone()),
                "epsilon_loss(model, schedule, x0, t, noise)")
    out = _as_tensor(out, "the loss")
    if out.numel() != 1:
        raise Mismatch(f"the loss should be a single number (a 0-d tensor), got shape {tuple(out.shape)}")
    err = compare(out.reshape(()), _epsilon_loss_ref(_test_model, schedule, x0, t, noise), what="the loss",
                  where=lambda i: "", mistakes=mistakes)
    return f"a batch of 8, error {err:.1e}"


def _ema_update_ref(ema_param: torch.Tensor, param: torch.Tensor, decay: float) -> torch.Tensor:
    """One EMA step: decay * ema_param + (1 - decay) * param."""
    return decay * ema_param + (1 - decay) * param


@exercise("ema_update", "03_training", "one exponential-moving-average update", _ema_update_ref)
def _check_ema(fn) -> str:
    g = _gen(6)
    worst = 0.0
    for decay in (0.999, 0.9, 0.0):
        e, p = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
        mistakes = {
            "decay and 1 - decay are swapped: the average keeps `decay` of the old value": (1 - decay) * e + decay * p,
            "the new weights need the factor (1 - decay)": decay * e + p,
            "you returned the current weights unchanged": p,
            "you returned the old average unchanged": e,
        }
        out = _call(fn, (e.clone(), p.clone(), decay), f"ema_update(ema_param, param, decay={decay})")
        worst = max(worst, compare(out, _ema_update_ref(e, p, decay), what=f"the average (decay={decay})",
                                   where=lambda i: f"at index {i}", mistakes=mistakes))
    return f"decay 0.999, 0.9 and 0, largest error {worst:.1e}"


# ---------------------------------------------------------------------------------------------
# 04 sampling


def _predict_x0_ref(x_t, t: int, eps, alphas_cumprod):
    """x0 = (x_t - sqrt(1 - alpha-bar_t) eps) / sqrt(alpha-bar_t), t an int."""
    abar = float(alphas_cumprod[t])
    return (x_t - math.sqrt(1 - abar) * eps) / math.sqrt(abar)


def _image_cases(seed: int, ts) -> list:
    g = _gen(seed)
    return [(t, torch.randn(4, 1, 28, 28, generator=g), torch.randn(4, 1, 28, 28, generator=g),
             torch.randn(4, 1, 28, 28, generator=g)) for t in ts]


def _pixel(i) -> str:
    return f"at image {i[0]}, pixel ({i[2]}, {i[3]})"


@exercise("predict_x0", "04_sampling", "x0 from x_t and the predicted noise", _predict_x0_ref)
def _check_predict_x0(fn) -> str:
    abar = NoiseSchedule.linear(1000).alphas_cumprod
    worst = 0.0
    for t, x_t, eps, _ in _image_cases(7, (0, 10, 500, 990)):
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
        out = _call(fn, (x_t.clone(), t, eps.clone(), abar.clone()), f"predict_x0(x_t, t={t}, eps, alphas_cumprod)")
        worst = max(worst, compare(out, _predict_x0_ref(x_t, t, eps, abar), what=f"x0 at t={t}", where=_pixel,
                                   mistakes=mistakes, rtol=1e-3, atol=1e-4))
    return f"t = 0, 10, 500, 990, largest error {worst:.1e}"


def _ddpm_step_ref(x_t, t: int, eps, schedule: NoiseSchedule, noise):
    """DDPM Algorithm 2, one step with sigma_t^2 = beta_t and no clipping; no noise at t = 0."""
    return sampling.ddpm_step(schedule, x_t, t, eps, noise=noise, clip_x0=False, variance="beta").x_prev


@exercise("ddpm_step", "04_sampling", "one DDPM reverse step (Algorithm 2)", _ddpm_step_ref)
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
        out = _call(fn, (x_t.clone(), t, eps.clone(), schedule, z.clone()),
                    f"ddpm_step(x_t, t={t}, eps, schedule, noise)")
        worst = max(worst, compare(out, _ddpm_step_ref(x_t, t, eps, schedule, z), what=f"x_(t-1) at t={t}",
                                   where=_pixel, mistakes=mistakes, rtol=1e-3, atol=1e-4))
    return f"t = 999, 500, 1, 0, largest error {worst:.1e}"


def _ddim_step_ref(x_t, t: int, t_prev: int, eps, alphas_cumprod):
    """Deterministic DDIM (eta = 0, no clipping): x_t -> x_{t_prev}; t_prev = -1 means clean data."""
    schedule = NoiseSchedule(_betas_from_alpha_bar(alphas_cumprod))
    return sampling.ddim_step(schedule, x_t, t, t_prev, eps, clip_x0=False).x_prev


def _betas_from_alpha_bar(abar: torch.Tensor) -> torch.Tensor:
    abar = abar.double()
    return 1 - abar / torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])


@exercise("ddim_step", "04_sampling", "one deterministic DDIM step", _ddim_step_ref)
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
        out = _call(fn, (x_t.clone(), t, t_prev, eps.clone(), abar.clone()),
                    f"ddim_step(x_t, t={t}, t_prev={t_prev}, eps, alphas_cumprod)")
        worst = max(worst, compare(out, _ddim_step_ref(x_t, t, t_prev, eps, abar),
                                   what=f"x_(t_prev) for t={t} -> t_prev={t_prev}", where=_pixel,
                                   mistakes=mistakes, rtol=1e-3, atol=1e-4))
    return f"steps 999->899, 500->450, 99->-1, largest error {worst:.1e}"


# ---------------------------------------------------------------------------------------------
# 05 conditioning


@exercise("guidance_combine", "05_conditioning", "classifier-free guidance", _guidance_combine)
def _check_guidance(fn) -> str:
    g = _gen(10)
    worst = 0.0
    for w in (3.0, 7.5, 0.0, 1.0):  # w = 3 first: at w = 0 or 1 several mistakes coincide
        u, c = torch.randn(2, 1, 28, 28, generator=g), torch.randn(2, 1, 28, 28, generator=g)
        mistakes = {
            "the guidance sign is flipped: move *towards* the conditional prediction, "
            "eps_uncond + w (eps_cond - eps_uncond)": c + w * (u - c),
            "this is the (1 + w) eps_cond - w eps_uncond convention of Ho & Salimans; the course's w = 1 "
            "means no guidance: eps_uncond + w (eps_cond - eps_uncond)": (1 + w) * c - w * u,
            "the difference (eps_cond - eps_uncond) is missing: eps_uncond + w (eps_cond - eps_uncond)": u + w * c,
            "you returned the conditional prediction without guidance": c,
        }
        out = _call(fn, (u.clone(), c.clone(), w), f"guidance_combine(eps_uncond, eps_cond, w={w})")
        worst = max(worst, compare(out, _guidance_combine(u, c, w), what=f"the guided noise (w={w})",
                                   where=_pixel, mistakes=mistakes))
    return f"w = 3, 7.5, 0, 1, largest error {worst:.1e}"


def _drop_labels_ref(labels, p_uncond: float, null_label: int, generator=None):
    from .losses import drop_labels
    return drop_labels(labels, p_uncond, null_label, generator)


@exercise("drop_labels", "05_conditioning", "label dropout for classifier-free guidance", _drop_labels_ref)
def _check_drop_labels(fn) -> str:
    n, null = 20000, 10
    labels = torch.randint(0, 10, (n,), generator=_gen(11))
    for p in (0.0, 0.1, 0.5, 1.0):
        given = labels.clone()
        out = _as_tensor(_call(fn, (given, p, null, _gen(12)), f"drop_labels(labels, p_uncond={p}, null_label=10, "
                                                                "generator)"), f"the labels (p_uncond={p})")
        if not torch.equal(given, labels):
            raise Mismatch("your function changed the caller's labels in place; build a new tensor "
                           "(torch.where) so the data set keeps its labels")
        if out.shape != labels.shape:
            raise Mismatch(f"the labels have the wrong shape: expected {tuple(labels.shape)}, got {tuple(out.shape)}")
        if out.dtype != torch.long:
            raise Mismatch(f"the labels must stay torch.long (the embedding needs indices), got {out.dtype}")
        dropped = out != labels
        if bool((out[dropped] == 0).any()) and not bool((out[dropped] == null).any()):
            raise Mismatch("dropped labels must become null_label (10 here), not 0: 0 is a real digit")
        if not bool((out[dropped] == null).all()):
            raise Mismatch(f"a changed label must become null_label={null}; found other values "
                           f"{sorted(set(out[dropped].tolist()) - {null})[:5]}")
        frac = float((out == null).float().mean())
        tol = 4 * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-9
        if abs(frac - p) > tol:
            hint = (" — it looks like you keep a label with probability p_uncond; drop it when "
                    "torch.rand(...) < p_uncond" if abs(frac - (1 - p)) <= tol else "")
            raise Mismatch(f"with p_uncond={p} you dropped {frac:.3f} of {n} labels; expected {p} ± {tol:.3f}"
                           f"{hint}")
        again = _call(fn, (labels.clone(), p, null, _gen(12)), "drop_labels a second time with the same seed")
        if not torch.equal(_as_tensor(again, "the labels"), out):
            raise Mismatch("the same generator seed gave different labels: pass generator=generator to torch.rand")
    return f"p_uncond = 0, 0.1, 0.5, 1 on {n} labels, fractions within 4 standard deviations"
