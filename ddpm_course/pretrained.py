"""Pretrained models shipped in ``assets/``: so every notebook and the demo can sample at once.

A shipped model is the EMA weights of a checkpoint written by ``train``, stored in float16 (half
the size; sampling runs in float32), with its TrainConfig and recommended sampling settings, in
``assets/pretrained-NAME.pt``. Beside it, ``pretrained-NAME.json`` is its card: the exact command
that trained it, the data, steps, wall time, machine, the ``evaluate`` results of the shipped
weights (each with the command that reproduces it) and their sha256.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ._checks import check_choice, check_float
from .assets import asset_paths, file_sha256, read_card, verified_card
from .checkpoints import (
    PRETRAINED_FORMAT,
    Checkpoint,
    load_checkpoint,
    load_guide,
    read_checkpoint,
    save_checkpoint,
    training_stages,
)
from .config import TrainConfig, recommended_sampling
from .devices import describe_machine
from .files import atomic_write_json

PRETRAINED = ("mnist-cond", "mnist-uncond", "fashion-cond")  # the last: Fashion-MNIST, 10 kinds of clothing
SAME_EVALUATION = ("sampler", "steps", "guidance_scale", "autoguidance", "num_samples", "seed")


def pretrained_paths(name: str, assets=None) -> tuple:
    """(weights, card) of the shipped model ``name``."""
    check_choice("name", name, PRETRAINED)
    return asset_paths(f"pretrained-{name}", assets)


def _half(weights: dict) -> dict:
    return {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}


def _num_parameters(weights: dict) -> int:
    return sum(v.numel() for v in weights.values() if v.is_floating_point())


def export_pretrained(checkpoint, name: str, *, command: str, assets=None,
                      guidance_scale: float | None = None, guide=None, autoguidance: float | None = None) -> Path:
    """Write the EMA weights of ``checkpoint`` (float16), its config and sampling settings as
    ``pretrained-NAME.pt``. Returns the path; :func:`write_card` adds the card once it is evaluated.

    guidance_scale: the classifier-free guidance the shipped model recommends (what every command
    and notebook samples it with by default); None keeps the checkpoint's. Conditional models only.
    guide, autoguidance: a worse checkpoint of the same U-Net and noise schedule that the file
    carries (its EMA weights in float16, config, steps and info) and the autoguidance scale the
    shipped model recommends with it (:mod:`ddpm_course.autoguidance`); both or neither.
    """
    state = read_checkpoint(checkpoint)
    config = TrainConfig.from_dict(state["config"])
    sampling = dict(state.get("sampling") or recommended_sampling(config.model.num_classes))
    if guidance_scale is not None:
        if config.model.num_classes is None:
            raise ValueError(f"guidance_scale={guidance_scale} was given, but {checkpoint} is an unconditional model "
                             "(no labels to guide with); leave it out")
        sampling["guidance_scale"] = check_float("guidance_scale", guidance_scale, minimum=0.0)
    weights, _ = pretrained_paths(name, assets)
    payload = {
        "format": PRETRAINED_FORMAT,
        "config": state["config"],
        "step": state["step"],
        "ema": _half(state["ema"]),
        "history": state.get("history", []),
        "info": {**state.get("info", {}), "command": command},
    }
    if (guide is None) != (autoguidance is None) or autoguidance == 1.0:
        raise ValueError(f"guide and autoguidance come together (a guide, and a scale other than 1 to use it "
                         f"at), got guide={guide!r}, autoguidance={autoguidance!r}")
    if guide is not None:
        payload["guide"] = _guide_payload(guide, checkpoint)
        sampling["autoguidance"] = check_float("autoguidance", autoguidance, minimum=0.0)
    payload["sampling"] = sampling
    return save_checkpoint(payload, weights)


def _guide_payload(guide, checkpoint) -> dict:
    """What a shipped file keeps of its guide: float16 EMA weights, config, steps, info and origin,
    after checking that the guide can guide the model (same U-Net shape, prediction and schedule)."""
    from .autoguidance import check_guide

    model = load_checkpoint(checkpoint)
    check_guide(model.ema_model, load_guide(guide, model.schedule))   # load_guide refuses another schedule
    state = read_checkpoint(guide)
    return {"config": state["config"], "step": state["step"], "ema": _half(state["ema"]),
            "info": {**state.get("info", {}), "path": str(guide)}}


def evaluation_command(weights, result: dict) -> str:
    """The ``evaluate`` command that reproduces ``result`` (an :func:`evaluate_checkpoint` dict)."""
    return (f"python -m ddpm_course evaluate --checkpoint {Path(os.path.relpath(weights)).as_posix()} "
            f"--num-samples {result['num_samples']} --sampler {result['sampler']} --steps {result['steps']} "
            f"--guidance {result['guidance_scale']}"
            + (f" --autoguidance {result['autoguidance']}" if result.get("autoguidance", 1.0) != 1.0 else "")
            + f" --seed {result['seed']}")


def _guide_card(guide: dict) -> dict:
    """The card's account of a shipped guide: how it was trained, on what, for how long."""
    info = guide["info"]
    return {"command": info.get("command"), "exported_from": info.get("path"), "steps": guide["step"],
            "batch_size": guide["config"]["batch_size"], "train_seconds": info.get("train_seconds"),
            "data": f"{info.get('data')} ({info.get('num_images')} images)", "machine": info.get("machine"),
            "parameters": _num_parameters(guide["ema"])}


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
        **({"init_from": info["init_from"]} if info.get("init_from") else {}),   # training it continued
        "batch_size": config["batch_size"],
        "train_seconds": info.get("train_seconds"),
        "machine": info.get("machine") or describe_machine(torch.device(info.get("device", "cpu"))),
        "precision": info.get("precision"),
        "weights": "EMA weights stored in float16; sampling runs in float32",
        "parameters": _num_parameters(state["ema"]),
        "config": config,
        **({"guide": _guide_card(state["guide"])} if "guide" in state else {}),
        "evaluation": {**evaluation, "command": evaluation_command(weights, evaluation)},
        "torch": info.get("torch"),
        "note": note,
        "sha256": file_sha256(weights),
    }
    atomic_write_json(card_path, card)
    return card


