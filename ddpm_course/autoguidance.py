"""Autoguidance: guiding a diffusion model with a bad version of itself (Karras et al. 2024).

Classifier-free guidance (``guidance.py``) sharpens samples towards a label. An unconditional
model has no label, yet it can be guided too: by a worse model of the same kind, e.g. the same
U-Net trained for a tenth of the time. Both predict the noise; sampling mixes them as

    eps = eps_guide + w * (eps_model - eps_guide)

w = 1 is the model alone; w > 1 moves each step away from what the worse model predicts. In
score terms (eps = -sqrt(1 - a-bar) * score), the mix is the model's score plus (w - 1) times
grad log [p_model(x_t) / p_guide(x_t)]: where the two agree it changes nothing, and where the guide
spreads probability that the better model has learnt to avoid (malformed digits), the samples are
pushed away from it. The guide must make the same kind of errors as the model, only more of them:
the paper's guides are smaller and shorter-trained versions of the model; ours is the same U-Net
after 1000 training steps. It costs a second network pass per step.

Measured on the shipped ``mnist-uncond`` (``docs/RESULTS.md``): FID ratio 2.61 alone, 1.49 guided
at w = 1.5 by the 1000-step ``cpu``-profile model of the same U-Net, N = 1000, seed 0.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_float, describe
from .guidance import model_num_classes
from .targets import model_prediction


def check_guide(model: nn.Module, guide: nn.Module) -> None:
    """Refuse a guide that cannot guide ``model``: other image shape, labels or prediction target."""
    for key in ("image_channels", "image_size", "num_classes"):
        ours, theirs = getattr(model.config, key), getattr(getattr(guide, "config", None), key, None)
        if ours != theirs:
            raise ValueError(f"the guide must make the model's images: model {key}={ours!r}, "
                             f"guide {key}={theirs!r}")
    if model_prediction(model) != model_prediction(guide):
        raise ValueError(f"the guide must predict what the model predicts: model {model_prediction(model)!r}, "
                         f"guide {model_prediction(guide)!r}")


class AutoGuided(nn.Module):
    """``guide(x, t, y) + scale * (model(x, t, y) - guide(x, t, y))``: one network to every sampler.

    model, guide: two U-Nets trained on the same data with the same noise schedule and prediction
    target (eps, v or x0: the mix is affine with weights 1 - w and w, so it may be taken before the
    output is turned into noise) and the same image shape and labels. ``config`` is the model's,
    so the wrapper samples like the model. Takes x_t (B, C, H, W), t (B,) and labels (B,) or None.
    """

    def __init__(self, model: nn.Module, guide: nn.Module, scale: float):
        super().__init__()
        check_float("autoguidance", scale, minimum=0.0)
        check_guide(model, guide)
        self.model, self.guide, self.scale = model, guide, float(scale)
        self.config = model.config
        self.num_classes = model_num_classes(model)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        args = (x_t, t) if labels is None else (x_t, t, labels)
        out_model, out_guide = self.model(*args), self.guide(*args)
        return out_guide + self.scale * (out_model - out_guide)


def autoguided(model: nn.Module, guide: nn.Module | None, scale: float) -> nn.Module:
    """``model`` guided by ``guide`` at ``scale``: the model itself when scale == 1, else an
    :class:`AutoGuided`. A scale other than 1 without a guide is an error, never ignored."""
    check_float("autoguidance", scale, minimum=0.0)
    if scale == 1.0:
        return model
    if guide is None:
        raise ValueError(f"autoguidance={scale} needs a guide (a worse model of the same kind), but none was given: "
                         "pass guide= (--guide CHECKPOINT), or leave autoguidance at 1")
    if not isinstance(guide, nn.Module):
        raise TypeError(f"guide must be a model (nn.Module), got {describe(guide)}")
    return AutoGuided(model, guide, scale)


def check_same_schedule(schedule, guide_schedule) -> None:
    """Refuse a guide trained with another noise schedule: t would mean a different noise level."""
    if schedule.T != guide_schedule.T or not torch.allclose(schedule.alphas_cumprod.cpu(),
                                                            guide_schedule.alphas_cumprod.cpu()):
        raise ValueError(f"the guide must be trained with the model's noise schedule (T={schedule.T}); "
                         f"the guide's differs (T={guide_schedule.T} or other a-bar values)")
