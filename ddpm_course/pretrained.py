"""Pretrained models shipped in ``assets/``: so every notebook and the demo can sample at once.

A shipped model is the EMA weights of a checkpoint written by ``train``, stored in float16 (half
the size; sampling runs in float32), with its TrainConfig, in ``assets/pretrained-NAME.pt``.
Beside it, ``pretrained-NAME.json`` is its card: the exact command that trained it, the data,
steps, wall time, machine, the ``evaluate`` results of the shipped weights and their sha256.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ._checks import check_choice
from .checkpoints import PRETRAINED_FORMAT, Checkpoint, load_checkpoint, read_checkpoint, save_checkpoint
from .evaluator import assets_dir, sha256, verified_card
from .training import describe_machine

PRETRAINED = ("mnist-cond", "mnist-uncond")


def pretrained_paths(name: str, assets=None) -> tuple:
    folder = Path(assets) if assets is not None else assets_dir()
    return folder / f"pretrained-{name}.pt", folder / f"pretrained-{name}.json"


def export_pretrained(checkpoint, name: str, *, command: str, assets=None) -> Path:
    """Write the EMA weights of ``checkpoint`` (float16) and its config as ``pretrained-NAME.pt``.

    Returns the path; :func:`write_card` adds the card once the shipped file is evaluated.
    """
    check_choice("name", name, PRETRAINED)
    state = read_checkpoint(checkpoint)
    weights, _ = pretrained_paths(name, assets)
    payload = {
        "format": PRETRAINED_FORMAT,
        "config": state["config"],
        "step": state["step"],
        "ema": {k: v.half() if v.is_floating_point() else v for k, v in state["ema"].items()},
        "history": state.get("history", []),
        "info": {**state.get("info", {}), "command": command},
    }
    return save_checkpoint(payload, weights)


def write_card(name: str, evaluation: dict, assets=None, note: str | None = None) -> dict:
    """Write ``pretrained-NAME.json`` for the shipped weights, with their evaluation results."""
    weights, card_path = pretrained_paths(name, assets)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    info, config = state["info"], state["config"]
    card = {
        "name": name,
        "command": info.get("command"),
        "data": f"{info.get('data')} ({info.get('num_images')} images)",
        "steps": state["step"],
        "batch_size": config["batch_size"],
        "train_seconds": info.get("train_seconds"),
        "machine": info.get("machine") or describe_machine(torch.device(info.get("device", "cpu"))),
        "precision": info.get("precision"),
        "weights": "EMA weights stored in float16; sampling runs in float32",
        "parameters": sum(v.numel() for v in state["ema"].values() if v.is_floating_point()),
        "config": config,
        "evaluation": evaluation,
        "torch": info.get("torch"),
        "note": note,
        "sha256": sha256(weights),
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card


def load_pretrained(name: str = "mnist-cond", device="cpu", assets=None) -> Checkpoint:
    """A shipped model, ready to sample: ``ckpt.ema_model`` (== ``ckpt.model``), ``ckpt.schedule``.

    Checks the weights' sha256 against the card first.
    """
    check_choice("name", name, PRETRAINED)
    weights, card_path = pretrained_paths(name, assets)
    if not weights.is_file() or not card_path.is_file():
        raise FileNotFoundError(f"pretrained model {name!r} not found: expected {weights} and {card_path}")
    card = verified_card(weights, card_path)
    ckpt = load_checkpoint(weights, device)
    ckpt.info["card"] = card
    return ckpt
