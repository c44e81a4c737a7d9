"""What the grader isolates a submission with, short of a container.

A submission is arbitrary Python run as the instructor's user. Without a container (or a separate
user) it can still read and write every file that user can, use the network, and inspect other
processes of that user. What this module does, on Linux:

- :func:`scrubbed_environment`: the kernel sees only what a notebook needs (``PATH``, locale,
  Python's paths, the course's data folder) with ``HOME`` and ``TMPDIR`` set to the submission's
  own temporary directory; no tokens or other secrets from the instructor's environment.
- :func:`apply_limits`: CPU-time and address-space limits on the kernel (its children inherit
  them), so a submission cannot spin for hours or take the machine's memory.
- :class:`ProcessSweeper`: every process the submission started is killed at the end, including
  those that left the kernel's process group or daemonised (the grader makes itself a *child
  subreaper*, so orphans are re-parented to it instead of to init, and can be found).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
from pathlib import Path

PASS_THROUGH = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "DDPM_COURSE_DATA",
                "OMP_NUM_THREADS", "MKL_NUM_THREADS", "SYSTEMROOT")
_PR_SET_CHILD_SUBREAPER = 36


def scrubbed_environment(workdir, **extra: str) -> dict:
    """The environment of a submission's kernel: :data:`PASS_THROUGH` from ours, HOME and TMPDIR in
    ``workdir``, no GPU (``CUDA_VISIBLE_DEVICES`` empty), plus ``extra``."""
    env = {key: os.environ[key] for key in PASS_THROUGH if key in os.environ}
    workdir = str(workdir)
    env.update(HOME=workdir, TMPDIR=workdir, MPLCONFIGDIR=workdir, CUDA_VISIBLE_DEVICES="",
               PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


def apply_limits(pid: int, *, cpu_seconds: float, memory_bytes: int) -> None:
    """Limit process ``pid`` (and what it starts later) to ``cpu_seconds`` of CPU time (SIGKILL when
    exceeded) and ``memory_bytes`` of address space (allocations beyond it fail with MemoryError).

    Linux only (``prlimit``); elsewhere the grader relies on its wall-clock time limit.
    """
    if not hasattr(resource, "prlimit"):
        return
    cpu = int(cpu_seconds)
    resource.prlimit(pid, resource.RLIMIT_CPU, (cpu, cpu))
    resource.prlimit(pid, resource.RLIMIT_AS, (int(memory_bytes), int(memory_bytes)))


def _set_subreaper(on: bool) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(pid: int) -> set:
    """The ids of every living descendant of process ``pid`` (read from /proc; empty elsewhere)."""
    children: dict = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])   # after "pid (comm) state"
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _state(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return text[text.rindex(")") + 2]


class ProcessSweeper:
    """``with ProcessSweeper() as sweeper:`` — processes started inside the block are killed when it
    ends (or by :meth:`sweep`); processes that existed before are left alone.

    ``sweeper.killed`` counts what was killed, so a grade can say that a submission left processes
    behind.
    """

    def __init__(self):
        self.before: set = set()
        self.killed = 0
        self._subreaper = False

    def __enter__(self) -> ProcessSweeper:
        self._subreaper = _set_subreaper(True)
        self.before = descendants(os.getpid())
        return self

    def sweep(self) -> int:
        """Kill every new descendant (repeatedly: a killed parent's children are re-parented to us)."""
        killed_now = 0
        for _ in range(20):
            new = descendants(os.getpid()) - self.before
            if not new:
                break
            for pid in new:
                try:
                    if _state(pid) != "Z":   # a zombie has already ended: it only needs reaping
                        os.kill(pid, signal.SIGKILL)
                        killed_now += 1
                except (ProcessLookupError, PermissionError):
                    pass
            for pid in new:   # reap the ones that are (now) our children
                try:
                    os.waitpid(pid, 0)
                except (ChildProcessError, OSError):
                    pass
        self.killed += killed_now
        return killed_now

    def __exit__(self, *exc) -> None:
        self.sweep()
        if self._subreaper:
            _set_subreaper(False)
