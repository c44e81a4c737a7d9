"""Command line: ``python -m ddpm_course train|sample|export|evaluate|benchmark|exercises|demo|...`` (``--help``)."""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

import torch

from . import exercises, grading, student_edition
from .checkpoints import atomic_write_text, load_checkpoint
from .config import PROFILES, TrainConfig, default_profile_name, get_profile
from .sampling import sample_ddim, sample_ddpm, sample_dpm_solver
from .training import resolve_device, train
from .visualize import ProcessRecorder, save_gif, save_grid

SAMPLERS = ("ddpm", "ddim", "dpm_solver")
DEFAULT_STEPS = {"ddim": 50, "dpm_solver": 20}


# ----------------------------------------------------------------------------- helpers
def parse_override(text: str) -> tuple:
    """``"key=value"`` -> (key, value); the value is a Python literal when it parses as one."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE (e.g. model.base_channels=48), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def apply_overrides(config: TrainConfig, pairs: list) -> TrainConfig:
    """Apply ``[(key, value)]`` overrides; ``model.X`` keys change the UNetConfig."""
    top, model = {}, {}
    for key, value in pairs:
        if key.startswith("model."):
            model[key[len("model."):]] = value
        else:
            top[key] = value
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(top) - known)
    if unknown:
        raise SystemExit(f"error: unknown config keys {unknown}; known: {sorted(known)}")
    if model:
        top["model"] = model
    try:
        return config.replace(**top).validate()
    except TypeError as error:
        raise SystemExit(f"error: {error}") from None


def parse_labels(text: str | None, n: int, num_classes: int | None):
    """``--labels``: None -> every class in turn for a conditional model; "none" -> no label;
    "all" -> 0..num_classes-1 repeated; "3" or "0,1,2" -> those, repeated to fill n."""
    if num_classes is None:
        if text not in (None, "none"):
            raise SystemExit("error: --labels given, but this checkpoint's model is unconditional")
        return None
    if text == "none":
        return None
    if text in (None, "all"):
        return torch.arange(n) % num_classes
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise SystemExit(f"error: --labels must be 'all', 'none' or integers like 0,1,2; got {text!r}") from None
    bad = [v for v in values if not 0 <= v < num_classes]
    if not values or bad:
        raise SystemExit(f"error: --labels must lie in 0..{num_classes - 1}, got {text!r}")
    return torch.tensor(values * (n // len(values) + 1))[:n]


def generate(ckpt, n: int, *, sampler: str = "ddim", steps: int | None = None, eta: float = 0.0,
             labels=None, guidance: float = 1.0, seed: int = 0, use_ema: bool = True,
             callback=None, progress: bool = True) -> torch.Tensor:
    """Draw ``n`` samples from a loaded checkpoint with the chosen sampler; (n, C, H, W) in [-1, 1]."""
    model = ckpt.ema_model if use_ema else ckpt.model
    device = next(model.parameters()).device
    cfg = ckpt.config.model
    shape = (n, cfg.image_channels, cfg.image_size, cfg.image_size)
    gen = torch.Generator(device).manual_seed(seed)
    labels = labels.to(device) if isinstance(labels, torch.Tensor) else labels
    common = dict(labels=labels, guidance_scale=guidance, generator=gen, callback=callback, progress=progress)
    if sampler == "ddpm":
        return sample_ddpm(model, ckpt.schedule, shape, **common)
    steps = _num_sampler_steps(sampler, steps, ckpt.schedule.T)
    if sampler == "dpm_solver":
        return sample_dpm_solver(model, ckpt.schedule, shape, steps=steps, **common)
    return sample_ddim(model, ckpt.schedule, shape, steps=steps, eta=eta, **common)


def _num_sampler_steps(sampler: str, steps: int | None, T: int) -> int:
    """Model calls a sampler makes: T for DDPM, else ``steps`` (default 50 for DDIM, 20 for DPM-Solver++)."""
    return T if sampler == "ddpm" else min(steps or DEFAULT_STEPS[sampler], T)


def _add_sampling_args(p: argparse.ArgumentParser, default_n: int) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by 'train'")
    p.add_argument("--n", type=int, default=default_n, help="number of images (default %(default)s)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="default %(default)s")
    p.add_argument("--steps", type=int, default=None,
                   help="model calls for ddim (default 50) or dpm_solver (default 20); ddpm always uses T")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 like DDPM")
    p.add_argument("--labels", default=None,
                   help="conditional models: 'all' (default: every digit in turn), 'none', or e.g. '3' or '0,1,2'")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale w (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-ema", action="store_true", help="sample with the raw weights, not the EMA")


# ----------------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    config = get_profile(args.profile)
    pairs = list(args.set or [])
    for flag, key in (("max_steps", "max_steps"), ("batch_size", "batch_size"), ("lr", "lr"),
                      ("seed", "seed"), ("subset", "subset"), ("dataset", "dataset"),
                      ("data_root", "data_root"), ("device", "device"), ("split", "split"),
                      ("checkpoint_every", "checkpoint_every")):
        value = getattr(args, flag)
        if value is not None:
            pairs.append((key, value))
    pairs.append(("out_dir", args.out or config.out_dir))
    config = apply_overrides(config, pairs)
    print(f"Profile {args.profile}: {config.max_steps} steps of {config.batch_size} images -> {config.out_dir}")
    path = train(config, resume=not args.no_resume, progress=not args.no_progress)
    print(f"Checkpoint: {path}")
    return 0


def cmd_sample(args) -> int:
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, device)
    labels = parse_labels(args.labels, args.n, ckpt.num_classes)
    recorder = None
    if args.gif:
        recorder = ProcessRecorder(_num_sampler_steps(args.sampler, args.steps, ckpt.schedule.T),
                                   num_frames=args.gif_frames, kind="x0" if args.gif_x0 else "x_t")
    start = time.perf_counter()
    x = generate(ckpt, args.n, sampler=args.sampler, steps=args.steps, eta=args.eta, labels=labels,
                 guidance=args.guidance, seed=args.seed, use_ema=not args.no_ema, callback=recorder)
    nrow = ckpt.num_classes if labels is not None and args.labels in (None, "all") else 8
    print(f"Sampled {args.n} images with {args.sampler} in {time.perf_counter() - start:.1f}s")
    print(f"Grid: {save_grid(x, args.out, nrow=nrow)}")
    if recorder is not None:
        print(f"GIF: {save_gif(recorder.finish(x), args.gif, nrow=nrow)}")
    return 0


def cmd_export(args) -> int:
    import imageio.v3 as iio

    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = parse_labels(args.labels, args.n, ckpt.num_classes)
    start, written = time.perf_counter(), 0
    rows = []
    batches = generate_batches(ckpt, args.n, labels, args.batch_size, sampler=args.sampler, steps=args.steps,
                               eta=args.eta, guidance=args.guidance, seed=args.seed, use_ema=not args.no_ema)
    for first, x, batch_labels in batches:
        pixels = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        for i in range(len(x)):
            name = f"{first + i:05d}.png"
            image = pixels[i, 0] if pixels.shape[1] == 1 else pixels[i].permute(1, 2, 0)
            iio.imwrite(out / name, image.numpy())
            rows.append(f"{name},{int(batch_labels[i])}" if batch_labels is not None else name)
        written += len(x)
        print(f"{written}/{args.n} images", flush=True)
    if labels is not None:
        (out / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    print(f"Wrote {written} PNG files to {out} in {time.perf_counter() - start:.1f}s")
    return 0


def cmd_evaluator(args) -> int:
    from .evaluator import train_evaluator

    card = train_evaluator(args.dataset, steps=args.steps, seed=args.seed, out_dir=args.out)
    print(json.dumps(card, indent=2))
    return 0


def generate_batches(ckpt, n: int, labels, batch_size: int, **kwargs):
    """:func:`generate` in batches with seeds seed, seed + batch_size, ...; yields
    (index of the first image, samples on the CPU, their labels or None)."""
    seed = kwargs.pop("seed", 0)
    for first in range(0, n, batch_size):
        m = min(batch_size, n - first)
        batch_labels = labels[first:first + m] if labels is not None else None
        yield first, generate(ckpt, m, labels=batch_labels, seed=seed + first, progress=False, **kwargs).cpu(), \
            batch_labels


def generate_many(ckpt, n: int, labels, batch_size: int, **kwargs) -> torch.Tensor:
    """All of :func:`generate_batches`, gathered: (n, C, H, W) on the CPU."""
    return torch.cat([x for _, x, _ in generate_batches(ckpt, n, labels, batch_size, **kwargs)])


def cmd_evaluate(args) -> int:
    from .evaluation import sample_scores

    ckpt = load_checkpoint(args.checkpoint, resolve_device(args.device))
    result, samples, labels, evaluator = run_evaluation(
        ckpt, args.evaluator, args.num_samples, sampler=args.sampler, steps=args.steps, guidance=args.guidance,
        seed=args.seed, batch_size=args.batch_size)
    result = {"checkpoint": str(args.checkpoint), **result}
    if args.inception:
        from .evaluation import inception_fid, reference_images

        result["inception_fid"] = inception_fid(samples, reference_images(ckpt.config.dataset, len(samples))[0])
    print(format_report(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"JSON: {args.json}")
    grid = args.grid or (Path(args.json).with_suffix(".png") if args.json else None)
    if grid:
        order = sample_scores(evaluator, samples, labels).argsort(descending=True)
        k = min(30, len(samples) // 2)
        save_grid(torch.cat([samples[order[:k]], samples[order[-k:]]]), grid, nrow=10)
        print(f"Grid (top: the {k} most convincing samples, bottom: the {k} least): {grid}")
    return 0


def format_report(r: dict) -> str:
    """A short table of an evaluation's numbers."""
    acc = "n/a (unconditional)" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
    rows = [
        ("samples", f"{r['num_samples']} ({r['sampler']}, {r['steps']} steps, guidance {r['guidance_scale']})"),
        ("FID (evaluator features)", f"{r['fid']:.3f}"),
        ("FID floor (real vs real, same N)", f"{r['fid_floor']:.3f}"),
        ("FID ratio (1 = real)", f"{r['fid_ratio']:.2f}"),
        ("label accuracy", acc),
        ("confidence", f"{r['confidence']:.3f}"),
        ("classes present / entropy", f"{r['diversity']['classes_present']}/10, "
                                      f"{r['diversity']['normalized_entropy']:.3f} of the maximum"),
        ("inception score (real data)", f"{r['inception_score']:.2f} ({r['real_inception_score']:.2f})"),
        ("sampling time", f"{r['seconds']:.1f}s"),
    ]
    if "inception_fid" in r:
        value = r["inception_fid"]
        rows.insert(4, ("Inception FID (torchmetrics)", "skipped (offline)" if value is None else f"{value:.3f}"))
    if r["per_class_accuracy"] is not None:
        rows.insert(5, ("per class", " ".join(f"{c}:{100 * a:.0f}%" for c, a in enumerate(r["per_class_accuracy"])
                                               if a is not None)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run_evaluation(ckpt, evaluator_name: str | None, num_samples: int, *, sampler: str = "dpm_solver",
                   steps: int | None = None, guidance: float = 1.0, seed: int = 0, batch_size: int = 250) -> tuple:
    """Sample ``num_samples`` images from a loaded checkpoint and evaluate them; evaluator_name
    None takes the evaluator of the checkpoint's dataset.

    Returns (result dict, samples, labels or None, the evaluator)."""
    from .evaluation import evaluate_samples, reference_images
    from .evaluator import evaluator_for, load_evaluator

    device = next(ckpt.ema_model.parameters()).device
    evaluator = load_evaluator(evaluator_for(ckpt.config.dataset, evaluator_name), device)
    real_a, real_b = reference_images(ckpt.config.dataset, num_samples)
    labels = parse_labels("all" if ckpt.num_classes else None, num_samples, ckpt.num_classes)
    start = time.perf_counter()
    samples = generate_many(ckpt, num_samples, labels, batch_size, sampler=sampler, steps=steps,
                            guidance=guidance, seed=seed)
    seconds = time.perf_counter() - start
    result = {"sampler": sampler, "steps": _num_sampler_steps(sampler, steps, ckpt.schedule.T),
              "guidance_scale": guidance, "seed": seed,
              **evaluate_samples(evaluator, samples, real_a, real_b, labels), "seconds": round(seconds, 2)}
    return result, samples, labels, evaluator


def cmd_pretrained(args) -> int:
    from .pretrained import export_pretrained, write_card

    path = export_pretrained(args.checkpoint, args.name, command=args.command)
    ckpt = load_checkpoint(path, resolve_device(args.device))
    guidance = args.guidance if ckpt.num_classes else 1.0
    result, *_ = run_evaluation(ckpt, None, args.num_samples, guidance=guidance)
    result["command"] = (f"python -m ddpm_course evaluate --checkpoint {Path(os.path.relpath(path)).as_posix()} "
                         f"--num-samples {args.num_samples} --guidance {guidance}")
    print(format_report(result))
    card = write_card(args.name, result, note=args.note)
    print(f"Wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and its card (sha256 {card['sha256'][:12]}...)")
    return 0


def cmd_pretrained_table(args) -> int:
    """Print the shipped models' cards as a markdown table (the README's table): one row per evaluation."""
    from .pretrained import PRETRAINED, pretrained_paths

    print("| model | parameters | trained | FID ratio (FID / floor) | label accuracy | IS | evaluated with |")
    print("|---|---|---|---|---|---|---|")
    for name in PRETRAINED:
        card = json.loads(pretrained_paths(name)[1].read_text())
        for e in [card["evaluation"]] + card.get("more_evaluations", []):
            acc = "—" if e["accuracy"] is None else f"{100 * e['accuracy']:.1f}%"
            print(f"| `{name}` | {card['parameters'] / 1e6:.2f}M | {card['steps']} steps x {card['batch_size']}, "
                  f"{card['train_seconds']:.0f} s, {card['machine']} | {e['fid_ratio']:.2f} ({e['fid']:.1f} / "
                  f"{e['fid_floor']:.1f}) | {acc} | {e['inception_score']:.2f} | {e['num_samples']} samples, "
                  f"{e['sampler']} {e['steps']} steps, guidance {e['guidance_scale']} |")
    return 0


def cmd_pretrained_add_evaluation(args) -> int:
    """Record an ``evaluate --json`` result of the shipped weights on their card (the weights are unchanged)."""
    from .pretrained import pretrained_paths

    weights, card_path = pretrained_paths(args.name)
    result = json.loads(Path(args.json).read_text())
    if Path(result.get("checkpoint", "")).resolve() != weights.resolve():
        raise ValueError(f"--json must be an evaluation of {weights} (python -m ddpm_course evaluate --checkpoint "
                         f"{weights} ... --json FILE), got one of {result.get('checkpoint')!r}")
    result["command"] = (f"python -m ddpm_course evaluate --checkpoint {Path(os.path.relpath(weights)).as_posix()} "
                         f"--num-samples {result['num_samples']} --sampler {result['sampler']} --steps "
                         f"{result['steps']} --guidance {result['guidance_scale']}")
    result.pop("checkpoint")
    card = json.loads(card_path.read_text())
    same = ("sampler", "steps", "guidance_scale", "num_samples", "seed")
    others = [e for e in [card["evaluation"]] + card.get("more_evaluations", [])
              if any(e.get(k) != result.get(k) for k in same)]
    if args.primary or not others:
        card["evaluation"], rest = result, others
    else:
        card["evaluation"], rest = others[0], others[1:] + [result]
    card["more_evaluations"] = rest
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"Recorded on {card_path}: FID ratio {result['fid_ratio']:.2f}, guidance {result['guidance_scale']}"
          + (" (now the card's main evaluation)" if args.primary else ""))
    return 0


DEFAULT_SAMPLING_GRID = ("ddpm", "ddim:10", "ddim:20", "ddim:50", "ddim:100", "ddim:250",
                         "dpm_solver:10", "dpm_solver:20")


def parse_sampler_spec(spec: str) -> tuple:
    """"ddim:50" -> ("ddim", 50); "ddpm" -> ("ddpm", None)."""
    name, _, steps = spec.partition(":")
    if name not in SAMPLERS or (steps and not steps.isdigit()):
        raise SystemExit(f"error: sampler specs look like ddpm, ddim:50 or dpm_solver:20; got {spec!r}")
    return name, int(steps) if steps else None


def cmd_benchmark_sampling(args) -> int:
    """Quality against steps (report 001's table, done properly): FID ratio, accuracy, seconds.

    The table and JSON are rewritten after every row, so a long run (DDPM over all T steps takes
    hours on a CPU) that is stopped keeps the rows it finished."""
    ckpt = load_checkpoint(args.checkpoint, resolve_device(args.device))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.samplers:
        sampler, steps = parse_sampler_spec(spec)
        result, *_ = run_evaluation(ckpt, None, args.num_samples, sampler=sampler, steps=steps,
                                    guidance=args.guidance if ckpt.num_classes else 1.0, seed=args.seed)
        rows.append(result)
        print(f"{sampler} {result['steps']} steps: FID ratio {result['fid_ratio']:.2f}, "
              f"{result['seconds']:.1f}s", flush=True)
        table = sampling_table(rows, args.checkpoint, args.num_samples, args.seed)
        atomic_write_text(out / "sampling.md", table + "\n")
        atomic_write_text(out / "sampling.json", json.dumps(rows, indent=2) + "\n")
    print("\n" + table)
    print(f"\nWrote {out / 'sampling.md'} and {out / 'sampling.json'}")
    return 0


def sampling_table(rows: list, checkpoint, num_samples: int, seed: int) -> str:
    """The markdown table of :func:`cmd_benchmark_sampling`; with a DDPM row, each FID is also
    given relative to DDPM's."""
    ddpm = next((r["fid"] for r in rows if r["sampler"] == "ddpm"), None)
    lines = [f"Checkpoint `{checkpoint}`, {num_samples} samples per row, guidance "
             f"{rows[0]['guidance_scale']}, seed {seed}; FID floor (real vs real, same N) "
             f"{rows[0]['fid_floor']:.2f}.", "",
             "| sampler | model calls | FID | FID ratio |" + (" FID / DDPM's |" if ddpm else "")
             + " label accuracy | seconds |",
             "|---" * (6 + bool(ddpm)) + "|"]
    for r in rows:
        acc = "—" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        rel = f" {r['fid'] / ddpm:.2f} |" if ddpm else ""
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['fid']:.2f} | {r['fid_ratio']:.2f} |{rel} {acc} | "
                     f"{r['seconds']:.1f} |")
    return "\n".join(lines)


