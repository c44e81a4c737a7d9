"""Recipe studies: which training choices buy the most quality for the same compute.

``python -m ddpm_course benchmark recipe --profile cpu --variant lr_schedule=cosine --variant
timesteps=stratified --seeds 0 1`` trains the profile as it is and the profile with each variant's
changes (a variant is one or more ``KEY=VALUE`` joined by commas), for each seed, one after the other
on the same machine, and judges every final EMA model with :func:`evaluate_checkpoint` (the one judge:
N samples, the recommended sampler, and the recommended guidance or each of ``--guidance W [W ...]``).
One table: training seconds and images/s (from the checkpoint's training time; a resumed run adds up
its parts), FID ratio and label accuracy per seed, and their means. Every recipe costs one full
training: run it alone on the machine. A rerun resumes: trained models are not retrained, and a
judgement already made (same step, N and guidance, kept in the run's ``judged.json``) is not redone.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ._checks import check_int
from .checkpoints import load_checkpoint
from .config import TrainConfig
from .evaluation import evaluate_checkpoint
from .files import atomic_write_json
from .training import train


@dataclass
class RecipeRow:
    """One recipe: its changes to the profile and, per seed, the training time and the quality."""

    changes: tuple                             # ((key, value), ...); () is the profile as it is
    runs: list = field(default_factory=list)   # dicts: seed, guidance_scale, train_seconds, images_per_second,
                                               # fid_ratio, accuracy (one per seed and guidance scale)

    @property
    def name(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.changes) or "baseline"


def run_recipe_study(config: TrainConfig, variants=(), *, seeds=(0,), num_samples: int = 1000,
                     guidance_scales=(None,), out_dir="runs/recipe", log=print, on_run=None) -> list:
    """Train and evaluate the baseline ``config`` and each variant for each seed; return [RecipeRow].

    variants: a sequence of ``((key, value), ...)`` changes, validated as ``train --set`` is, before
    any training starts. Each trained model is judged at every scale of ``guidance_scales`` (None:
    the checkpoint's recommended one), as the best scale moves with how well a model is trained.
    Checkpoints go to ``out_dir/NAME-seedS`` (an existing one is resumed, so an interrupted study
    continues where it stopped). ``on_run(rows)``, if given, is called after each judged run (e.g. to
    write the table so far: a study stopped midway keeps what it measured).
    """
    check_int("num_samples", num_samples, minimum=10)
    if not seeds:
        raise ValueError("seeds must name at least one seed, got none")
    if not guidance_scales:
        raise ValueError("guidance_scales must name at least one scale (None: the recommended one), got none")
    rows = [RecipeRow(())] + [RecipeRow(tuple(changes)) for changes in variants]
    plans = [(row, config.with_overrides(list(row.changes))) for row in rows]   # every variant checked first
    for row, cfg in plans:
        for seed in seeds:
            folder = Path(out_dir) / f"{_slug(row.name)}-seed{seed}"
            run = cfg.replace(seed=seed, out_dir=str(folder))
            log(f"{row.name}, seed {seed}: training {run.max_steps} steps into {folder}")
            ckpt = load_checkpoint(train(run, progress=False, log=log))
            seconds = ckpt.info["train_seconds"]
            for scale in guidance_scales:
                result, earlier = _judge(ckpt, folder, num_samples, scale)
                row.runs.append({"seed": seed, "train_seconds": seconds,
                                 "images_per_second": run.max_steps * run.batch_size / max(seconds, 1e-9), **result})
                log(f"  {seconds:.0f} s of training; guidance {result['guidance_scale']:g}: "
                    f"FID ratio {result['fid_ratio']:.2f}" + (" (judged earlier)" if earlier else ""))
                if on_run is not None:
                    on_run(rows)
    return rows


def _judge(ckpt, folder: Path, num_samples: int, scale) -> tuple:
    """(fid_ratio, accuracy and guidance_scale of :func:`evaluate_checkpoint` on ``ckpt`` at ``scale``,
    whether it was judged by an earlier run): ``folder/judged.json`` keeps every judgement of the
    run's checkpoints, keyed by step, N and the requested scale, so a resumed study judges nothing twice."""
    path = folder / "judged.json"
    judged = json.loads(path.read_text()) if path.exists() else []
    key = {"step": ckpt.step, "num_samples": num_samples, "guidance_scale": scale}
    for entry in judged:
        if entry["key"] == key:
            return entry["result"], True
    full = evaluate_checkpoint(ckpt, num_samples=num_samples, guidance_scale=scale)
    result = {k: full[k] for k in ("fid_ratio", "accuracy", "guidance_scale")}
    atomic_write_json(path, judged + [{"key": key, "result": result}])
    return result, False


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def recipe_table(rows: list, profile: str, num_samples: int) -> str:
    """Markdown: a line per recipe and guidance scale, with each seed's numbers and their means
    (recipes not yet run are left out)."""
    lines = [
        f"Profile `{profile}`; each recipe trained from scratch and judged at N = {num_samples} with the "
        "recommended sampler; FID ratio = FID / real-data floor (1 = real).",
        "",
        "| recipe | seeds | guidance | train seconds (mean) | train img/s (mean) | FID ratio per seed "
        "| FID ratio (mean) | label accuracy (mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for scale in dict.fromkeys(r["guidance_scale"] for r in row.runs):   # in the order judged
            lines.append(_table_line(row.name, [r for r in row.runs if r["guidance_scale"] == scale]))
    return "\n".join(lines)


def _table_line(name: str, runs: list) -> str:
    def mean(key):
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.fmean(values) if values else None

    acc = mean("accuracy")   # None for an unconditional model
    per_seed = " / ".join(f"{r['fid_ratio']:.2f}" for r in runs)
    return (f"| {name} | {len(runs)} | {runs[0]['guidance_scale']:g} | {mean('train_seconds'):.0f} | "
            f"{mean('images_per_second'):.0f} | {per_seed} | {mean('fid_ratio'):.2f} | "
            f"{'-' if acc is None else f'{100 * acc:.1f}%'} |")


def write_recipe_study(rows: list, profile: str, num_samples: int, out) -> str:
    """Write ``out/recipe.md`` (:func:`recipe_table`) and ``out/recipe.json``; return the table."""
    from .files import atomic_write_json, atomic_write_text

    table = recipe_table(rows, profile, num_samples)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.md", table + "\n")
    atomic_write_json(out / "recipe.json", [{"recipe": r.name, "runs": r.runs} for r in rows])
    return table
