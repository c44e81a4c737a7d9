"""Checkpoints: written atomically, loaded without running code.

A checkpoint is a plain dict (as in nanoGPT): model and EMA weights, optimizer and grad-scaler
state, the step, the random-number-generator states and the TrainConfig as plain data, so that
``load_checkpoint`` can rebuild the model and ``train`` can resume exactly. It is written to a
temporary file in the same folder and moved into place with ``os.replace``, so an interruption
never leaves a half-written checkpoint. It is read with ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain data: opening a checkpoint never runs code.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import TrainConfig, recommended_sampling
from .files import atomic_write
from .schedules import NoiseSchedule
from .unet import UNet

FORMAT = "ddpm_course.checkpoint/1"
PRETRAINED_FORMAT = "ddpm_course.pretrained/1"  # EMA weights only (ddpm_course.pretrained)
EVALUATOR_FORMAT = "ddpm_course.evaluator/1"    # the offline judge (ddpm_course.evaluator)
KINDS = {FORMAT: "a training checkpoint (load it with load_checkpoint)",
         PRETRAINED_FORMAT: "a shipped pretrained model (load it with load_pretrained or load_checkpoint)",
         EVALUATOR_FORMAT: "an evaluator, the classifier that judges samples (load it with load_evaluator)"}


def save_checkpoint(state: dict, path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    The state is serialised in memory first, so that a full disk is reported as such (an OSError
    "no space left ... the previous version is unchanged") and not as torch's writer's internal error.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def read_state(path, device="cpu", *, formats=(FORMAT, PRETRAINED_FORMAT), what: str = "model checkpoint") -> dict:
    """The raw dict of a file the package wrote, loaded with ``weights_only=True`` onto ``device``.

    Says in the user's terms what is wrong: not found, empty, truncated or corrupt, content other
    than tensors and plain data (refused: reading never runs code), or a file of another kind
    (e.g. an evaluator where a model was expected) or an unknown format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {str(path)!r} is not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): not a {what}; was its writing interrupted?")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        if "global" in str(error).lower():  # a class or function to import: code would run
            raise ValueError(f"{path} was refused: it holds objects other than tensors and plain data, which a "
                             f"ddpm_course {what} never does (reading a file never runs code from it)") from None
        raise ValueError(f"{path} is truncated or corrupt: not a file torch wrote") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} is truncated or corrupt: torch could not read it ({first})") from None
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt is None:
        raise ValueError(f"{path} is not a ddpm_course file (it carries no format tag), so not a {what}")
    if fmt not in KINDS:
        raise ValueError(f"{path} has format {fmt!r}, which this version of ddpm_course does not know (was it "
                         f"written by a newer version?); expected {' or '.join(map(repr, formats))}")
    if fmt not in formats:
        raise ValueError(f"{path} is {KINDS[fmt]}, not a {what}")
    return state


def read_checkpoint(path, device="cpu") -> dict:
    """The raw dict of a training checkpoint or shipped model (:func:`read_state`)."""
    return read_state(path, device)


def initial_weights(path, model_config) -> tuple:
    """(EMA weights, origin) of the checkpoint or shipped model at ``path``, to start a new
    run from (``TrainConfig.init_from``). Its U-Net must be ``model_config``: weights fit only their
    net. origin, which the new run's checkpoints carry in ``info["init_from"]``: the file, its steps,
    batch size, training seconds and data, and its own origin, so that a card can count all the training."""
    state = read_state(path, what="checkpoint to start from (TrainConfig.init_from)")
    saved = TrainConfig.from_dict(state["config"]).model
    if saved != model_config:
        diffs = "; ".join(f"{k}: {v!r} there, {getattr(model_config, k)!r} here"
                          for k, v in vars(saved).items() if getattr(model_config, k) != v)
        raise ValueError(f"TrainConfig.init_from={str(path)!r} holds a different U-Net ({diffs}); its "
                         f"weights fit only the same model config")
    info = state.get("info", {})
    origin = {"path": str(path), "step": int(state["step"]), "batch_size": state["config"].get("batch_size"),
              "train_seconds": info.get("train_seconds"),
              "data": info.get("data"), "machine": info.get("machine"), "init_from": info.get("init_from")}
    return state["ema"], origin     # float16 weights of a shipped model become float32 on loading


