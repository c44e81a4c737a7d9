"""Many samples from a trained model: the settings it recommends, the labels, seeded batches.

The CLI, the benchmarks, the evaluation and notebook 06 all draw their samples here, so that the
same model, settings and seed give the same images wherever they are drawn:

- :func:`sampling_settings` fills in what the caller left out from the checkpoint's
  recommendation (sampler, steps, guidance scale) and refuses what cannot apply (guidance for an
  unconditional model);
- :func:`class_labels` turns "all", "none", "3" or "0,1,2" into a label tensor;
- :func:`sample_batches` / :func:`generate_samples` sample in batches, batch k seeded with
  ``seed + first index of the batch``, on the model's device, and return CPU tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import torch

from ._checks import check_float, check_int
from .autoguidance import autoguided
from .sampling import num_model_calls, sample


class SamplingSettings(NamedTuple):
    """What a generation uses: a sampler name, its model calls, the guidance scale, DDIM's eta and
    the autoguidance scale (1: none; see :mod:`ddpm_course.autoguidance`)."""

    sampler: str
    steps: int
    guidance_scale: float
    eta: float | None = None
    autoguidance: float = 1.0

    def describe(self) -> str:
        eta = f", eta {self.eta}" if self.eta is not None else ""
        auto = f", autoguidance {self.autoguidance}" if self.autoguidance != 1.0 else ""
        return f"{self.sampler}, {self.steps} steps, guidance {self.guidance_scale}{eta}{auto}"


def image_shape(model) -> tuple:
    """(C, H, W) of the images ``model`` makes, from its UNetConfig (``model.config``)."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "image_size"):
        raise ValueError("model must carry its UNetConfig as model.config (image_channels, image_size) so that "
                         "the image shape is known; a UNet or a loaded checkpoint's model does")
    return cfg.image_channels, cfg.image_size, cfg.image_size


def sampling_settings(recommended: dict, num_classes: int | None, T: int, *, sampler: str | None = None,
                      steps: int | None = None, guidance_scale: float | None = None,
                      eta: float | None = None, autoguidance: float | None = None) -> SamplingSettings:
    """Complete the caller's settings with a checkpoint's ``recommended`` ones (``ckpt.sampling``).

    num_classes: None when the samples get no labels (an unconditional model, or labels "none").
    A sampler other than the recommended one starts from its own default steps. Guidance without
    labels is an error, never silently dropped. autoguidance None: the recommended one (1 if none).
    """
    if guidance_scale is not None and num_classes is None and guidance_scale != 1.0:
        raise ValueError(f"guidance_scale={guidance_scale} needs class labels: the model is unconditional or "
                         "sampled without labels (leave guidance out)")
    name = sampler or recommended.get("sampler", "dpm_solver")
    if steps is None and name == recommended.get("sampler"):
        steps = recommended.get("steps")
    steps = num_model_calls(name, steps, T)
    if guidance_scale is None:
        guidance_scale = recommended.get("guidance_scale", 1.0) if num_classes is not None else 1.0
    if autoguidance is None:
        autoguidance = recommended.get("autoguidance", 1.0)
    autoguidance = check_float("autoguidance", autoguidance, minimum=0.0)
    return SamplingSettings(name, steps, float(guidance_scale), eta, autoguidance)