def cmd_demo(args) -> int:
    from .config import demo_config
    from .pretrained import load_pretrained, pretrained_paths

    out = Path(args.out)
    shipped = pretrained_paths("mnist-cond")[0]
    if args.train or args.max_steps or not shipped.is_file():
        config = demo_config(out_dir=str(out / "run"), max_steps=args.max_steps, seed=args.seed)
        print(f"Training a small class-conditional model for {config.max_steps} steps on the CPU "
              f"(about a minute). Re-running resumes from {config.out_dir}.")
        ckpt = load_checkpoint(train(config, resume=True, progress=not args.no_progress))
    else:
        ckpt = load_pretrained("mnist-cond")
        print(f"Sampling from the shipped model {shipped} (trained with: {ckpt.info['card']['command']}).\n"
              "Add --train to train your own small model first (about a minute on a CPU).")
    labels = torch.arange(100) % 10
    recorder = ProcessRecorder(args.steps, num_frames=min(25, args.steps), kind="x_t")
    x = generate(ckpt, 100, sampler="ddim", steps=args.steps, labels=labels, guidance=args.guidance, seed=args.seed,
                 callback=recorder, progress=not args.no_progress)
    grid = save_grid(x, out / "samples.png", nrow=10)
    gif = save_gif(recorder.finish(x), out / "denoising.gif", nrow=10, fps=8)
    print(f"\nSample grid (each column one digit, 0-9): {grid}\nDenoising GIF: {gif}")
    return 0


