"""Training configuration and the named profiles ``ci``, ``cpu`` and ``t4``.

A :class:`TrainConfig` is plain data: it is printed, saved inside every checkpoint and rebuilt
from there, so a checkpoint always says how its model was trained.

Profiles (choose with ``DDPM_COURSE_PROFILE``; default ``t4`` with CUDA, else ``cpu``):

    ci    seconds on a CPU: a tiny model that tests and CI train end to end
    cpu   a class-conditional model that draws recognisable digits on a 2-core CPU in 10-30 minutes
    t4    a class-conditional model for a free Colab T4 GPU: full quality in minutes
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from ._checks import check_choice, check_float, check_int
from .unet import UNetConfig

SCHEDULES = ("linear", "cosine")
OPTIMIZERS = ("adamw", "adam", "muon")  # "muon": Muon for hidden layers, AdamW for the rest (ddpm_course.optim)
PRECISIONS = ("auto", "no", "fp16", "bf16")
TRAIN_SPLITS = ("auto", "train", "test")
LOSS_TYPES = ("mse", "l1")    # the per-pixel error of the noise-prediction loss (ddpm_course.losses)
LR_SCHEDULES = ("constant", "cosine")  # after the warm-up (ddpm_course.training.lr_at)
TIMESTEP_SAMPLERS = ("uniform", "stratified")  # how a batch draws its t (ddpm_course.losses.sample_timesteps)


@dataclass
class TrainConfig:
    """Everything :func:`ddpm_course.train` needs. Each field says when to change it."""

    model: UNetConfig = field(default_factory=UNetConfig)  # the U-Net; see UNetConfig
    schedule: str = "linear"      # "linear" (DDPM) or "cosine" (Improved DDPM); cosine suits small T
    T: int = 1000                 # diffusion steps; DDPM used 1000
    dataset: str = "mnist"        # "mnist", "fashion_mnist", or a folder of images
    split: str = "auto"           # "train", "test", or "auto": train when found, else test (said aloud)
    subset: int | None = None     # keep only the first N images (None = all)
    data_root: str | None = None  # where the data lives (None = $DDPM_COURSE_DATA, then ./data)
    batch_size: int = 128         # images per step; larger is faster per image on a GPU
    lr: float = 2e-4              # peak learning rate after warm-up (DDPM: 2e-4)
    warmup_steps: int = 200       # linear warm-up from 0 to lr; then lr_schedule
    lr_schedule: str = "constant"  # "constant" (a run can be extended), or "cosine": decays to 0 at max_steps
    weight_decay: float = 0.0     # AdamW weight decay
    optimizer: str = "adamw"      # "adamw", "adam", or "muon": Muon for the hidden layers' weights, AdamW for the rest
    muon_lr_scale: float | None = None  # optimizer="muon" only: Muon's lr / lr (None: 5)
    adam_beta2: float = 0.999     # the optimiser's second-moment decay (Adam's beta2); lower adapts faster
    max_steps: int = 5000         # optimisation steps in all (a resumed run continues to this)
    grad_clip: float | None = 1.0  # clip the gradient norm to this (None = no clipping)
    loss: str = "mse"             # "mse" (DDPM's simple loss) or "l1"
    timesteps: str = "uniform"    # "uniform" (DDPM), or "stratified": one t from each 1/B of [0, T) per batch
    min_snr_gamma: float | None = None  # Min-SNR-gamma loss weighting (Hang et al. 2023; 5 is usual); None: off
    ema_decay: float = 0.999      # EMA of the weights used for sampling; 0 disables it
    p_uncond: float = 0.1         # label dropout for classifier-free guidance (conditional models)
    guidance: float | None = None  # the guidance scale its checkpoints recommend for sampling (conditional
                                   # models; None: 2). Measured per profile: better-trained models want less
    mixed_precision: str = "auto"  # "auto" (bf16/fp16 on CUDA, bf16 on a CPU with AMX or AVX512_BF16, else none), "no",
                                   # "fp16", "bf16" (also CPU); ddpm_course.devices.resolve_precision
    channels_last: bool = False   # NHWC memory layout; speeds up convolutions on the CPU (and often a GPU)
    fused_optimizer: bool = False  # one fused kernel for the whole AdamW update (CPU and CUDA) instead of a loop
    compile: bool = False         # torch.compile the network: a slow first step, then faster ones where it pays
    device: str = "auto"          # "auto" (cuda, then mps, then cpu), or a torch device string
    seed: int = 0                 # seeds the weights, the batches and the noise
    init_from: str | None = None  # start from this checkpoint's or shipped model's EMA weights (same U-Net)
                                  # instead of random ones: fine-tuning, or extending a run whose checkpoint is gone
    out_dir: str = "runs/default"  # where checkpoint.pt is written
    checkpoint_every: int = 1000  # steps between checkpoints (one is always written at the end)
    log_every: int = 50           # steps between loss reports (and NaN checks)

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = UNetConfig.from_dict(self.model)

    def validate(self) -> TrainConfig:
        """Raise ValueError naming the first field that is out of range; return self."""
        if not isinstance(self.model, UNetConfig):
            raise TypeError(f"TrainConfig.model must be a UNetConfig, got {type(self.model).__name__}")
        self.model.validate()
        check_choice("TrainConfig.schedule", self.schedule, SCHEDULES)
        check_choice("TrainConfig.split", self.split, TRAIN_SPLITS)
        check_choice("TrainConfig.optimizer", self.optimizer, OPTIMIZERS)
        check_choice("TrainConfig.loss", self.loss, LOSS_TYPES)
        check_choice("TrainConfig.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("TrainConfig.timesteps", self.timesteps, TIMESTEP_SAMPLERS)
        check_choice("TrainConfig.mixed_precision", self.mixed_precision, PRECISIONS)
        for name in ("T", "batch_size", "max_steps", "checkpoint_every", "log_every"):
            check_int(f"TrainConfig.{name}", getattr(self, name), minimum=1)
        check_int("TrainConfig.warmup_steps", self.warmup_steps, minimum=0)
        check_int("TrainConfig.seed", self.seed, minimum=0)
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
            raise ValueError(f"TrainConfig.init_from must be a checkpoint's path or None, got {self.init_from!r}")
        if self.subset is not None:
            check_int("TrainConfig.subset", self.subset, minimum=1)
        check_float("TrainConfig.lr", self.lr, minimum=0.0, open_min=True)
        check_float("TrainConfig.weight_decay", self.weight_decay, minimum=0.0)
        check_float("TrainConfig.adam_beta2", self.adam_beta2, minimum=0.0, maximum=1.0, open_max=True)
        check_float("TrainConfig.ema_decay", self.ema_decay, minimum=0.0, maximum=1.0, open_max=True)
        check_float("TrainConfig.p_uncond", self.p_uncond, minimum=0.0, maximum=1.0)
        if self.min_snr_gamma is not None:
            check_float("TrainConfig.min_snr_gamma", self.min_snr_gamma, minimum=0.0, open_min=True)
        if self.grad_clip is not None:
            check_float("TrainConfig.grad_clip", self.grad_clip, minimum=0.0, open_min=True)
        if self.lr_schedule == "cosine" and self.warmup_steps >= self.max_steps:
            raise ValueError(
                f"TrainConfig.lr_schedule='cosine' decays the lr after the warm-up, but warmup_steps="
                f"{self.warmup_steps} >= max_steps={self.max_steps} leaves no steps to decay over")
        if self.muon_lr_scale is not None:
            check_float("TrainConfig.muon_lr_scale", self.muon_lr_scale, minimum=0.0, open_min=True)
            if self.optimizer != "muon":
                raise ValueError(f"TrainConfig.muon_lr_scale={self.muon_lr_scale} scales Muon's learning rate, but "
                                 f"optimizer={self.optimizer!r}; set optimizer='muon' or muon_lr_scale=None")
        if self.optimizer == "muon" and self.fused_optimizer:
            raise ValueError("TrainConfig.fused_optimizer=True fuses AdamW's update, but optimizer='muon' has no fused "
                             "kernel; set fused_optimizer=False or optimizer='adamw'")
        if self.guidance is not None:
            check_float("TrainConfig.guidance", self.guidance, minimum=0.0)
            if self.model.num_classes is None:
                raise ValueError(
                    f"TrainConfig.guidance={self.guidance} is the classifier-free guidance scale its checkpoints "
                    "recommend, but the model is unconditional (model.num_classes=None); set guidance=None")
        if self.p_uncond > 0 and self.model.num_classes is None:
            raise ValueError(
                f"TrainConfig.p_uncond={self.p_uncond} drops labels for classifier-free guidance, but "
                "the model is unconditional (model.num_classes=None); set p_uncond=0 or num_classes=10"
            )
        return self

    def to_dict(self) -> dict:
        """Plain data (dicts, lists, numbers, strings) for checkpoints and JSON."""
        data = asdict(self)
        data["model"] = {k: list(v) if isinstance(v, tuple) else v for k, v in data["model"].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Rebuild a config from :meth:`to_dict`; unknown keys are an error."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known fields: {sorted(known)}")
        model = data.pop("model", {})
        model = model if isinstance(model, UNetConfig) else UNetConfig.from_dict(dict(model))
        return cls(model=model, **data)

    def with_overrides(self, pairs) -> TrainConfig:
        """A validated copy with ``[(key, value)]`` overrides; ``model.X`` keys change the UNetConfig.

        Unknown keys are an error that lists the known ones (:meth:`from_dict`).
        """
        top, model = {}, {}
        for key, value in pairs:
            if key.startswith("model."):
                model[key[len("model."):]] = value
            else:
                top[key] = value
        data = {**self.to_dict(), **top}
        data["model"] = {**self.to_dict()["model"], **model}
        return TrainConfig.from_dict(data).validate()

    def replace(self, **changes) -> TrainConfig:
        """A copy with some fields changed; ``model=dict(...)`` changes fields of the UNetConfig."""
        model = changes.pop("model", None)
        if isinstance(model, dict):
            model = dataclasses.replace(self.model, **model)
        new = dataclasses.replace(self, **changes)
        if model is not None:
            new.model = model
        return new


# ----------------------------------------------------------------------------- profiles
def _ci() -> TrainConfig:
    return TrainConfig(
        model=UNetConfig(base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=1,
                         attention_resolutions=(7,), num_classes=10),
        T=100, schedule="cosine", subset=512, batch_size=32, lr=1e-3, warmup_steps=10,
        max_steps=30, ema_decay=0.9, checkpoint_every=15, log_every=5, out_dir="runs/ci",
    )


def _cpu() -> TrainConfig:
    # Sized to 10 minutes on the slowest 2-core machine that trains in bf16 so far, an AMD EPYC Zen 4
    # (family 25, AVX512_BF16; sessions 24-27): there 1350 steps took 553-590 s (session 27), 1300 steps
    # 540-602 s, and 1500 steps 612-657 s (session 26), so 1500 no longer fit. The AdamW profile's
    # 1500 steps took 559-588 s in float32 on the 2-core Intel Xeon of sessions 12-18 (it has AMX,
    # where "auto" now trains in bf16 at 1.53x the images/s) and 313-338 s in bf16 on a Zen 5 (family 26, session 22);
    # a 2-core AMD EPYC with AVX2 only trains 86.8 img/s in float32 (session 20: about 22 minutes for
    # 1500 steps). The recipe is the recipe study's winner (docs/RESULTS.md, sessions 13-27): the
    # cosine noise schedule, a cosine learning-rate decay from 2e-3, one t per stratum of [0, T) in
    # each batch, and (session 26) Muon at 5x that learning rate for the hidden layers' weights with
    # AdamW for the rest, which fits the training images more closely in the same steps and lets the
    # samples need less guidance (1.4). Session 27 found the same four-seed means at 1350 steps as at
    # 1500 (the seeds differ by more than the lengths). What was tried at this budget and not kept,
    # each with its numbers and a link to its commands: the table "The `cpu` profile's recipe study
    # in one table" in docs/RESULTS.md (sessions 8-27).
    return TrainConfig(
        model=UNetConfig(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                         attention_resolutions=(7,), num_classes=10),
        T=1000, schedule="cosine", batch_size=64, lr=2e-3, warmup_steps=100, lr_schedule="cosine",
        optimizer="muon", muon_lr_scale=5.0,
        timesteps="stratified", max_steps=1350, ema_decay=0.995, guidance=1.4,
        checkpoint_every=500, log_every=50, out_dir="runs/cpu",
        channels_last=True,  # measured: 1.16x training images/s on the 2-core development CPU
    )


def _t4() -> TrainConfig:
    # Sized by its FLOP count (`profiles --flops`: 3.7 GFLOP per training image, 3.8 PFLOP in all).
    # Timed on an H100 (session 16, docs/RESULTS.md): the whole `train --profile t4` command took
    # 5.1 min (about 3500 img/s, 13 TFLOP/s: 2% of the bf16 matrix-multiply peak, so small kernels,
    # not arithmetic, set the pace); a T4 is not measured and will be slower than that. Judged at
    # N = 1000: FID ratio 1.46 and 99.6% of labels right at guidance 1.25 (2.59 at 1.5, 3.57 at 1.75).
    return TrainConfig(
        model=UNetConfig(base_channels=48, channel_mults=(1, 2, 2), num_res_blocks=2,
                         attention_resolutions=(7,), dropout=0.1, num_classes=10),
        T=1000, schedule="linear", batch_size=256, lr=4e-4, warmup_steps=200, max_steps=4000,
        ema_decay=0.999, guidance=1.25, checkpoint_every=1000, log_every=100, out_dir="runs/t4",
    )


@dataclass(frozen=True)
class NotebookSizes:
    """How big the notebooks' computations are under a profile."""

    quick: bool              # the reduced configuration CI runs: smallest figures, fewest steps
    num_images: int          # images per figure
    sampler_steps: int       # DDIM / DPM-Solver++ steps in figures
    ddpm_steps: int | None   # None: DDPM over all T steps; else a respaced chain of this many steps
    eval_samples: int        # samples for the evaluation notebook's metrics
    gif_frames: int


