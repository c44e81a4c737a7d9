"""Commands around the models: benchmark, profiles, evaluator, pretrained, exercises."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from ..benchmark import (
    DEFAULT_SAMPLING_GRID,
    benchmark_sampling,
    benchmark_training,
    profiles_table,
    write_training_benchmark,
)
from ..checkpoints import load_checkpoint
from ..config import PROFILES, default_profile_name, get_profile, profile_info
from ..devices import resolve_device
from ..evaluation import evaluate_checkpoint, format_report
from ..files import atomic_write_json
from ..pretrained import PRETRAINED, add_evaluation, cards_table, export_pretrained, write_card
from .models import parse_override


def cmd_benchmark_sampling(args) -> int:
    ckpt = load_checkpoint(args.checkpoint, resolve_device(args.device))
    table = benchmark_sampling(ckpt, args.samplers, num_samples=args.num_samples, guidance_scale=args.guidance,
                               seed=args.seed, out=args.out, autoguidance=args.autoguidance)
    print(f"\n{table}\n\nWrote {Path(args.out) / 'sampling.md'} and {Path(args.out) / 'sampling.json'}")
    return 0


def cmd_benchmark_training(args) -> int:
    name = args.profile or default_profile_name()
    config = get_profile(name).replace(device=args.device)
    minutes = args.minutes if args.minutes is not None else profile_info(name).budget_minutes
    runs = benchmark_training(config, seconds=60 * minutes, evaluations=args.evaluations,
                              num_samples=args.num_samples, guidance_scale=args.guidance, peers=args.peer)
    table = write_training_benchmark(runs, config, name, args.num_samples, args.out)
    print(f"\n{table}\n\nWrote {Path(args.out) / 'training.md'} and {Path(args.out) / 'training.json'}")
    return 0


def cmd_benchmark_throughput(args) -> int:
    from ..throughput import run_throughput_benchmark

    name = args.profile or default_profile_name()
    config = get_profile(name).with_overrides([("device", args.device)] + (args.set or []))
    run_throughput_benchmark(config, name, steps=args.steps, rounds=args.rounds, switches=args.switch or [],
                             peer=args.peer, profiler_steps=args.profiler, out=args.out,
                             log=lambda line: print(line, flush=True))
    return 0


def parse_variant(text: str) -> tuple:
    """``"lr_schedule=cosine,ema_decay=0.999"`` -> (("lr_schedule", "cosine"), ("ema_decay", 0.999)).

    Splits only at a comma followed by ``KEY=``, so tuple values such as ``model.channel_mults=(1,2,2)`` stay whole.
    """
    parts = re.split(r",(?=\s*[A-Za-z_][\w.]*=)", text)
    try:
        return tuple(parse_override(part) for part in parts)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"in the variant {text!r}: {error}") from None


def cmd_benchmark_recipe(args) -> int:
    from ..study import run_recipe_study, write_recipe_study

    name = args.profile or default_profile_name()
    config = get_profile(name).with_overrides([("device", args.device)] + (args.set or []))
    rows = run_recipe_study(config, args.variant or [], seeds=args.seeds, num_samples=args.num_samples,
                            guidance_scales=args.guidance, out_dir=args.runs,
                            log=lambda *a, **k: print(*a, flush=True),
                            on_run=lambda done: write_recipe_study(done, name, args.num_samples, args.out))
    table = write_recipe_study(rows, name, args.num_samples, args.out)
    print(f"\n{table}\n\nWrote {Path(args.out) / 'recipe.md'} and {Path(args.out) / 'recipe.json'}")
    return 0


def cmd_profiles(args) -> int:
    profiles_table(flops=args.flops, measure=args.measure, device=args.device, log=lambda line: print(line, flush=True))
    return 0


def cmd_evaluator(args) -> int:
    from ..evaluator import train_evaluator

    print(json.dumps(train_evaluator(args.dataset, steps=args.steps, seed=args.seed, out_dir=args.out), indent=2))
    return 0


def cmd_pretrained(args) -> int:
    path = export_pretrained(args.checkpoint, args.name, command=args.command, guidance_scale=args.guidance,
                             guide=args.guide, autoguidance=args.autoguidance)
    result = evaluate_checkpoint(load_checkpoint(path, resolve_device(args.device)), num_samples=args.num_samples)
    print(format_report(result))
    card = write_card(args.name, result, note=args.note)
    print(f"Wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and its card (sha256 {card['sha256'][:12]}...)")
    return 0


def cmd_pretrained_table(args) -> int:
    print(cards_table())
    return 0


def cmd_pretrained_add_evaluation(args) -> int:
    result = json.loads(Path(args.json).read_text(encoding="utf-8"))
    add_evaluation(args.name, result, primary=args.primary)
    print(f"Recorded on the card of {args.name}: FID ratio {result['fid_ratio']:.2f}, guidance "
          f"{result['guidance_scale']}" + (" (now the card's main evaluation)" if args.primary else ""))
    return 0


def cmd_exercises_build(args) -> int:
    from ..course.student_edition import build

    stale = build(args.notebooks, args.out, check=args.check)
    if args.check:
        for path in stale:
            print(f"out of date: {path}")
        if stale:
            print("run: python -m ddpm_course exercises build", file=sys.stderr)
        return 1 if stale else 0
    print(f"wrote {len(stale)} notebook(s)" + "".join(f"\n  {p}" for p in stale) if stale else "already up to date")
    return 0


def cmd_exercises_grade(args) -> int:
    from ..course.grading import format_grades, grade_batch, grades_json

    grades = grade_batch(args.files, timeout=args.timeout, profile=args.profile, memory_gb=args.memory_gb,
                         log=lambda line: print(line, flush=True))
    print(format_grades(grades))
    if args.json:
        atomic_write_json(args.json, grades_json(grades))
    return 0


def cmd_exercises_list(args) -> int:
    from ..course.exercises import EXERCISES

    for ex in EXERCISES.values():
        print(f"{ex.notebook:<22} {ex.name:<22} {ex.summary}")
    return 0


def _benchmark_parser(bsub, name: str, help: str, func, outputs: str):
    """A benchmark subcommand with the options every one of them has: --profile, --device, --out."""
    q = bsub.add_parser(name, help=help)
    q.add_argument("--profile", choices=list(PROFILES), default=None)
    q.add_argument("--device", default="auto")
    q.add_argument("--out", default="benchmarks", help=f"folder for {outputs}")
    q.set_defaults(func=func)
    return q


def add_commands(sub) -> None:
    p = sub.add_parser("benchmark", help="measure quality against sampling steps, or training against a peer")
    bsub = p.add_subparsers(dest="benchmark_command", required=True, metavar="WHAT")
    q = bsub.add_parser("sampling", help="FID ratio, accuracy and time of DDPM, DDIM, DPM-Solver++ by steps")
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--num-samples", dest="num_samples", type=int, default=500)
    q.add_argument("--samplers", nargs="+", default=list(DEFAULT_SAMPLING_GRID),
                   help="specs like ddpm ddim:50 dpm_solver:20 (default: %(default)s)")
    q.add_argument("--guidance", type=float, default=None, help="default: the checkpoint's recommendation")
    q.add_argument("--autoguidance", type=float, default=None,
                   help="default: the checkpoint's recommendation (1: the model alone)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default="auto")
    q.add_argument("--out", default="benchmarks", help="folder for sampling.md and sampling.json")
    q.set_defaults(func=cmd_benchmark_sampling)
    q = _benchmark_parser(bsub, "training", "training img/s and quality over time, against a diffusers UNet2DModel "
                          "peer", cmd_benchmark_training, "training.md and training.json")
    q.add_argument("--minutes", type=float, default=None,
                   help="training time per model (default: the profile's budget: ci 0.5, cpu 10, t4 5)")
    q.add_argument("--evaluations", type=int, default=3, help="quality measurements along the way")
    q.add_argument("--num-samples", dest="num_samples", type=int, default=200)
    q.add_argument("--guidance", type=float, default=None, help="default: the recommended one (2 when conditional)")
    q.add_argument("--no-peer", dest="peer", action="store_false", help="only the course's UNet")

    q = _benchmark_parser(bsub, "throughput", "training img/s and achieved FLOP/s against the measured peak, for "
                          "the profile, each --switch, and a diffusers UNet2DModel in the same loop",
                          cmd_benchmark_throughput, "throughput.md")
    q.add_argument("--steps", type=int, default=20, help="training steps per round and row")
    q.add_argument("--rounds", type=int, default=4, help="interleaved rounds; the first is left out as warm-up")
    q.add_argument("--switch", action="append", type=parse_override, metavar="KEY=VALUE",
                   help="also time the profile with this one TrainConfig change, e.g. --switch compile=True "
                   "--switch mixed_precision=bf16 --switch channels_last=False (a row each)")
    q.add_argument("--set", action="append", type=parse_override, metavar="KEY=VALUE",
                   help="change the profile for every row (as train --set)")
    q.add_argument("--no-peer", dest="peer", action="store_false", help="only the course's UNet")
    q.add_argument("--profiler", type=int, default=0, metavar="STEPS",
                   help="also print torch.profiler's table of STEPS steps of the profile (where the time goes)")

    q = _benchmark_parser(bsub, "recipe", "train the profile and each --variant from scratch, per seed, and judge "
                          "each with the offline evaluator: one table (each row is a full training)",
                          cmd_benchmark_recipe, "recipe.md and recipe.json")
    q.add_argument("--variant", action="append", type=parse_variant, metavar="KEY=VALUE[,KEY=VALUE]",
                   help="a recipe to compare with the profile as it is, e.g. --variant lr_schedule=cosine "
                   "--variant batch_size=128,lr=0.002 (a row each)")
    q.add_argument("--set", action="append", type=parse_override, metavar="KEY=VALUE",
                   help="change the profile for every row, the baseline included (as train --set), e.g. "
                   "--set max_steps=1650")
    q.add_argument("--seeds", type=int, nargs="+", default=[0])
    q.add_argument("--num-samples", dest="num_samples", type=int, default=1000)
    q.add_argument("--guidance", type=float, nargs="+", default=[None], metavar="W",
                   help="judge each model at each of these scales (a line each; default: the recommended one, "
                   "2 when conditional)")
    q.add_argument("--runs", default="runs/recipe", help="folder for the checkpoints (a rerun resumes them)")

    p = sub.add_parser("profiles", help="list the training profiles (model size, steps, budget)")
    p.add_argument("--measure", type=int, default=0, metavar="STEPS",
                   help="also measure training images/s over about STEPS steps of 64 images each")
    p.add_argument("--device", default="auto", help="device for --measure (default %(default)s)")
    p.add_argument("--flops", action="store_true", help="also count training FLOPs per image and per run, and "
                   "the minutes they take at the t4 profile's rate measured on an H100 (a T4 is slower)")
    p.set_defaults(func=cmd_profiles)

    p = sub.add_parser("evaluator", help="train the offline digit classifier used by 'evaluate'")
    esub = p.add_subparsers(dest="evaluator_command", required=True, metavar="ACTION")
    q = esub.add_parser("train", help="train it and write assets/evaluator-DATASET.pt and .json")
    q.add_argument("--dataset", choices=["mnist", "fashion_mnist"], default="mnist")
    q.add_argument("--steps", type=int, default=2000)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default=None, help="folder (default: assets/)")
    q.set_defaults(func=cmd_evaluator)

    p = sub.add_parser("pretrained", help="ship a trained checkpoint in assets/ (EMA weights, card, evaluation)")
    psub = p.add_subparsers(dest="pretrained_command", required=True, metavar="ACTION")
    q = psub.add_parser("export", help="write assets/pretrained-NAME.pt, evaluate it, write its card")
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--name", choices=list(PRETRAINED), required=True)
    q.add_argument("--command", required=True, help="the exact command that trained the checkpoint")
    q.add_argument("--num-samples", dest="num_samples", type=int, default=1000)
    q.add_argument("--guidance", type=float, default=None,
                   help="the guidance the shipped model recommends and is evaluated at (default: the checkpoint's)")
    q.add_argument("--guide", default=None,
                   help="a worse checkpoint of the same U-Net that the shipped file carries, to guide it with")
    q.add_argument("--autoguidance", type=float, default=None,
                   help="with --guide: the autoguidance scale the shipped model recommends and is evaluated at")
    q.add_argument("--device", default="auto")
    q.add_argument("--note", default=None, help="anything a reader of the card should know")
    q.set_defaults(func=cmd_pretrained)
    q = psub.add_parser("table", help="print the shipped models' cards as a markdown table")
    q.set_defaults(func=cmd_pretrained_table)
    q = psub.add_parser("add-evaluation", help="record an evaluate --json result of the shipped weights on their card")
    q.add_argument("--name", choices=list(PRETRAINED), required=True)
    q.add_argument("--json", required=True, help="output of: evaluate --checkpoint assets/pretrained-NAME.pt --json")
    q.add_argument("--primary", action="store_true", help="make it the card's main evaluation")
    q.set_defaults(func=cmd_pretrained_add_evaluation)

    p = sub.add_parser("exercises", help="build the student edition of the notebooks, or grade submissions")
    xsub = p.add_subparsers(dest="exercises_command", required=True, metavar="ACTION")
    q = xsub.add_parser("build", help="write notebooks/exercises/ from the solution notebooks")
    q.add_argument("--notebooks", default="notebooks", help="folder of the solution notebooks (default %(default)s)")
    q.add_argument("--out", default=None, help="default: NOTEBOOKS/exercises")
    q.add_argument("--check", action="store_true", help="only check that the student edition is up to date")
    q.set_defaults(func=cmd_exercises_build)
    q = xsub.add_parser("grade", help="run submitted notebooks (each in its own sandboxed kernel) and score the "
                                      "exercises by calling the students' functions")
    q.add_argument("files", nargs="+", help="submitted .ipynb files")
    q.add_argument("--timeout", type=float, default=900.0, help="seconds per notebook (default %(default)s)")
    q.add_argument("--memory-gb", type=float, default=8.0,
                   help="address-space limit of each notebook's kernel, in GiB (default %(default)s)")
    q.add_argument("--profile", choices=list(PROFILES), default="ci",
                   help="profile the notebooks run under (default %(default)s: fast)")
    q.add_argument("--json", default=None, help="also write the scores here as JSON")
    q.set_defaults(func=cmd_exercises_grade)
    q = xsub.add_parser("list", help="list the exercises and the notebook each belongs to")
    q.set_defaults(func=cmd_exercises_list)
