"""Shared fixtures. Tests run on the CPU in seconds and need no internet.

MNIST: tests that need real digits use ``$DDPM_COURSE_DATA`` (CI sets it to the offline copy of
the MNIST test split); when it is unset, ``../shared/data/mnist`` beside the project is used if it
exists. Other tests write small synthetic IDX files into a temporary folder.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_course import TrainConfig, UNetConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"

if not os.environ.get("DDPM_COURSE_DATA") and SHARED_MNIST.is_dir():
    os.environ["DDPM_COURSE_DATA"] = str(SHARED_MNIST)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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


@pytest.fixture
def synthetic_root(tmp_path) -> Path:
    """A data folder with a synthetic MNIST train split (64 images) and test split (32), flat."""
    root = tmp_path / "data"
    write_mnist_split(root, "train", 64)
    write_mnist_split(root, "test", 32)
    return root


@pytest.fixture
def tiny_config(synthetic_root, tmp_path) -> TrainConfig:
    """A training run of a few steps on synthetic digits: seconds on a CPU."""
    return TrainConfig(
        model=UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                         attention_resolutions=(14,), attention_heads=2, dropout=0.1, num_classes=10),
        T=50, schedule="linear", dataset="mnist", split="train", data_root=str(synthetic_root),
        batch_size=8, lr=1e-3, warmup_steps=2, max_steps=6, ema_decay=0.9, p_uncond=0.2,
        checkpoint_every=3, log_every=1, out_dir=str(tmp_path / "run"), seed=3,
    )


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
