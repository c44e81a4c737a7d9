"""ddpm_course: a small, tested DDPM library for the course's notebooks.

Everything in the public API (see docs) is importable from here:

    from ddpm_course import NoiseSchedule, UNet, UNetConfig, sample, sample_ddpm, sample_ddim, train

The diffusion library is this package's modules (schedules, unet, losses, sampling, guidance,
training, ema, checkpoints, data, config, generation, evaluation, ...); the course's own tooling
(notebook setup, widgets, exercise checks, student edition, grading) is the subpackage
``ddpm_course.course``, and the command line is ``ddpm_course.cli``.
"""

from ._version import COLAB_REPO, __version__
from .autoguidance import AutoGuided, autoguided
from .checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from .config import PROFILES, TrainConfig, default_profile_name, get_profile, recommended_sampling
from .data import (
    DeviceBatches,
    TensorImageDataset,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
    load_mnist,
)
from .devices import resolve_device
from .ema import EMA
from .evaluation import evaluate_checkpoint
from .evaluator import load_evaluator
from .generation import SamplingSettings, class_labels, generate_samples, sampling_settings
from .guidance import guidance_combine, predict_noise
from .losses import diffusion_loss, noise_batch
from .pretrained import load_pretrained
from .sampling import (
    DEFAULT_STEPS,
    SAMPLERS,
    StepOutput,
    ddim_step,
    ddim_timesteps,
    ddpm_step,
    dpm_solver_step,
    predict_x0,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpm_solver,
)
from .schedules import NoiseSchedule
from .training import TrainingDiverged, train
from .unet import UNet, UNetConfig, sinusoidal_embedding
from .visualize import ProcessRecorder, process_grid, save_gif, save_grid, show_images

__all__ = [
    "__version__",
    "AutoGuided",
    "autoguided",
    "Checkpoint",
    "class_labels",
    "DEFAULT_STEPS",
    "evaluate_checkpoint",
    "generate_samples",
    "recommended_sampling",
    "sample",
    "SAMPLERS",
    "sampling_settings",
    "SamplingSettings",
    "COLAB_REPO",
    "ddim_step",
    "ddim_timesteps",
    "ddpm_step",
    "default_profile_name",
    "DeviceBatches",
    "diffusion_loss",
    "dpm_solver_step",
    "EMA",
    "get_profile",
    "guidance_combine",
    "load_checkpoint",
    "load_dataset",
    "load_fashion_mnist",
    "load_image_folder",
    "load_evaluator",
    "load_mnist",
    "load_pretrained",
    "noise_batch",
    "NoiseSchedule",
    "predict_noise",
    "predict_x0",
    "process_grid",
    "ProcessRecorder",
    "PROFILES",
    "resolve_device",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpm_solver",
    "save_checkpoint",
    "save_gif",
    "save_grid",
    "show_images",
    "sinusoidal_embedding",
    "StepOutput",
    "TensorImageDataset",
    "train",
    "TrainConfig",
    "TrainingDiverged",
    "UNet",
    "UNetConfig",
]
