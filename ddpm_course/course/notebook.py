"""What every notebook does first: pick the device and profile, load digits, find a trained model.

The notebooks run under a profile (see :mod:`ddpm_course.config`): ``t4`` on a GPU, ``cpu`` on a
laptop, and ``ci`` — the reduced configuration CI runs every notebook under, where figures use
fewer images and fewer sampling steps so that all notebooks finish in minutes on two CPU cores.
``$DDPM_COURSE_PROFILE`` overrides the choice.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .._version import __version__
from ..checkpoints import Checkpoint, load_checkpoint
from ..config import TrainConfig, default_profile_name, get_profile, profile_info
from ..data import load_available
from ..devices import describe_machine, resolve_device
from ..pretrained import load_pretrained


@dataclass(frozen=True)
class CourseSettings:
    """Sizes of the notebooks' computations under one profile."""

    profile: str
    config: TrainConfig       # the profile's training configuration
    device: torch.device
    quick: bool               # True under "ci": smallest figures, fewest steps
    num_images: int           # images per figure
    sampler_steps: int        # DDIM / DPM-Solver++ steps in figures
    ddpm_steps: int | None    # None: DDPM over all T steps; else a respaced chain of this many steps
    eval_samples: int         # samples for the evaluation notebook's metrics
    gif_frames: int

    def run_dir(self, notebook: str) -> Path:
        """Where a notebook writes its run under this profile, e.g. ``runs/03_training-cpu``."""
        return Path("runs") / f"{notebook}-{self.profile}"


def settings_for(profile: str | None = None, device: str = "auto") -> CourseSettings:
    """The :class:`CourseSettings` of a profile (default: ``$DDPM_COURSE_PROFILE``, t4 with CUDA, else cpu)."""
    name = profile or default_profile_name()
    sizes = profile_info(name).notebooks
    dev = resolve_device(device)
    return CourseSettings(profile=name, config=get_profile(name).replace(device=str(dev)), device=dev,
                          quick=sizes.quick, num_images=sizes.num_images, sampler_steps=sizes.sampler_steps,
                          ddpm_steps=sizes.ddpm_steps, eval_samples=sizes.eval_samples, gif_frames=sizes.gif_frames)


def setup(profile: str | None = None, seed: int = 0) -> CourseSettings:
    """Print where the notebook runs (package, torch, device, profile) and seed torch; return the settings."""
    settings = settings_for(profile)
    torch.manual_seed(seed)
    cfg = settings.config
    print(f"ddpm_course {__version__} · torch {torch.__version__} · {describe_machine(settings.device)}")
    print(f"profile {settings.profile!r}: U-Net base {cfg.model.base_channels} x {cfg.model.channel_mults}, "
          f"T={cfg.T} {cfg.schedule}, {cfg.max_steps} training steps of {cfg.batch_size} images"
          + (" (reduced configuration for CI: small figures, few steps)" if settings.quick else ""))
    data = os.environ.get("DDPM_COURSE_DATA")
    print(f"data: {data or './data (downloaded by torchvision on first use)'}")
    return settings


def load_digits(n: int, *, seed: int = 0, dataset: str = "mnist") -> tuple:
    """``n`` random digits (n, 1, 28, 28) in [-1, 1] and their labels, from the train split if present.

    Offline machines may have only the test split: then it is used, and a note says so.
    """
    data = load_available(dataset, purpose="this notebook uses")
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return data.images[index].float(), data.labels[index]


DRIVE_MOUNT = Path("/content/drive")


def drive_folder(mount: bool = True) -> Path | None:
    """The course's folder on Google Drive, where notebook 03 can save its run:
    ``$DDPM_COURSE_DRIVE`` if set (e.g. a stand-in folder in tests), else ``MyDrive/ddpm-course`` on
    Colab, mounting Drive first when ``mount`` (Colab asks for permission once). None off Colab."""
    env = os.environ.get("DDPM_COURSE_DRIVE")
    if env:
        return Path(env)
    try:
        from google.colab import drive
    except ImportError:
        return None
    if mount and not (DRIVE_MOUNT / "MyDrive").is_dir():
        drive.mount(str(DRIVE_MOUNT))
    return DRIVE_MOUNT / "MyDrive" / "ddpm-course"


