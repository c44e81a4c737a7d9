"""Stopping a training run cleanly: Ctrl-C and SIGTERM finish the step in flight, then save it.

While :func:`deferred_signals` is active, SIGINT (Ctrl-C, or "interrupt the kernel" in Jupyter)
and SIGTERM (a scheduler or ``kill``) only record the request; the training loop checks it after
each completed step, saves that step and raises :class:`TrainingInterrupted`. A second Ctrl-C
while the step finishes stops at once (the last periodic checkpoint is then the good one).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass
from pathlib import Path


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by a signal after saving the last completed step.

    ``step`` and ``path`` say what was saved; ``exit_code`` is the shell's convention, 128 + the
    signal number (130 for Ctrl-C, 143 for SIGTERM).
    """

    def __init__(self, step: int, path: Path, signum: int):
        self.step, self.path, self.signum = step, Path(path), signum
        self.exit_code = 128 + signum
        super().__init__(f"training interrupted by {signal.Signals(signum).name}: step {step} is saved in {path}; "
                         "train(config) again (resume=True) continues from there")


@dataclass
class StopRequest:
    """The signal that asked training to stop, or None."""

    signum: int | None = None


@contextlib.contextmanager
def deferred_signals(signums=(signal.SIGINT, signal.SIGTERM)):
    """Within the block, the first SIGINT or SIGTERM only sets ``request.signum``; a second one
    raises KeyboardInterrupt at once. Outside the main thread (where Python delivers no signals)
    it changes nothing. Restores the previous handlers on exit."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request.signum is not None:
            raise KeyboardInterrupt
        request.signum = signum

    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
