"""The training benchmark and its diffusers peer, on a tiny configuration (seconds)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from ddpm_course import UNet, get_profile
from ddpm_course.benchmark import DiffusersUNet, benchmark_training, format_training_table, training_flops_per_image
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


def test_throughput_rows_switches_and_flops(tiny_config):
    from ddpm_course.throughput import benchmark_throughput, peak_matmul_flops, throughput_table

    class Clock:  # the first round's two readings of each row are 1.6 s apart, later ones 0.5 s
        now, readings = 0.0, 0

        def __call__(self):
            self.readings += 1
            self.now += 1.6 if self.readings <= 6 else 0.5
            return self.now

    rows = benchmark_throughput(tiny_config, steps=2, rounds=3, switches=[("fused_optimizer", True)],
                                log=lambda *_: None, clock=Clock())
    assert [r.name for r in rows] == ["ddpm_course UNet", "ddpm_course UNet, fused_optimizer=True",
                                      "diffusers UNet2DModel"]
    # 2 x 8 images: 10 img/s in the warm-up round, then 32; the median leaves the warm-up out
    assert all(r.rates == pytest.approx([10, 32, 32]) and r.images_per_second == pytest.approx(32) for r in rows)
    assert rows[0].flops_per_image == rows[1].flops_per_image == training_flops_per_image(tiny_config)
    peak = peak_matmul_flops("cpu", size=256, repeats=2)
    assert math.isfinite(peak) and peak > 0
    table = throughput_table(rows, tiny_config, "tiny", peak, "cpu")
    assert "Throughput, ours / peer: 1.00x" in table and table.count("| 32.0 | 10 / 32 / 32 |") == 3


def test_peak_flops_calibrates_then_takes_the_median_of_the_rest():
    """A fake clock: the first (calibration) multiply takes 0.05 s, so each later measurement runs
    ceil(0.2 / 0.05) = 4 multiplies; they take 1, 2 and 4 s. Median: 2 * 64^3 * 4 / 2 s."""
    from ddpm_course.throughput import peak_matmul_flops

    durations = iter([0.05, 1.0, 2.0, 4.0])

    class Clock:
        now, started = 0.0, False

        def __call__(self):
            if self.started:
                self.now += next(durations)
            self.started = not self.started
            return self.now

    assert peak_matmul_flops("cpu", size=64, repeats=3, clock=Clock()) == pytest.approx(2 * 64**3 * 4 / 2.0)


def test_conv_peak_counts_a_3x3_convolutions_flops_and_the_peak_is_the_faster_of_the_two(monkeypatch):
    """The convolution's peak times the same way (a fake clock: 1 s per measured call after the
    calibration), counting 2 * 9 * C^2 * H * W * B operations; measured_peak takes the faster of
    the matrix multiply and the convolution and names both."""
    from ddpm_course import throughput
    from ddpm_course.throughput import measured_peak, peak_conv_flops

    class Clock:
        now, calls = 0.0, 0

        def __call__(self):
            self.calls += 1
            self.now += 1.0 if self.calls % 2 == 0 else 0.0
            return self.now

    flops = peak_conv_flops("cpu", channels=8, size=4, batch=2, repeats=2, min_seconds=0.5, clock=Clock())
    assert flops == pytest.approx(2 * 9 * 8**2 * 4**2 * 2)
    for matmul, conv, which in [(5e9, 3e9, "(matrix multiply)"), (2e9, 7e9, "(convolution)")]:
        monkeypatch.setattr(throughput, "peak_matmul_flops", lambda *a, m=matmul, **k: m)
        monkeypatch.setattr(throughput, "peak_conv_flops", lambda *a, c=conv, **k: c)
        peak, what = measured_peak("cpu")
        assert peak == max(matmul, conv) and which in what
        assert f"{matmul / 1e9:.1f} GFLOP/s" in what and f"{conv / 1e9:.1f} GFLOP/s" in what


def test_the_peer_without_diffusers_is_refused_before_any_training(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "diffusers", None)       # as if diffusers were not installed
    for command in (["throughput", "--steps", "1", "--rounds", "2"], ["training", "--minutes", "0.1"]):
        assert main(["benchmark", *command, "--profile", "ci", "--out", str(tmp_path / command[0])]) == 2
        err = capsys.readouterr().err
        assert "error: the diffusers UNet2DModel peer needs the diffusers package: pip install diffusers" in err
        assert "--no-peer" in err and "Traceback" not in err and not (tmp_path / command[0]).exists()


def test_flop_count_of_a_known_network(tiny_config):
    """One 3x3 convolution 1 -> 4 channels on 28x28: 2 * 4 * 9 * 784 FLOPs forward, as many for the
    weight gradient, none for the input's gradient (x_t needs none)."""

    class OneConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)
            self.head = torch.nn.Conv2d(4, 1, 1, bias=False)

        def forward(self, x, t, y=None):
            return self.head(self.conv(x))

    model = OneConv()
    grads = [torch.full_like(p, 0.5) for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    per_image = training_flops_per_image(tiny_config.replace(model=dict(num_classes=None), p_uncond=0.0),
                                         model=model)
    conv, head = 2 * 4 * 9 * 784, 2 * 4 * 784
    assert per_image == conv * 2 + head * 3   # the head also sends a gradient back to the conv's output
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))   # a training step's grads kept


