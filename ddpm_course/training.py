"""The DDPM training loop (Ho et al. 2020, Algorithm 1) with the engineering a real run needs.

    repeat: x0, y ~ data;  loss = || eps - eps_theta(sqrt(a-bar_t) x0 + sqrt(1 - a-bar_t) eps, t, y) ||^2
            take a gradient step on loss; update the EMA weights

Around that: AdamW with linear warm-up, mixed precision (on CUDA bf16 where the GPU has it, else
fp16 with a grad scaler, as on a T4; bf16 on a CPU with AMX units), gradient clipping, label
dropout for classifier-free guidance, EMA weights, atomic checkpoints every ``checkpoint_every``
steps, and exact resume: the batches are a function of the step and every random-number generator
state is saved, so training to step N in one go or in several interrupted pieces gives the same
weights on one CPU.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ._version import __version__
from .checkpoints import FORMAT, initial_weights, read_checkpoint, save_checkpoint
from .config import TrainConfig, recommended_sampling
from .data import DeviceBatches, TensorImageDataset, load_available, load_dataset
from .devices import describe_machine, resolve_precision
from .distributed import barrier, init_distributed, launch_context, mean_over_ranks, shard_bounds, shutdown
from .ema import EMA
from .files import check_writable_folder, folder_lock, remove_stale_temporaries
from .losses import diffusion_loss
from .optim import make_optimizer
from .schedules import NoiseSchedule
from .stopping import TrainingInterrupted, deferred_signals
from .unet import UNet

CHECKPOINT_NAME = "checkpoint.pt"
# Fields that may differ between an interrupted run and its resumption.
RESUMABLE_CHANGES = ("max_steps", "checkpoint_every", "log_every", "out_dir", "device", "data_root",
                     "compile", "fused_optimizer",   # these two change speed, not the arithmetic's meaning
                     "mixed_precision",              # changes rounding; said aloud on resume when it does
                     "guidance")                     # how its checkpoints are sampled, not how it trains


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def lr_at(step: int, config: TrainConfig) -> float:
    """The learning rate of step ``step`` (0-based): a linear warm-up over ``warmup_steps``, then

    - "constant": ``lr`` (independent of max_steps, so a run extended after it stopped follows the
      same schedule);
    - "cosine": ``lr * (1 + cos(pi * p)) / 2`` with p the fraction of the steps after the warm-up
      already taken (Loshchilov & Hutter 2017, without restarts): from ``lr`` down to 0 at
      ``max_steps``, so the last weights are the average-like, low-noise ones. Its steps depend on
      max_steps, which a resumed cosine run therefore may not change.
    """
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    progress = (step - config.warmup_steps) / (config.max_steps - config.warmup_steps)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def load_training_data(config: TrainConfig, log: Callable = print) -> TensorImageDataset:
    """The dataset a config names, padded to the model's image size.

    split="auto" uses the train split when it is present or can be downloaded and otherwise the
    test split, saying so: offline machines may only have MNIST's 10,000 test digits.
    """
    kwargs = dict(subset=config.subset, image_size=config.model.image_size, channels=config.model.image_channels)
    if config.split != "auto":
        return load_dataset(config.dataset, config.split, config.data_root, **kwargs)
    return load_available(config.dataset, config.data_root, purpose="training uses", log=log, **kwargs)


def _check_data(config: TrainConfig, data: TensorImageDataset) -> None:
    C, H, W = data.images.shape[1:]
    m = config.model
    if (C, H, W) != (m.image_channels, m.image_size, m.image_size):
        raise ValueError(f"the dataset's images are {C}x{H}x{W} but the model expects "
                         f"{m.image_channels}x{m.image_size}x{m.image_size}; change TrainConfig.model")
    if m.num_classes is not None and data.num_classes and data.num_classes > m.num_classes:
        raise ValueError(f"the dataset has {data.num_classes} classes but model.num_classes={m.num_classes}")


def _check_resumable(saved: dict, config: TrainConfig, path: Path) -> None:
    now = config.to_dict()
    try:
        saved = TrainConfig.from_dict(saved).to_dict()  # fields added since it was written: their defaults
    except (TypeError, ValueError) as error:
        raise ValueError(f"cannot resume from {path}: its config cannot be read by this version of "
                         f"ddpm_course ({error}). Use another out_dir, or resume=False.") from None
    free = RESUMABLE_CHANGES if config.lr_schedule == "constant" else tuple(
        k for k in RESUMABLE_CHANGES if k != "max_steps")   # a cosine schedule is laid over max_steps
    diffs = [k for k in now if k not in free and saved.get(k) != now[k]]
    if diffs:
        detail = "; ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in diffs)
        if "max_steps" in diffs:
            detail += " (lr_schedule='cosine' decays to 0 at max_steps, so its steps cannot be extended)"
        raise ValueError(
            f"cannot resume from {path}: the config differs in {detail}. Use another out_dir, or "
            f"resume=False to start over (the old checkpoint is then kept under a new name)."
        )


def _rng_state(noise_gen: torch.Generator) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "noise": noise_gen.get_state(),
        "noise_device": str(noise_gen.device),
    }


def _restore_rng(state: dict, noise_gen: torch.Generator, config: TrainConfig, step: int, log) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if torch.device(state["noise_device"]).type == noise_gen.device.type:
        noise_gen.set_state(state["noise"].cpu())
    else:
        noise_gen.manual_seed(config.seed + 1 + step)
        log(f"Note: checkpoint trained on {state['noise_device']}, resuming on {noise_gen.device}; the "
            "noise stream is re-seeded, so this resume is not bit-exact.")


class Trainer:
    """The state of one training run: model, EMA, optimizer, scaler, data and generators."""

    def __init__(self, config: TrainConfig, log: Callable = print, model: torch.nn.Module | None = None):
        """model: train this network instead of ``UNet(config.model)`` (e.g. a peer architecture in a
        benchmark); it must follow the UNet calling convention model(x_t, t[, y]).

        Under torchrun (see :mod:`ddpm_course.distributed`) each process trains on its shard of every
        global batch; only rank 0 logs and writes."""
        self.config = config.validate()
        context = launch_context()
        self.shard = shard_bounds(config.batch_size, context)   # checked before joining any group
        self.dist, self.device = init_distributed(context, config.device)
        self.log = log if self.dist.is_main else (lambda *args, **kwargs: None)
        self.precision = resolve_precision(config.mixed_precision, self.device)
        torch.manual_seed(config.seed)
        try:
            self.data = load_training_data(config, self.log)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"rank {self.dist.rank}: {error}" if self.dist.enabled else str(error)) from None
        _check_data(config, self.data)
        self.model = (UNet(config.model) if model is None else model).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, config.ema_decay)
        self.net = self.model    # what the loss calls: the model itself, or its DDP wrapper under torchrun
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.schedule = NoiseSchedule.from_name(config.schedule, config.T).to(self.device)
        if config.compile:
            self.net = torch.compile(self.net)
        self.optimizer = make_optimizer(self.model, config, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.noise_gen = torch.Generator(self.device).manual_seed(config.seed + 1)
        self.batches = DeviceBatches(self.data, config.batch_size, self.device, seed=config.seed)
        self.step, self.history, self.elapsed = 0, [], 0.0
        self.saved_step, self.origin = None, None     # origin: what init_from started from
        self.path = Path(config.out_dir) / CHECKPOINT_NAME

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(self.noise_gen),
            "history": [list(h) for h in self.history],
            "sampling": recommended_sampling(self.config.model.num_classes, self.config.guidance),
            "info": {
                "data": self.data.name, "split": self.data.split, "num_images": len(self.data),
                "device": str(self.device),
                "machine": describe_machine(self.device),
                "precision": self.precision, "train_seconds": round(self.elapsed, 2),
                "torch": str(torch.__version__), "ddpm_course": __version__,
                **({"init_from": self.origin} if self.origin else {}),
            },
        }

    def save(self) -> Path:
        """Rank 0 writes the checkpoint; every rank waits until it is written."""
        if self.dist.is_main:
            save_checkpoint(self.state_dict(), self.path)
        barrier(self.dist)
        self.saved_step = self.step
        return self.path

    def load(self, path: Path) -> None:
        state = read_checkpoint(path, self.device)
        _check_resumable(state["config"], self.config, path)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:    # the config says how to run, not the checkpoint
            if "fused" in group:                      # torch's AdamW and Adam (MuonAdamW has no fused kernel)
                group["fused"] = True if self.config.fused_optimizer else None
        self.scaler.load_state_dict(state["scaler"])
        self.step = self.saved_step = int(state["step"])
        self.history = [tuple(h) for h in state.get("history", [])]
        self.elapsed = float(state.get("info", {}).get("train_seconds", 0.0))
        self.origin = state.get("info", {}).get("init_from")
        if (was := state.get("info", {}).get("precision", self.precision)) != self.precision:
            self.log(f"Note: steps 1-{self.step} ran with precision {was!r}, the rest run with {self.precision!r} "
                     f"(mixed_precision={self.config.mixed_precision!r} here), unlike one uninterrupted run. "
                     f"Set mixed_precision={was!r} to continue as it started.")
        _restore_rng(state["rng"], self.noise_gen, self.config, self.step, self.log)

    def start_from_init(self) -> None:
        """Model and EMA start from ``config.init_from``'s EMA weights (a fresh optimizer, step 0)."""
        weights, self.origin = initial_weights(self.config.init_from, self.config.model)
        self.model.load_state_dict(weights)
        self.ema.load_state_dict(weights)
        self.log(f"Starting from the weights of {self.config.init_from}")

    def set_aside_old_checkpoint(self) -> None:
        """resume=False never deletes a trained model: the old checkpoint gets a new name."""
        if self.path.exists():
            stamp = time.strftime("%Y%m%d-%H%M%S")
            old = self.path.with_name(f"checkpoint-old-{stamp}.pt")
            self.path.rename(old)
            self.log(f"Kept the previous checkpoint as {old}")

    # -------------------------------------------------------------- the loop
    def train_step(self) -> torch.Tensor:
        """One optimisation step; returns the loss (a detached scalar tensor, not synchronised)."""
        cfg = self.config
        x0, y = self.batches.batch(self.step)
        if cfg.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        labels = y if cfg.model.num_classes is not None else None
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.precision != "no"):
            loss = diffusion_loss(self.net, self.schedule, x0, labels, loss_type=cfg.loss,
                                  p_uncond=cfg.p_uncond, min_snr_gamma=cfg.min_snr_gamma, timesteps=cfg.timesteps,
                                  generator=self.noise_gen, shard=self.shard)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(self.model, self.step)
        self.step += 1
        return loss.detach()

    def _diverged(self, first_step: int) -> TrainingDiverged:
        kept = (f"The last good checkpoint is kept at {self.path}." if self.path.exists()
                else "No checkpoint had been written yet.")
        return TrainingDiverged(
            f"Training stopped: the loss became NaN or infinite between steps {first_step} and "
            f"{self.step}. {kept} Try a lower lr (now {self.config.lr}) or grad_clip "
            f"(now {self.config.grad_clip}), then resume."
        )

    def _stop_requested(self, request) -> bool:
        """Whether a signal asked to stop; under torchrun, whether any rank got one (all stop together)."""
        if not self.dist.enabled:
            return request.signum is not None
        flag = torch.tensor(float(request.signum or 0), device=self.device)
        any_rank = mean_over_ranks(flag, self.dist).item() * self.dist.world_size
        if any_rank and request.signum is None:
            request.signum = signal.SIGINT
        return bool(any_rank)

    def run(self, progress: bool = True, callback: Callable | None = None) -> Path:
        """Train to ``max_steps``. Ctrl-C or SIGTERM: the step in flight finishes, is saved, and
        :class:`TrainingInterrupted` says which step and where."""
        with deferred_signals() as request:
            return self._run(request, progress, callback)

    def _run(self, request, progress: bool, callback: Callable | None) -> Path:
        cfg = self.config
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", disable=not progress or not self.dist.is_main,
                   dynamic_ncols=True, file=sys.stdout)
        running, count, since = None, 0, self.step  # loss summed since the last log
        last_time, last_step = time.perf_counter(), self.step
        updating = False
        try:
            while self.step < cfg.max_steps and not self._stop_requested(request):
                updating = True
                loss = self.train_step()
                updating = False
                running = loss if running is None else running + loss
                count += 1
                bar.update(1)
                at_log = self.step % cfg.log_every == 0 or self.step == cfg.max_steps
                at_ckpt = self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps
                if at_log or at_ckpt:
                    # one synchronisation per log, not per step; the mean over all ranks' shards
                    mean = mean_over_ranks(running / count, self.dist).item()
                    if not math.isfinite(mean):
                        raise self._diverged(since)
                    now = time.perf_counter()
                    self.elapsed += now - last_time
                    rate = (self.step - last_step) * cfg.batch_size / max(now - last_time, 1e-9)
                    self.history.append((self.step, mean))
                    bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{rate:.0f}")
                    if callback is not None:
                        callback({"step": self.step, "loss": mean, "lr": lr_at(self.step - 1, cfg),
                                  "images_per_second": rate})
                    running, count, since = None, 0, self.step  # loss summed since the last log
                    last_time, last_step = time.perf_counter(), self.step
                    if at_ckpt:
                        self.save()
            if request.signum is not None and self.step < cfg.max_steps:
                if self.step != self.saved_step:
                    self.save()
                raise TrainingInterrupted(self.step, self.path, request.signum)
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:
            # A second Ctrl-C: keep the work done so far, unless it hit the middle of an update (then
            # the weights may be half-updated, and the last periodic checkpoint is the good one).
            if not updating and self.step != self.saved_step:
                self.save()
            if self.saved_step is None:
                raise
            raise TrainingInterrupted(self.saved_step, self.path, signal.SIGINT) from None
        finally:
            bar.close()
        return self.path


