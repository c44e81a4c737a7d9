"""Training throughput: images/s, achieved FLOP/s against the machine's peak, and the speed switches.

``python -m ddpm_course benchmark throughput --profile cpu`` builds one :class:`Trainer` per row
(the profile as it is, the profile with one switch changed for each ``--switch``, and diffusers'
``UNet2DModel`` of the same size in the same loop) and times them in interleaved rounds, so that
the machine's drift (other jobs, clock changes) falls on every row alike. Each row reports the
median training images/s over the rounds after the first (which holds the warm-up and, with
``compile=True``, the compilation), the FLOP/s this implies (matrix multiplies and convolutions
counted by ``torch.utils.flop_counter``), and that as a fraction of the peak measured in the same
run: the median FLOP/s of the faster of a large matrix multiply and a large 3x3 convolution on the same
device, in the training's precision (float32, or bf16 / fp16 under mixed precision); on the CPU the
two run in different libraries (BLAS and oneDNN), and either can be the faster.

The speed choices of the CUDA path are each one TrainConfig field that ``--switch`` flips:
``mixed_precision`` (bf16, or fp16 with a gradient scaler), ``channels_last``, ``compile``,
``fused_optimizer``. The data always lives on the training device (:class:`~ddpm_course.data.DeviceBatches`).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ._checks import check_int
from .config import TrainConfig
from .training import Trainer


def _median_rate(work, flops_per_call: float, device, repeats: int, min_seconds: float, clock) -> float:
    """The median FLOP/s of ``work()`` (``flops_per_call`` operations each call) on ``device``.

    Each of the ``repeats`` measurements times as many back-to-back calls as fill about
    ``min_seconds`` between two synchronisations, so that a fast GPU's launch and sync overheads
    do not count; the first measurement, which also calibrates that number, is left out.
    """
    check_int("repeats", repeats, minimum=1)
    inner, rates = 1, []
    for _ in range(repeats + 1):
        _synchronize(device)
        start = clock()
        for _ in range(inner):
            work()
        _synchronize(device)
        seconds = max(clock() - start, 1e-9)
        rates.append(flops_per_call * inner / seconds)
        if len(rates) == 1:
            inner = max(1, math.ceil(min_seconds / seconds))
    return statistics.median(rates[1:])


def peak_matmul_flops(device, size: int = 2048, repeats: int = 5, dtype=torch.float32,
                      min_seconds: float = 0.2, clock=time.perf_counter) -> float:
    """The median FLOP/s of (size x size) @ (size x size) matrix multiplies on ``device`` (2 size^3
    operations each): what the BLAS of this machine reaches on the best-shaped work there is.
    ``clock`` reads seconds (a test gives a fake one); the timing as in :func:`_median_rate`.
    """
    check_int("size", size, minimum=16)
    device = torch.device(device)
    gen = torch.Generator(device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    return _median_rate(lambda: a @ b, 2 * size**3, device, repeats, min_seconds, clock)


def peak_conv_flops(device, channels: int = 256, size: int = 32, batch: int = 16, repeats: int = 5,
                    dtype=torch.float32, min_seconds: float = 0.2, clock=time.perf_counter) -> float:
    """The median FLOP/s of a 3x3 convolution, ``channels`` in and out, on (batch, channels, size,
    size) channels-last inputs (2 * 9 * channels^2 * size^2 * batch operations each).

    On the CPU convolutions run in oneDNN, not in the BLAS that :func:`peak_matmul_flops` measures,
    and the two can differ widely: on a 2-core AMD EPYC with AVX-512, torch's MKL matrix multiply
    reached 199 GFLOP/s and oneDNN's convolutions 514 (docs/RESULTS.md, session 22), so a U-Net's
    own convolutions beat the matrix multiply there. This is the peak they reach on well-shaped work.
    """
    check_int("channels", channels, minimum=1)
    check_int("size", size, minimum=1)
    check_int("batch", batch, minimum=1)
    device = torch.device(device)
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, channels, size, size, device=device, dtype=dtype, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype, generator=gen) / (3 * channels**0.5)
    w = w.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return _median_rate(lambda: torch.nn.functional.conv2d(x, w, padding=1),
                            2 * 9 * channels**2 * size**2 * batch, device, repeats, min_seconds, clock)


def measured_peak(device, dtype=torch.float32) -> tuple:
    """(FLOP/s, description): the faster of :func:`peak_matmul_flops` and :func:`peak_conv_flops`
    in ``dtype`` on ``device``, the description naming both, so that a fraction of it is at most
    about 100% whichever library is the faster on this machine."""
    name = str(dtype).replace("torch.", "")
    matmul = peak_matmul_flops(device, dtype=dtype)
    conv = peak_conv_flops(device, dtype=dtype)
    which = "matrix multiply" if matmul >= conv else "convolution"
    return max(matmul, conv), (f"the faster ({which}) of 2048x2048 {name} matrix multiplies, "
                               f"{matmul / 1e9:.1f} GFLOP/s, and 3x3 {name} convolutions of 256 channels "
                               f"at 32x32, {conv / 1e9:.1f} GFLOP/s")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass
class ThroughputRow:
    """One configuration's timings: images/s of each round and the FLOPs of one training image."""

    name: str
    parameters: int
    flops_per_image: float
    rates: list = field(default_factory=list)   # images/s per round, the warm-up round first

    @property
    def images_per_second(self) -> float:
        """The median over the rounds after the first."""
        return statistics.median(self.rates[1:]) if len(self.rates) > 1 else float("nan")


