"""An offline judge of generated digits: a small CNN classifier shipped in ``assets/``.

Inception-v3 (the network behind the usual FID) needs weights from the internet and was trained
on 299x299 photographs, a poor judge of 28x28 digits. This classifier is trained by the project's
own command (``python -m ddpm_course evaluator train --dataset mnist``) and shipped with a JSON
card (data, steps, held-out accuracy, sha256). Its softmax gives confidence, accuracy and the
classifier Inception Score; its 128-d penultimate layer gives the features for FID.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_choice, check_image_batch
from .assets import asset_paths, assets_dir, file_sha256, verified_card
from .checkpoints import EVALUATOR_FORMAT, read_state, save_checkpoint
from .files import atomic_write_json

EVALUATOR_DATASETS = ("mnist", "fashion_mnist")
NUM_FEATURES = 128


class DigitClassifier(nn.Module):
    """Two conv blocks and a 128-d feature layer: (B, 1, 28, 28) in [-1, 1] -> logits (B, 10).

    Larger inputs (e.g. 32x32 padded digits) are centre-cropped to 28x28 first.
    """

    num_features = NUM_FEATURES  # read by torchmetrics when the features feed its FID

    def __init__(self, num_classes: int = 10):
        super().__init__()

        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        self.conv = nn.Sequential(
            *block(1, 32), *block(32, 32), nn.MaxPool2d(2),      # 28 -> 14
            *block(32, 64), *block(64, 64), nn.MaxPool2d(2),     # 14 -> 7
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, NUM_FEATURES), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(NUM_FEATURES, num_classes)

    @staticmethod
    def crop(x: torch.Tensor) -> torch.Tensor:
        check_image_batch("images", x)
        if x.shape[1] != 1 or min(x.shape[-2:]) < 28:
            raise ValueError(f"images must be (B, 1, H, W) with H, W >= 28, got {tuple(x.shape)}")
        top, left = (x.shape[-2] - 28) // 2, (x.shape[-1] - 28) // 2
        return x[..., top:top + 28, left:left + 28]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 128-d penultimate features used for FID: (B, 128)."""
        return self.fc(self.conv(self.crop(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


# ----------------------------------------------------------------------------- training
def _split_data(dataset: str, root=None):
    """(train images, train labels, held-out images, held-out labels, description).

    With the full training split available (online, or Fashion-MNIST from Debian): train on it,
    hold out the test split. Offline MNIST has only the 10,000 test digits: train on the first
    8,000 and hold out the last 2,000.
    """
    from .data import load_dataset

    try:
        train = load_dataset(dataset, "train", root)
        test = load_dataset(dataset, "test", root)
        return train.images, train.labels, test.images, test.labels, \
            f"{dataset} train split ({len(train)}), held out: test split ({len(test)})"
    except FileNotFoundError:
        test = load_dataset(dataset, "test", root, download=False)
        n = len(test) * 4 // 5
        return test.images[:n], test.labels[:n], test.images[n:], test.labels[n:], \
            (f"{dataset} test split only (offline): first {n} images for training, "
             f"last {len(test) - n} held out")


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels, and on half the images the artefacts generated digits
    have: pixel noise (std up to 0.2), a background offset (up to +-0.15) and weaker or stronger
    strokes (x0.7 to x1.2). Without them the classifier reads a digit on a slightly grey
    background as another digit (measured: 52% accuracy at a +0.1 offset)."""
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()
    x = padded[..., dy:dy + 28, dx:dx + 28]
    B = x.shape[0]

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(B, 1, 1, 1, generator=generator)

    on = (torch.rand(B, 1, 1, 1, generator=generator) < 0.5).float()
    noisy = (x + 1) * uniform(0.7, 1.2) - 1 + uniform(-0.15, 0.15)
    noisy = noisy + uniform(0.0, 0.2) * torch.randn(x.shape, generator=generator)
    return (on * noisy + (1 - on) * x).clamp(-1, 1)


@torch.no_grad()
def classifier_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(images), batch_size))
    return correct / len(images)


def train_evaluator(dataset: str = "mnist", *, steps: int = 2000, batch_size: int = 128, lr: float = 2e-3,
                    seed: int = 0, out_dir=None, root=None, log=print) -> dict:
    """Train the evaluator, write ``evaluator-<dataset>.pt`` and its JSON card; return the card."""
    check_choice("dataset", dataset, EVALUATOR_DATASETS)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train, x_test, y_test, described = _split_data(dataset, root)
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    start = time.perf_counter()
    for step in range(steps):
        model.train()
        idx = torch.randint(0, len(x_train), (batch_size,), generator=gen)
        for group in opt.param_groups:  # cosine decay to zero
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        # no label smoothing: it caps the softmax, and with it the Inception Score of real digits
        loss = F.cross_entropy(model(_augment(x_train[idx], gen)), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % max(1, steps // 10) == 0:
            log(f"step {step + 1}/{steps}  loss {loss.item():.4f}")
    seconds = time.perf_counter() - start
    accuracy = classifier_accuracy(model, x_test, y_test)
    out = Path(out_dir) if out_dir is not None else assets_dir()
    weights = out / f"evaluator-{dataset}.pt"
    save_checkpoint({"format": EVALUATOR_FORMAT, "model": model.state_dict()}, weights)
    card = {
        "name": f"evaluator-{dataset}",
        "command": f"python -m ddpm_course evaluator train --dataset {dataset} --steps {steps} --seed {seed}",
        "data": described,
        "train_images": len(x_train), "heldout_images": len(x_test),
        "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "augmentation": "shifts of up to 2 pixels; on half the images pixel noise (std <= 0.2), "
                        "background offset (+-0.15) and stroke contrast (x0.7-1.2)",
        "heldout_accuracy": round(accuracy, 5),
        "train_seconds": round(seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": str(torch.__version__),
        "sha256": file_sha256(weights),
    }
    atomic_write_json(out / f"evaluator-{dataset}.json", card)
    log(f"held-out accuracy {accuracy:.4f}; wrote {weights}")
    return card


def evaluator_for(dataset: str, name: str | None = None) -> str:
    """The evaluator to judge samples of ``dataset`` with: ``name`` when given, else the one
    trained on that dataset. Images from a folder have no shipped judge: an error says so."""
    if name is not None:
        check_choice("evaluator", name, EVALUATOR_DATASETS)
        return name
    key = str(dataset).replace("-", "_")
    if key not in EVALUATOR_DATASETS:
        raise ValueError(f"no shipped evaluator for dataset {dataset!r}: the evaluators know "
                         f"{', '.join(EVALUATOR_DATASETS)}; pass one explicitly to judge other images with it")
    return key


def load_evaluator(name: str = "mnist", device="cpu", assets=None) -> DigitClassifier:
    """The shipped evaluator for ``name`` ("mnist" or "fashion_mnist"), in eval mode.

    Checks the weights' sha256 against the card, so a corrupted or swapped file is refused.
    """
    check_choice("name", name, EVALUATOR_DATASETS)
    weights, card_path = asset_paths(f"evaluator-{name}", assets)
    if not weights.is_file() or not card_path.is_file():
        raise FileNotFoundError(
            f"evaluator {name!r} not found: expected {weights} and {card_path}. Train it with "
            f"`python -m ddpm_course evaluator train --dataset {name}`"
        )
    card = verified_card(weights, card_path)
    state = read_state(weights, device, formats=(EVALUATOR_FORMAT,), what="evaluator")
    model = DigitClassifier().to(device)
    model.load_state_dict(state["model"])
    model.card = card
    return model.eval()