FULL_NOTEBOOKS = NotebookSizes(quick=False, num_images=16, sampler_steps=20, ddpm_steps=None, eval_samples=1000,
                               gif_frames=30)


@dataclass(frozen=True)
class Profile:
    """A named training profile: its TrainConfig, the time it is sized for, the notebooks' sizes."""

    build: Callable[[], TrainConfig]  # a fresh TrainConfig
    machine: str                      # what it is meant for
    budget_minutes: float             # training wall time it is sized for on that machine
    notebooks: NotebookSizes = FULL_NOTEBOOKS

    def __call__(self) -> TrainConfig:
        return self.build()


PROFILES = {
    "ci": Profile(_ci, "any CPU, for tests and CI", 0.5,
                  NotebookSizes(quick=True, num_images=8, sampler_steps=10, ddpm_steps=25, eval_samples=100,
                                gif_frames=8)),
    "cpu": Profile(_cpu, "a 2-core AMD EPYC Zen 4 in bf16 (about 9 on a 2-core Intel Xeon in float32, 5 on a "
                         "Zen 5 in bf16, 20-22 on a CPU with AVX2 only: their AdamW 1500-step times, scaled)", 10.0),
    "t4": Profile(_t4, "a Colab T4 GPU (a goal: an H100 took 5.1)", 5.0),
}


