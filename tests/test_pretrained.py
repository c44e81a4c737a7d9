import json

import pytest
import torch

from ddpm_course import load_checkpoint, load_pretrained, train
from ddpm_course.evaluator import assets_dir
from ddpm_course.pretrained import PRETRAINED, export_pretrained, pretrained_paths, write_card


def test_export_and_load_round_trip(tiny_config, tmp_path):
    ckpt_path = train(tiny_config, progress=False, log=lambda *a: None)
    path = export_pretrained(ckpt_path, "mnist-cond", command="python -m ddpm_course train ...", assets=tmp_path)
    card = write_card("mnist-cond", {"accuracy": 0.5}, assets=tmp_path, note="test")
    assert card["steps"] == 6 and card["evaluation"] == {"accuracy": 0.5} and card["note"] == "test"
    shipped, original = load_pretrained("mnist-cond", assets=tmp_path), load_checkpoint(ckpt_path)
    assert shipped.model is shipped.ema_model and shipped.config == original.config
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 40]), torch.tensor([1, 2])
    with torch.no_grad():  # float16 storage: equal to float16 precision
        torch.testing.assert_close(shipped.ema_model(x, t, y), original.ema_model(x, t, y), rtol=1e-2, atol=1e-3)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted or not the one the card describes"):
        load_pretrained("mnist-cond", assets=tmp_path)
    with pytest.raises(ValueError, match="name must be one of"):
        load_pretrained("cifar")


@pytest.mark.parametrize("name", PRETRAINED)
def test_shipped_models_and_their_cards(name):
    ckpt = load_pretrained(name)
    card = ckpt.info["card"]
    assert card["command"].startswith("python -m ddpm_course train --profile")
    assert card["parameters"] == ckpt.ema_model.num_parameters()
    assert (ckpt.num_classes == 10) == (name == "mnist-cond")
    for key in ("fid", "fid_floor", "fid_ratio", "confidence", "inception_score", "command"):
        assert key in card["evaluation"], key
    x = ckpt.ema_model(torch.zeros(1, 1, 28, 28), torch.tensor([5]))
    assert x.shape == (1, 1, 28, 28) and torch.isfinite(x).all()


def test_shipped_models_fit_the_budget():
    sizes = [pretrained_paths(n)[0].stat().st_size for n in PRETRAINED]
    assert sum(sizes) <= 10 * 1024 * 1024
    evaluator_card = json.loads((assets_dir() / "evaluator-mnist.json").read_text())
    assert (assets_dir() / "evaluator-mnist.pt").stat().st_size < 4 * 1024 * 1024 and evaluator_card