TRAINING_BUDGET_MINUTES = {"ci": 0.5, "cpu": 10.0, "t4": 5.0}


def cmd_benchmark_training(args) -> int:
    from .benchmark import benchmark_training, format_training_table

    config = get_profile(args.profile).replace(device=args.device)
    minutes = args.minutes if args.minutes is not None else TRAINING_BUDGET_MINUTES[args.profile]
    runs = benchmark_training(config, seconds=60 * minutes, evaluations=args.evaluations,
                              num_samples=args.num_samples, guidance=args.guidance, peers=args.peer)
    table = format_training_table(runs, config, args.profile, args.num_samples, args.guidance)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "training.md").write_text(table + "\n")
    rows = [{"name": r.name, "parameters": r.parameters, "steps": r.steps, "seconds": round(r.seconds, 1),
             "images_per_second": round(r.images_per_second, 1), "points": r.points} for r in runs]
    (out / "training.json").write_text(json.dumps({"profile": args.profile, "runs": rows}, indent=2) + "\n")
    print(f"\nWrote {out / 'training.md'} and {out / 'training.json'}")
    return 0


def cmd_figures(args) -> int:
    """The README's result figures from a conditional checkpoint: a grid per guidance scale, a GIF per digit."""
    from .pretrained import load_pretrained

    device = resolve_device(args.device)
    if args.checkpoint is None:
        ckpt = load_pretrained(args.pretrained, device)
    else:
        ckpt = load_checkpoint(args.checkpoint, device)
    if not ckpt.num_classes:
        raise ValueError("figures needs a class-conditional checkpoint (guidance and one GIF per digit)")
    out = Path(args.out)
    labels = torch.arange(10).repeat(args.seeds)                # rows of 0-9, one row per seed
    for w in args.guidance_scales:
        x = generate(ckpt, len(labels), sampler="dpm_solver", steps=args.steps, labels=labels, guidance=w,
                     seed=args.seed, progress=False)
        print(f"guidance {w}: {save_grid(x, out / f'guidance_{w:g}.png', nrow=10)}")
    labels = torch.arange(10).repeat_interleave(args.seeds)     # seeds consecutive per digit
    recorder = ProcessRecorder(args.gif_steps, num_frames=args.gif_frames, kind="x_t")
    x = generate(ckpt, len(labels), sampler="ddim", steps=args.gif_steps, eta=1.0, labels=labels,
                 guidance=args.gif_guidance, seed=args.seed, callback=recorder, progress=False)
    frames = recorder.finish(x)
    for digit in range(10):
        part = [f[digit * args.seeds:(digit + 1) * args.seeds] for f in frames]
        print(f"digit {digit}: {save_gif(part, out / f'denoising_{digit}.gif', nrow=args.seeds, fps=10)}")
    return 0