def profile_info(name: str) -> Profile:
    """The :class:`Profile` registered under ``name`` (its config, budget and notebook sizes)."""
    check_choice("profile", name, list(PROFILES))
    return PROFILES[name]


def recommended_sampling(num_classes: int | None, guidance: float | None = None) -> dict:
    """The sampler a model with ``num_classes`` (None: unconditional) is sampled with unless told otherwise.

    DPM-Solver++ in 20 steps; for a conditional model the guidance scale ``guidance`` (its
    ``TrainConfig.guidance``, measured per profile), else 2 (the best FID ratio at >= 98% label
    accuracy measured for the first 1000-step ``cpu``-profile model); 1 (none) for an unconditional
    one. A better-trained model needs less: the shipped ``mnist-cond`` (3600 + 5000 steps) recommends 1.1.
    Checkpoints carry this dict, so every command samples a model the same way by default.
    """
    if num_classes is None:
        if guidance is not None:
            raise ValueError(f"guidance={guidance} was given for an unconditional model (no labels to guide "
                             "with); leave it out")
        return {"sampler": "dpm_solver", "steps": 20, "guidance_scale": 1.0}
    return {"sampler": "dpm_solver", "steps": 20, "guidance_scale": 2.0 if guidance is None else float(guidance)}


def default_profile_name() -> str:
    """``$DDPM_COURSE_PROFILE`` if set, else ``t4`` when CUDA is available, else ``cpu``."""
    name = os.environ.get("DDPM_COURSE_PROFILE")
    if name:
        check_choice("DDPM_COURSE_PROFILE", name, list(PROFILES))
        return name
    return "t4" if torch.cuda.is_available() else "cpu"


