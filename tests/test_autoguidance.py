"""Autoguidance (Karras et al. 2024): a model guided by a worse version of itself."""

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from helpers import GaussianEps

from ddpm_course import NoiseSchedule, UNet, UNetConfig, load_checkpoint, load_pretrained, train
from ddpm_course.autoguidance import AutoGuided, autoguided
from ddpm_course.cli import main
from ddpm_course.generation import SamplingSettings, generate_samples, sampling_settings
from ddpm_course.pretrained import cards_table, export_pretrained, write_card
from ddpm_course.sampling import sample_dpm_solver


def gaussian(schedule, sd, num_classes=None):
    """The exact noise predictor of N(0.3, sd^2) data, with the config a guide is checked against."""
    model = GaussianEps(schedule, mu=0.3, sd=sd)
    model.config = SimpleNamespace(image_channels=1, image_size=2, num_classes=num_classes, prediction="eps")
    return model


def sample_stats(model, schedule):
    x = sample_dpm_solver(model, schedule, (4000, 1, 2, 2), steps=50, generator=torch.Generator().manual_seed(0),
                          clip_x0=False)
    return x.mean().item(), x.std().item()


def test_gaussian_data_scale_zero_is_the_guide_one_the_model_more_is_sharper():
    """Known answers: w = 0 samples the guide's data (sd 0.8), w = 1 the model's (sd 0.5); w = 2
    moves away from the broader guide: narrower than the model, around the same mean. A model
    guided by itself is the model, whatever w."""
    s = NoiseSchedule.linear(1000)
    model, guide = gaussian(s, 0.5), gaussian(s, 0.8)
    stats = {w: sample_stats(AutoGuided(model, guide, w), s) for w in (0.0, 1.0, 2.0)}
    assert stats[0.0][1] == pytest.approx(0.8, abs=0.02) and stats[1.0][1] == pytest.approx(0.5, abs=0.02)
    assert stats[2.0][1] < 0.45
    assert all(mean == pytest.approx(0.3, abs=0.02) for mean, _ in stats.values())
    torch.testing.assert_close(sample_stats(AutoGuided(model, gaussian(s, 0.5), 3.0), s), stats[1.0])


def test_mix_with_labels_and_refusals():
    cfg = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(), num_classes=10)
    torch.manual_seed(0)
    model, guide = UNet(cfg).eval(), UNet(cfg).eval()
    for net in (model, guide):      # the output layer starts at zero: give the two nets different outputs
        torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 40]), torch.tensor([1, 2])
    with torch.no_grad():
        expected = guide(x, t, y) + 1.5 * (model(x, t, y) - guide(x, t, y))
        torch.testing.assert_close(AutoGuided(model, guide, 1.5)(x, t, y), expected)
    wrapped = autoguided(model, guide, 1.5)
    assert wrapped.num_classes == 10 and wrapped.config is model.config     # samples like the model
    assert autoguided(model, None, 1.0) is model                             # w = 1: the model alone
    with pytest.raises(ValueError, match="autoguidance=1.5 needs a guide"):
        autoguided(model, None, 1.5)
    with pytest.raises(ValueError, match="autoguidance must be >= 0"):
        autoguided(model, guide, -1.0)
    with pytest.raises(ValueError, match="guide num_classes=None"):
        AutoGuided(model, UNet(replace(cfg, num_classes=None)), 2.0)
    with pytest.raises(ValueError, match="guide image_size=32"):
        AutoGuided(model, UNet(replace(cfg, image_size=32)), 2.0)
    with pytest.raises(ValueError, match="model 'eps', guide 'v'"):
        AutoGuided(model, UNet(replace(cfg, prediction="v")), 2.0)
    with pytest.raises(TypeError, match="guide must be a model"):
        autoguided(model, "runs/guide.pt", 2.0)