def add_evaluation(name: str, result: dict, *, primary: bool = False, assets=None) -> dict:
    """Record an :func:`evaluate_checkpoint` result of the shipped weights on their card.

    ``result`` must come from the shipped file itself (its ``checkpoint`` key). An evaluation with
    the same settings replaces the old one; ``primary`` makes it the card's main evaluation (also
    when the card has no other). Returns the new card; the weights are unchanged.
    """
    weights, card_path = pretrained_paths(name, assets)
    if Path(result.get("checkpoint", "")).resolve() != weights.resolve():
        raise ValueError(f"the evaluation must be one of {weights} (python -m ddpm_course evaluate --checkpoint "
                         f"{weights} ... --json FILE), got one of {result.get('checkpoint')!r}")
    result = {k: v for k, v in result.items() if k != "checkpoint"}
    result["command"] = evaluation_command(weights, result)
    card = read_card(card_path)
    others = [e for e in [card["evaluation"]] + card.get("more_evaluations", [])
              if any(e.get(k) != result.get(k) for k in SAME_EVALUATION)]
    if primary or not others:
        card["evaluation"], rest = result, others
    else:
        card["evaluation"], rest = others[0], others[1:] + [result]
    card["more_evaluations"] = rest
    atomic_write_json(card_path, card)
    return card


def training_done(card: dict) -> str:
    """"3600 steps x 64, 5092 s", or for a run that started from another's weights (its card's
    ``init_from``), every stage in order: "4626 + 8000 steps x 64, 7697 + 3300 s". Stages with
    different batch sizes say each one's: "4626 x 64 + 3000 x 128 steps" ("?" where not recorded)."""
    stages = training_stages(card["steps"], card["train_seconds"], card.get("init_from"), card["batch_size"])
    if all(batch == card["batch_size"] for _, _, batch in stages):
        steps = " + ".join(str(step) for step, _, _ in stages) + f" steps x {card['batch_size']}"
    else:
        steps = " + ".join(f"{step} x {'?' if batch is None else batch}" for step, _, batch in stages) + " steps"
    seconds = " + ".join("?" if sec is None else f"{sec:.0f}" for _, sec, _ in stages)
    return f"{steps}, {seconds} s"


def cards_table(assets=None) -> str:
    """The shipped models' cards as a markdown table (the README's table): one row per evaluation of
    each model present in the assets folder."""
    lines = ["| model | parameters | trained | FID ratio (FID / floor) | label accuracy | IS | evaluated with |",
             "|---|---|---|---|---|---|---|"]
    for name in PRETRAINED:
        card_path = pretrained_paths(name, assets)[1]
        if not card_path.is_file():
            continue
        card = read_card(card_path)
        for e in [card["evaluation"]] + card.get("more_evaluations", []):
            acc = "—" if e["accuracy"] is None else f"{100 * e['accuracy']:.1f}%"
            how = "unconditional" if e["accuracy"] is None else f"guidance {e['guidance_scale']}"
            if e.get("autoguidance", 1.0) != 1.0:
                how += f", autoguidance {e['autoguidance']} (guide: {card['guide']['steps']} steps)"
            lines.append(
                f"| `{name}` | {card['parameters'] / 1e6:.2f}M | {training_done(card)}, "
                f"{card['machine']} | {e['fid_ratio']:.2f} ({e['fid']:.1f} / "
                f"{e['fid_floor']:.1f}) | {acc} | {e['inception_score']:.2f} | {e['num_samples']} samples, "
                f"{e['sampler']} {e['steps']} steps, {how} |")
    return "\n".join(lines)


def load_pretrained(name: str = "mnist-cond", device="cpu", assets=None) -> Checkpoint:
    """A shipped model, ready to sample: ``ckpt.ema_model`` (== ``ckpt.model``), ``ckpt.schedule``,
    and ``ckpt.guide``, the worse model its card's autoguidance uses (``mnist-uncond``), else None.

    Checks the weights' sha256 against the card first.
    """
    weights, card_path = pretrained_paths(name, assets)
    if not weights.is_file() or not card_path.is_file():
        raise FileNotFoundError(f"pretrained model {name!r} not found: expected {weights} and {card_path}")
    card = verified_card(weights, card_path)
    ckpt = load_checkpoint(weights, device)
    ckpt.info["card"] = card
    return ckpt
