"""Training benchmark: the course's U-Net against a peer architecture, same loop, data and time.

``python -m ddpm_course benchmark training --profile P`` trains the profile's :class:`UNet` and, in
the same run, diffusers' ``UNet2DModel`` configured with the same widths, depth, attention levels
and label embedding (so a similar parameter count), each with the same :class:`Trainer` (optimizer,
schedule, EMA, data order, noise) for the same wall-clock budget. At evenly spaced moments it
samples from the EMA weights and measures the FID ratio and label accuracy with the offline
evaluator; it reports training images/s, the quality reached at equal wall time and the ratios.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ._checks import check_float, check_int
from .config import TrainConfig
from .evaluation import evaluate_samples, reference_images
from .evaluator import evaluator_for, load_evaluator
from .sampling import sample_dpm_solver
from .training import Trainer


class DiffusersUNet(nn.Module):
    """diffusers' ``UNet2DModel`` behind the course's calling convention model(x_t, t[, y]).

    Built from a :class:`UNetConfig`: block widths base * mults, ``num_res_blocks`` ResNet blocks
    per level, attention at the same resolutions, scale-shift time conditioning, and for a
    conditional model an embedding with ``num_classes + 1`` rows (the last one is "no label").
    """

    def __init__(self, config):
        super().__init__()
        from diffusers import UNet2DModel

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


def _evaluate(model, schedule, evaluator, real_a, real_b, n: int, steps: int, guidance: float, seed: int) -> dict:
    num_classes = getattr(model, "num_classes", None)
    labels = torch.arange(n) % num_classes if num_classes else None
    device = next(model.parameters()).device
    x = sample_dpm_solver(model, schedule.to("cpu"), (n, 1, 28, 28), steps=steps,
                          labels=labels.to(device) if labels is not None else None,
                          guidance_scale=guidance if labels is not None else 1.0,
                          generator=torch.Generator(device).manual_seed(seed))
    return evaluate_samples(evaluator, x, real_a, real_b, labels)


def benchmark_training(config: TrainConfig, *, seconds: float, evaluations: int = 3, num_samples: int = 200,
                       sampler_steps: int = 20, guidance: float = 3.0, peers: bool = True,
                       log=print) -> list:
    """Train the course's UNet (and the diffusers peer) for ``seconds`` each; return [BenchmarkRun]."""
    check_float("seconds", seconds, minimum=1.0)
    check_int("evaluations", evaluations, minimum=1)
    check_int("num_samples", num_samples, minimum=10)
    builds = [("ddpm_course UNet", None)] + ([("diffusers UNet2DModel", DiffusersUNet)] if peers else [])
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in builds:
            cfg = config.replace(out_dir=f"{tmp}/{len(runs)}")
            trainer = Trainer(cfg, log=lambda *_: None, model=None if build is None else build(cfg.model))
            evaluator = load_evaluator(evaluator_for(cfg.dataset), trainer.device)
            real_a, real_b = reference_images(cfg.dataset, num_samples)
            run = BenchmarkRun(name, sum(p.numel() for p in trainer.model.parameters()))
            marks = [seconds * (k + 1) / evaluations for k in range(evaluations)]
            log(f"{name}: {run.parameters / 1e6:.2f}M parameters, {seconds:.0f} s of training")
            while marks:
                start = time.perf_counter()
                while run.seconds + (time.perf_counter() - start) < marks[0]:
                    trainer.train_step()
                if trainer.device.type == "cuda":
                    torch.cuda.synchronize()
                run.seconds += time.perf_counter() - start
                marks.pop(0)
                result = _evaluate(trainer.ema.model, trainer.schedule, evaluator, real_a, real_b, num_samples,
                                   sampler_steps, guidance, cfg.seed)
                point = {"step": trainer.step, "seconds": round(run.seconds, 1),
                         "images": trainer.step * cfg.batch_size, "fid": result["fid"],
                         "fid_floor": result["fid_floor"], "fid_ratio": result["fid_ratio"],
                         "accuracy": result["accuracy"]}
                run.points.append(point)
                acc = "-" if point["accuracy"] is None else f"{100 * point['accuracy']:.1f}%"
                log(f"  {point['seconds']:>7.1f} s, step {trainer.step}: FID ratio {point['fid_ratio']:.2f}, "
                    f"accuracy {acc}")
            run.steps = trainer.step
            runs.append(run)
    return runs


def format_training_table(runs: list, config: TrainConfig, profile: str, num_samples: int, guidance: float) -> str:
    """Markdown: one row per (architecture, moment), then the ratios at equal wall time."""
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
