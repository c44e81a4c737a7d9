"""Numbers a student can trust about generated digits, all computed offline by the evaluator.

    confidence        mean top softmax probability
    diversity         classes present and the entropy of the predicted-class histogram
    accuracy          for conditional samples: how often the evaluator reads the requested label
    inception_score   exp(E_x KL(p(y|x) || p(y))) on the evaluator's softmax (Salimans et al. 2016);
                      10 is the most a 10-class set can score, real MNIST scores close to it
    fid               Frechet distance between Gaussians fitted to the evaluator's 128-d features
                      of generated and real images (Heusel et al. 2017), computed by torchmetrics
    fid_floor         the same FID between two disjoint sets of real images of the same size N:
                      FID is biased upwards at finite N, so a number means little without it
    fid_ratio         fid / fid_floor (1 = as close to the data as real images are to each other)
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ._checks import check_image_batch, check_int


@dataclass
class Classified:
    """The evaluator's view of a set of images."""

    probs: torch.Tensor     # (N, 10) softmax probabilities
    features: torch.Tensor  # (N, 128) penultimate features (for FID)


@torch.no_grad()
def classify(evaluator: nn.Module, images: torch.Tensor, batch_size: int = 500) -> Classified:
    """Run the evaluator over images (N, 1, H, W) in [-1, 1], in batches, on the evaluator's device."""
    check_image_batch("images", images)
    device = next(evaluator.parameters()).device
    probs, feats = [], []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        f = evaluator.features(x)
        feats.append(f.cpu())
        probs.append(torch.softmax(evaluator.head(f), dim=1).cpu())
    return Classified(torch.cat(probs), torch.cat(feats))


def confidence(probs: torch.Tensor) -> float:
    """Mean top softmax probability: 1 when every image is read as some digit without doubt."""
    return probs.max(dim=1).values.mean().item()


def diversity(probs: torch.Tensor) -> dict:
    """Classes present among the predictions and the entropy of their histogram (in nats, and
    divided by log(10) so that 1 means all ten digits equally often)."""
    counts = torch.bincount(probs.argmax(dim=1), minlength=probs.shape[1]).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"classes_present": int((counts > 0).sum()), "entropy": entropy,
            "normalized_entropy": entropy / math.log(probs.shape[1]),
            "histogram": counts.long().tolist()}


def label_accuracy(probs: torch.Tensor, labels: torch.Tensor) -> tuple:
    """(overall, per-class list) fraction of images whose predicted class is the requested label.

    probs: (N, classes) as :func:`classify` returns them (on the CPU); labels: long (N,), any device.
    """
    labels = labels.to(probs.device)
    hits = (probs.argmax(dim=1) == labels).double()
    per_class = [hits[labels == c].mean().item() if bool((labels == c).any()) else None
                 for c in range(probs.shape[1])]
    return hits.mean().item(), per_class


def inception_score(probs: torch.Tensor, eps: float = 1e-12) -> float:
    """exp(mean KL(p(y|x) || p(y))) over the set: 1 (all alike or all unsure) to 10 (ten classes,
    each image certain)."""
    probs = probs.double()
    marginal = probs.mean(dim=0, keepdim=True)
    kl = (probs * ((probs + eps).log() - (marginal + eps).log())).sum(dim=1)
    return math.exp(kl.mean().item())


class _Identity(nn.Module):
    """Hands precomputed features to torchmetrics' FID unchanged."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """FID between two feature sets (N, D) and (M, D):
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), by torchmetrics in float64."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D) with the same D, got {tuple(features_a.shape)} "
                         f"and {tuple(features_b.shape)}")
    if min(len(features_a), len(features_b)) < 2:
        raise ValueError("FID needs at least 2 samples on each side")
    fid = FrechetInceptionDistance(feature=_Identity(features_a.shape[1]), normalize=True)
    fid.update(features_a.double(), real=True)
    fid.update(features_b.double(), real=False)
    return float(fid.compute())


# ----------------------------------------------------------------------------- a whole evaluation
def reference_images(dataset: str, n: int, root=None, seed: int = 0, image_size: int = 28) -> tuple:
    """Two disjoint sets of ``n`` real images (for FID and its floor), drawn from the held-out test
    split, padded to ``image_size`` like the training data of a model of that size.

    Always the test split: it is what every machine has (offline MNIST has only its 10,000 test
    digits), so a card's numbers are reproduced online and offline alike, and a model trained on the
    train split is judged against images it never saw (offline MNIST models were trained on these
    same test digits). A folder of images has no splits: all of it is used.
    """
    from .data import load_dataset

    pool = load_dataset(dataset, "test", root, image_size=image_size).images
    if 2 * n > len(pool):
        raise ValueError(f"num_samples must be <= {len(pool) // 2} here: the FID floor needs two disjoint "
                         f"sets of num_samples real images and the {dataset} test split has only {len(pool)}; "
                         f"got {n}")
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    return pool[perm[:n]], pool[perm[n:2 * n]]


