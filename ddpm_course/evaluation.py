"""Numbers a student can trust about generated digits, all computed offline by the evaluator.

    confidence        mean top softmax probability (report 000's measure)
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
from dataclasses import dataclass

import torch
from torch import nn

from ._checks import check_image_batch


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
def reference_images(dataset: str, n: int, root=None, seed: int = 0) -> tuple:
    """Two disjoint sets of ``n`` real images (for FID and its floor), drawn from the train split
    when present, else the test split (offline MNIST has only its 10,000 test digits)."""
    from .data import load_available

    pool = load_available(dataset, root).images
    if 2 * n > len(pool):
        raise ValueError(f"num_samples must be <= {len(pool) // 2} here: the FID floor needs two disjoint "
                         f"sets of num_samples real images and only {len(pool)} are available; got {n}")
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
