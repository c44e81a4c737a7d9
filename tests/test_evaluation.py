import json
import math

import pytest
import torch

from ddpm_course.data import load_mnist
from ddpm_course.evaluation import (
    confidence,
    diversity,
    frechet_distance,
    inception_score,
    label_accuracy,
    reference_images,
)
from ddpm_course.evaluator import DigitClassifier, classifier_accuracy, evaluator_for, load_evaluator, train_evaluator


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_fid_known_answer_and_floor():
    """N(0, I) vs N(m, s^2 I) in D dimensions: FID = D m^2 + D (1 - s)^2."""
    D, N = 16, 20000
    a = torch.randn(N, D, generator=gen(0))
    b = torch.randn(N, D, generator=gen(1)) * 2 + 0.5
    assert abs(frechet_distance(a, b) - (D * 0.25 + D * 1.0)) < 0.3
    same = frechet_distance(a, torch.randn(N, D, generator=gen(2)))
    assert 0 <= same < 0.02  # real vs real at large N: near 0
    noise = frechet_distance(a, torch.rand(N, D, generator=gen(3)) * 10)
    assert noise > 100 * max(same, 1e-3)  # far from 0 against noise
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(a, b[:, :3])


def test_inception_score_confidence_diversity_known_answers():
    certain = torch.eye(10).repeat(30, 1)
    assert abs(inception_score(certain) - 10) < 1e-6 and confidence(certain) == 1.0
    assert abs(inception_score(torch.full((50, 10), 0.1)) - 1) < 1e-6
    one_class = torch.zeros(40, 10)
    one_class[:, 3] = 1
    assert abs(inception_score(one_class) - 1) < 1e-6
    d = diversity(one_class)
    assert d["classes_present"] == 1 and d["entropy"] == 0 and d["histogram"][3] == 40
    d = diversity(certain)
    assert d["classes_present"] == 10 and abs(d["normalized_entropy"] - 1) < 1e-9
    half = torch.tensor([[0.5, 0.5] + [0.0] * 8] * 4)
    assert confidence(half) == 0.5


def test_label_accuracy_per_class():
    probs = torch.eye(10)[torch.tensor([0, 1, 1, 2])]
    overall, per_class = label_accuracy(probs, torch.tensor([0, 1, 2, 2]))
    assert overall == 0.75 and per_class[:3] == [1.0, 1.0, 0.5] and per_class[5] is None


def test_evaluator_card_and_hash(tmp_path, synthetic_root):
    card = train_evaluator("mnist", steps=20, batch_size=16, out_dir=tmp_path, root=synthetic_root, log=lambda *a: None)
    assert card["train_images"] == 64 and card["heldout_images"] == 32 and "train split" in card["data"]
    on_disk = json.loads((tmp_path / "evaluator-mnist.json").read_text())
    assert on_disk == card and len(card["sha256"]) == 64
    model = load_evaluator("mnist", assets=tmp_path)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)  # 32x32 is centre-cropped
    weights = tmp_path / "evaluator-mnist.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted or not the one the card describes"):
        load_evaluator("mnist", assets=tmp_path)
    with pytest.raises(FileNotFoundError, match="evaluator train --dataset fashion_mnist"):
        load_evaluator("fashion_mnist", assets=tmp_path)


def test_shipped_evaluator_meets_its_card():
    """The shipped weights match their card, and re-measuring on the held-out digits agrees."""

    model = load_evaluator("mnist")
    card = model.card
    assert card["heldout_accuracy"] >= 0.985 and card["parameters"] == sum(p.numel() for p in model.parameters())
    test = load_mnist("test")
    if "test split only" in card["data"]:
        held_x, held_y = test.images[card["train_images"]:], test.labels[card["train_images"]:]
    else:
        held_x, held_y = test.images, test.labels
    assert len(held_x) == card["heldout_images"]
    with torch.no_grad():  # counted here directly, not with the classifier_accuracy that wrote the card
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(held_x.split(500), held_y.split(500)))
    assert abs(correct / len(held_y) - card["heldout_accuracy"]) < 1e-4
    assert abs(classifier_accuracy(model, held_x, held_y) - card["heldout_accuracy"]) < 1e-4
    # real digits score as real digits
    probs = torch.softmax(model(held_x[:1000]), dim=1)
    assert inception_score(probs) > 9.0 and confidence(probs) > 0.95


def test_shipped_fashion_evaluator_meets_its_card():
    """Fashion-MNIST's judge: trained on its 60,000 training images, held out on the 10,000 test
    images (Debian's dataset-fashion-mnist; .ci/run installs it)."""
    from ddpm_course.data import load_fashion_mnist

    model = load_evaluator("fashion_mnist")
    card = model.card
    assert card["train_images"] == 60000 and card["heldout_images"] == 10000 and card["heldout_accuracy"] >= 0.9
    try:
        test = load_fashion_mnist("test", download=False)
    except FileNotFoundError as error:
        pytest.fail(f"this check needs Fashion-MNIST's test split (apt-get install -y dataset-fashion-mnist; "
                    f".ci/run installs it): {error}")
    assert abs(classifier_accuracy(model, test.images, test.labels) - card["heldout_accuracy"]) < 1e-4


def test_each_dataset_is_judged_by_its_own_evaluator():
    assert evaluator_for("mnist") == "mnist" and evaluator_for("fashion-mnist") == "fashion_mnist"
    assert evaluator_for("fashion_mnist", "mnist") == "mnist"
    with pytest.raises(ValueError, match="no shipped evaluator for dataset '/data/faces'"):
        evaluator_for("/data/faces")
    with pytest.raises(ValueError, match="evaluator"):
        evaluator_for("mnist", "cifar10")


