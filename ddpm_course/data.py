"""Datasets: MNIST, Fashion-MNIST, a folder of your own images, and a GPU-resident batch loader.

Images come out as float tensors (C, H, W) in [-1, 1] with integer labels. MNIST is read from
canonical IDX files (``t10k-images-idx3-ubyte.gz``, ...) either flat in a folder or in
torchvision's layout ``ROOT/MNIST/raw/``; when they are missing, torchvision downloads them.
Offline, point ``$DDPM_COURSE_DATA`` at a folder that holds the files.

Small datasets like these fit in memory, so every dataset here keeps all images as one tensor.
:class:`DeviceBatches` then holds that tensor on the GPU and draws random batches there: a free
Colab runtime has two CPU cores, which would starve a DataLoader feeding a small U-Net.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ._checks import check_choice, check_int, describe

SPLITS = ("train", "test")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


class TensorImageDataset(Dataset):
    """Images and labels held as tensors.

    images: (N, C, H, W) float in [-1, 1]; labels: long (N,). Items are ``(image, label)`` with
    image (C, H, W) and label an int. ``name`` says where the data came from; ``split`` is "train" or
    "test" for a dataset's own split, None for other images (a folder).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, name: str = "images",
                 num_classes: int | None = None, split: str | None = None):
        if images.ndim != 4 or labels.shape != (images.shape[0],):
            raise ValueError(f"images must be (N, C, H, W) and labels (N,), got {describe(images)} "
                             f"and {describe(labels)}")
        self.images = images
        self.labels = labels.long()
        self.name = name
        self.num_classes = num_classes
        self.split = split

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        C, H, W = self.images.shape[1:]
        return f"TensorImageDataset({self.name}: {len(self)} images of {C}x{H}x{W})"


# ------------------------------------------------------------------------- IDX files
def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file (plain or .gz), the format of MNIST's files, into a uint8 tensor."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {dims}, found {array.size} values")
    return torch.from_numpy(array.copy()).reshape(dims)


def _find_file(stem: str, folders: list) -> Path | None:
    for folder in folders:
        for name in (stem + ".gz", stem):
            if (Path(folder) / name).is_file():
                return Path(folder) / name
    return None


def _find_split(split: str, folders: list):
    images, labels = (_find_file(stem, folders) for stem in IDX_FILES[split])
    return (images, labels) if images and labels else None


