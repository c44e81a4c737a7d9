"""The shipped files in ``assets/``: where they are, their cards, and the check that a file is its card's.

Each shipped file (the evaluators ``evaluator-DATASET.pt`` and the models ``pretrained-NAME.pt``) has
a JSON card beside it (``.json``): the command that made it, its data, its evaluation and its
sha256. A file is only loaded after its sha256 matches the card's (:func:`verified_card`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def assets_dir() -> Path:
    """The ``assets/`` folder: ``$DDPM_COURSE_ASSETS``, else the one beside the package."""
    env = os.environ.get("DDPM_COURSE_ASSETS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "assets"


def asset_paths(stem: str, assets=None) -> tuple:
    """(weights, card) paths of a shipped file: ``ASSETS/STEM.pt`` and ``ASSETS/STEM.json``."""
    folder = Path(assets) if assets is not None else assets_dir()
    return folder / f"{stem}.pt", folder / f"{stem}.json"


def read_card(card_path) -> dict:
    """A card as a dict (no check of the weights: see :func:`verified_card`)."""
    return json.loads(Path(card_path).read_text(encoding="utf-8"))


def file_sha256(path) -> str:
    """The sha256 of a file, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_card(weights: Path, card_path: Path) -> dict:
    """The JSON card of a shipped file, after checking that the file's sha256 is the card's."""
    card = read_card(card_path)
    actual = file_sha256(weights)
    if actual != card["sha256"]:
        raise ValueError(f"{weights} has sha256 {actual}, but its card {card_path} says {card['sha256']}: "
                         "the file is corrupted or not the one the card describes")
    return card