def test_reference_images_are_disjoint_held_out_and_bounded(synthetic_root):
    a, b = reference_images("mnist", 16, root=synthetic_root)
    assert a.shape == b.shape == (16, 1, 28, 28)
    assert not any(torch.equal(x, y) for x in a for y in b)
    test, train = (load_mnist(split, synthetic_root).images for split in ("test", "train"))
    assert all(any(torch.equal(x, y) for y in test) for x in torch.cat([a, b]))   # the held-out split
    assert not any(torch.equal(x, y) for x in torch.cat([a, b]) for y in train)  # even though train is here
    with pytest.raises(ValueError, match="num_samples must be <= 16 .* test split has only 32"):
        reference_images("mnist", 17, root=synthetic_root)


def test_classifier_crop_rejects_small_images():
    with pytest.raises(ValueError, match="H, W >= 28"):
        DigitClassifier()(torch.zeros(1, 1, 14, 14))
    assert math.isfinite(DigitClassifier()(torch.zeros(1, 1, 28, 28)).sum().item())


def test_shipped_evaluator_reads_digits_not_backgrounds():
    """Generated digits carry faint noise and grey backgrounds: the judge must not care."""

    model = load_evaluator("mnist")
    held = load_mnist("test").images[-2000:], load_mnist("test").labels[-2000:]
    clean = classifier_accuracy(model, *held)
    noisy = (held[0] + 0.15 * torch.randn(held[0].shape, generator=gen(0))).clamp(-1, 1)
    assert classifier_accuracy(model, noisy, held[1]) > clean - 0.01
    assert classifier_accuracy(model, (held[0] + 0.1).clamp(-1, 1), held[1]) > clean - 0.01


# ----------------------------------------------------------------------------- memorisation
def test_memorisation_tells_copies_from_new_samples():
    """Known answers: near-copies of training images are flagged; fresh draws from the same
    distribution are as far from the training set as held-out real images (ratio about 1)."""
    from ddpm_course.memorisation import memorisation, nearest_neighbours

    g = torch.Generator().manual_seed(0)
    training, held_out, fresh = (torch.randn(n, 1, 4, 4, generator=g) for n in (600, 300, 200))
    copies = training[:200] + 0.01 * torch.randn(200, 1, 4, 4, generator=g)
    copied = memorisation(copies, training, held_out=held_out)
    assert copied["ratio"] < 0.05 and copied["near_copies"] == 1.0
    assert torch.equal(copied["nearest"], torch.arange(200))
    new = memorisation(fresh, training, held_out=held_out)
    assert 0.85 < new["ratio"] < 1.15 and new["near_copies"] < 0.05
    loo = memorisation(fresh, training, num_reference=300)   # no held-out set: leave-one-out
    assert loo["reference"] == "training, leave-one-out" and 0.85 < loo["ratio"] < 1.15
    d, i = nearest_neighbours(training[:50], training, exclude=torch.arange(50))
    assert bool((i != torch.arange(50)).all()) and bool((d > 0).all())
    with pytest.raises(ValueError, match="same image shape"):
        nearest_neighbours(fresh, torch.randn(5, 1, 3, 3))


def test_the_memorisation_check_uses_the_split_the_model_trained_on(tmp_path, monkeypatch):
    """A model trained offline on the test split is checked against the test images even where the
    train split is present (it never saw those); a train-split model holds the test split out; a
    train-split model on a machine without its train split is reported as not measured."""
    from helpers import write_mnist_split

    from ddpm_course.data import load_dataset
    from ddpm_course.evaluation import format_report, memorisation_summary
    from ddpm_course.memorisation import trained_split, training_images

    assert trained_split("auto", {"split": "test", "data": "my digits"}) == "test"   # recorded by train
    assert trained_split("auto", {"data": "MNIST test (/data/mnist)"}) == "test"    # older checkpoints
    assert trained_split("auto", {"data": "Fashion-MNIST train (/usr/share/datasets/fashion-mnist)"}) == "train"
    assert trained_split("train", {"data": "MNIST test (/x)"}) == "train" and trained_split("auto", {}) is None
    assert trained_split("auto", {"data": "image folder /x", "split": None}) is None
    monkeypatch.setenv("DDPM_COURSE_DATA", str(tmp_path))
    write_mnist_split(tmp_path / "mnist", "train", 40)
    write_mnist_split(tmp_path / "mnist", "test", 30)
    test_images = load_dataset("mnist", "test", download=False).images
    training, held_out = training_images("mnist", split="test")
    assert torch.equal(training, test_images) and held_out is None
    training, held_out = training_images("mnist", split="train")
    assert len(training) == 40 and torch.equal(held_out, test_images)
    assert len(training_images("mnist")[0]) == 40         # unknown: as train picks it (train when present)
    with pytest.raises(ValueError, match="split"):
        training_images("mnist", split="auto")
    for f in (tmp_path / "mnist").glob("train-*"):
        f.unlink()
    skipped = memorisation_summary(test_images[:5], "mnist", split="train")
    assert skipped == {"skipped": "the mnist train split it trained on is not on this machine"}
    assert memorisation_summary(test_images[:5], "mnist", split="test")["reference"] == "training, leave-one-out"
    report = {"num_samples": 5, "sampler": "ddim", "steps": 2, "guidance_scale": 1.0, "fid": 1.0, "fid_floor": 1.0,
              "fid_ratio": 1.0, "accuracy": None, "confidence": 0.5, "inception_score": 1.0,
              "real_inception_score": 1.0, "diversity": {"classes_present": 1, "normalized_entropy": 0.0},
              "per_class_accuracy": None, "seconds": 0.1, "memorisation": skipped}
    assert "not measured: the mnist train split" in format_report(report)
