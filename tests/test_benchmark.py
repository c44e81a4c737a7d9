"""The training benchmark and its diffusers peer, on a tiny configuration (seconds)."""

from __future__ import annotations

import torch

from ddpm_course import UNet, get_profile
from ddpm_course.benchmark import DiffusersUNet, benchmark_training, format_training_table
from ddpm_course.cli import main


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_peer_follows_the_calling_convention_and_matches_the_size():
    for name in ("cpu", "t4"):
        cfg = get_profile(name).model
        ratio = count(DiffusersUNet(cfg)) / count(UNet(cfg))
        assert 0.75 < ratio < 1.33, (name, ratio)
    peer = DiffusersUNet(get_profile("ci").model)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 90])
    with torch.no_grad():
        out = peer(x, t, torch.tensor([1, 2]))
        unconditional = peer(x, t)
        null = peer(x, t, torch.tensor([10, 10]))
    assert out.shape == x.shape and peer.num_classes == 10
    assert torch.allclose(unconditional, null)


def test_benchmark_training_trains_both_for_the_same_time(tiny_config):
    runs = benchmark_training(tiny_config, seconds=2.0, evaluations=2, num_samples=10, sampler_steps=2,
                              log=lambda *_: None)
    assert [r.name for r in runs] == ["ddpm_course UNet", "diffusers UNet2DModel"]
    for run in runs:
        assert len(run.points) == 2 and run.steps > 0 and run.images_per_second > 0
        assert 2.0 <= run.seconds < 6.0                      # training time only, evaluation excluded
        assert all(p["fid_ratio"] > 0 and 0 <= p["accuracy"] <= 1 for p in run.points)
        assert run.points[0]["step"] < run.points[1]["step"]
    table = format_training_table(runs, tiny_config, "tiny", 10, 3.0)
    assert "Ratios, ours / peer" in table and table.count("| diffusers UNet2DModel |") == 2


def test_figures_command_writes_a_grid_per_scale_and_a_gif_per_digit(tmp_path):
    assert main(["figures", "--out", str(tmp_path), "--guidance-scales", "1", "3", "--steps", "2", "--seeds", "1",
                 "--gif-steps", "2", "--gif-frames", "2"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["guidance_1.png", "guidance_3.png"]
    assert sorted(p.name for p in tmp_path.glob("*.gif")) == [f"denoising_{d}.gif" for d in range(10)]