def course_model(settings: CourseSettings, *, path=None, run: str = "03_training", pretrained: str = "mnist-cond",
                 drive: bool = False) -> Checkpoint:
    """The model a notebook samples from, and a line saying which one and why: the checkpoint at
    ``path``, else the one notebook 03 trained under this profile next to the notebook, else (with
    ``drive``) the one it saved to Google Drive (:func:`drive_folder`), else the shipped pretrained
    model — always the shipped one under ``ci``, whose own model is only a smoke test.
    """
    local = settings.run_dir(run) / "checkpoint.pt"
    candidates = [Path(path)] if path is not None else [local]
    folder = drive_folder() if drive and path is None else None
    if folder is not None:
        candidates.append(folder / local)
    found = next((c for c in candidates if c.exists()), None)
    if not settings.quick and found is not None:
        ckpt = load_checkpoint(found, settings.device)
        where = "Google Drive" if folder is not None and found == folder / local else "disk"
        print(f"Using your model from notebook {run[:2]} on {where}: {found} (step {ckpt.step}); "
              f"{describe_model(ckpt)}.")
        return ckpt
    ckpt = load_pretrained(pretrained, settings.device)
    looked = " or ".join(str(c) for c in candidates)
    reason = "the ci profile" if settings.quick else f"no {looked} (run notebook {run[:2]} to train your own)"
    print(f"Using the shipped pretrained model {pretrained!r} ({reason}); {describe_model(ckpt)}.")
    return ckpt


def describe_model(ckpt: Checkpoint) -> str:
    """What a notebook is sampling from: schedule, size, labels and the recommended sampling."""
    cfg = ckpt.config
    labels = f"{ckpt.num_classes} classes" if ckpt.num_classes else "unconditional"
    predicts = "" if cfg.model.prediction == "eps" else f", predicts {cfg.model.prediction} (turned into the noise)"
    s = ckpt.sampling
    return (f"T={cfg.T} {cfg.schedule} schedule, U-Net base {cfg.model.base_channels}, {labels}{predicts}, "
            f"trained {ckpt.steps_trained} steps; recommended sampling {s['sampler']} {s['steps']} steps, "
            f"guidance {s['guidance_scale']}")


class LiveLossPlot:
    """A ``train(callback=...)`` callback that redraws a loss curve in the notebook as training runs.

    Outside a notebook it prints one line per log instead. ``history`` (a checkpoint's ``history``,
    [(step, loss), ...]) starts the curve with an earlier run's losses, marked as such, so that a
    resumed run draws its own figure showing where it took over.
    """

    def __init__(self, title: str = "training loss", every: float = 2.0, history=()):
        self.title, self.every = title, every
        self.steps = [int(step) for step, _ in history]
        self.losses = [float(loss) for _, loss in history]
        self.resumed_at = self.steps[-1] if self.steps else None
        self._handle, self._last = None, 0.0

    def __call__(self, info: dict) -> None:
        self.steps.append(info["step"])
        self.losses.append(info["loss"])
        if time.perf_counter() - self._last >= self.every:
            self.draw()

    def draw(self) -> None:
        import matplotlib.pyplot as plt

        try:
            from IPython.display import display
        except ImportError:  # pragma: no cover - plain Python
            print(f"step {self.steps[-1]}: loss {self.losses[-1]:.4f}")
            return
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(self.steps, self.losses)
        if self.resumed_at is not None:
            ax.axvline(self.resumed_at, color="gray", ls="--", lw=1, label=f"resumed at step {self.resumed_at}")
            ax.legend(fontsize=8)
        ax.set(xlabel="step", ylabel="loss (MSE on the noise)", title=self.title, yscale="log")
        ax.grid(alpha=0.3)
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)
        self._last = time.perf_counter()


def trace_shapes(model: torch.nn.Module, *inputs) -> list:
    """(name, output shape) of each top-level block of a UNet for one forward pass, in order."""
    from .diagram import layer_shapes

    return [(f"{name} ({type(module).__name__})", shape_out)
            for name, module, _, shape_out in layer_shapes(model, *inputs)]


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
