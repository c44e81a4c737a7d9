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
    class Clock:  # a fake timer: each reading is 0.25 s after the last, whatever the machine's load
        now = 0.0

        def __call__(self):
            self.now += 0.25
            return self.now

    runs = benchmark_training(tiny_config, seconds=2.0, evaluations=2, num_samples=10, sampler_steps=2,
                              log=lambda *_: None, clock=Clock())
    assert [r.name for r in runs] == ["ddpm_course UNet", "diffusers UNet2DModel"]
    for run in runs:
        # per moment: a reading at the start, one before each step (steps run while the total is under the
        # mark), one at the end, 0.25 s apart: 3 steps in 1.25 s, then 2 more in 1.0 s
        assert [p["step"] for p in run.points] == [3, 5] and run.seconds == 2.25
        assert run.images_per_second == 5 * tiny_config.batch_size / 2.25
        # an untrained network draws noise: far from real digits (real vs real is 1), labels near chance
        assert all(p["fid_ratio"] > 1.5 and 0 <= p["accuracy"] <= 0.5 for p in run.points)
        assert all(p["guidance_scale"] == 2.0 for p in run.points)   # the recommended one, recorded
    table = format_training_table(runs, tiny_config, "tiny", 10)
    assert "Ratios, ours / peer" in table and table.count("| diffusers UNet2DModel |") == 2


def test_figures_command_writes_a_grid_per_scale_and_a_gif_per_digit(tmp_path):
    assert main(["figures", "--out", str(tmp_path), "--guidance-scales", "1", "3", "--steps", "2", "--seeds", "1",
                 "--gif-steps", "2", "--gif-frames", "2"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["guidance_1.png", "guidance_3.png"]
    assert sorted(p.name for p in tmp_path.glob("*.gif")) == [f"denoising_{d}.gif" for d in range(10)]