def measure_throughput(config: TrainConfig, steps: int) -> float:
    """Median training images/second of ``config`` over ``steps`` real steps (first log skipped)."""
    import statistics
    import tempfile

    rates = []
    log_every = max(1, steps // 6)
    with tempfile.TemporaryDirectory() as tmp:
        run = config.replace(max_steps=steps + log_every, log_every=log_every, checkpoint_every=10**9,
                             out_dir=tmp)
        train(run, resume=False, progress=False, log=lambda *a: None,
              callback=lambda info: rates.append(info["images_per_second"]))
    return statistics.median(rates[1:])


def training_flops_per_image(config: TrainConfig, batch: int = 4) -> float:
    """Floating-point operations of one training image (forward and backward), counted by
    torch.utils.flop_counter on the CPU (matrix multiplies and convolutions; elementwise ops excluded)."""
    from torch.utils.flop_counter import FlopCounterMode

    from .losses import diffusion_loss
    from .schedules import NoiseSchedule
    from .unet import UNet

    model, schedule = UNet(config.model), NoiseSchedule.from_name(config.schedule, config.T)
    x0 = torch.rand(batch, config.model.image_channels, config.model.image_size, config.model.image_size) * 2 - 1
    labels = torch.randint(0, config.model.num_classes, (batch,)) if config.model.num_classes else None
    with FlopCounterMode(display=False) as counter:
        diffusion_loss(model, schedule, x0, labels).backward()
    return counter.get_total_flops() / batch


def cmd_profiles(args) -> int:
    """Print each profile's model size and training budget (the README's profile table); with
    --measure, also time a few real training steps of each on this machine."""
    from .unet import UNet

    header = "| profile | parameters | T | schedule | batch | steps | conditional |"
    extra = (" train GFLOP/image | PFLOP per run | T4 minutes at 10-20 TFLOP/s (estimate) |" if args.flops else "")
    print(header + extra + (" train img/s |" if args.measure else ""))
    print("|---" * (7 + 3 * bool(args.flops) + bool(args.measure)) + "|")
    for name in PROFILES:
        cfg = get_profile(name)
        params = UNet(cfg.model).num_parameters()
        cond = "yes" if cfg.model.num_classes else "no"
        line = (f"| `{name}` | {params / 1e6:.2f}M | {cfg.T} | {cfg.schedule} | {cfg.batch_size} | "
                f"{cfg.max_steps} | {cond} |")
        if args.flops:
            per_image = training_flops_per_image(cfg)
            total = per_image * cfg.batch_size * cfg.max_steps
            line += (f" {per_image / 1e9:.2f} | {total / 1e15:.2f} | "
                     f"{total / 20e12 / 60:.1f}-{total / 10e12 / 60:.1f} |")
        if args.measure:
            steps = max(6, int(args.measure * 64 / cfg.batch_size))
            line += f" {measure_throughput(cfg.replace(device=args.device), steps):.0f} |"
        print(line, flush=True)
    return 0


def cmd_exercises_build(args) -> int:
    stale = student_edition.build(args.notebooks, args.out, check=args.check)
    if args.check:
        for path in stale:
            print(f"out of date: {path}")
        if stale:
            print("run: python -m ddpm_course exercises build", file=sys.stderr)
        return 1 if stale else 0
    print(f"wrote {len(stale)} notebook(s)" + "".join(f"\n  {p}" for p in stale) if stale else "already up to date")
    return 0


def cmd_exercises_grade(args) -> int:
    grades = []
    for path in args.files:
        print(f"grading {path} ...", flush=True)
        grades.append(grading.grade_notebook(path, timeout=args.timeout, profile=args.profile))
    print(grading.format_grades(grades))
    if args.json:
        rows = [{"file": g.path, "notebook": g.notebook, "score": g.score, "total": g.total,
                 "seconds": round(g.seconds, 1), "problem": g.problem,
                 "exercises": [{"exercise": e, "status": s, "message": m} for e, s, m in g.rows]} for g in grades]
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


def cmd_exercises_list(args) -> int:
    for ex in exercises.EXERCISES.values():
        print(f"{ex.notebook:<22} {ex.name:<22} {ex.summary}")
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_course",
        description="DDPM course tools: train, sample, export, evaluate, benchmark, exercises, evaluator, "
                    "pretrained, profiles, demo.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a profile",
                       description="Train a DDPM. Profiles: ci (seconds), cpu (~10 min on 2 cores), t4 (Colab GPU).")
    p.add_argument("--profile", choices=list(PROFILES), default=None,
                   help="default: $DDPM_COURSE_PROFILE, else t4 with CUDA, else cpu")
    p.add_argument("--out", default=None, help="output folder (default: the profile's out_dir)")
    p.add_argument("--max-steps", dest="max_steps", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--subset", type=int, help="use only the first N images")
    p.add_argument("--dataset", help="mnist, fashion_mnist or a folder of images")
    p.add_argument("--data-root", dest="data_root", help="data folder (default $DDPM_COURSE_DATA, then ./data)")
    p.add_argument("--split", choices=["auto", "train", "test"])
    p.add_argument("--device")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int)
    p.add_argument("--set", action="append", type=parse_override, metavar="KEY=VALUE",
                   help="override any TrainConfig field, e.g. --set ema_decay=0.99 --set model.base_channels=48")
    p.add_argument("--no-resume", action="store_true", help="start over (an old checkpoint is renamed, not deleted)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw a grid of samples (and a GIF of the denoising)")
    _add_sampling_args(p, default_n=64)
    p.add_argument("--out", required=True, help="PNG file for the grid")
    p.add_argument("--gif", default=None, help="also write a GIF of the denoising here")
    p.add_argument("--gif-frames", dest="gif_frames", type=int, default=40)
    p.add_argument("--gif-x0", dest="gif_x0", action="store_true", help="animate the predicted x0 instead of x_t")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("export", help="write N samples as individual PNG files (for evaluation)")
    _add_sampling_args(p, default_n=10000)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=256)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluator", help="train the offline digit classifier used by 'evaluate'")
    esub = p.add_subparsers(dest="evaluator_command", required=True, metavar="ACTION")
    q = esub.add_parser("train", help="train it and write assets/evaluator-DATASET.pt and .json")
    q.add_argument("--dataset", choices=["mnist", "fashion_mnist"], default="mnist")
    q.add_argument("--steps", type=int, default=2000)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default=None, help="folder (default: assets/)")
    q.set_defaults(func=cmd_evaluator)

    p = sub.add_parser("evaluate", help="sample from a checkpoint and measure FID, accuracy, confidence, ...")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--num-samples", dest="num_samples", type=int, default=1000)
    p.add_argument("--sampler", choices=SAMPLERS, default="dpm_solver", help="default %(default)s")
    p.add_argument("--steps", type=int, default=None, help="ddim default 50, dpm_solver default 20")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=250)
    p.add_argument("--evaluator", choices=["mnist", "fashion_mnist"], default=None,
                   help="the classifier that judges the samples (default: the checkpoint's dataset's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="write the results here as JSON")
    p.add_argument("--inception", action="store_true",
                   help="also Inception FID (key inception_fid; needs torch-fidelity and a download: null offline)")
    p.add_argument("--grid", default=None, help="PNG of the most and least convincing samples "
                                                "(default: next to --json)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("pretrained", help="ship a trained checkpoint in assets/ (EMA weights, card, evaluation)")
    psub = p.add_subparsers(dest="pretrained_command", required=True, metavar="ACTION")
    q = psub.add_parser("export", help="write assets/pretrained-NAME.pt, evaluate it, write its card")
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--name", choices=["mnist-cond", "mnist-uncond"], required=True)
    q.add_argument("--command", required=True, help="the exact command that trained the checkpoint")
    q.add_argument("--num-samples", dest="num_samples", type=int, default=1000)
    q.add_argument("--guidance", type=float, default=2.0,
                   help="for conditional models (default %(default)s: the best FID at >= 98%% accuracy measured)")
    q.add_argument("--device", default="auto")
    q.add_argument("--note", default=None, help="anything a reader of the card should know")
    q.set_defaults(func=cmd_pretrained)

    q = psub.add_parser("table", help="print the shipped models' cards as a markdown table")
    q.set_defaults(func=cmd_pretrained_table)
    q = psub.add_parser("add-evaluation", help="record an evaluate --json result of the shipped weights on their card")
    q.add_argument("--name", choices=["mnist-cond", "mnist-uncond"], required=True)
    q.add_argument("--json", required=True, help="output of: evaluate --checkpoint assets/pretrained-NAME.pt --json")
    q.add_argument("--primary", action="store_true", help="make it the card's main evaluation")
    q.set_defaults(func=cmd_pretrained_add_evaluation)

    p = sub.add_parser("benchmark", help="measure quality against sampling steps")
    bsub = p.add_subparsers(dest="benchmark_command", required=True, metavar="WHAT")
    q = bsub.add_parser("sampling", help="FID ratio, accuracy and time of DDPM, DDIM, DPM-Solver++ by steps")
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--num-samples", dest="num_samples", type=int, default=500)
    q.add_argument("--samplers", nargs="+", default=list(DEFAULT_SAMPLING_GRID),
                   help="specs like ddpm ddim:50 dpm_solver:20 (default: %(default)s)")
    q.add_argument("--guidance", type=float, default=2.0, help="for conditional models (default %(default)s)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default="auto")
    q.add_argument("--out", default="benchmarks", help="folder for sampling.md and sampling.json")
    q.set_defaults(func=cmd_benchmark_sampling)

    p = sub.add_parser("exercises", help="build the student edition of the notebooks, or grade submissions")
    xsub = p.add_subparsers(dest="exercises_command", required=True, metavar="ACTION")
    q = xsub.add_parser("build", help="write notebooks/exercises/ from the solution notebooks")
    q.add_argument("--notebooks", default="notebooks", help="folder of the solution notebooks (default %(default)s)")
    q.add_argument("--out", default=None, help="default: NOTEBOOKS/exercises")
    q.add_argument("--check", action="store_true", help="only check that the student edition is up to date")
    q.set_defaults(func=cmd_exercises_build)
    q = xsub.add_parser("grade", help="run submitted notebooks (each in its own process) and score the exercises")
    q.add_argument("files", nargs="+", help="submitted .ipynb files")
    q.add_argument("--timeout", type=float, default=900.0, help="seconds per notebook (default %(default)s)")
    q.add_argument("--profile", choices=list(PROFILES), default="ci",
                   help="profile the notebooks run under (default %(default)s: fast)")
    q.add_argument("--json", default=None, help="also write the scores here as JSON")
    q.set_defaults(func=cmd_exercises_grade)
    q = xsub.add_parser("list", help="list the exercises and the notebook each belongs to")
    q.set_defaults(func=cmd_exercises_list)

    q = bsub.add_parser("training", help="training img/s and quality over time, against a diffusers UNet2DModel peer")
    q.add_argument("--profile", choices=list(PROFILES), default=None)
    q.add_argument("--minutes", type=float, default=None,
                   help="training time per model (default: the profile's budget: ci 0.5, cpu 10, t4 5)")
    q.add_argument("--evaluations", type=int, default=3, help="quality measurements along the way")
    q.add_argument("--num-samples", dest="num_samples", type=int, default=200)
    q.add_argument("--guidance", type=float, default=2.0)
    q.add_argument("--no-peer", dest="peer", action="store_false", help="only the course's UNet")
    q.add_argument("--device", default="auto")
    q.add_argument("--out", default="benchmarks", help="folder for training.md and training.json")
    q.set_defaults(func=cmd_benchmark_training)

    p = sub.add_parser("figures", help="sample grids per guidance scale and a denoising GIF per digit")
    p.add_argument("--checkpoint", default=None, help="a conditional checkpoint (default: a shipped model)")
    p.add_argument("--pretrained", default="mnist-cond", help="shipped model used without --checkpoint")
    p.add_argument("--out", default="assets/figures")
    p.add_argument("--guidance-scales", dest="guidance_scales", type=float, nargs="+", default=[0.0, 1.0, 3.0, 5.0])
    p.add_argument("--steps", type=int, default=20, help="DPM-Solver++ steps for the grids")
    p.add_argument("--seeds", type=int, default=4, help="samples per digit")
    p.add_argument("--gif-steps", dest="gif_steps", type=int, default=100, help="ancestral (DDIM eta=1) steps")
    p.add_argument("--gif-frames", dest="gif_frames", type=int, default=30)
    p.add_argument("--gif-guidance", dest="gif_guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("profiles", help="list the training profiles (model size, steps)")
    p.add_argument("--measure", type=int, default=0, metavar="STEPS",
                   help="also measure training images/s over about STEPS steps of 64 images each")
    p.add_argument("--device", default="auto", help="device for --measure (default %(default)s)")
    p.add_argument("--flops", action="store_true", help="also count training FLOPs per image and per run, and "
                   "estimate the minutes a T4 needs at 10-20 TFLOP/s sustained (an estimate, not a measurement)")
    p.set_defaults(func=cmd_profiles)

    p = sub.add_parser("demo", help="sample a grid and a GIF of the denoising from the shipped model "
                                    "(or, with --train, from a model trained for about a minute)")
    p.add_argument("--out", default="demo", help="output folder (default %(default)s)")
    p.add_argument("--train", action="store_true", help="train a small model first instead of using the shipped one")
    p.add_argument("--max-steps", dest="max_steps", type=int, default=None, help="with --train (implies it)")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=50, help="DDIM sampling steps (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "profile", "unset") is None:
        args.profile = default_profile_name()
    for name in ("n", "steps", "batch_size", "max_steps", "num_samples"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {value}")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
