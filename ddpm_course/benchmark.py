"""Benchmarks: training against a peer architecture, sampling quality against steps, throughput.

``python -m ddpm_course benchmark training --profile P`` trains the profile's :class:`UNet` and, in
the same run, diffusers' ``UNet2DModel`` configured with the same widths, depth, attention levels
and label embedding (so a similar parameter count), each with the same :class:`Trainer` (optimizer,
schedule, EMA, data order, noise) for the same wall-clock budget. At evenly spaced moments it
samples from the EMA weights and measures the FID ratio and label accuracy with the offline
evaluator; it reports training images/s, the quality reached at equal wall time and the ratios.

``benchmark sampling`` measures FID ratio, accuracy and time of each sampler and step count
(:func:`benchmark_sampling`); ``profiles`` lists the profiles with their FLOPs and measured
training images/s (:func:`profiles_table`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ._checks import check_float, check_int
from .config import PROFILES, TrainConfig, get_profile, recommended_sampling
from .evaluation import evaluate_checkpoint
from .evaluator import evaluator_for, load_evaluator
from .files import atomic_write_json, atomic_write_text
from .losses import diffusion_loss
from .optim import describe_optimizer
from .sampling import SAMPLERS
from .schedules import NoiseSchedule
from .training import Trainer, train
from .unet import UNet


def require_diffusers() -> None:
    """Before any training: the peer needs diffusers, which the course itself does not install."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise ImportError("the diffusers UNet2DModel peer needs the diffusers package: pip install diffusers, "
                          "or leave the peer out (--no-peer; peers=False / peer=False in Python)") from None


