"""Command line: ``python -m ddpm_course COMMAND`` (``--help`` lists the commands).

The CLI only parses arguments, calls one package function per command and prints; everything it
does is available from Python. Commands about models (train, sample, export, evaluate, demo,
figures) are in :mod:`.models`; the tools around them (benchmark, profiles, evaluator,
pretrained, exercises) in :mod:`.tools`.

Exit status: 0 on success, 2 for a usage or input error (the message says what to change), 1 for
a failure during the work (a full disk, a diverged training), 128 + the signal for an interrupt
(130 for Ctrl-C, 143 for SIGTERM). Errors are one line; ``DDPM_COURSE_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from ..stopping import TrainingInterrupted
from . import models, tools

EPILOG = ("Exit status: 0 success; 2 usage or input error; 1 failure during the work (e.g. a full disk); "
          "130 interrupted by Ctrl-C, 143 by SIGTERM (a training run saves its last step first). "
          "Set DDPM_COURSE_DEBUG=1 to see tracebacks.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_course",
        description="DDPM course tools: train, sample, export, evaluate, benchmark, exercises, evaluator, "
                    "pretrained, profiles, demo, figures.",
        epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models.add_commands(sub)
    tools.add_commands(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("n", "steps", "batch_size", "max_steps", "num_samples"):
        value = getattr(args, name, None)
        if value is not None and value < 1:   # a usage error: status 2, as argparse's own
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {value}", file=sys.stderr)
            return 2
    debug = os.environ.get("DDPM_COURSE_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except TrainingInterrupted as stop:
        again = [a for a in (sys.argv[1:] if argv is None else list(argv)) if a != "--no-resume"]
        print(f"\nInterrupted: step {stop.step} is saved in {stop.path}. Resume with: "
              f"python -m ddpm_course {shlex.join(again)}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, ImportError) as error:   # what to change, or install
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, FloatingPointError) as error:  # the work failed: a full disk, divergence
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
