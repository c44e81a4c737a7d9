"""The package's one sampling and one evaluation entry point, and the shape of the house.

sample() and its registry, uniform step functions, the checkpoint's recommended settings, the
evaluation of a model of another image size, and the structure the architecture promises: no
module imports the CLI, the CLI does no torch work, every module stays short, API.md's names
import from the top level.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from helpers import GaussianEps

import ddpm_course
from ddpm_course import (
    SAMPLERS,
    NoiseSchedule,
    StepOutput,
    UNet,
    UNetConfig,
    ddim_step,
    ddim_timesteps,
    ddpm_step,
    dpm_solver_step,
    evaluate_checkpoint,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpm_solver,
    sampling_settings,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ddpm_course"


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_sample_dispatches_to_the_registered_samplers():
    s = NoiseSchedule.linear(100)
    model = GaussianEps(s)
    assert list(SAMPLERS) == ["ddpm", "ddim", "dpm_solver"]
    shape = (8, 1, 2, 2)
    direct = {"ddpm": sample_ddpm(model, s, shape, generator=gen(0)),
              "ddim": sample_ddim(model, s, shape, steps=50, generator=gen(0)),
              "dpm_solver": sample_dpm_solver(model, s, shape, steps=20, generator=gen(0))}
    for name, expected in direct.items():   # default steps: all T, 50, 20
        torch.testing.assert_close(sample(model, s, shape, sampler=name, generator=gen(0)), expected, rtol=0, atol=0)
    eta1 = sample(model, s, shape, sampler="ddim", steps=10, eta=1.0, generator=gen(1))
    torch.testing.assert_close(eta1, sample_ddim(model, s, shape, steps=10, eta=1.0, generator=gen(1)))


@pytest.mark.parametrize("kwargs, words", [
    (dict(sampler="euler"), "sampler must be one of"),
    (dict(sampler="ddpm", steps=10), "steps must be None or T=100"),
    (dict(sampler="ddim", steps=0), "steps must be >= 1"),
    (dict(sampler="ddim", steps=101), "steps must be <= 100"),
    (dict(sampler="dpm_solver", eta=1.0), "eta is DDIM's parameter"),
    (dict(sampler="ddim", guidance_scale=3.0), "needs labels"),
])
def test_sample_refuses_what_it_would_ignore_or_clamp(kwargs, words):
    s = NoiseSchedule.linear(100)
    with pytest.raises(ValueError, match=words):
        sample(GaussianEps(s), s, (2, 1, 2, 2), **kwargs)


def test_ddpm_on_the_respaced_schedule_is_ddim_with_eta_1():
    """Notebook 04's ci branch: DDPM's ancestral step on a respaced chain is DDIM(eta=1) on its timesteps."""
    s = NoiseSchedule.linear(1000)
    model = GaussianEps(s)
    timesteps = sorted(ddim_timesteps(1000, 25))
    chain = s.respaced(timesteps)

    def on_the_chain(x, i):   # step i of the short chain calls the model at the original timestep
        return model(x, torch.tensor(timesteps, dtype=torch.long)[i])

    for clip in (False, True):
        ddpm = sample_ddpm(on_the_chain, chain, (64, 1, 2, 2), generator=gen(7), clip_x0=clip)
        ddim = sample_ddim(model, s, (64, 1, 2, 2), steps=25, eta=1.0, generator=gen(7), clip_x0=clip)
        torch.testing.assert_close(ddpm, ddim, rtol=0, atol=1e-4)


def test_step_functions_share_one_shape():
    s = NoiseSchedule.linear(100)
    x, eps, noise = (torch.randn(2, 1, 4, 4, generator=gen(i)) for i in range(3))
    outputs = [ddpm_step(s, x, 50, eps, noise=noise), ddim_step(s, x, 50, 40, eps),
               dpm_solver_step(s, x, 50, 40, eps)]
    for out in outputs:
        assert isinstance(out, StepOutput) and out.x_prev.shape == x.shape and out.x0.shape == x.shape
        assert out.x0.min() >= -1 and out.x0.max() <= 1          # clip_x0=True by default, everywhere
    # first-order DPM-Solver++ is deterministic DDIM, step for step
    torch.testing.assert_close(outputs[2].x_prev, outputs[1].x_prev, rtol=0, atol=1e-5)
    for step in (lambda e: ddpm_step(s, x, 50, e, noise=noise), lambda e: ddim_step(s, x, 50, 40, e),
                 lambda e: dpm_solver_step(s, x, 50, 40, e)):
        with pytest.raises(ValueError, match="eps must be a tensor of x_t's shape"):
            step(eps[:1])
    with pytest.raises(ValueError, match="noise must be a tensor of x_t's shape"):
        ddpm_step(s, x, 50, eps, noise=noise[:, :, :2])
    with pytest.raises(ValueError, match="x0_earlier and t_earlier go together"):
        dpm_solver_step(s, x, 50, 40, eps, x0_earlier=x)


def test_settings_come_from_the_checkpoint_unless_given():
    cond = {"sampler": "dpm_solver", "steps": 20, "guidance_scale": 2.0}
    assert sampling_settings(cond, 10, 1000) == ("dpm_solver", 20, 2.0, None, 1.0)
    assert sampling_settings(cond, 10, 1000, sampler="ddim") == ("ddim", 50, 2.0, None, 1.0)   # ddim's own default
    assert sampling_settings(cond, 10, 1000, sampler="ddpm", guidance_scale=1.0) == ("ddpm", 1000, 1.0, None, 1.0)
    assert sampling_settings(cond, None, 1000).guidance_scale == 1.0     # no labels: no guidance
    with pytest.raises(ValueError, match="guidance_scale=3.0 needs class labels"):
        sampling_settings(cond, None, 1000, guidance_scale=3.0)


def test_evaluate_a_32x32_model_or_fail_clearly():
    model = UNet(UNetConfig(image_size=32, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                            attention_resolutions=(), num_classes=10)).eval()
    s = NoiseSchedule.cosine(20)
    r = evaluate_checkpoint(model, schedule=s, dataset="mnist", num_samples=10, steps=2)
    assert r["num_samples"] == 10 and r["steps"] == 2 and r["guidance_scale"] == 2.0 and r["fid_ratio"] > 1.5
    rgb = UNet(UNetConfig(image_channels=3, image_size=32, base_channels=8, channel_mults=(1, 2),
                          num_res_blocks=1, attention_resolutions=())).eval()
    with pytest.raises(ValueError, match=r"images must be \(B, 1, H, W\)"):
        evaluate_checkpoint(rgb, schedule=s, dataset="mnist", num_samples=10, steps=2)
    with pytest.raises(ValueError, match="no shipped evaluator for dataset"):
        evaluate_checkpoint(model, schedule=s, dataset=str(ROOT), num_samples=10, steps=2)
    with pytest.raises(ValueError, match="a bare model needs schedule="):
        evaluate_checkpoint(model, num_samples=10)


# ----------------------------------------------------------------------------- the house
def modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def imports_of(path: Path) -> set:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.add(("." * node.level) + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_only_the_entry_point_imports_the_cli():
    for path in modules():
        if path.parent.name == "cli" or path.name == "__main__.py":
            continue
        assert not any(re.search(r"(^|\.)cli\b", name) for name in imports_of(path)), path
    for path in sorted((ROOT / "notebooks").rglob("*.ipynb")):
        assert "ddpm_course.cli" not in path.read_text(), path


def test_the_cli_does_no_torch_work_and_is_short():
    cli = sorted((PACKAGE / "cli").glob("*.py"))
    assert sum(len(p.read_text().splitlines()) for p in cli) < 700
    for path in cli:
        assert len(path.read_text().splitlines()) < 350, path
        assert not any(name == "torch" or name.startswith("torch.") for name in imports_of(path)), path


def test_every_module_is_short():
    for path in modules():
        assert len(path.read_text().splitlines()) <= 400, path


def test_api_names_import_from_the_top_level():
    names = {"NoiseSchedule", "UNetConfig", "UNet", "sample_ddpm", "sample_ddim", "load_mnist", "load_fashion_mnist",
             "TrainConfig", "train", "load_checkpoint", "Checkpoint", "sample", "evaluate_checkpoint", "ddpm_step",
             "ddim_step", "predict_x0", "SAMPLERS", "generate_samples"}   # API.md's names and the entry points
    for name in names:
        assert hasattr(ddpm_course, name), name
    assert set(ddpm_course.__all__) <= set(dir(ddpm_course))


def test_nothing_is_silently_clamped_or_ignored():
    from ddpm_course import DeviceBatches, TensorImageDataset

    s = NoiseSchedule.linear(100)
    for sampler in (sample_ddpm, sample_ddim, sample_dpm_solver):   # guidance without labels would be ignored
        with pytest.raises(ValueError, match="guidance_scale=2.0 needs labels"):
            sampler(GaussianEps(s), s, (2, 1, 2, 2), guidance_scale=2.0)
    data = TensorImageDataset(torch.zeros(10, 1, 28, 28), torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size must be <= 10"):
        DeviceBatches(data, 16)
    # a hostile config is refused by its size before anything is allocated
    with pytest.raises(ValueError, match=r"parameters .* checked before anything is allocated") as refused:
        UNetConfig(base_channels=100_000)
    # the size it quotes: the real count grows as base_channels^2, so 1000^2 times that of base 100
    quoted = float(re.search(r"about (\S+) parameters", str(refused.value)).group(1))
    real = sum(p.numel() for p in UNet(UNetConfig(base_channels=100)).parameters()) * 1000**2
    assert real <= quoted <= 3 * real