def train(config: TrainConfig, resume: bool = True, *, progress: bool = True,
          callback: Callable | None = None, log: Callable = print) -> Path:
    """Train a DDPM as ``config`` says; return the path of the final checkpoint.

    resume: continue from ``out_dir/checkpoint.pt`` if it exists (printing ``Resuming from <path>
    at step <k>``); with resume=False an existing checkpoint is renamed, never overwritten.
    callback: called at every log with a dict (step, loss, lr, images_per_second), e.g. to draw
    a live loss curve. Raises :class:`TrainingDiverged` if the loss becomes NaN or infinite.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    context = launch_context()
    shard_bounds(config.validate().batch_size, context)   # a batch the processes cannot share: refused first
    if context.is_main:            # before any work: not five minutes in, at the first save
        check_writable_folder(config.out_dir)
    trainer = Trainer(config, log=log)
    with contextlib.ExitStack() as stack:
        stack.callback(shutdown, trainer.dist)
        if trainer.dist.is_main:     # one run per folder; the lock dies with the process
            stack.enter_context(folder_lock(config.out_dir))
            stale = remove_stale_temporaries(config.out_dir, CHECKPOINT_NAME)
            if stale:
                log(f"Removed {len(stale)} unfinished temporary file(s) of an interrupted save: "
                    f"{', '.join(p.name for p in stale)}")
        barrier(trainer.dist)
        return _resume_or_start(trainer, config, resume, progress, callback)


def _resume_or_start(trainer: Trainer, config: TrainConfig, resume: bool, progress: bool, callback) -> Path:
    """Continue from the folder's checkpoint (resume) or set it aside (not resume), then train."""
    if resume and trainer.path.exists():
        trainer.load(trainer.path)
        trainer.log(f"Resuming from {trainer.path} at step {trainer.step}")
        if trainer.step >= config.max_steps:
            trainer.log(f"Already trained to step {trainer.step} (max_steps={config.max_steps}); nothing to do.")
            return trainer.path
    else:
        if not resume and trainer.dist.is_main:
            trainer.set_aside_old_checkpoint()
        barrier(trainer.dist)
        if config.init_from is not None:   # every rank loads the same weights
            trainer.start_from_init()
    return trainer.run(progress=progress, callback=callback)
