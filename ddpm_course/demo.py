"""The first thing to run, and the README's figures: sample grids and GIFs of the denoising.

:func:`run_demo` samples a grid of every digit and a GIF of the denoising from the shipped model
(or from a small model it trains in about a minute); :func:`make_figures` draws the README's
grids per guidance scale and one GIF per digit from a conditional checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from .checkpoints import Checkpoint, load_checkpoint
from .config import demo_config
from .generation import checkpoint_settings, generate_samples, guide_for
from .pretrained import load_pretrained, pretrained_paths
from .training import train
from .visualize import ProcessRecorder, save_gif, save_grid


def demo_checkpoint(out, *, train_first: bool = False, max_steps: int | None = None, seed: int = 0,
                    progress: bool = True, log: Callable = print) -> Checkpoint:
    """The shipped ``mnist-cond`` model, or (``train_first``, or nothing shipped) a small model
    trained into ``out/run`` for about a minute on a CPU (re-running resumes it)."""
    shipped = pretrained_paths("mnist-cond")[0]
    if train_first or max_steps or not shipped.is_file():
        config = demo_config(out_dir=str(Path(out) / "run"), max_steps=max_steps, seed=seed)
        log(f"Training a small class-conditional model for {config.max_steps} steps on the CPU "
            f"(about a minute). Re-running resumes from {config.out_dir}.")
        return load_checkpoint(train(config, resume=True, progress=progress, log=log))
    ckpt = load_pretrained("mnist-cond")
    log(f"Sampling from the shipped model {shipped} (trained with: {ckpt.info['card']['command']}).\n"
        "Add --train to train your own small model first (about a minute on a CPU).")
    return ckpt


def run_demo(ckpt: Checkpoint, out, *, sampler: str | None = None, steps: int | None = None,
             guidance_scale: float | None = None, seed: int = 0, progress: bool = True,
             log: Callable = print) -> tuple:
    """Sample 100 digits (ten of each, one digit per column) with the checkpoint's recommended
    settings unless given; write ``samples.png`` and ``denoising.gif`` into ``out``; return both paths."""
    labels = torch.arange(100) % 10
    settings = checkpoint_settings(ckpt, labels, sampler=sampler, steps=steps, guidance_scale=guidance_scale)
    log(f"Sampling 100 digits with {settings.describe()}")
    recorder = ProcessRecorder(settings.steps, num_frames=min(25, settings.steps), kind="x_t")
    x = generate_samples(ckpt.ema_model, ckpt.schedule, 100, settings, labels=labels, seed=seed, callback=recorder,
                         progress=progress, guide=guide_for(ckpt, settings))
    grid = save_grid(x, Path(out) / "samples.png", nrow=10)
    gif = save_gif(recorder.finish(x), Path(out) / "denoising.gif", nrow=10, fps=8)
    return grid, gif


def make_figures(ckpt: Checkpoint, out, *, guidance_scales=(0.0, 1.0, 3.0, 5.0), steps: int = 20, seeds: int = 4,
                 gif_steps: int = 100, gif_frames: int = 30, gif_guidance: float | None = None, seed: int = 0,
                 log: Callable = print) -> list:
    """The README's result figures: a DPM-Solver++ grid per guidance scale (rows of 0-9, one row
    per seed) and an ancestral (DDIM eta = 1) GIF of the denoising per digit. Returns the paths."""
    if not ckpt.num_classes:
        raise ValueError("figures needs a class-conditional checkpoint (guidance and one GIF per digit)")
    out, paths = Path(out), []
    labels = torch.arange(10).repeat(seeds)                       # rows of 0-9, one row per seed
    for w in guidance_scales:
        settings = checkpoint_settings(ckpt, labels, sampler="dpm_solver", steps=steps, guidance_scale=w)
        x = generate_samples(ckpt.ema_model, ckpt.schedule, len(labels), settings, labels=labels, seed=seed,
                             guide=guide_for(ckpt, settings))
        paths.append(save_grid(x, out / f"guidance_{w:g}.png", nrow=10))
        log(f"guidance {w}: {paths[-1]}")
    labels = torch.arange(10).repeat_interleave(seeds)            # seeds consecutive per digit
    settings = checkpoint_settings(ckpt, labels, sampler="ddim", steps=gif_steps, guidance_scale=gif_guidance)
    recorder = ProcessRecorder(gif_steps, num_frames=gif_frames, kind="x_t")
    x = generate_samples(ckpt.ema_model, ckpt.schedule, len(labels), settings._replace(eta=1.0), labels=labels,
                         seed=seed, callback=recorder, guide=guide_for(ckpt, settings))
    frames = recorder.finish(x)
    for digit in range(10):
        part = [f[digit * seeds:(digit + 1) * seeds] for f in frames]
        paths.append(save_gif(part, out / f"denoising_{digit}.gif", nrow=seeds, fps=10))
        log(f"digit {digit}: {paths[-1]}")
    return paths
