
import numpy as np
import pytest
import torch
from helpers import write_idx, write_mnist_split

from ddpm_course import DeviceBatches, load_fashion_mnist, load_image_folder, load_mnist
from ddpm_course.data import read_idx


def test_reads_flat_gz_and_torchvision_layout(tmp_path):
    flat = tmp_path / "flat"
    write_mnist_split(flat, "train", 20, gz=True)
    tv = tmp_path / "tv"
    write_mnist_split(tv / "MNIST" / "raw", "test", 12, gz=False)
    ds = load_mnist("train", root=flat, download=False)
    assert len(ds) == 20
    image, label = ds[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and isinstance(label, int)
    assert label == 3 and image.min() >= -1 and image.max() <= 1
    assert image.max() == 1.0 and image.min() < -0.8
    assert len(load_mnist("test", root=tv, download=False)) == 12


def test_subset_and_padding(synthetic_root):
    ds = load_mnist("train", root=synthetic_root, download=False, subset=10, image_size=32)
    assert len(ds) == 10 and ds.images.shape == (10, 1, 32, 32)
    assert bool((ds.images[:, :, :2, :] == -1).all()) and bool((ds.images[:, :, :, -2:] == -1).all())
    base = load_mnist("train", root=synthetic_root, download=False, subset=10)
    assert torch.equal(ds.images[:, :, 2:30, 2:30], base.images)


def test_env_variable_root(synthetic_root, monkeypatch):
    monkeypatch.setenv("DDPM_COURSE_DATA", str(synthetic_root))
    assert len(load_mnist("test", download=False)) == 32


def test_missing_files_error_names_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist("train", root=tmp_path / "empty", download=False)
    message = str(info.value)
    assert str((tmp_path / "empty").resolve()) in message
    assert "train-images-idx3-ubyte.gz" in message and "train-labels-idx1-ubyte.gz" in message
    assert "DDPM_COURSE_DATA" in message


def test_failed_download_is_reported(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nName or service not known")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(FileNotFoundError, match="Download failed: RuntimeError: Name or service not known"):
        load_mnist("train", root=tmp_path, download=True)


def test_bad_arguments(synthetic_root):
    with pytest.raises(ValueError, match="split must be one of"):
        load_mnist("validation", root=synthetic_root)
    with pytest.raises(ValueError, match="image_size must be 28 or 28 \\+ an even padding"):
        load_mnist("train", root=synthetic_root, image_size=31)
    with pytest.raises(ValueError, match="subset must be >= 1"):
        load_mnist("train", root=synthetic_root, subset=0)


def test_real_mnist_test_split():
    """The real digits (CI: the offline copy; elsewhere torchvision downloads them)."""
    ds = load_mnist("test")
    assert len(ds) == 10000 and ds.images.shape == (10000, 1, 28, 28)
    counts = torch.bincount(ds.labels, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # MNIST's test split
    assert abs(ds.images.mean().item() - (2 * 0.1325 - 1)) < 0.01  # mean pixel 0.1325 in [0, 1]


def test_fashion_mnist_layouts(tmp_path, monkeypatch):
    write_mnist_split(tmp_path / "FashionMNIST" / "raw", "test", 16)
    write_mnist_split(tmp_path / "flat", "test", 16)  # same names as MNIST: not searched flat
    assert len(load_fashion_mnist("test", root=tmp_path, download=False)) == 16
    monkeypatch.setattr("ddpm_course.data.FASHION_SYSTEM_DIR", tmp_path / "no-system-copy")  # Debian's may exist
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST test split not found"):
        load_fashion_mnist("test", root=tmp_path / "flat", download=False)


def test_read_idx_rejects_other_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 12)
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        read_idx(bad)
    ok = tmp_path / "ok.gz"
    write_idx(ok, np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert read_idx(ok).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_image_folder(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "classes" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (40, 30), color=255 if label == "dog" else 0).save(tmp_path / "classes" / label / f"{i}.png")
    ds = load_image_folder(tmp_path / "classes", image_size=28)
    assert len(ds) == 6 and ds.images.shape == (6, 1, 28, 28) and ds.num_classes == 2
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.images[0].max() == -1 and ds.images[-1].min() == 1
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (16, 16), color=(255, 0, 0)).save(tmp_path / "flat" / "a.jpg")
    rgb = load_image_folder(tmp_path / "flat", image_size=8, channels=3)
    assert rgb.images.shape == (1, 3, 8, 8) and rgb.labels.tolist() == [0]
    (tmp_path / "none").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        load_image_folder(tmp_path / "none", image_size=8)
    with pytest.raises(ValueError, match="channels must be one of"):
        load_image_folder(tmp_path / "flat", channels=2)


def test_device_batches_are_a_function_of_the_step(synthetic_root):
    ds = load_mnist("train", root=synthetic_root, download=False)
    a, b = DeviceBatches(ds, 16, seed=5), DeviceBatches(ds, 16, seed=5)
    x7, y7 = a.batch(7)
    for step in (0, 3, 9):
        b.batch(step)
    assert torch.equal(b.batch(7)[0], x7) and torch.equal(b.batch(7)[1], y7)
    # one epoch (64 images / 16 = 4 batches) visits every image once
    seen = torch.cat([a.batch(k)[1] for k in range(4)])
    assert sorted(seen.tolist()) == sorted(ds.labels.tolist())
    assert not torch.equal(a.batch(0)[0], a.batch(4)[0])  # a new permutation each epoch