def benchmark_throughput(config: TrainConfig, *, steps: int = 20, rounds: int = 4, switches=(),
                         peer: bool = True, log=print, clock=time.perf_counter) -> list:
    """Time ``steps`` training steps of each row, ``rounds`` times, interleaved; return [ThroughputRow].

    switches: ``[(key, value)]`` overrides, each a row of its own (the profile with that one change,
    validated as ``--set`` is). peer: add diffusers' ``UNet2DModel`` (same widths, depth, attention
    and label embedding) trained by the same Trainer with the profile as it is. clock: the timer
    (seconds), replaceable in tests.
    """
    check_int("steps", steps, minimum=1)
    check_int("rounds", rounds, minimum=2)
    from .benchmark import DiffusersUNet, require_diffusers, training_flops_per_image

    if peer:
        require_diffusers()

    specs = [("ddpm_course UNet", config, None)]
    specs += [(f"ddpm_course UNet, {key}={value}", config.with_overrides([(key, value)]), None)
              for key, value in switches]
    if peer:
        specs.append(("diffusers UNet2DModel", config, DiffusersUNet))
    rows, trainers = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, cfg, build) in enumerate(specs):
            cfg = cfg.replace(out_dir=f"{tmp}/{k}")
            trainer = Trainer(cfg, log=lambda *_: None, model=None if build is None else build(cfg.model))
            rows.append(ThroughputRow(name, sum(p.numel() for p in trainer.model.parameters()),
                                      training_flops_per_image(cfg, model=trainer.model)))
            trainers.append(trainer)
        for r in range(rounds):
            for row, trainer in zip(rows, trainers):
                row.rates.append(_time_steps(trainer, steps, clock))
            log(f"round {r + 1}/{rounds}: " + ", ".join(f"{row.name} {row.rates[-1]:.0f} img/s" for row in rows))
    return rows


def _time_steps(trainer: Trainer, steps: int, clock) -> float:
    """Images/s of ``steps`` real training steps (the loss is read once at the end, as training logs do)."""
    _synchronize(trainer.device)
    start = clock()
    loss = None
    for _ in range(steps):
        loss = trainer.train_step()
    loss.item()
    _synchronize(trainer.device)
    return steps * trainer.config.batch_size / max(clock() - start, 1e-9)


def profiler_table(config: TrainConfig, steps: int = 5, row_limit: int = 15) -> str:
    """torch.profiler's table (operators by their own time, the largest first) of ``steps`` training
    steps of ``config``, after two warm-up steps: where a step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    check_int("steps", steps, minimum=1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config.replace(out_dir=tmp), log=lambda *_: None)
        for _ in range(2):
            trainer.train_step()
        with profile(activities=activities) as prof:
            for _ in range(steps):
                trainer.train_step()
            _synchronize(trainer.device)
    key = "self_cuda_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=row_limit)


def throughput_table(rows: list, config: TrainConfig, profile: str, peak: float, device,
                     peak_what: str = "2048x2048 float32 matrix multiplies") -> str:
    """Markdown: a row per configuration, then the ratio of the course's UNet to the peer."""
    lines = [
        f"Profile `{profile}` ({config.batch_size} images per step) on {torch.device(device)}; median of the "
        f"rounds after the first (the first holds the warm-up and any compilation). Peak: {peak / 1e9:.1f} "
        f"GFLOP/s, {peak_what}: the reference of every row.",
        "",
        "| configuration | parameters | GFLOP per training image | train img/s | img/s per round | achieved GFLOP/s "
        "| fraction of peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        achieved = row.flops_per_image * row.images_per_second
        lines.append(f"| {row.name} | {row.parameters / 1e6:.2f}M | {row.flops_per_image / 1e9:.3f} | "
                     f"{row.images_per_second:.1f} | {' / '.join(f'{r:.0f}' for r in row.rates)} | "
                     f"{achieved / 1e9:.1f} | {achieved / peak:.1%} |")
    ours, peers = rows[0], [r for r in rows if r.name.startswith("diffusers")]
    if peers:
        lines += ["", f"Throughput, ours / peer: {ours.images_per_second / peers[0].images_per_second:.2f}x "
                      "(the profile as it is, both in the same loop)."]
    return "\n".join(lines)


def run_throughput_benchmark(config: TrainConfig, profile: str, *, steps: int = 20, rounds: int = 4, switches=(),
                             peer: bool = True, profiler_steps: int = 0, out="benchmarks", log=print) -> str:
    """``benchmark throughput``: the rows (:func:`benchmark_throughput`, which checks every switch
    before timing anything), then the peak in the training's precision in the same run; with
    ``profiler_steps``, add :func:`profiler_table`.
    Writes ``out/throughput.md``, logs the table and returns it."""
    from .devices import resolve_device, resolve_precision
    from .files import atomic_write_text

    rows = benchmark_throughput(config, steps=steps, rounds=rounds, switches=switches, peer=peer, log=log)
    device = resolve_device(config.device)
    dtype = {"no": "float32", "bf16": "bfloat16", "fp16": "float16"}[resolve_precision(config.mixed_precision, device)]
    peak, peak_what = measured_peak(device, dtype=getattr(torch, dtype))
    log(f"Peak: {peak / 1e9:.1f} GFLOP/s on {device}, {peak_what}")
    table = throughput_table(rows, config, profile, peak, device, peak_what)
    if profiler_steps:
        table += (f"\n\nWhere the time of {profiler_steps} training steps of the profile goes "
                  f"(torch.profiler, operators by their own time):\n\n```\n"
                  f"{profiler_table(config, profiler_steps)}\n```")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "throughput.md", table + "\n")
    log(f"\n{table}\n\nWrote {out / 'throughput.md'}")
    return table
