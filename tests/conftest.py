"""Shared fixtures. Tests run on the CPU in seconds and need no internet.

MNIST: tests that need real digits use ``$DDPM_COURSE_DATA`` (CI sets it to the offline copy of
the MNIST test split); when it is unset, ``../shared/data/mnist`` beside the project is used if it
exists. Other tests write small synthetic IDX files into a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import write_mnist_split

from ddpm_course import TrainConfig, UNetConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"

if not os.environ.get("DDPM_COURSE_DATA") and SHARED_MNIST.is_dir():
    os.environ["DDPM_COURSE_DATA"] = str(SHARED_MNIST)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
        mixed_precision="no",   # float32 everywhere ("auto" is bf16 on CPUs with bf16 units); bf16 has its own tests
    )
