"""The command line on the ci profile: train, sample (with a GIF), export, demo, --help."""

import json
import subprocess
import sys

import imageio.v3 as iio
import pytest
import torch

from ddpm_course import UNet, evaluate_checkpoint, get_profile, load_checkpoint
from ddpm_course.cli import main


@pytest.fixture(scope="module")
def ci_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ci_run")
    assert main(["train", "--profile", "ci", "--out", str(out), "--max-steps", "6", "--no-progress"]) == 0
    return out / "checkpoint.pt"


def test_train_ci_profile(ci_checkpoint, capsys):
    ckpt = load_checkpoint(ci_checkpoint)
    assert ckpt.step == 6 and ckpt.num_classes == 10
    # running the same command again resumes and, at max_steps already, does nothing
    assert main(["train", "--profile", "ci", "--out", str(ci_checkpoint.parent), "--max-steps", "6",
                 "--no-progress"]) == 0
    assert f"Resuming from {ci_checkpoint} at step 6" in capsys.readouterr().out


def test_train_overrides(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["train", "--profile", "ci", "--out", str(out), "--max-steps", "2", "--no-progress",
                 "--set", "ema_decay=0.5", "--set", "model.base_channels=8", "--lr", "0.01"]) == 0
    cfg = load_checkpoint(out / "checkpoint.pt").config
    assert cfg.ema_decay == 0.5 and cfg.model.base_channels == 8 and cfg.lr == 0.01
    assert main(["train", "--profile", "ci", "--out", str(out), "--set", "learning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown TrainConfig fields ['learning_rate']" in err and "'lr'" in err   # the known fields are listed
    assert main(["train", "--profile", "ci", "--out", str(out), "--set", "model.width=1"]) == 2
    assert "unknown UNetConfig fields ['width']" in capsys.readouterr().err


def test_sample_grid_and_gif(ci_checkpoint, tmp_path, capsys):
    grid, gif = tmp_path / "grid.png", tmp_path / "process.gif"
    assert main(["sample", "--checkpoint", str(ci_checkpoint), "--n", "20", "--steps", "5",
                 "--guidance", "2", "--out", str(grid), "--gif", str(gif), "--gif-frames", "4"]) == 0
    image = iio.imread(grid)
    assert image.ndim == 2 and image.shape == (2 + 2 * 30, 2 + 10 * 30)  # 2 rows of 10 digits
    frames = iio.imread(gif)
    assert frames.shape[:3] == (4, *image.shape)  # 4 moments of the process, each a grid
    for sampler in ("ddpm", "dpm_solver"):
        assert main(["sample", "--checkpoint", str(ci_checkpoint), "--n", "4", "--sampler", sampler,
                     "--labels", "3", "--out", str(tmp_path / f"three_{sampler}.png")]) == 0
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(ci_checkpoint), "--n", "2", "--labels", "12",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "labels must lie in 0..9" in capsys.readouterr().err


def test_export_pngs(ci_checkpoint, tmp_path):
    out = tmp_path / "pngs"
    assert main(["export", "--checkpoint", str(ci_checkpoint), "--n", "12", "--steps", "3",
                 "--batch-size", "5", "--out", str(out)]) == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(12)]
    assert iio.imread(files[0]).shape == (28, 28)
    rows = (out / "labels.csv").read_text().splitlines()
    assert rows[0] == "file,label" and rows[1:4] == ["00000.png,0", "00001.png,1", "00002.png,2"]


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "g.png")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_demo_from_the_shipped_model(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--steps", "5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Sampling from the shipped model" in out and "samples.png" in out
    assert iio.imread(tmp_path / "demo" / "samples.png").shape == (302, 302)


def test_demo_training(tmp_path, capsys):
    assert main(["demo", "--train", "--out", str(tmp_path / "demo"), "--max-steps", "3", "--steps", "5",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "samples.png" in out and "denoising.gif" in out
    assert iio.imread(tmp_path / "demo" / "samples.png").shape == (302, 302)
    assert iio.imread(tmp_path / "demo" / "denoising.gif").shape[0] == 5  # 4 moments of 5 steps + the result


@pytest.mark.parametrize("command", ["train", "sample", "export", "demo"])
def test_help(command):
    result = subprocess.run([sys.executable, "-m", "ddpm_course", command, "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: python -m ddpm_course " + command in result.stdout


def test_measure_throughput_is_the_median_rate_of_real_steps(tiny_config, monkeypatch):
    import ddpm_course.training as training
    from ddpm_course.benchmark import measure_throughput

    class Clock:  # every reading of the clock is one second after the last
        now = 0.0

        def perf_counter(self):
            self.now += 1.0
            return self.now

    monkeypatch.setattr(training, "time", Clock())
    # 6 steps -> a log every 1 step, 7 steps in all; each log interval reads the clock twice, 1 s apart
    rate = measure_throughput(tiny_config, steps=6)
    assert rate == 1 * tiny_config.batch_size


def test_evaluate_json(ci_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(ci_checkpoint), "--num-samples", "40", "--sampler", "ddim",
                 "--steps", "3", "--guidance", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["num_samples"] == 40 and result["steps"] == 3 and result["guidance_scale"] == 2.0
    # the CLI and the API are one evaluation: the same numbers for the same checkpoint and seed
    direct = evaluate_checkpoint(load_checkpoint(ci_checkpoint), num_samples=40, sampler="ddim", steps=3,
                                 guidance_scale=2.0)
    assert result["diversity"] == direct["diversity"]
    for key in ("fid", "fid_floor", "accuracy", "per_class_accuracy", "inception_score"):
        assert result[key] == pytest.approx(direct[key], rel=1e-6), key
    assert 0 <= result["accuracy"] <= 1 and len(result["per_class_accuracy"]) == 10
    assert iio.imread(out.with_suffix(".png")).shape == (2 + 4 * 30, 2 + 10 * 30)  # 20 best, then 20 worst
    assert "FID floor" in capsys.readouterr().out


def test_evaluate_inception_fid_is_null_with_a_reason_when_unavailable(ci_checkpoint, tmp_path, capsys, monkeypatch):
    import torchmetrics.image.fid as tm_fid

    real = tm_fid.FrechetInceptionDistance

    def offline(feature=2048, **kwargs):   # the evaluator's FID passes its own feature module: keep it
        if isinstance(feature, int):
            raise OSError("cannot download the Inception weights: no network")
        return real(feature=feature, **kwargs)

    monkeypatch.setattr(tm_fid, "FrechetInceptionDistance", offline)
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(ci_checkpoint), "--num-samples", "20", "--sampler", "ddim",
                 "--steps", "2", "--inception", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["inception_fid"] is None
    printed = capsys.readouterr().out
    assert "Inception FID skipped: OSError: cannot download" in printed and "skipped (offline)" in printed


def test_benchmark_throughput_command(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["benchmark", "throughput", "--profile", "ci", "--steps", "1", "--rounds", "2", "--no-peer",
                 "--switch", "fused_optimizer=True", "--set", "batch_size=16", "--set", "mixed_precision=no",
                 "--device", "cpu",
                 "--profiler", "1", "--out", str(out)]) == 0
    table = (out / "throughput.md").read_text()
    assert "Where the time of 1 training steps" in table and "aten::convolution_backward" in table
    assert "Profile `ci` (16 images per step) on cpu" in table   # the peak in float32, the rows' precision
    assert "float32 matrix multiplies" in table and "float32 convolutions" in table
    size = sum(p.numel() for p in UNet(get_profile("ci").model).parameters()) / 1e6
    assert f"| ddpm_course UNet, fused_optimizer=True | {size:.2f}M |" in table and "diffusers" not in table
    assert main(["benchmark", "throughput", "--profile", "ci", "--switch", "fused=True"]) == 2
    assert "unknown TrainConfig fields ['fused']" in capsys.readouterr().err


def test_benchmark_recipe_refuses_a_bad_variant_before_training(tmp_path, capsys):
    runs = tmp_path / "runs"
    variant = "model.channel_mults=(1,2,2),lr_schedule=linear"      # a tuple value, then a bad choice
    assert main(["benchmark", "recipe", "--profile", "ci", "--variant", variant,
                 "--runs", str(runs), "--out", str(tmp_path / "out")]) == 2
    assert "TrainConfig.lr_schedule must be one of ['constant', 'cosine'], got 'linear'" in capsys.readouterr().err
    assert not runs.exists()


def test_benchmark_recipe_set_changes_every_row_the_baseline_included(tmp_path, monkeypatch, capsys):
    from ddpm_course import study

    seen = {}

    def record(config, variants, **kwargs):
        seen.update(config=config, variants=variants)
        return []

    monkeypatch.setattr(study, "run_recipe_study", record)
    assert main(["benchmark", "recipe", "--profile", "ci", "--set", "max_steps=7", "--set", "schedule=linear",
                 "--variant", "lr=0.002", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    assert (seen["config"].max_steps, seen["config"].schedule) == (7, "linear")   # the baseline row's config
    assert seen["variants"] == [(("lr", 0.002),)]
    assert main(["benchmark", "recipe", "--profile", "ci", "--set", "max_steps=0"]) == 2
    assert "TrainConfig.max_steps" in capsys.readouterr().err


def test_benchmark_sampling(ci_checkpoint, tmp_path):
    out = tmp_path / "bench"
    assert main(["benchmark", "sampling", "--checkpoint", str(ci_checkpoint), "--num-samples", "20",
                 "--samplers", "ddim:2", "dpm_solver:3", "--out", str(out)]) == 0
    rows = json.loads((out / "sampling.json").read_text())
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ddim", 2), ("dpm_solver", 3)]
    table = (out / "sampling.md").read_text()
    assert "| ddim | 2 |" in table and "| dpm_solver | 3 |" in table and "DDPM's" not in table
    for bad in ("euler:5", "ddim:0", "ddim:"):
        assert main(["benchmark", "sampling", "--checkpoint", str(ci_checkpoint), "--samplers", bad]) == 2


def test_benchmark_sampling_compares_with_ddpm_and_keeps_finished_rows(ci_checkpoint, tmp_path, monkeypatch):
    from ddpm_course import benchmark

    out = tmp_path / "bench"
    real = benchmark.evaluate_checkpoint
    calls = []

    def stop_at_the_third_row(*args, **kwargs):
        calls.append(kwargs["sampler"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(benchmark, "evaluate_checkpoint", stop_at_the_third_row)
    assert main(["benchmark", "sampling", "--checkpoint", str(ci_checkpoint), "--num-samples", "12",
                 "--samplers", "ddpm", "ddim:4", "dpm_solver:3", "--out", str(out)]) == 130   # Ctrl-C's status
    rows = json.loads((out / "sampling.json").read_text())
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ddpm", 100), ("ddim", 4)]
    table = (out / "sampling.md").read_text().splitlines()
    assert "FID / DDPM's" in table[2] and table[4].split("|")[5].strip() == "1.00"
    ddim = rows[1]
    assert table[5].split("|")[5].strip() == f"{ddim['fid'] / rows[0]['fid']:.2f}"
    assert not list(out.glob("*.tmp"))


def test_profiles_flops_counts_a_known_convolution_and_orders_the_profiles(capsys):
    from torch.utils.flop_counter import FlopCounterMode

    from ddpm_course.benchmark import training_flops_per_image

    conv = torch.nn.Conv2d(1, 4, 3, padding=1)             # known answer: 2 * 28*28 * 4 * 9 per image
    with FlopCounterMode(display=False) as counter:
        conv(torch.zeros(1, 1, 28, 28))
    assert counter.get_total_flops() == 2 * 28 * 28 * 4 * 9
    flops = {name: training_flops_per_image(get_profile(name)) for name in ("ci", "cpu")}
    assert 0 < flops["ci"] < flops["cpu"]
    assert main(["profiles", "--flops"]) == 0
    out = capsys.readouterr().out
    assert "minutes at 13.2 TFLOP/s (the `t4` profile's rate on an H100; a T4 is slower)" in out
    assert out.count("| `") == 3
