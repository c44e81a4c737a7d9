"""The optimisers a TrainConfig names (:func:`make_optimizer`): AdamW, Adam, and Muon for the
U-Net's hidden layers with AdamW for the rest, the ``cpu`` profile's optimiser.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks") keeps a
Nesterov momentum of each weight matrix's gradient, like SGD, but steps along an orthogonalised
version of it: for a momentum M = U S V^T (its singular value decomposition) the step is about
U V^T, every direction M points in moved by the same amount, however small its singular value.
Five Newton-Schulz iterations (a polynomial in M M^T, only matrix products) approximate U V^T with
singular values pushed into roughly [0.5, 1.5]. A convolution kernel (out, in, k, k) is treated as
the matrix (out, in * k * k) that it multiplies its input patches by.

Muon is for the hidden layers: biases, normalisation gains, embedding tables and the network's
first and last layers (``conv_in``, ``conv_out``) keep AdamW (Loshchilov & Hutter 2019).
Measured on the ``cpu`` profile (docs/RESULTS.md, session 26): at the same 1500 steps, the same
schedules and the same images, Muon at 5 times AdamW's learning rate fits the training images more
closely, and its samples are judged better.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_float, check_int

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)   # the quintic iteration's coefficients (Jordan et al. 2024)
ADAMW_ONLY_MODULES = ("conv_in", "conv_out")  # first and last layers: AdamW, as the Muon authors advise
MUON_LR_SCALE = 5.0   # Muon's lr / AdamW's: the best of 5 and 10 on the cpu profile (docs/RESULTS.md, session 26)


def orthogonalise(matrices: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """About U V^T for each matrix U S V^T, by ``steps`` quintic Newton-Schulz iterations.

    matrices: (m, n) or a stack (k, m, n) of same-shaped matrices. Returns the same shape and dtype;
    its singular values lie in roughly [0.5, 1.5] (not exactly 1: the coefficients trade accuracy for
    speed at small singular values, which Jordan et al. found not to hurt training).
    """
    a, b, c = NEWTON_SCHULZ
    x = matrices / matrices.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-7)   # spectral norm <= 1
    tall = x.shape[-2] > x.shape[-1]
    if tall:                       # iterate on the smaller Gram matrix
        x = x.transpose(-2, -1)
    for _ in range(steps):
        gram = x @ x.transpose(-2, -1)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.transpose(-2, -1) if tall else x


def muon_parameters(model: nn.Module) -> tuple:
    """(Muon's, AdamW's) parameter lists: Muon gets every weight of two or more dimensions, except
    embedding tables and the top-level ``conv_in`` and ``conv_out``; AdamW gets the rest."""
    adamw_only = {id(p) for name in ADAMW_ONLY_MODULES if isinstance(getattr(model, name, None), nn.Module)
                  for p in getattr(model, name).parameters()}
    adamw_only |= {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    muon, adamw = [], []
    for p in model.parameters():
        if p.requires_grad:
            (muon if p.ndim >= 2 and id(p) not in adamw_only else adamw).append(p)
    return muon, adamw


class MuonAdamW(torch.optim.Optimizer):
    """Muon for ``muon_params``, AdamW for ``adamw_params``, in one optimiser.

    ``lr`` is AdamW's learning rate; Muon's is ``lr * muon_lr_scale`` in every step, so a schedule that
    sets each group's ``lr`` (warm-up, cosine decay) moves both together. Muon's step for an (m, n)
    matrix is scaled by sqrt(max(1, m / n)), as in the reference code; weight decay is decoupled
    (both parts multiply the weights by 1 - lr * weight_decay). All state is in ``state_dict()``.
    """

    def __init__(self, muon_params, adamw_params, lr: float, *, muon_lr_scale: float = MUON_LR_SCALE,
                 momentum: float = 0.95, betas: tuple = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 ns_steps: int = 5):
        check_float("lr", lr, minimum=0.0, open_min=True)
        check_float("muon_lr_scale", muon_lr_scale, minimum=0.0, open_min=True)
        check_float("momentum", momentum, minimum=0.0, maximum=1.0, open_max=True)
        check_int("ns_steps", ns_steps, minimum=1)
        groups = [dict(params=list(muon_params), muon=True), dict(params=list(adamw_params), muon=False)]
        groups = [g for g in groups if g["params"]]
        super().__init__(groups, dict(lr=lr, muon_lr_scale=muon_lr_scale, momentum=momentum, betas=betas, eps=eps,
                                      weight_decay=weight_decay, ns_steps=ns_steps, muon=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["weight_decay"] and params:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            (self._muon_step if group["muon"] else self._adamw_step)(params, group)
        return loss

    def _muon_step(self, params: list, group: dict) -> None:
        """Nesterov momentum per tensor, then one batched orthogonalisation per matrix shape."""
        momentum, by_shape = group["momentum"], {}
        for p in params:
            buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
            buf.lerp_(p.grad, 1 - momentum)
            update = p.grad.lerp(buf, momentum).reshape(p.shape[0], -1)   # (out, in * k * k)
            by_shape.setdefault(tuple(update.shape), []).append((p, update))
        for (rows, cols), items in by_shape.items():
            ortho = orthogonalise(torch.stack([u.float() for _, u in items]), group["ns_steps"])
            size = group["lr"] * group["muon_lr_scale"] * max(1.0, rows / cols) ** 0.5
            for (p, _), o in zip(items, ortho):
                p.add_(o.view_as(p).to(p.dtype), alpha=-size)

    def _adamw_step(self, params: list, group: dict) -> None:
        """Adam's update (Kingma & Ba 2015) with bias correction; the decay was applied in :meth:`step`."""
        beta1, beta2 = group["betas"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            state["step"] += 1
            step = state["step"]
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (state["exp_avg_sq"] / (1 - beta2 ** step)).sqrt_().add_(group["eps"])
            p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1 ** step))


def _muon_lr_scale(config) -> float:
    return MUON_LR_SCALE if config.muon_lr_scale is None else config.muon_lr_scale


def describe_optimizer(config) -> str:
    """The optimiser a TrainConfig names, in words: "AdamW", "Adam" or "Muon (lr x 5) + AdamW"."""
    if config.optimizer == "muon":
        return f"Muon (lr x {_muon_lr_scale(config):g}) + AdamW"
    return {"adamw": "AdamW", "adam": "Adam"}[config.optimizer]


def make_optimizer(model: nn.Module, config, device: torch.device) -> torch.optim.Optimizer:
    """The optimiser ``config`` (a TrainConfig) names for ``model``: AdamW or Adam over all its
    parameters, fused into one kernel when ``fused_optimizer``; or, with ``optimizer="muon"``,
    :class:`MuonAdamW` (Muon for the hidden layers' weights, AdamW for the rest)."""
    if config.optimizer == "muon":
        return MuonAdamW(*muon_parameters(model), lr=config.lr, betas=(0.9, config.adam_beta2),
                         weight_decay=config.weight_decay, muon_lr_scale=_muon_lr_scale(config))
    opt = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    fused = {"fused": True} if config.fused_optimizer else {}
    try:
        return opt(model.parameters(), lr=config.lr, betas=(0.9, config.adam_beta2), weight_decay=config.weight_decay,
                   **fused)
    except (RuntimeError, TypeError, ValueError) as error:
        if not fused:
            raise
        raise ValueError(f"TrainConfig.fused_optimizer=True is not supported by torch {torch.__version__} on "
                         f"device {device} ({error}); set fused_optimizer=False (the default)") from None
