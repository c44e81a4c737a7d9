"""Test helpers shared by several test files: synthetic IDX data and an exact noise predictor.

(Kept out of conftest.py: the notebooks folder has its own conftest, and two modules named
``conftest`` cannot both be imported by name.)
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def synthetic_digits(n: int, seed: int = 0):
    """n 28x28 images of bars whose position encodes the label 0-9 (easy to learn)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i, y in enumerate(labels):
        images[i, 4:24, 2 + 2 * y: 5 + 2 * y] = 255
    images = np.clip(images.astype(int) + rng.integers(0, 20, images.shape), 0, 255)
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_mnist_split(folder: Path, split: str, n: int, gz: bool = True) -> None:
    from ddpm_course.data import IDX_FILES

    images, labels = synthetic_digits(n, seed=0 if split == "train" else 1)
    suffix = ".gz" if gz else ""
    write_idx(folder / (IDX_FILES[split][0] + suffix), images)
    write_idx(folder / (IDX_FILES[split][1] + suffix), labels)


class GaussianEps:
    """The exact noise predictor for data x0 ~ N(mu, sd^2) per pixel (a known answer).

    With x_t = sqrt(a) x0 + sqrt(1 - a) eps, E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) /
    (a sd^2 + 1 - a). A sampler driven by it must produce samples with mean mu and std sd.
    """

    def __init__(self, schedule, mu: float = 0.3, sd: float = 0.5, num_classes=None):
        self.schedule, self.mu, self.sd = schedule, mu, sd
        if num_classes is not None:
            self.num_classes = num_classes

    def __call__(self, x_t, t, y=None):
        a = self.schedule.alphas_cumprod.to(x_t.device)[t].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x_t - a.sqrt() * self.mu) / (a * self.sd**2 + 1 - a)