def test_settings_and_batches():
    recommended = {"sampler": "dpm_solver", "steps": 20, "guidance_scale": 1.0, "autoguidance": 1.5}
    assert sampling_settings(recommended, None, 1000).autoguidance == 1.5
    assert sampling_settings(recommended, None, 1000, autoguidance=1).autoguidance == 1.0
    assert sampling_settings({}, None, 1000).autoguidance == 1.0
    assert "autoguidance 1.5" in sampling_settings(recommended, None, 1000).describe()
    s = NoiseSchedule.linear(20)
    cfg = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=())
    torch.manual_seed(0)
    model, guide = UNet(cfg).eval(), UNet(cfg).eval()
    for net in (model, guide):      # the output layer starts at zero: give the two nets different outputs
        torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    alone = SamplingSettings("ddim", 3, 1.0)
    with pytest.raises(ValueError, match="a guide was given but autoguidance is 1"):
        generate_samples(model, s, 2, alone, guide=guide)
    guided = generate_samples(model, s, 2, alone._replace(autoguidance=2.0), guide=guide)
    assert guided.shape == (2, 1, 28, 28) and not torch.allclose(guided, generate_samples(model, s, 2, alone))


def test_shipped_with_a_guide_card_table_and_cli(tiny_config, tmp_path, capsys):
    quiet = dict(progress=False, log=lambda *a: None)
    uncond = tiny_config.replace(model=replace(tiny_config.model, num_classes=None), p_uncond=0.0)
    good = train(uncond.replace(max_steps=4, out_dir=str(tmp_path / "good")), **quiet)
    bad = train(uncond.replace(max_steps=1, out_dir=str(tmp_path / "bad")), **quiet)
    with pytest.raises(ValueError, match="guide and autoguidance come together"):
        export_pretrained(good, "mnist-uncond", command="train ...", assets=tmp_path, guide=bad)
    other_T = train(uncond.replace(T=40, max_steps=1, out_dir=str(tmp_path / "other")), **quiet)
    with pytest.raises(ValueError, match="the guide must be trained with the model's noise schedule"):
        export_pretrained(good, "mnist-uncond", command="train ...", assets=tmp_path, guide=other_T, autoguidance=1.5)
    path = export_pretrained(good, "mnist-uncond", command="train ...", assets=tmp_path, guide=bad, autoguidance=1.5)
    evaluation = {"accuracy": None, "num_samples": 10, "sampler": "dpm_solver", "steps": 3, "guidance_scale": 1.0,
                  "autoguidance": 1.5, "seed": 0, "fid": 2.0, "fid_floor": 1.0, "fid_ratio": 2.0,
                  "inception_score": 5.0}
    card = write_card("mnist-uncond", evaluation, assets=tmp_path)
    assert card["guide"]["steps"] == 1 and card["guide"]["exported_from"] == str(bad)
    assert card["evaluation"]["command"].endswith("--guidance 1.0 --autoguidance 1.5 --seed 0")
    assert "autoguidance 1.5 (guide: 1 steps)" in cards_table(assets=tmp_path)
    shipped = load_pretrained("mnist-uncond", assets=tmp_path)
    assert shipped.sampling["autoguidance"] == 1.5
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 40])
    with torch.no_grad():   # the guide's weights, to float16 precision
        torch.testing.assert_close(shipped.guide(x, t), load_checkpoint(bad).ema_model(x, t), rtol=1e-2, atol=1e-3)
    # the CLI samples the shipped file with its guide by default, alone with --autoguidance 1
    assert main(["sample", "--checkpoint", str(path), "--n", "2", "--steps", "2",
                 "--out", str(tmp_path / "a.png")]) == 0
    assert "autoguidance 1.5" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(path), "--n", "2", "--steps", "2", "--autoguidance", "1",
                 "--out", str(tmp_path / "b.png")]) == 0
    assert "autoguidance" not in capsys.readouterr().out
    # a training checkpoint has no guide: --guide gives one; a guide with autoguidance 1 is refused
    assert main(["sample", "--checkpoint", str(good), "--n", "2", "--steps", "2", "--autoguidance", "2",
                 "--out", str(tmp_path / "c.png")]) == 2
    assert "needs a guide" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(good), "--n", "2", "--steps", "2", "--guide", str(bad),
                 "--out", str(tmp_path / "d.png")]) == 2
    assert "--guide" in capsys.readouterr().err
    out = tmp_path / "e.json"
    assert main(["evaluate", "--checkpoint", str(good), "--num-samples", "4", "--steps", "2", "--guide", str(bad),
                 "--autoguidance", "2", "--evaluator", "mnist", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["autoguidance"] == 2.0 and result["guide"] == str(bad)