def evaluate_samples(evaluator: nn.Module, samples: torch.Tensor, real_a: torch.Tensor, real_b: torch.Tensor,
                     labels: torch.Tensor | None = None) -> dict:
    """Every metric of this module for one set of samples; ``labels`` for conditional samples."""
    fake, ref, other = (classify(evaluator, x) for x in (samples, real_a, real_b))
    fid, floor = frechet_distance(ref.features, fake.features), frechet_distance(ref.features, other.features)
    accuracy, per_class = label_accuracy(fake.probs, labels) if labels is not None else (None, None)
    return {
        "num_samples": len(samples),
        "fid": fid, "fid_floor": floor, "fid_ratio": fid / floor,
        "confidence": confidence(fake.probs), "diversity": diversity(fake.probs),
        "accuracy": accuracy, "per_class_accuracy": per_class,
        "inception_score": inception_score(fake.probs),
        "real_inception_score": inception_score(ref.probs),
    }


def inception_fid(samples: torch.Tensor, real: torch.Tensor) -> float | None:
    """FID on Inception-v3 pool features (torchmetrics), the number papers quote for natural images.

    It needs the ``torch-fidelity`` package and a download of the Inception weights, so it works on
    Colab but not offline: then it prints why and returns None. Images (N, 1, H, W) in [-1, 1] are
    repeated to 3 channels; torchmetrics resizes them to 299 x 299. Inception was trained on photos,
    not digits: prefer :func:`frechet_distance` on the evaluator's features for MNIST.
    """
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        metric = FrechetInceptionDistance(feature=2048, normalize=True)
    except Exception as error:  # noqa: BLE001 - missing package, no network, blocked download...
        print(f"Inception FID skipped: {type(error).__name__}: {str(error)[:200]} "
              "(it needs `pip install torch-fidelity` and internet for the weights)")
        return None

    def rgb01(x: torch.Tensor) -> torch.Tensor:
        return ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).expand(-1, 3, -1, -1)

    metric.update(rgb01(real), real=True)
    metric.update(rgb01(samples), real=False)
    return float(metric.compute())