def test_recipe_study_trains_each_recipe_per_seed_and_checks_every_variant_first(tiny_config, tmp_path):
    from ddpm_course.study import recipe_table, run_recipe_study

    with pytest.raises(ValueError, match="TrainConfig.lr_schedule must be one of"):
        run_recipe_study(tiny_config, [(("timesteps", "stratified"),), (("lr_schedule", "linear"),)],
                         out_dir=tmp_path / "bad", log=lambda *a, **k: None)
    assert not (tmp_path / "bad").exists()          # refused before the first training
    lines, tables = [], []
    rows = run_recipe_study(tiny_config, [(("lr_schedule", "cosine"), ("timesteps", "stratified"))], seeds=(0, 1),
                            num_samples=10, guidance_scales=(None, 1.0), out_dir=tmp_path / "study",
                            log=lambda *a, **k: lines.append(a[0]),
                            on_run=lambda done: tables.append(recipe_table(done, "tiny", 10)))
    assert [r.name for r in rows] == ["baseline", "lr_schedule=cosine, timesteps=stratified"]
    assert sorted(p.name for p in (tmp_path / "study").iterdir()) == [
        "baseline-seed0", "baseline-seed1", "lr_schedule_cosine__timesteps_stratified-seed0",
        "lr_schedule_cosine__timesteps_stratified-seed1"]
    assert sum("steps into" in line for line in lines) == 4   # one training per recipe and seed, two judgements
    for row in rows:
        assert [(r["seed"], r["guidance_scale"]) for r in row.runs] == [(0, 2.0), (0, 1.0), (1, 2.0), (1, 1.0)]
        assert all(r["fid_ratio"] > 1.5 and 0 <= r["accuracy"] <= 1 and r["train_seconds"] > 0 for r in row.runs)
        assert row.runs[0]["train_seconds"] == row.runs[1]["train_seconds"]   # the same model, judged twice
    assert len(tables) == 8                        # the table so far after each judged run
    def heads(table):                              # (recipe, seeds, guidance) of each line of a table
        return [tuple(line.split(" | ")[:3]) for line in table.splitlines()[4:]]

    assert heads(tables[0]) == [("| baseline", "1", "2")]   # a recipe not yet run is left out
    assert heads(tables[1]) == [("| baseline", "1", "2"), ("| baseline", "1", "1")]
    assert heads(tables[4])[-1] == ("| lr_schedule=cosine, timesteps=stratified", "1", "2")
    name = "| lr_schedule=cosine, timesteps=stratified"
    assert heads(recipe_table(rows, "tiny", 10)) == [
        ("| baseline", "2", "2"), ("| baseline", "2", "1"), (name, "2", "2"), (name, "2", "1")]
    again = []
    rerun = run_recipe_study(tiny_config, seeds=(0,), num_samples=10, out_dir=tmp_path / "study",
                             log=lambda *a, **k: again.append(a[0]))
    assert any("nothing to do" in line for line in again)   # an interrupted study continues, never retrains
    assert sum("(judged earlier)" in line for line in again) == 1   # ... nor judges the same model twice
    assert [r["fid_ratio"] for r in rerun[0].runs] == [rows[0].runs[0]["fid_ratio"]]
    judged = json.loads((tmp_path / "study" / "baseline-seed0" / "judged.json").read_text())
    assert [e["key"]["guidance_scale"] for e in judged] == [None, 1.0]   # the request, not the resolved scale


def test_figures_command_writes_a_grid_per_scale_and_a_gif_per_digit(tmp_path):
    assert main(["figures", "--out", str(tmp_path), "--guidance-scales", "1", "3", "--steps", "2", "--seeds", "1",
                 "--gif-steps", "2", "--gif-frames", "2"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["guidance_1.png", "guidance_3.png"]
    assert sorted(p.name for p in tmp_path.glob("*.gif")) == [f"denoising_{d}.gif" for d in range(10)]