class DiffusersUNet(nn.Module):
    """diffusers' ``UNet2DModel`` behind the course's calling convention model(x_t, t[, y]).

    Built from a :class:`UNetConfig`: block widths base * mults, ``num_res_blocks`` ResNet blocks
    per level, attention at the same resolutions, scale-shift time conditioning, and for a
    conditional model an embedding with ``num_classes + 1`` rows (the last one is "no label").
    """

    def __init__(self, config):
        super().__init__()
        from diffusers import UNet2DModel

        self.config = config  # the image shape, for sampling

        widths = tuple(config.base_channels * m for m in config.channel_mults)
        attn = [res in config.attention_resolutions for res in config.resolutions]
        groups = max(g for g in (8, 4, 2, 1) if all(w % g == 0 for w in widths))
        self.num_classes = config.num_classes
        self.net = UNet2DModel(
            sample_size=config.image_size, in_channels=config.image_channels, out_channels=config.image_channels,
            layers_per_block=config.num_res_blocks, block_out_channels=widths,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
            norm_num_groups=groups, dropout=config.dropout, resnet_time_scale_shift="scale_shift",
            attention_head_dim=max(widths[-1] // config.attention_heads, 1),
            num_class_embeds=None if config.num_classes is None else config.num_classes + 1,
        )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes is not None and y is None:
            y = torch.full_like(t, self.num_classes)
        return self.net(x_t, t, class_labels=y).sample


@dataclass
class BenchmarkRun:
    """One architecture's run: throughput and the quality at each evaluation moment."""

    name: str
    parameters: int
    steps: int = 0
    seconds: float = 0.0
    points: list = field(default_factory=list)   # dicts: step, seconds, fid_ratio, accuracy, fid, fid_floor

    @property
    def images_per_second(self) -> float:
        return self.points[-1]["images"] / max(self.seconds, 1e-9) if self.points else 0.0


def benchmark_training(config: TrainConfig, *, seconds: float, evaluations: int = 3, num_samples: int = 200,
                       sampler_steps: int = 20, guidance_scale: float | None = None, peers: bool = True,
                       log=print, clock: Callable[[], float] = time.perf_counter) -> list:
    """Train the course's UNet (and the diffusers peer) for ``seconds`` each; return [BenchmarkRun].

    guidance_scale: for the quality measurements (None: the recommended one). clock: the timer
    (seconds), replaceable in tests.
    """
    check_float("seconds", seconds, minimum=1.0)
    check_int("evaluations", evaluations, minimum=1)
    check_int("num_samples", num_samples, minimum=10)
    if peers:
        require_diffusers()
    builds = [("ddpm_course UNet", None)] + ([("diffusers UNet2DModel", DiffusersUNet)] if peers else [])
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in builds:
            cfg = config.replace(out_dir=f"{tmp}/{len(runs)}")
            trainer = Trainer(cfg, log=lambda *_: None, model=None if build is None else build(cfg.model))
            evaluator = load_evaluator(evaluator_for(cfg.dataset), trainer.device)
            run = BenchmarkRun(name, sum(p.numel() for p in trainer.model.parameters()))
            marks = [seconds * (k + 1) / evaluations for k in range(evaluations)]
            log(f"{name}: {run.parameters / 1e6:.2f}M parameters, {seconds:.0f} s of training")
            while marks:
                start = clock()
                while run.seconds + (clock() - start) < marks[0]:
                    trainer.train_step()
                if trainer.device.type == "cuda":
                    torch.cuda.synchronize()
                run.seconds += clock() - start
                marks.pop(0)
                result = evaluate_checkpoint(trainer.ema.model, schedule=trainer.schedule, dataset=cfg.dataset,
                                             num_samples=num_samples, sampler="dpm_solver", steps=sampler_steps,
                                             guidance_scale=guidance_scale, seed=cfg.seed, evaluator=evaluator)
                point = {"step": trainer.step, "seconds": round(run.seconds, 1),
                         "images": trainer.step * cfg.batch_size, "fid": result["fid"],
                         "fid_floor": result["fid_floor"], "fid_ratio": result["fid_ratio"],
                         "accuracy": result["accuracy"], "guidance_scale": result["guidance_scale"]}
                run.points.append(point)
                acc = "-" if point["accuracy"] is None else f"{100 * point['accuracy']:.1f}%"
                log(f"  {point['seconds']:>7.1f} s, step {trainer.step}: FID ratio {point['fid_ratio']:.2f}, "
                    f"accuracy {acc}")
            run.steps = trainer.step
            runs.append(run)
    return runs


def format_training_table(runs: list, config: TrainConfig, profile: str, num_samples: int) -> str:
    """Markdown: one row per (architecture, moment), then the ratios at equal wall time."""
    guidance = runs[0].points[0]["guidance_scale"]
    lines = [f"Profile `{profile}` ({config.batch_size} images per step, lr {config.lr}, EMA {config.ema_decay}); "
             f"quality from the EMA weights, {num_samples} samples, DPM-Solver++ 20 steps, guidance {guidance}; "
             f"FID floor (real vs real, same N) {runs[0].points[0]['fid_floor']:.2f}.", "",
             "| model | parameters | seconds | steps | train img/s | FID ratio | label accuracy |",
             "|---|---|---|---|---|---|---|"]
    for run in runs:
        for p in run.points:
            acc = "—" if p["accuracy"] is None else f"{100 * p['accuracy']:.1f}%"
            lines.append(f"| {run.name} | {run.parameters / 1e6:.2f}M | {p['seconds']:.0f} | {p['step']} | "
                         f"{p['images'] / max(p['seconds'], 1e-9):.0f} | {p['fid_ratio']:.2f} | {acc} |")
    if len(runs) == 2:
        ours, peer = runs
        lines += ["", f"Ratios, ours / peer, at equal wall time: throughput "
                      f"{ours.images_per_second / max(peer.images_per_second, 1e-9):.2f}x; final FID ratio "
                      f"{ours.points[-1]['fid_ratio']:.2f} vs {peer.points[-1]['fid_ratio']:.2f} "
                      f"({ours.points[-1]['fid_ratio'] / peer.points[-1]['fid_ratio']:.2f}x, lower is better)."]
    return "\n".join(lines)


def write_training_benchmark(runs: list, config: TrainConfig, profile: str, num_samples: int, out) -> str:
    """Write ``training.md`` and ``training.json`` into the folder ``out``; return the table."""
    table = format_training_table(runs, config, profile, num_samples)
    rows = [{"name": r.name, "parameters": r.parameters, "steps": r.steps, "seconds": round(r.seconds, 1),
             "images_per_second": round(r.images_per_second, 1), "points": r.points} for r in runs]
    atomic_write_text(Path(out) / "training.md", table + "\n")
    atomic_write_json(Path(out) / "training.json", {"profile": profile, "runs": rows})
    return table


# ----------------------------------------------------------------------------- sampling
DEFAULT_SAMPLING_GRID = ("ddpm", "ddim:10", "ddim:20", "ddim:50", "ddim:100", "ddim:250",
                         "dpm_solver:10", "dpm_solver:20")


def parse_sampler_spec(spec: str) -> tuple:
    """"ddim:50" -> ("ddim", 50); "ddpm" -> ("ddpm", None). Raises ValueError naming the spec."""
    name, colon, steps = spec.partition(":")
    if name not in SAMPLERS or (colon and not steps.isdigit()) or (steps and int(steps) < 1):
        raise ValueError(f"sampler specs look like ddpm, ddim:50 or dpm_solver:20 (steps >= 1, samplers "
                         f"{', '.join(SAMPLERS)}); got {spec!r}")
    return name, int(steps) if steps else None


def sampling_table(rows: list, checkpoint, num_samples: int, seed: int) -> str:
    """The markdown table of :func:`benchmark_sampling`; with a DDPM row, each FID is also given
    relative to DDPM's."""
    ddpm = next((r["fid"] for r in rows if r["sampler"] == "ddpm"), None)
    auto = rows[0].get("autoguidance", 1.0)
    auto = f", autoguidance {auto} (two networks per model call)" if auto != 1.0 else ""
    lines = [f"Checkpoint `{checkpoint}`, {num_samples} samples per row, guidance "
             f"{rows[0]['guidance_scale']}{auto}, seed {seed}; FID floor (real vs real, same N) "
             f"{rows[0]['fid_floor']:.2f}.", "",
             "| sampler | model calls | FID | FID ratio |" + (" FID / DDPM's |" if ddpm else "")
             + " label accuracy | seconds |",
             "|---" * (6 + bool(ddpm)) + "|"]
    for r in rows:
        acc = "—" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        rel = f" {r['fid'] / ddpm:.2f} |" if ddpm else ""
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['fid']:.2f} | {r['fid_ratio']:.2f} |{rel} {acc} | "
                     f"{r['seconds']:.1f} |")
    return "\n".join(lines)


