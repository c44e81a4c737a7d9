"""Does a model copy its training images? Nearest-neighbour distances of samples and of real images.

A model that memorised its training set puts its samples much closer to some training image than
real images of the same distribution come to one another. The check (in the spirit of Carlini et
al. 2023, "Extracting training data from diffusion models") compares two sets of distances in pixel
space (L2 between images in [-1, 1]; 28 x 28 digits are small enough to compare exactly):

- for each **sample**, the distance to its nearest training image;
- for each **reference** image, the distance to its nearest training image: held-out images of the
  same distribution when there are some (MNIST's test split when the model trained on its train
  split), else other training images, each compared with every training image *but itself*
  (leave-one-out). Offline, where models train on MNIST's 10,000 test digits, it is the latter.

A ratio of medians near 1 (or above) means samples are no closer to the training set than real
images are; copies show up as samples far below the reference's smallest distances
(``near_copies``: the fraction of samples closer to a training image than 99% of the reference).
"""

from __future__ import annotations

import torch

from ._checks import check_choice, check_int


def _flat(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"{what} must be an image batch (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    return x.detach().float().cpu().flatten(1)


def nearest_neighbours(queries: torch.Tensor, bank: torch.Tensor, *, exclude: torch.Tensor | None = None,
                       batch_size: int = 250) -> tuple:
    """For each query image, the L2 distance to its nearest image in ``bank`` and that image's index.

    queries: (N, C, H, W); bank: (M, C, H, W) of the same image shape. exclude: long (N,) — an index
    of ``bank`` each query must not match (the query itself, for leave-one-out), or None.
    Returns (distances (N,), indices (N,)), on the CPU.
    """
    check_int("batch_size", batch_size, minimum=1)
    q, b = _flat(queries, "queries"), _flat(bank, "bank")
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"queries and bank must have the same image shape, got {tuple(queries.shape[1:])} "
                         f"and {tuple(bank.shape[1:])}")
    if len(b) < (2 if exclude is not None else 1):
        raise ValueError(f"bank must hold at least {2 if exclude is not None else 1} image(s), got {len(b)}")
    distances, indices = [], []
    for start in range(0, len(q), batch_size):
        d = torch.cdist(q[start:start + batch_size], b)
        if exclude is not None:
            rows = torch.arange(len(d))
            d[rows, exclude[start:start + batch_size]] = float("inf")
        best = d.min(dim=1)
        distances.append(best.values)
        indices.append(best.indices)
    return torch.cat(distances), torch.cat(indices)


def memorisation(samples: torch.Tensor, training: torch.Tensor, *, held_out: torch.Tensor | None = None,
                 num_reference: int = 1000, seed: int = 0) -> dict:
    """Compare the samples' nearest-training-image distances with real images' (see the module doc).

    samples: (N, C, H, W) in [-1, 1]; training: the model's training images; held_out: real images
    the model never saw, or None (then ``num_reference`` training images, leave-one-out).
    Returns a dict: sample_median, reference_median, ratio (sample / reference; < 1 means closer
    than real images come), near_copies (fraction of samples nearer than the reference's 1st
    percentile), reference ("held-out" or "training, leave-one-out"), and the distances themselves
    (``sample_distances``, ``reference_distances``, ``nearest``: each sample's nearest training index).
    """
    check_int("num_reference", num_reference, minimum=2)
    sample_d, nearest = nearest_neighbours(samples, training)
    perm = torch.randperm(len(held_out) if held_out is not None else len(training),
                          generator=torch.Generator().manual_seed(seed))[:num_reference]
    if held_out is not None:
        reference_d, _ = nearest_neighbours(held_out[perm], training)
        kind = "held-out"
    else:
        reference_d, _ = nearest_neighbours(training[perm], training, exclude=perm)
        kind = "training, leave-one-out"
    sample_median, reference_median = float(sample_d.median()), float(reference_d.median())
    return {
        "space": "pixels (L2, images in [-1, 1])",
        "reference": kind,
        "sample_median": sample_median,
        "reference_median": reference_median,
        "ratio": sample_median / reference_median,
        "near_copies": float((sample_d < torch.quantile(reference_d, 0.01)).float().mean()),
        "sample_distances": sample_d,
        "reference_distances": reference_d,
        "nearest": nearest,
    }


def trained_split(config_split: str, info: dict) -> str | None:
    """The split a checkpoint's model trained on: its config's ``split`` when that is "train" or
    "test"; for "auto", the split its training recorded (``info["split"]``), or for checkpoints
    older than that record, the split named in ``info["data"]`` ("MNIST test (/data/mnist)");
    None when neither says (a folder of images)."""
    if config_split in ("train", "test"):
        return config_split
    if info.get("split") in ("train", "test"):
        return info["split"]
    words = (info.get("data") or "").split()
    return words[1] if len(words) > 1 and words[1] in ("train", "test") else None


def training_images(dataset: str, image_size: int = 28, split: str | None = None) -> tuple:
    """(the images a model of ``dataset`` trained on, held-out images or None).

    split: the split the model trained on (see :func:`trained_split`): "test" (offline MNIST: the
    10,000 test digits, nothing held out) or "train" (the test split is held out; FileNotFoundError
    when the train split is not on this machine). None: as ``train`` picks it here, the train split
    when present, else the test split.
    """
    from .data import load_dataset

    if dataset not in ("mnist", "fashion_mnist", "fashion-mnist"):
        raise ValueError(f"dataset must be 'mnist' or 'fashion_mnist' for the memorisation check, got {dataset!r}")
    if split is not None:
        check_choice("split", split, ("train", "test"))
    if split == "test":
        return load_dataset(dataset, "test", image_size=image_size, download=False).images, None
    try:
        train = load_dataset(dataset, "train", image_size=image_size, download=False).images
    except FileNotFoundError:
        if split == "train":
            raise
        return load_dataset(dataset, "test", image_size=image_size, download=False).images, None
    try:
        return train, load_dataset(dataset, "test", image_size=image_size, download=False).images
    except FileNotFoundError:
        return train, None
