"""Commands about models: train, sample, export, evaluate, demo, figures."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

from ..checkpoints import load_checkpoint, load_guide
from ..config import PROFILES, default_profile_name, get_profile
from ..demo import demo_checkpoint, make_figures, run_demo
from ..devices import resolve_device
from ..distributed import is_main_process
from ..evaluation import format_report, inception_fid, reference_images, sample_and_evaluate, sample_scores
from ..files import atomic_write_json, check_writable_folder
from ..generation import (
    checkpoint_settings,
    class_labels,
    export_images,
    generate_samples,
    guide_for,
    sampling_settings,
)
from ..sampling import SAMPLERS
from ..training import train
from ..visualize import ProcessRecorder, check_image_path, save_gif, save_grid

TRAIN_FLAGS = ("max_steps", "batch_size", "lr", "seed", "subset", "dataset", "data_root", "device", "split",
               "checkpoint_every")


def parse_override(text: str) -> tuple:
    """``"key=value"`` -> (key, value); the value is a Python literal when it parses as one."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE (e.g. model.base_channels=48 or compile=True), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def add_sampling_args(p: argparse.ArgumentParser, *, n: int | None = None, eta: bool = True) -> None:
    """The sampling options shared by sample, export and evaluate; None means "the checkpoint's"."""
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by 'train', or a shipped model")
    if n is not None:
        p.add_argument("--n", type=int, default=n, help="number of images (default %(default)s)")
    p.add_argument("--sampler", choices=list(SAMPLERS), default=None,
                   help="default: the checkpoint's recommendation (DPM-Solver++)")
    p.add_argument("--steps", type=int, default=None,
                   help="model calls (default: the checkpoint's, else ddim 50, dpm_solver 20; ddpm always T)")
    if eta:
        p.add_argument("--eta", type=float, default=None, help="DDIM only: 0 deterministic (default), 1 like DDPM")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: the checkpoint's; 1.1 for mnist-cond, "
                        "1.5 for fashion-cond)")
    p.add_argument("--autoguidance", type=float, default=None,
                   help="guide the model with a worse version of itself at this scale (1: not; default: the "
                        "checkpoint's, 1.5 for mnist-uncond, with the guide it ships)")
    p.add_argument("--guide", default=None,
                   help="checkpoint of the worse model for --autoguidance (default: the one the checkpoint ships)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


def _load(args):
    """The checkpoint of ``--checkpoint``, with the model of ``--guide`` as its guide when given."""
    ckpt = load_checkpoint(args.checkpoint, resolve_device(args.device))
    if args.guide is not None:
        scale = sampling_settings(ckpt.sampling, None, ckpt.schedule.T, autoguidance=args.autoguidance).autoguidance
        if scale == 1.0:
            raise ValueError(f"--guide {args.guide} was given, but autoguidance is 1 (none): give "
                             "--autoguidance W with W != 1 (e.g. 1.5), or leave --guide out")
        ckpt.guide = load_guide(args.guide, ckpt.schedule, resolve_device(args.device))
    return ckpt


def _settings(ckpt, labels, args):
    settings = checkpoint_settings(ckpt, labels, sampler=args.sampler, steps=args.steps,
                                   guidance_scale=args.guidance, eta=getattr(args, "eta", None),
                                   autoguidance=args.autoguidance)
    print(f"Sampling with {settings.describe()}")
    return settings


def cmd_train(args) -> int:
    name = args.profile or default_profile_name()
    config = get_profile(name)
    pairs = list(args.set or []) + [(k, getattr(args, k)) for k in TRAIN_FLAGS if getattr(args, k) is not None]
    config = config.with_overrides(pairs + [("out_dir", args.out or config.out_dir)])
    say = print if is_main_process() else (lambda *a: None)   # under torchrun, rank 0 speaks
    say(f"Profile {name}: {config.max_steps} steps of {config.batch_size} images -> {config.out_dir}")
    say(f"Checkpoint: {train(config, resume=not args.no_resume, progress=not args.no_progress)}")
    return 0


def cmd_sample(args) -> int:
    check_image_path(args.out, "--out")
    if args.gif:
        check_image_path(args.gif, "--gif")
    ckpt = _load(args)
    labels = class_labels(args.labels, args.n, ckpt.num_classes)
    settings = _settings(ckpt, labels, args)
    recorder = (ProcessRecorder(settings.steps, num_frames=args.gif_frames, kind="x0" if args.gif_x0 else "x_t")
                if args.gif else None)
    x = generate_samples(ckpt.ema_model, ckpt.schedule, args.n, settings, labels=labels, seed=args.seed,
                         callback=recorder, progress=True, guide=guide_for(ckpt, settings))
    nrow = ckpt.num_classes if labels is not None and args.labels in (None, "all") else 8
    print(f"Grid: {save_grid(x, args.out, nrow=nrow)}")
    if recorder is not None:
        print(f"GIF: {save_gif(recorder.finish(x), args.gif, nrow=nrow)}")
    return 0


def cmd_export(args) -> int:
    check_writable_folder(args.out, "--out")
    ckpt = _load(args)
    labels = class_labels(args.labels, args.n, ckpt.num_classes)
    written = export_images(ckpt, args.out, args.n, _settings(ckpt, labels, args), labels=labels,
                            batch_size=args.batch_size, seed=args.seed)
    print(f"Wrote {written} PNG files to {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    if args.json:
        check_writable_folder(Path(args.json).parent, "the folder of --json")
    if args.grid:
        check_image_path(args.grid, "--grid")
    ckpt = _load(args)
    evaluation = sample_and_evaluate(ckpt, num_samples=args.num_samples, sampler=args.sampler, steps=args.steps,
                                     guidance_scale=args.guidance, seed=args.seed, evaluator=args.evaluator,
                                     batch_size=args.batch_size, autoguidance=args.autoguidance)
    result = {**evaluation.result, "checkpoint": str(args.checkpoint),
              **({"guide": str(args.guide)} if args.guide else {})}
    if args.inception:
        real = reference_images(ckpt.config.dataset, args.num_samples, image_size=ckpt.config.model.image_size)[0]
        result["inception_fid"] = inception_fid(evaluation.samples, real)
    print(format_report(result))
    if args.json:
        print(f"JSON: {atomic_write_json(args.json, result)}")
    grid = args.grid or (Path(args.json).with_suffix(".png") if args.json else None)
    if grid:
        samples = evaluation.samples
        order = sample_scores(evaluation.evaluator, samples, evaluation.labels).argsort(descending=True)
        k = min(30, len(samples) // 2)
        save_grid(samples[order[:k].tolist() + order[-k:].tolist()], grid, nrow=10)
        print(f"Grid (top: the {k} most convincing samples, bottom: the {k} least): {grid}")
    return 0


def cmd_demo(args) -> int:
    ckpt = demo_checkpoint(args.out, train_first=args.train, max_steps=args.max_steps, seed=args.seed,
                           progress=not args.no_progress)
    grid, gif = run_demo(ckpt, args.out, sampler=args.sampler, steps=args.steps, guidance_scale=args.guidance,
                         seed=args.seed, progress=not args.no_progress)
    print(f"\nSample grid (each column one digit, 0-9): {grid}\nDenoising GIF: {gif}")
    return 0


def cmd_figures(args) -> int:
    from ..pretrained import load_pretrained

    device = resolve_device(args.device)
    ckpt = load_pretrained(args.pretrained, device) if args.checkpoint is None else load_checkpoint(args.checkpoint,
                                                                                                    device)
    make_figures(ckpt, args.out, guidance_scales=args.guidance_scales, steps=args.steps, seeds=args.seeds,
                 gif_steps=args.gif_steps, gif_frames=args.gif_frames, gif_guidance=args.gif_guidance, seed=args.seed)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train a model from a profile",
                       description="Train a DDPM. Profiles: ci (seconds), cpu (10-30 min on 2 cores), t4 (Colab GPU).")
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
    add_sampling_args(p, n=64)
    p.add_argument("--labels", default=None,
                   help="conditional models: 'all' (default: every digit in turn), 'none', or e.g. '3' or '0,1,2'")
    p.add_argument("--out", required=True, help="PNG file for the grid")
    p.add_argument("--gif", default=None, help="also write a GIF of the denoising here")
    p.add_argument("--gif-frames", dest="gif_frames", type=int, default=40)
    p.add_argument("--gif-x0", dest="gif_x0", action="store_true", help="animate the predicted x0 instead of x_t")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("export", help="write N samples as individual PNG files (for evaluation)")
    add_sampling_args(p, n=10000)
    p.add_argument("--labels", default=None, help="as for sample")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=256)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="sample from a checkpoint and measure FID, accuracy, confidence, ...")
    add_sampling_args(p, eta=False)
    p.add_argument("--num-samples", dest="num_samples", type=int, default=1000)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=250)
    p.add_argument("--evaluator", choices=["mnist", "fashion_mnist"], default=None,
                   help="the classifier that judges the samples (default: the checkpoint's dataset's)")
    p.add_argument("--json", default=None, help="write the results here as JSON")
    p.add_argument("--inception", action="store_true",
                   help="also Inception FID (key inception_fid; needs torch-fidelity and a download: null offline)")
    p.add_argument("--grid", default=None,
                   help="PNG of the most and least convincing samples (default: next to --json)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="sample a grid and a GIF of the denoising from the shipped model "
                                    "(or, with --train, from a model trained for about a minute)")
    p.add_argument("--out", default="demo", help="output folder (default %(default)s)")
    p.add_argument("--train", action="store_true", help="train a small model first instead of using the shipped one")
    p.add_argument("--max-steps", dest="max_steps", type=int, default=None, help="with --train (implies it)")
    p.add_argument("--sampler", choices=list(SAMPLERS), default=None, help="default: the model's recommendation")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's recommendation)")
    p.add_argument("--guidance", type=float, default=None, help="default: the model's recommendation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("figures", help="sample grids per guidance scale and a denoising GIF per digit")
    p.add_argument("--checkpoint", default=None, help="a conditional checkpoint (default: a shipped model)")
    p.add_argument("--pretrained", default="mnist-cond",
                   help="conditional shipped model used without --checkpoint: mnist-cond or fashion-cond")
    p.add_argument("--out", default="assets/figures")
    p.add_argument("--guidance-scales", dest="guidance_scales", type=float, nargs="+", default=[0.0, 1.0, 3.0, 5.0])
    p.add_argument("--steps", type=int, default=20, help="DPM-Solver++ steps for the grids")
    p.add_argument("--seeds", type=int, default=4, help="samples per digit")
    p.add_argument("--gif-steps", dest="gif_steps", type=int, default=100, help="ancestral (DDIM eta=1) steps")
    p.add_argument("--gif-frames", dest="gif_frames", type=int, default=30)
    p.add_argument("--gif-guidance", dest="gif_guidance", type=float, default=None,
                   help="default: the model's recommendation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_figures)
