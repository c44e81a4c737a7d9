"""Noise schedules and the closed-form forward process q(x_t | x_0).

Glossary (names in code -> symbols in the notebooks, DDPM = Ho et al. 2020). Arrays are indexed
by the code's timestep i = 0 .. T-1, which is the paper's step t = i + 1 (notebook 01's table):
``betas[i]`` is beta_{i+1}; below, "t" is the paper's step of the entry.

    betas                          beta_t, the variance added at step t
    alphas                         alpha_t = 1 - beta_t
    alphas_cumprod                 alpha-bar_t = prod_{s<=t} alpha_s
    alphas_cumprod_prev            alpha-bar_{t-1}; its first entry is alpha-bar_0 = 1 (clean data)
    sqrt_alphas_cumprod            sqrt(alpha-bar_t), the signal scale of x_t
    sqrt_one_minus_alphas_cumprod  sqrt(1 - alpha-bar_t), the noise scale of x_t
    posterior_variance             beta-tilde_t, the variance of q(x_{t-1} | x_t, x_0) (DDPM eq. 7)
    posterior_mean_coef1/2         the weights of x_0 and x_t in its mean (DDPM eq. 7)
    snr                            alpha-bar_t / (1 - alpha-bar_t), the signal-to-noise ratio

Timesteps in code are 0-based as in diffusers: 0 is the first noising step, T - 1 the last.
A schedule holds no sampling state; it is a small table of per-step coefficients.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_float, check_image_batch, check_int, check_timesteps


def extract(coefficients: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
    """``coefficients[t]``, shaped to broadcast against the batch ``x`` (the one broadcasting helper).

    coefficients: (T,); t: an int in [0, T - 1] (gives a 0-d tensor, which broadcasts on any device
    without a copy, so samplers with int timesteps never wait for a GPU) or a long (B,) tensor
    (gives (B, 1, ..., 1) on t's device). The result has x's dtype.
    """
    if isinstance(t, torch.Tensor):
        out = coefficients.to(t.device)[t]
        return out.reshape(t.shape[0], *([1] * (x.ndim - 1))).to(x.dtype)
    return coefficients[t].to(x.dtype)


class NoiseSchedule:
    """The variance schedule beta_1..beta_T of a DDPM and every coefficient derived from it.

    Build one with :meth:`linear` (DDPM) or :meth:`cosine` (Nichol & Dhariwal 2021). All tensors
    are float32 of shape (T,), computed in float64 first for accuracy.
    """

    def __init__(self, betas: torch.Tensor, *, kind: str = "custom", params: dict | None = None):
        if not isinstance(betas, torch.Tensor) or betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a 1-D tensor with at least one value, got {betas!r}")
        betas64 = betas.detach().to(device="cpu", dtype=torch.float64)
        if not bool(((betas64 > 0) & (betas64 < 1)).all()):
            raise ValueError(
                f"betas must lie in (0, 1), got values from {betas64.min().item()} "
                f"to {betas64.max().item()}"
            )
        self.kind = kind
        self.params = dict(params or {})
        self.T = int(betas64.numel())

        # q(x_t | x_0): the forward process in closed form (DDPM eq. 4)
        alphas = 1.0 - betas64
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        self.betas = betas64.float()
        self.alphas = alphas.float()
        self.alphas_cumprod = alphas_cumprod.float()
        self.alphas_cumprod_prev = alphas_cumprod_prev.float()
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt().float()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt().float()
        self.snr = (alphas_cumprod / (1.0 - alphas_cumprod)).float()

        # q(x_{t-1} | x_t, x_0): the posterior that the reverse process imitates (DDPM eq. 6-7)
        self.posterior_variance = (betas64 * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)).float()
        self.posterior_mean_coef1 = (betas64 * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod)).float()
        self.posterior_mean_coef2 = ((1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod)).float()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        """DDPM's linear schedule: betas evenly spaced from ``beta_start`` to ``beta_end``.

        Same betas as diffusers' ``DDPMScheduler(beta_schedule="linear")``.
        """
        check_int("T", T, minimum=1)
        check_float("beta_start", beta_start, minimum=0.0, maximum=1.0, open_min=True, open_max=True)
        check_float("beta_end", beta_end, minimum=0.0, maximum=1.0, open_min=True, open_max=True)
        if beta_end < beta_start:
            raise ValueError(f"beta_end must be >= beta_start ({beta_start}), got {beta_end}")
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        params = {"T": T, "beta_start": float(beta_start), "beta_end": float(beta_end)}
        return cls(betas, kind="linear", params=params)

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """The cosine schedule of Nichol & Dhariwal 2021 (Improved DDPM, eq. 17).

        alpha-bar(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2), and
        beta_t = min(1 - alpha-bar(t + 1) / alpha-bar(t), max_beta). Same betas as diffusers'
        ``DDPMScheduler(beta_schedule="squaredcos_cap_v2")`` (which fixes s = 0.008).
        """
        check_int("T", T, minimum=1)
        check_float("s", s, minimum=0.0)
        check_float("max_beta", max_beta, minimum=0.0, maximum=1.0, open_min=True, open_max=True)

        def alpha_bar(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
        params = {"T": T, "s": float(s), "max_beta": float(max_beta)}
        return cls(torch.tensor(betas, dtype=torch.float64), kind="cosine", params=params)

    @classmethod
    def from_name(cls, name: str, T: int = 1000) -> NoiseSchedule:
        """Build a schedule by name: ``"linear"`` or ``"cosine"``, with default parameters."""
        if name == "linear":
            return cls.linear(T)
        if name == "cosine":
            return cls.cosine(T)
        raise ValueError(f"schedule must be one of ['linear', 'cosine'], got {name!r}")

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor) -> NoiseSchedule:
        """The schedule whose alpha-bar is ``alphas_cumprod`` (T,), decreasing in (0, 1]:
        beta_t = 1 - a-bar_t / a-bar_{t-1}, with a-bar_{-1} = 1."""
        abar = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
        prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
        return cls(1.0 - abar / prev)

    def respaced(self, timesteps) -> NoiseSchedule:
        """The schedule of a shorter chain that visits only ``timesteps`` (Improved DDPM, section 4).

        timesteps: increasing ints in [0, T - 1]. Step i of the new chain keeps alpha-bar of
        timestep ``timesteps[i]``, so its betas are 1 - a-bar(timesteps[i]) / a-bar(timesteps[i-1]);
        a model trained on this schedule is called with the original ``timesteps[i]``. DDPM's
        ancestral step on the respaced schedule is DDIM with eta = 1 on those timesteps.
        """
        steps = [int(t) for t in timesteps]
        if not steps or any(b <= a for a, b in zip(steps, steps[1:])) or steps[0] < 0 or steps[-1] >= self.T:
            raise ValueError(f"timesteps must be increasing ints in [0, {self.T - 1}], got {steps[:8]}...")
        return NoiseSchedule.from_alphas_cumprod(torch.cumprod(1.0 - self.betas.double(), 0)[steps])

    # ------------------------------------------------------------------ forward process
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0) in closed form: x_t = sqrt(a-bar_t) x0 + sqrt(1 - a-bar_t) noise.

        x0: (B, C, H, W) in [-1, 1]; noise: same shape, standard normal; t: long (B,) in
        [0, T - 1]. Returns x_t, same shape and dtype as x0.
        """
        check_image_batch("x0", x0)
        if not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else repr(noise)
            raise ValueError(f"noise must be a tensor of the same shape as x0 {tuple(x0.shape)}, got {got}")
        check_timesteps("t", t, x0.shape[0], self.T)
        signal = extract(self.sqrt_alphas_cumprod, t, x0)
        sigma = extract(self.sqrt_one_minus_alphas_cumprod, t, x0)
        return signal * x0 + sigma * noise

    # ------------------------------------------------------------------ plumbing
    def to(self, device) -> NoiseSchedule:
        """A copy of this schedule with every coefficient on ``device``."""
        new = object.__new__(NoiseSchedule)
        for name, value in vars(self).items():
            setattr(new, name, value.to(device) if isinstance(value, torch.Tensor) else value)
        new.params = dict(self.params)
        return new

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to_config(self) -> dict:
        """Plain data that :meth:`from_config` turns back into this schedule."""
        if self.kind == "custom":
            return {"kind": "custom", "betas": self.betas.tolist()}
        return {"kind": self.kind, **self.params}

    @classmethod
    def from_config(cls, config: dict) -> NoiseSchedule:
        """Rebuild a schedule from :meth:`to_config`'s output."""
        config = dict(config)
        kind = config.pop("kind", None)
        if kind == "linear":
            return cls.linear(**config)
        if kind == "cosine":
            return cls.cosine(**config)
        if kind == "custom":
            return cls(torch.tensor(config["betas"], dtype=torch.float64))
        raise ValueError(f"schedule config 'kind' must be 'linear', 'cosine' or 'custom', got {kind!r}")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items() if k != "T")
        return f"NoiseSchedule.{self.kind}(T={self.T}{', ' + params if params else ''})"