def benchmark_sampling(ckpt, specs, *, num_samples: int = 500, guidance_scale: float | None = None, seed: int = 0,
                       out="benchmarks", log=print, autoguidance: float | None = None) -> str:
    """Quality against steps: one :func:`evaluate_checkpoint` row per sampler spec ("ddim:50").

    The table (``sampling.md``) and rows (``sampling.json``) in ``out`` are rewritten after every
    row, so a long run (DDPM over all T steps takes hours on a CPU) that is stopped keeps the rows
    it finished. Returns the table.
    """
    parsed = [parse_sampler_spec(spec) for spec in specs]   # every spec checked before any work
    rows, table = [], ""
    for sampler, steps in parsed:
        result = evaluate_checkpoint(ckpt, num_samples=num_samples, sampler=sampler, steps=steps,
                                     guidance_scale=guidance_scale, seed=seed, autoguidance=autoguidance)
        rows.append(result)
        log(f"{sampler} {result['steps']} steps: FID ratio {result['fid_ratio']:.2f}, {result['seconds']:.1f}s")
        table = sampling_table(rows, ckpt.path, num_samples, seed)
        atomic_write_text(Path(out) / "sampling.md", table + "\n")
        atomic_write_json(Path(out) / "sampling.json", rows)
    return table


# ----------------------------------------------------------------------------- throughput
def measure_throughput(config: TrainConfig, steps: int) -> float:
    """Median training images/second of ``config`` over ``steps`` real steps (the first log, with
    the warm-up of the first steps, is left out)."""
    check_int("steps", steps, minimum=2)
    rates = []
    log_every = max(1, steps // 6)
    with tempfile.TemporaryDirectory() as tmp:
        run = config.replace(max_steps=steps + log_every, log_every=log_every, checkpoint_every=10**9,
                             out_dir=tmp)
        train(run, resume=False, progress=False, log=lambda *a: None,
              callback=lambda info: rates.append(info["images_per_second"]))
    return statistics.median(rates[1:])


def training_flops_per_image(config: TrainConfig, batch: int = 4, model: nn.Module | None = None) -> float:
    """Floating-point operations of one training image (forward and backward), counted by
    torch.utils.flop_counter (matrix multiplies and convolutions; elementwise ops excluded).

    model: count this network (on its device) instead of a new ``UNet(config.model)`` on the CPU;
    its gradients are left as they were.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = UNet(config.model) if model is None else model
    device = next(model.parameters()).device
    schedule, m = NoiseSchedule.from_name(config.schedule, config.T).to(device), config.model
    x0 = torch.rand(batch, m.image_channels, m.image_size, m.image_size, device=device) * 2 - 1
    labels = torch.randint(0, m.num_classes, (batch,), device=device) if m.num_classes else None
    saved = [p.grad for p in model.parameters()]
    for p in model.parameters():
        p.grad = None                 # else backward() would add into the saved tensors in place
    with FlopCounterMode(display=False) as counter:
        diffusion_loss(model, schedule, x0, labels).backward()
    for p, grad in zip(model.parameters(), saved):
        p.grad = grad
    return counter.get_total_flops() / batch


# Achieved training FLOP/s of the `t4` profile on an H100 (session 16, docs/RESULTS.md, "The `t4`
# profile on an H100"): `benchmark throughput --profile t4 --device cuda`, 3541 img/s x 3.73 GFLOP.
H100_T4_PROFILE_FLOPS = 13.2e12


def profiles_table(*, flops: bool = False, measure: int = 0, device: str = "auto", log=print) -> str:
    """The README's profile table, printed row by row through ``log``: size and budget of each
    profile; with ``flops`` the training FLOPs and the minutes they imply at the rate the ``t4``
    profile sustained on an H100 (:data:`H100_T4_PROFILE_FLOPS`; a lower bound for a T4); with
    ``measure`` the training images/s over about ``measure`` steps of 64 images."""
    header = "| profile | parameters | T | schedule | optimiser | lr | batch | steps | guidance | budget |"
    if flops:
        header += (f" train GFLOP/image | PFLOP per run | minutes at {H100_T4_PROFILE_FLOPS / 1e12:.1f} TFLOP/s "
                   "(the `t4` profile's rate on an H100; a T4 is slower) |")
    if measure:
        header += " train img/s |"
    lines = [header, "|---" * header.count(" |") + "|"]
    for line in lines:
        log(line)
    for name, profile in PROFILES.items():
        cfg = get_profile(name)
        guidance = recommended_sampling(cfg.model.num_classes, cfg.guidance)["guidance_scale"]
        line = (f"| `{name}` | {UNet(cfg.model).num_parameters() / 1e6:.2f}M | {cfg.T} | {cfg.schedule} | "
                f"{describe_optimizer(cfg)} | {cfg.lr:g}, {cfg.lr_schedule} | {cfg.batch_size} | {cfg.max_steps} | "
                f"{guidance:g} | "
                f"{profile.budget_minutes:g} min on {profile.machine} |")
        if flops:
            per_image = training_flops_per_image(cfg)
            total = per_image * cfg.batch_size * cfg.max_steps
            line += f" {per_image / 1e9:.2f} | {total / 1e15:.2f} | {total / H100_T4_PROFILE_FLOPS / 60:.1f} |"
        if measure:
            steps = max(6, int(measure * 64 / cfg.batch_size))
            line += f" {measure_throughput(cfg.replace(device=device), steps):.0f} |"
        log(line)
        lines.append(line)
    return "\n".join(lines)