def default_root(root=None) -> Path:
    """The data folder: ``root`` if given, else ``$DDPM_COURSE_DATA``, else ``./data``."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("DDPM_COURSE_DATA") or "data")


def _missing_error(dataset: str, split: str, folders: list, reason: str) -> FileNotFoundError:
    files = ", ".join(stem + ".gz" for stem in IDX_FILES[split])
    looked = ", ".join(str(Path(f).resolve()) for f in folders)
    return FileNotFoundError(
        f"{dataset} {split} split not found. Looked in: {looked}. Put {files} in {Path(folders[0]).resolve()} "
        f"(flat, or in torchvision's layout), or set DDPM_COURSE_DATA to a folder that has them. {reason}"
    )


def _load_idx_dataset(dataset: str, split: str, folders: list, download_fn, download: bool,
                      subset: int | None, image_size: int) -> TensorImageDataset:
    check_choice("split", split, SPLITS)
    if subset is not None:
        check_int("subset", subset, minimum=1)
    check_int("image_size", image_size, minimum=28)
    if (image_size - 28) % 2:
        raise ValueError(f"image_size must be 28 or 28 + an even padding (e.g. 32), got {image_size}")
    found = _find_split(split, folders)
    reason = "Download was not asked for (download=False)."
    if found is None and download:
        try:
            download_fn()
            found = _find_split(split, folders)
        except Exception as error:  # no internet, HTTP 403, ... : report it with the folder
            reason = f"Download failed: {type(error).__name__}: {str(error).strip().splitlines()[-1]}"
    if found is None:
        raise _missing_error(dataset, split, folders, reason)
    images, labels = read_idx(found[0]), read_idx(found[1])
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    x = images.unsqueeze(1).float() / 127.5 - 1.0   # (N, 1, 28, 28) in [-1, 1]
    pad = (image_size - 28) // 2
    if pad:
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=-1.0)
    name = f"{dataset} {split} ({found[0].parent})"
    return TensorImageDataset(x, labels.long(), name=name, num_classes=10, split=split)


def load_mnist(split: str = "train", root=None, download: bool = True, *, subset: int | None = None,
               image_size: int = 28) -> TensorImageDataset:
    """MNIST digits: items ``(image, label)``, image (1, 28, 28) float in [-1, 1], label 0-9.

    root: folder with the IDX files, flat or as ``ROOT/MNIST/raw`` (default ``$DDPM_COURSE_DATA``,
    then ``./data``); download: fetch them with torchvision when missing; subset: keep the first
    N images; image_size: 32 pads each side by 2 background pixels (for 32x32 U-Nets).
    """
    root = default_root(root)
    folders = [root, root / "MNIST" / "raw", root / "mnist"]

    def fetch():
        from torchvision.datasets import MNIST
        MNIST(str(root), train=(split == "train"), download=True)

    return _load_idx_dataset("MNIST", split, folders, fetch, download, subset, image_size)


def load_fashion_mnist(split: str = "train", root=None, download: bool = True, *,
                       subset: int | None = None, image_size: int = 28) -> TensorImageDataset:
    """Fashion-MNIST (Xiao et al. 2017), same conventions as :func:`load_mnist`.

    Looks in ``ROOT/FashionMNIST/raw``, ``ROOT/fashion-mnist`` and Debian's
    ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``). Its files
    have the same names as MNIST's, so a flat ROOT is not searched.
    """
    root = default_root(root)
    folders = [root / "FashionMNIST" / "raw", root / "fashion-mnist", root / "fashion_mnist",
               FASHION_SYSTEM_DIR]

    def fetch():
        from torchvision.datasets import FashionMNIST
        FashionMNIST(str(root), train=(split == "train"), download=True)

    return _load_idx_dataset("Fashion-MNIST", split, folders, fetch, download, subset, image_size)


# ------------------------------------------------------------------------- your own images
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def load_image_folder(root, image_size: int = 28, channels: int = 1, *,
                      subset: int | None = None) -> TensorImageDataset:
    """A folder of image files as a dataset, images resized to ``image_size`` and scaled to [-1, 1].

    Sub-folders become classes (``root/0/*.png``, ``root/1/*.png``, ... as in torchvision's
    ImageFolder); a flat folder gives every image label 0. channels: 1 (grey) or 3 (RGB).
    """
    from PIL import Image
    from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root must be a folder of images, got {str(root)!r} (not a folder)")
    check_choice("channels", channels, (1, 3))
    check_int("image_size", image_size, minimum=4)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    groups = [(i, root / c) for i, c in enumerate(classes)] or [(0, root)]
    files = [(label, p) for label, folder in groups for p in sorted(folder.iterdir())
             if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root.resolve()}")
    if subset is not None:
        files = files[:check_int("subset", subset, minimum=1)]
    mode = "L" if channels == 1 else "RGB"
    tensors = []
    for _, path in files:
        with Image.open(path) as im:
            img = pil_to_tensor(im.convert(mode))
        img = center_crop(resize(img, image_size, antialias=True), [image_size, image_size])
        tensors.append(img)
    x = torch.stack(tensors).float() / 127.5 - 1.0
    labels = torch.tensor([label for label, _ in files], dtype=torch.long)
    return TensorImageDataset(x, labels, name=f"image folder {root}", num_classes=max(len(classes), 1))


def load_dataset(name: str, split: str = "train", root=None, *, subset=None, image_size: int = 28,
                 channels: int = 1, download: bool = True) -> TensorImageDataset:
    """Load a dataset by name: ``"mnist"``, ``"fashion_mnist"``, or a path to an image folder."""
    if name == "mnist":
        return load_mnist(split, root, download, subset=subset, image_size=image_size)
    if name in ("fashion_mnist", "fashion-mnist"):
        return load_fashion_mnist(split, root, download, subset=subset, image_size=image_size)
    if Path(name).is_dir():
        return load_image_folder(name, image_size, channels, subset=subset)
    raise ValueError(f"dataset must be 'mnist', 'fashion_mnist' or a folder of images, got {name!r}")


def load_available(name: str, root=None, *, purpose: str | None = None, log: Callable = print,
                   **kwargs) -> TensorImageDataset:
    """The train split of a dataset when it is present or can be downloaded, else its test split.

    Offline machines may hold only MNIST's 10,000 test digits. Falling back says so through ``log``
    when ``purpose`` names what the data is for ("training uses"); other keywords go to
    :func:`load_dataset`. When neither split exists, the train split's error is raised.
    """
    try:
        return load_dataset(name, "train", root, **kwargs)
    except FileNotFoundError as error:
        try:
            data = load_dataset(name, "test", root, **{**kwargs, "download": False})
        except FileNotFoundError:
            raise error from None
    if purpose:
        log(f"Note: the {name} train split is not available here, so {purpose} the "
            f"{len(data)}-image test split ({data.name}).")
    return data


# ------------------------------------------------------------------------- batches on the device
class DeviceBatches:
    """Random mini-batches drawn from a dataset held as one tensor on ``device``.

    Batch ``k`` is a pure function of (seed, k): epoch e = k // batches_per_epoch uses the
    permutation ``randperm(N)`` of a generator seeded with ``seed + e``. So training can resume at
    any step and see exactly the batches it would have seen, with no loader state to save.
    """

    def __init__(self, dataset: TensorImageDataset, batch_size: int, device="cpu", seed: int = 0):
        if not isinstance(dataset, TensorImageDataset):
            raise TypeError(f"dataset must be a TensorImageDataset (from load_mnist, ...), got {describe(dataset)}")
        check_int("batch_size", batch_size, minimum=1, maximum=len(dataset))
        self.images = dataset.images.to(device)
        self.labels = dataset.labels.to(device)
        self.batch_size = batch_size
        self.per_epoch = len(dataset) // self.batch_size
        self.seed = seed
        self._epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = torch.randperm(self.images.shape[0], generator=gen).to(self.images.device)
            self._epoch = epoch
        return self._perm

    def batch(self, step: int):
        """The (images, labels) of step ``step``: (B, C, H, W) in [-1, 1] and long (B,)."""
        epoch, index = divmod(step, self.per_epoch)
        idx = self._permutation(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        return self.images[idx], self.labels[idx]
