import json
from dataclasses import replace

import pytest
import torch

from ddpm_course import load_checkpoint, load_pretrained, train
from ddpm_course.assets import assets_dir
from ddpm_course.pretrained import PRETRAINED, export_pretrained, pretrained_paths, training_done, write_card


def test_export_and_load_round_trip(tiny_config, tmp_path):
    ckpt_path = train(tiny_config, progress=False, log=lambda *a: None)
    path = export_pretrained(ckpt_path, "mnist-cond", command="python -m ddpm_course train ...", assets=tmp_path)
    evaluation = {"accuracy": 0.5, "num_samples": 10, "sampler": "ddim", "steps": 3, "guidance_scale": 2.0, "seed": 0}
    card = write_card("mnist-cond", evaluation, assets=tmp_path, note="test")
    assert card["steps"] == 6 and card["evaluation"]["accuracy"] == 0.5 and card["note"] == "test"
    assert card["evaluation"]["command"].endswith("--num-samples 10 --sampler ddim --steps 3 --guidance 2.0 --seed 0")
    shipped, original = load_pretrained("mnist-cond", assets=tmp_path), load_checkpoint(ckpt_path)
    assert shipped.model is shipped.ema_model and shipped.config == original.config
    # the shipped file carries the checkpoint's recommended sampling, which every command uses by default
    assert shipped.sampling == original.sampling == {"sampler": "dpm_solver", "steps": 20, "guidance_scale": 2.0}
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
    # the export may set the guidance the shipped model recommends; an unconditional one has none
    export_pretrained(ckpt_path, "mnist-cond", command="train ...", assets=tmp_path, guidance_scale=1.5)
    write_card("mnist-cond", evaluation, assets=tmp_path)
    assert load_pretrained("mnist-cond", assets=tmp_path).sampling["guidance_scale"] == 1.5
    # a run that started from the shipped weights: its card counts both stages
    more = train(tiny_config.replace(init_from=str(path), max_steps=2, out_dir=str(tmp_path / "more")),
                 progress=False, log=lambda *a: None)
    export_pretrained(more, "mnist-cond", command="train ... --set init_from=...", assets=tmp_path)
    card = write_card("mnist-cond", evaluation, assets=tmp_path)
    first = load_checkpoint(ckpt_path).info["train_seconds"]
    assert card["steps"] == 2 and card["init_from"]["step"] == 6 and card["init_from"]["path"] == str(path)
    assert training_done(card) == f"6 + 2 steps x 8, {first:.0f} + {card['train_seconds']:.0f} s"
    assert training_done({**card, "init_from": None}) == f"2 steps x 8, {card['train_seconds']:.0f} s"
    assert card["init_from"]["batch_size"] == 8   # each stage's own batch size; when they differ, each is shown
    bigger = {**card, "batch_size": 16}
    assert training_done(bigger) == f"6 x 8 + 2 x 16 steps, {first:.0f} + {card['train_seconds']:.0f} s"
    unrecorded = {**bigger, "init_from": {**card["init_from"], "batch_size": None}}   # origins before session 13
    assert training_done(unrecorded).startswith("6 x ? + 2 x 16 steps")
    assert load_pretrained("mnist-cond", assets=tmp_path).steps_trained == "6 + 2"   # what notebooks print
    uncond = train(tiny_config.replace(model=replace(tiny_config.model, num_classes=None), p_uncond=0.0, max_steps=1,
                                       out_dir=str(tmp_path / "uncond")), progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match="guidance_scale=1.5 was given, but .* is an unconditional model"):
        export_pretrained(uncond, "mnist-uncond", command="train ...", assets=tmp_path, guidance_scale=1.5)


@pytest.mark.parametrize("name", PRETRAINED)
def test_shipped_models_and_their_cards(name):
    ckpt = load_pretrained(name)
    card = ckpt.info["card"]
    assert card["command"].startswith("python -m ddpm_course train --profile")
    assert card["parameters"] == ckpt.ema_model.num_parameters()
    assert (ckpt.num_classes == 10) == name.endswith("-cond")
    assert ckpt.config.dataset == ("fashion_mnist" if name.startswith("fashion") else "mnist")
    assert card["evaluation"]["num_samples"] == 1000 and card["evaluation"]["fid_ratio"] >= 1.0
    for key in ("fid", "fid_floor", "fid_ratio", "confidence", "inception_score", "command"):
        assert key in card["evaluation"], key
    x = ckpt.ema_model(torch.zeros(1, 1, 28, 28), torch.tensor([5]))
    assert x.shape == (1, 1, 28, 28) and torch.isfinite(x).all()


def test_shipped_models_fit_the_budget():
    sizes = [pretrained_paths(n)[0].stat().st_size for n in PRETRAINED]
    assert sum(sizes) <= 10 * 1024 * 1024
    evaluator_card = json.loads((assets_dir() / "evaluator-mnist.json").read_text())
    assert (assets_dir() / "evaluator-mnist.pt").stat().st_size < 4 * 1024 * 1024 and evaluator_card


def test_add_evaluation_records_a_result_of_the_shipped_weights(tmp_path, monkeypatch, capsys):
    import shutil

    from ddpm_course.cli import main

    for suffix in (".pt", ".json"):
        shutil.copy(assets_dir() / f"pretrained-mnist-cond{suffix}", tmp_path / f"pretrained-mnist-cond{suffix}")
    monkeypatch.setenv("DDPM_COURSE_ASSETS", str(tmp_path))
    card_path = tmp_path / "pretrained-mnist-cond.json"
    first = json.loads(card_path.read_text())["evaluation"]
    rows_before = 1 + len(json.loads(card_path.read_text()).get("more_evaluations", []))
    result = {**first, "checkpoint": str(tmp_path / "pretrained-mnist-cond.pt"), "guidance_scale": 7.0,
              "fid_ratio": 2.5, "fid": 34.0}
    result.pop("command")
    (tmp_path / "eval.json").write_text(json.dumps(result))
    assert main(["pretrained", "add-evaluation", "--name", "mnist-cond", "--json", str(tmp_path / "eval.json"),
                 "--primary"]) == 0
    card = json.loads(card_path.read_text())
    assert card["evaluation"]["guidance_scale"] == 7.0 and "--guidance 7.0" in card["evaluation"]["command"]
    assert card["more_evaluations"][0] == first and len(card["more_evaluations"]) == rows_before
    assert load_pretrained("mnist-cond").step == card["steps"]          # the weights and their hash are untouched
    capsys.readouterr()
    assert main(["pretrained", "table"]) == 0
    assert capsys.readouterr().out.count("| `mnist-cond` |") == rows_before + 1
    (tmp_path / "other.json").write_text(json.dumps({**result, "checkpoint": "runs/x/checkpoint.pt"}))
    assert main(["pretrained", "add-evaluation", "--name", "mnist-cond", "--json", str(tmp_path / "other.json")]) != 0