def get_profile(name: str | None = None, **overrides) -> TrainConfig:
    """The TrainConfig of a named profile (default: :func:`default_profile_name`), with overrides.

    ``get_profile("cpu", max_steps=500, model=dict(base_channels=48))``.
    """
    return profile_info(name or default_profile_name())().replace(**overrides).validate()


def demo_config(out_dir: str = "demo/run", max_steps: int | None = None, seed: int = 0) -> TrainConfig:
    """The ``demo`` command's run: a small conditional model trained for about a minute on a CPU.

    Not a profile: it trades quality for time so that a newcomer sees digits emerge at once.
    The cosine schedule with T=200 learns class shapes faster than T=1000 in so few steps, and
    EMA is off: over 200 fast-moving steps an average of the weights lags behind them (measured:
    noisier samples with EMA than without).
    """
    config = TrainConfig(
        model=UNetConfig(base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=1,
                         attention_resolutions=(7,), num_classes=10),
        T=200, schedule="cosine", batch_size=64, lr=1e-3, warmup_steps=20, max_steps=200,
        ema_decay=0.0, p_uncond=0.1, checkpoint_every=100, log_every=20, out_dir=out_dir, seed=seed,
    )
    return config.replace(max_steps=max_steps).validate() if max_steps else config.validate()
