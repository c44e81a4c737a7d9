"""Classifier-free guidance (Ho & Salimans 2022).

One network predicts noise both with a label y and with the "no label" token; sampling mixes the
two predictions:

    eps = eps_uncond + w * (eps_cond - eps_uncond)

w = 1 is the plain conditional model, w = 0 the unconditional one, and w > 1 pushes samples
further towards what makes them look like class y (sharper, less varied digits).

The paper writes the same mix as (1 + w') eps_cond - w' eps_uncond, so its w' is our w - 1: the
paper's w' = 0 is our w = 1 (no guidance). Ours is the convention of diffusers' pipelines.
"""

from __future__ import annotations

import torch

from ._checks import check_labels, describe
from .schedules import NoiseSchedule
from .targets import model_prediction, to_epsilon


def guidance_combine(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """eps_uncond + guidance_scale * (eps_cond - eps_uncond); tensors of the same shape."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def null_label(model) -> int:
    """The "no label" index of a conditional model: its ``num_classes``.

    Works for a :class:`UNet`, a wrapped copy of one, or any callable that has a ``num_classes``
    attribute (set ``fn.num_classes = 10`` on a plain function).
    """
    for obj in (model, getattr(model, "module", None), getattr(model, "config", None)):
        n = getattr(obj, "num_classes", None) if obj is not None else None
        if isinstance(n, int) and not isinstance(n, bool):
            return n
    raise ValueError(
        "guidance_scale != 1 needs the model's 'no label' index, but the model has no "
        "num_classes attribute; pass a conditional UNet or set model.num_classes"
    )


def model_num_classes(model) -> int | None:
    """The model's number of classes, or None when it is unconditional or unknown."""
    try:
        return null_label(model)
    except ValueError:
        return None


def prepare_labels(labels, batch_size: int, device, model) -> torch.Tensor | None:
    """Turn a sampler's ``labels`` argument (None, an int, or a long tensor (B,)) into a tensor."""
    if labels is None:
        return None
    if isinstance(labels, bool):
        raise TypeError(f"labels must be None, an int or a torch.long tensor, got {describe(labels)}")
    if isinstance(labels, int):
        labels = torch.full((batch_size,), labels, dtype=torch.long, device=device)
    elif not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be None, an int or a torch.long tensor, got {describe(labels)}")
    check_labels("labels", labels, batch_size, model_num_classes(model), allow_null=True)
    return labels.to(device)


def predict_noise(model, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
                  guidance_scale: float = 1.0, schedule=None) -> torch.Tensor:
    """The (guided) noise prediction eps used by every sampler.

    Without labels: model(x_t, t). With labels and guidance_scale == 1: model(x_t, t, labels), a
    single pass. Otherwise the conditional and unconditional predictions come from one batched
    pass of size 2B and are combined with :func:`guidance_combine`. A model that predicts v or x0
    (``UNetConfig.prediction``) has its output turned into eps with ``schedule``, the NoiseSchedule
    it was trained with (required then, and not a ``respaced`` one: t indexes it); mixing before
    converting is the same, as the conversion is affine in the output and the mix's weights,
    1 - w and w, add up to 1.
    """
    prediction = model_prediction(model)
    if prediction != "eps" and not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule must be the model's training NoiseSchedule when the model predicts {prediction!r} "
                         f"(UNetConfig.prediction), to turn its output into the noise; got {describe(schedule)}")
    output = _guided_output(model, x_t, t, labels, guidance_scale)
    return output if prediction == "eps" else to_epsilon(schedule, x_t.float(), t, output.float(), prediction)


def _guided_output(model, x_t, t, labels, guidance_scale):
    if labels is None:
        return model(x_t, t)
    if guidance_scale == 1.0:
        return model(x_t, t, labels)
    null = torch.full_like(labels, null_label(model))
    if guidance_scale == 0.0:
        return model(x_t, t, null)
    out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null]))
    out_cond, out_uncond = out.chunk(2)
    return guidance_combine(out_uncond, out_cond, guidance_scale)
