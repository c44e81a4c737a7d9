"""Command line: ``python -m ddpm_course COMMAND`` (``--help`` lists the commands).

The CLI only parses arguments, calls one package function per command and prints; everything it
does is available from Python. Commands about models (train, sample, export, evaluate, demo,
figures) are in :mod:`.models`; the tools around them (benchmark, profiles, evaluator,
pretrained, exercises) in :mod:`.tools`.

Exit status: 0 on success, 2 for a usage or input error (the message says what to change).
"""

from __future__ import annotations

import argparse
import sys

from . import models, tools


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_course",
        description="DDPM course tools: train, sample, export, evaluate, benchmark, exercises, evaluator, "
                    "pretrained, profiles, demo, figures.",
        epilog="Exit status: 0 success, 2 usage or input error.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models.add_commands(sub)
    tools.add_commands(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("n", "steps", "batch_size", "max_steps", "num_samples"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {value}")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