def class_labels(spec: str | None, n: int, num_classes: int | None) -> torch.Tensor | None:
    """Labels for ``n`` samples: None -> every class in turn for a conditional model (None for an
    unconditional one); "none" -> no labels; "all" -> 0..num_classes-1 repeated; "3" or "0,1,2" ->
    those, repeated to fill n. Raises ValueError naming ``labels`` for anything else."""
    check_int("n", n, minimum=1)
    if num_classes is None:
        if spec not in (None, "none"):
            raise ValueError(f"labels={spec!r} given, but the model is unconditional (it takes no labels)")
        return None
    if spec == "none":
        return None
    if spec in (None, "all"):
        return torch.arange(n) % num_classes
    try:
        values = [int(v) for v in spec.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"labels must be 'all', 'none' or integers like 0,1,2; got {spec!r}") from None
    if not values or any(not 0 <= v < num_classes for v in values):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {spec!r}")
    return torch.tensor(values * (n // len(values) + 1))[:n]


def sample_batches(model, schedule, n: int, settings: SamplingSettings, *, labels: torch.Tensor | None = None,
                   batch_size: int | None = None, seed: int = 0, callback: Callable | None = None,
                   progress: bool = False, guide=None):
    """Yield (index of the first image, samples (m, C, H, W) on the CPU, their labels or None) for
    ``n`` samples in batches of ``batch_size`` (None: one batch), batch k seeded with seed + first.

    guide: the worse model that ``settings.autoguidance`` != 1 guides ``model`` with (a
    checkpoint's ``ckpt.guide``); an error if it is needed and missing, or given and unused.
    """
    check_int("n", n, minimum=1)
    if guide is not None and settings.autoguidance == 1.0:
        raise ValueError("a guide was given but autoguidance is 1 (no autoguidance): give an autoguidance scale "
                         "other than 1, or leave the guide out")
    model = autoguided(model, guide, settings.autoguidance)
    batch_size = check_int("batch_size", n if batch_size is None else batch_size, minimum=1)
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels must hold n={n} labels, got {len(labels)}")
    device = next(model.parameters()).device
    for first in range(0, n, batch_size):
        m = min(batch_size, n - first)
        y = labels[first:first + m] if labels is not None else None
        x = sample(model, schedule, (m, *image_shape(model)), sampler=settings.sampler, steps=settings.steps,
                   eta=settings.eta, labels=y.to(device) if y is not None else None,
                   guidance_scale=settings.guidance_scale,
                   generator=torch.Generator(device).manual_seed(seed + first), callback=callback,
                   progress=progress)
        yield first, x.cpu(), y


def generate_samples(model, schedule, n: int, settings: SamplingSettings, **kwargs) -> torch.Tensor:
    """All of :func:`sample_batches`, gathered: (n, C, H, W) on the CPU."""
    return torch.cat([x for _, x, _ in sample_batches(model, schedule, n, settings, **kwargs)])


def checkpoint_settings(ckpt, labels: torch.Tensor | None, **given) -> SamplingSettings:
    """:func:`sampling_settings` for a loaded :class:`~ddpm_course.Checkpoint` sampled with ``labels``."""
    return sampling_settings(ckpt.sampling, ckpt.num_classes if labels is not None else None, ckpt.schedule.T,
                             **given)


def guide_for(ckpt, settings: SamplingSettings):
    """The guide that ``settings`` use for ``ckpt``: ``ckpt.guide`` when autoguidance != 1, else None
    (a checkpoint that ships a guide can still be sampled alone, with autoguidance 1)."""
    return ckpt.guide if settings.autoguidance != 1.0 else None


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) in [-1, 1] -> uint8 (B, H, W) for one channel, (B, H, W, C) otherwise."""
    pixels = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels[:, 0] if pixels.shape[1] == 1 else pixels.permute(0, 2, 3, 1)


def export_images(ckpt, out, n: int, settings: SamplingSettings, *, labels: torch.Tensor | None = None,
                  batch_size: int = 256, seed: int = 0, log: Callable = print) -> int:
    """Write ``n`` samples as ``out/00000.png``, ... (and ``labels.csv`` for labelled samples), for
    evaluation by other tools. Returns the number of files written."""
    from .files import atomic_write_text
    from .visualize import write_image

    out = Path(out)
    rows, written = [], 0
    for first, x, y in sample_batches(ckpt.ema_model, ckpt.schedule, n, settings, labels=labels,
                                      batch_size=batch_size, seed=seed, guide=guide_for(ckpt, settings)):
        for i, image in enumerate(to_uint8(x).numpy()):
            name = f"{first + i:05d}.png"
            write_image(out / name, image)
            rows.append(f"{name},{int(y[i])}" if y is not None else name)
        written += len(x)
        log(f"{written}/{n} images")
    if labels is not None:
        atomic_write_text(out / "labels.csv", "file,label\n" + "\n".join(rows) + "\n")
    return written