def training_stages(step: int, train_seconds, origin: dict | None, batch_size: int | None = None) -> list:
    """[(steps, seconds, batch size), ...] of every stage of a model's training, first to last: those
    of the runs it started from (``origin``, :func:`initial_weights`' chain), then its own. A batch
    size is None where the stage did not record it (origins written before session 13)."""
    stages = [(step, train_seconds, batch_size)]
    while origin:
        stages.insert(0, (origin["step"], origin["train_seconds"], origin.get("batch_size")))
        origin = origin.get("init_from")
    return stages


@dataclass
class Checkpoint:
    """A trained model ready to sample from: ``.ema_model`` is usually the one to use."""

    model: UNet                  # the trained weights, in eval mode
    ema_model: UNet              # the EMA weights, in eval mode (sample with these)
    schedule: NoiseSchedule      # the noise schedule it was trained with
    config: TrainConfig          # how it was trained
    step: int                    # optimisation steps done
    path: Path | None = None
    history: list = field(default_factory=list)  # [(step, mean loss), ...]
    info: dict = field(default_factory=dict)     # data used, wall time, versions
    sampling: dict = field(default_factory=dict)  # recommended sampler, steps, guidance_scale (autoguidance)
    guide: UNet | None = None    # a worse model to guide this one with (autoguidance.py), if it ships one

    @property
    def num_classes(self) -> int | None:
        return self.config.model.num_classes

    @property
    def steps_trained(self) -> str:
        """"3600", or with the runs it started from, every stage: "3600 + 5000"."""
        stages = training_stages(self.step, None, self.info.get("init_from"))
        return " + ".join(str(step) for step, _, _ in stages)


def _fast_layout(model: UNet) -> UNet:
    """On the CPU, the channels-last (NHWC) layout: sampling the ``cpu`` model ran 1.1x faster at
    batch 64 and 1.4-1.8x at batch 500 on the 2-core development machine (same results up to
    float rounding). Other devices keep the default layout (not measured there)."""
    if next(model.parameters()).device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


def load_checkpoint(path, device="cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`ddpm_course.train` (or a shipped pretrained model,
    whose ``.model`` is its EMA weights) onto ``device``."""
    state = read_checkpoint(path, device)
    config = TrainConfig.from_dict(state["config"])
    ema_model = UNet(config.model).to(device)
    ema_model.load_state_dict(state["ema"])  # float16 weights of a shipped model become float32
    if "model" in state:
        model = UNet(config.model).to(device)
        model.load_state_dict(state["model"])
    else:  # a shipped model carries only its EMA weights
        model = ema_model
    schedule = NoiseSchedule.from_name(config.schedule, config.T).to(device)
    model, ema_model = (_fast_layout(m) for m in (model, ema_model))
    guide = _fast_layout(_guide_model(state["guide"], device)).eval() if "guide" in state else None
    return Checkpoint(model.eval(), ema_model.eval(), schedule, config, int(state["step"]), Path(path),
                      [tuple(h) for h in state.get("history", [])], dict(state.get("info", {})),
                      dict(state.get("sampling") or recommended_sampling(config.model.num_classes)), guide)


def _guide_model(guide_state: dict, device) -> UNet:
    """The guide a shipped model carries (``state["guide"]``: its config, step, EMA weights, info)."""
    guide = UNet(TrainConfig.from_dict(guide_state["config"]).model).to(device)
    guide.load_state_dict(guide_state["ema"])
    return guide


def load_guide(path, schedule: NoiseSchedule, device="cpu") -> UNet:
    """The EMA model of the checkpoint or shipped model at ``path``, to guide a model trained with
    ``schedule`` (``--guide``; see :mod:`ddpm_course.autoguidance`). Its schedule must be the same."""
    from .autoguidance import check_same_schedule

    guide = load_checkpoint(path, device)
    check_same_schedule(schedule, guide.schedule)
    return guide.ema_model