def sample_scores(evaluator: nn.Module, samples: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """How convincing each sample is: the evaluator's probability of the requested label (or of
    its top class, for unconditional samples). (N,) in [0, 1]."""
    probs = classify(evaluator, samples).probs
    if labels is None:
        return probs.max(dim=1).values
    return probs.gather(1, labels.view(-1, 1).cpu()).squeeze(1)


# ----------------------------------------------------------------------------- the one entry point
class Evaluation(NamedTuple):
    """An evaluation's numbers and what they were computed from."""

    result: dict                 # see evaluate_checkpoint
    samples: torch.Tensor        # (N, C, H, W) on the CPU
    labels: torch.Tensor | None  # the labels asked for, or None
    evaluator: nn.Module


def _unpack(checkpoint_or_model, schedule, dataset) -> tuple:
    """(model, schedule, dataset, recommended sampling, num_classes, checkpoint path or None, the
    split it trained on or None, the guide it ships or None)."""
    from .checkpoints import Checkpoint, load_checkpoint
    from .config import recommended_sampling
    from .guidance import model_num_classes
    from .memorisation import trained_split

    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        checkpoint_or_model = load_checkpoint(checkpoint_or_model)
    if isinstance(checkpoint_or_model, Checkpoint):
        ckpt = checkpoint_or_model
        if schedule is not None or dataset is not None:
            raise ValueError("schedule and dataset come from the checkpoint; pass them only with a bare model")
        return (ckpt.ema_model, ckpt.schedule, ckpt.config.dataset, ckpt.sampling, ckpt.num_classes,
                str(ckpt.path) if ckpt.path else None, trained_split(ckpt.config.split, ckpt.info), ckpt.guide)
    if schedule is None or dataset is None:
        raise ValueError("a bare model needs schedule= (its NoiseSchedule) and dataset= (the data it was trained on)")
    num_classes = model_num_classes(checkpoint_or_model)
    return checkpoint_or_model, schedule, dataset, recommended_sampling(num_classes), num_classes, None, None, None


def sample_and_evaluate(checkpoint_or_model, *, num_samples: int = 1000, sampler: str | None = None,
                        steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
                        evaluator=None, schedule=None, dataset: str | None = None,
                        batch_size: int = 250, autoguidance: float | None = None, guide=None) -> Evaluation:
    """:func:`evaluate_checkpoint`, also returning the samples, labels and evaluator it used."""
    from .evaluator import evaluator_for, load_evaluator
    from .generation import generate_samples, image_shape, sampling_settings

    check_int("num_samples", num_samples, minimum=2)
    model, schedule, dataset, recommended, num_classes, path, split, shipped_guide = _unpack(checkpoint_or_model,
                                                                                             schedule, dataset)
    device = next(model.parameters()).device
    if not isinstance(evaluator, nn.Module):
        evaluator = load_evaluator(evaluator_for(dataset, evaluator), device)
    settings = sampling_settings(recommended, num_classes, schedule.T, sampler=sampler, steps=steps,
                                 guidance_scale=guidance_scale, autoguidance=autoguidance)
    if guide is None and settings.autoguidance != 1.0:
        guide = shipped_guide
    real_a, real_b = reference_images(dataset, num_samples, image_size=image_shape(model)[1])
    labels = torch.arange(num_samples) % num_classes if num_classes else None
    start = time.perf_counter()
    samples = generate_samples(model, schedule, num_samples, settings, labels=labels, batch_size=batch_size,
                               seed=seed, guide=guide)
    seconds = time.perf_counter() - start
    result = {**({"checkpoint": path} if path else {}), "sampler": settings.sampler, "steps": settings.steps,
              "guidance_scale": settings.guidance_scale,
              **({"autoguidance": settings.autoguidance} if settings.autoguidance != 1.0 else {}), "seed": seed,
              **evaluate_samples(evaluator, samples, real_a, real_b, labels), "seconds": round(seconds, 2),
              "memorisation": memorisation_summary(samples, dataset, image_shape(model)[1], split)}
    return Evaluation(result, samples, labels, evaluator)


def memorisation_summary(samples: torch.Tensor, dataset: str, image_size: int = 28, split: str | None = None) -> dict:
    """The scalar part of :func:`ddpm_course.memorisation.memorisation` against the training images
    of ``dataset``'s ``split`` (see :func:`~ddpm_course.memorisation.training_images`), or
    ``{"skipped": why}`` when the split a model trained on is not on this machine."""
    from .memorisation import memorisation, training_images

    try:
        training, held_out = training_images(dataset, image_size, split)
    except FileNotFoundError:
        if split != "train":   # the test split is every evaluation's reference: its absence is an error
            raise
        return {"skipped": f"the {dataset} train split it trained on is not on this machine"}
    result = memorisation(samples, training, held_out=held_out, num_reference=min(1000, len(training) - 1))
    return {key: value for key, value in result.items() if not isinstance(value, torch.Tensor)}


def evaluate_checkpoint(checkpoint_or_model, *, num_samples: int = 1000, sampler: str | None = None,
                        steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
                        evaluator=None, **kwargs) -> dict:
    """Sample ``num_samples`` images and measure them with the offline evaluator: the one judge
    used by ``evaluate``, the benchmarks, notebook 06 and the pretrained cards.

    checkpoint_or_model: a :class:`Checkpoint`, the path of one, or a bare model (then also pass
    ``schedule=`` and ``dataset=``); the image shape comes from the model's config. Settings left
    None come from the checkpoint's recommendation (``ckpt.sampling``). Conditional models get every
    class in turn. evaluator: None (the one of the model's dataset), a name, or a loaded evaluator.
    Also ``batch_size`` (250), ``autoguidance`` (None: the checkpoint's recommendation, 1 without)
    and ``guide`` (None: the one the checkpoint ships; :mod:`ddpm_course.autoguidance`). Returns a
    dict: checkpoint (if any), sampler, steps, guidance_scale, autoguidance (when not 1), seed, the
    metrics of :func:`evaluate_samples` and seconds (sampling time).
    """
    return sample_and_evaluate(checkpoint_or_model, num_samples=num_samples, sampler=sampler, steps=steps,
                               guidance_scale=guidance_scale, seed=seed, evaluator=evaluator, **kwargs).result


def _memorisation_line(m: dict) -> str:
    if "skipped" in m:
        return f"not measured: {m['skipped']}"
    return (f"samples {m['sample_median']:.2f} vs real {m['reference_median']:.2f} ({m['reference']}): "
            f"ratio {m['ratio']:.2f}, near copies {100 * m['near_copies']:.1f}%")


def format_report(r: dict) -> str:
    """A short table of an evaluation's numbers."""
    acc = "n/a (unconditional)" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
    rows = [
        ("samples", f"{r['num_samples']} ({r['sampler']}, {r['steps']} steps, guidance {r['guidance_scale']}"
                    + (f", autoguidance {r['autoguidance']}" if r.get("autoguidance", 1.0) != 1.0 else "") + ")"),
        ("FID (evaluator features)", f"{r['fid']:.3f}"),
        ("FID floor (real vs real, same N)", f"{r['fid_floor']:.3f}"),
        ("FID ratio (1 = real)", f"{r['fid_ratio']:.2f}"),
        ("label accuracy", acc),
        ("confidence", f"{r['confidence']:.3f}"),
        ("classes present / entropy", f"{r['diversity']['classes_present']}/10, "
                                      f"{r['diversity']['normalized_entropy']:.3f} of the maximum"),
        ("inception score (real data)", f"{r['inception_score']:.2f} ({r['real_inception_score']:.2f})"),
        *([("nearest training image (median L2)", _memorisation_line(r["memorisation"]))]
          if r.get("memorisation") else []),
        ("sampling time", f"{r['seconds']:.1f}s"),
    ]
    if "inception_fid" in r:
        value = r["inception_fid"]
        rows.insert(4, ("Inception FID (torchmetrics)", "skipped (offline)" if value is None else f"{value:.3f}"))
    if r["per_class_accuracy"] is not None:
        rows.insert(5, ("per class", " ".join(f"{c}:{100 * a:.0f}%" for c, a in enumerate(r["per_class_accuracy"])
                                               if a is not None)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
