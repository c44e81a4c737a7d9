"""Grading submitted notebooks: run each in its own sandboxed kernel, with a time limit, and score it.

``python -m ddpm_course exercises grade FILE.ipynb ...`` runs every notebook top to bottom in a
fresh Jupyter kernel (:mod:`.sandbox`: scrubbed environment, its own temporary directory, CPU-time
and memory limits, every process it started killed at the end). The verdicts are *not* read from
anything the notebook prints or writes: after the notebook has run, the grader calls each function
the student passed to ``check(...)`` on the checker's inputs — sent to the kernel, answered as
tensors — and runs the checker in its own process. Writing a file or printing "passed" changes
nothing; only a function that computes the right answers passes.

A check that never ran scores zero and says why: the cell raised an error (its first line), the
check cell is missing, the notebook stopped early, timed out, or its kernel died in a named cell.
"""

from __future__ import annotations

import base64
import io
import math
import os
import pickle
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import torch

from .._checks import check_choice, check_float
from ..config import PROFILES
from . import sandbox
from .exercises import exercises_in, run_check
from .exercises.framework import ANSWER_MARK, GraderSignal, Mismatch, NotSubmitted

COURSE_NOTEBOOKS = ("01_forward_diffusion", "02_unet", "03_training", "04_sampling", "05_conditioning",
                    "06_evaluation")


@dataclass
class Grade:
    """The score of one notebook: one (exercise, status, message) row per expected exercise."""

    path: str
    notebook: str
    rows: list = field(default_factory=list)
    seconds: float = 0.0
    problem: str | None = None   # timed out, kernel died, ...

    @property
    def score(self) -> int:
        return sum(status == "passed" for _, status, _ in self.rows)

    @property
    def total(self) -> int:
        return len(self.rows)


def notebook_name(nb, path: Path) -> str:
    """Which course notebook a submission is: its metadata, else a course name inside its file name."""
    name = nb.metadata.get("ddpm_course", {}).get("notebook")
    if name:
        return name
    for known in COURSE_NOTEBOOKS:
        if known in path.stem:
            return known
    raise ValueError(f"cannot tell which course notebook {path} is: its metadata has no "
                     "ddpm_course.notebook and its name contains none of the course's notebook names")


CALL_TIMEOUT = 120.0   # seconds the grader waits for one call of a student's function
_DEATHS = "a crash, os._exit, or the grader's memory or CPU-time limit"


class _KernelGone(GraderSignal):
    """The kernel died or stopped answering while the grader called a student's function."""


def _first_line(text: str, limit: int = 70) -> str:
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _where(nb, index: int) -> str:
    return f"cell {index + 1} (`{_first_line(nb.cells[index].source)}`)"


def _error_of(cell) -> str | None:
    """'SyntaxError: invalid syntax (...)' for a cell whose run ended in an error, else None."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return f"{output.get('ename', 'Error')}: {_first_line(output.get('evalue', ''), 200)}"
    return None


class _Kernel:
    """One submission's Jupyter kernel, driven from the grader's process (nbclient), sandboxed."""

    def __init__(self, nb, workdir: str, *, profile: str, timeout: float, memory_bytes: int):
        from nbclient import NotebookClient

        self.nb, self.timeout = nb, timeout
        self.deadline = time.monotonic() + timeout
        self.alive = True
        self.client = NotebookClient(nb, timeout=int(timeout), allow_errors=True, kernel_name="python3",
                                     interrupt_on_timeout=False, resources={"metadata": {"path": workdir}})
        self.client.km = self.client.create_kernel_manager()
        env = sandbox.scrubbed_environment(workdir, DDPM_COURSE_PROFILE=profile, MPLBACKEND="Agg")
        self.client.start_new_kernel(env=env, cwd=workdir)
        sandbox.apply_limits(self.client.km.provisioner.pid, memory_bytes=memory_bytes,
                             cpu_seconds=max(60.0, timeout * (os.cpu_count() or 1)))
        self.client.start_new_kernel_client()

    def _execute(self, cell, index: int, seconds: float) -> None:
        self.client.timeout = max(1, math.ceil(seconds))
        self.client.execute_cell(cell, index, store_history=False)

    def run_all(self) -> tuple:
        """Run every code cell in order until the end, the time limit or the kernel's death.

        Returns (indexes of the cells that completed, the problem or None)."""
        from nbclient.exceptions import CellTimeoutError, DeadKernelError

        done = set()
        for index, cell in enumerate(self.nb.cells):
            if cell.cell_type != "code" or not cell.source.strip():
                continue
            try:
                self._execute(cell, index, self.deadline - time.monotonic())
            except CellTimeoutError:
                self.alive = self._interrupt()   # so that the exercises checked before can be graded
                return done, f"stopped after the time limit of {self.timeout:.0f} s, in {_where(self.nb, index)}"
            except DeadKernelError:
                self.alive = False
                return done, f"the kernel died while running {_where(self.nb, index)} ({_DEATHS})"
            done.add(index)
        return done, None

    def _scratch(self, source: str, seconds: float):
        """Run ``source`` as a cell of the grader's own (added to the notebook only while it runs);
        return the executed cell with its outputs."""
        cell = nbformat.v4.new_code_cell(source)
        self.nb.cells.append(cell)
        try:
            self._execute(cell, len(self.nb.cells) - 1, seconds)
        finally:
            self.nb.cells.remove(cell)
        return cell

    def _interrupt(self) -> bool:
        """Interrupt the running cell; True when the kernel answers again."""
        from jupyter_core.utils import run_sync

        try:
            run_sync(self.client.km.interrupt_kernel)()
            self.client.kc.stop_channels()   # a fresh client: the timed-out cell's listener still reads the old one
            self.client.kc = None
            self.client.start_new_kernel_client()
            self._scratch("pass", 20)
            return True
        except Exception:  # noqa: BLE001 - a kernel that ignores the interrupt is not graded further
            return False

    def call(self, exercise: str, args: tuple):
        """Call the function submitted for ``exercise`` in the kernel; return its answer (a dict)."""
        from nbclient.exceptions import CellTimeoutError, DeadKernelError

        payload = base64.b64encode(pickle.dumps(tuple(args))).decode("ascii")
        try:
            cell = self._scratch("from ddpm_course.course.exercises.framework import answer_call\n"
                                 f"answer_call({exercise!r}, {payload!r})", CALL_TIMEOUT)
        except CellTimeoutError:
            self.alive = False
            raise _KernelGone(f"your function did not return within {CALL_TIMEOUT:.0f} s when the grader "
                              "called it") from None
        except DeadKernelError:
            self.alive = False
            raise _KernelGone(f"the kernel died when the grader called your function ({_DEATHS})") from None
        text = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
        answers = [line for line in text.splitlines() if line.startswith(ANSWER_MARK)]
        if not answers:
            raise Mismatch(f"the grader could not call your function: {_error_of(cell) or 'no answer'}")
        try:
            answer = torch.load(io.BytesIO(base64.b64decode(answers[-1][len(ANSWER_MARK):])), weights_only=True)
        except Exception as err:  # noqa: BLE001 - whatever the kernel sent, it is not a valid answer
            raise Mismatch(f"the grader could not read your function's answer ({type(err).__name__})") from err
        if not isinstance(answer, dict):
            raise Mismatch("the grader could not read your function's answer")
        return answer

    def close(self) -> None:
        from jupyter_core.utils import run_sync

        try:
            self.client.kc.stop_channels()
        except Exception:  # noqa: BLE001 - the kernel may be gone already
            pass
        try:
            run_sync(self.client.km.shutdown_kernel)(now=True)
        except Exception:  # noqa: BLE001
            pass


class _Submitted:
    """Stands for the student's function inside the checker: each call goes to the kernel."""

    def __init__(self, kernel: _Kernel, exercise: str):
        self.kernel, self.exercise = kernel, exercise

    def __call__(self, *args):
        answer = self.kernel.call(self.exercise, args)
        if answer.get("missing"):
            raise NotSubmitted(self.exercise)
        if "error" in answer:
            name = re.sub(r"\W", "", str(answer["error"]))[:60] or "Exception"
            if name == "NotImplementedError":
                raise NotImplementedError(str(answer.get("message", "")))
            raise type(name, (Exception,), {})(str(answer.get("message", "")))
        for arg, after in zip(args, answer.get("args") or []):   # what the function did in place
            if isinstance(arg, torch.Tensor) and isinstance(after, torch.Tensor) and after.shape == arg.shape:
                arg.copy_(after.to(arg.dtype))
        if "out" not in answer:
            return type(re.sub(r"\W", "", str(answer.get("type", "object")))[:60] or "object", (), {})()
        return answer["out"]


def _not_checked(nb, exercise: str, done: set, problem: str | None) -> tuple:
    """(status, message) for an exercise whose function was never passed to check()."""
    pattern = re.compile(r"\bcheck\(\s*['\"]" + re.escape(exercise) + r"['\"]")
    cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and pattern.search(c.source)]
    if not cells:
        return "not run", (f"no cell calls check(\"{exercise}\", ...): the check cell was deleted or changed")
    index = cells[0]
    if index not in done:
        return "not run", "the check cell never ran" + (f" ({problem})" if problem else "")
    previous = max((i for i, c in enumerate(nb.cells[:index]) if c.cell_type == "code" and "check(" in c.source),
                   default=-1)
    for i in range(previous + 1, index + 1):
        error = _error_of(nb.cells[i])
        if error and nb.cells[i].cell_type == "code":
            return "failed", f"{_where(nb, i)} raised {error}"
    return "not run", "the check cell ran, but no function was checked"


def _grade_rows(kernel: _Kernel, nb, name: str, done: set, problem: str | None) -> list:
    rows, gone = [], None
    for exercise in exercises_in(name):
        if gone or not kernel.alive:
            status, message = _not_checked(nb, exercise, done, problem)
            if status == "not run" and "never ran" not in message and "no cell" not in message:
                status, message = "not graded", f"not graded: {gone or problem}"
            rows.append((exercise, status, message))
            continue
        try:
            feedback = run_check(exercise, _Submitted(kernel, exercise))
            rows.append((exercise, feedback.status, feedback.message))
        except NotSubmitted:
            rows.append((exercise, *_not_checked(nb, exercise, done, problem)))
        except _KernelGone as err:
            gone = str(err)
            rows.append((exercise, "failed", f"{err}; the notebook's other exercises could not be graded"))
    return rows


def grade_notebook(path, *, timeout: float = 900.0, profile: str = "ci", memory_gb: float = 8.0) -> Grade:
    """Run the notebook at ``path`` in a sandboxed kernel (at most ``timeout`` seconds, ``memory_gb``
    of address space) and score each of its exercises by calling the student's functions."""
    check_float("timeout", timeout, minimum=1.0)
    check_float("memory_gb", memory_gb, minimum=1.0)
    check_choice("profile", profile, list(PROFILES))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    nb = nbformat.read(path, as_version=4)
    name = notebook_name(nb, path)
    grade = Grade(str(path), name)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ddpm-course-grade-") as tmp, sandbox.ProcessSweeper() as sweeper:
        kernel = _Kernel(nb, tmp, profile=profile, timeout=timeout, memory_bytes=int(memory_gb * 2**30))
        try:
            done, grade.problem = kernel.run_all()
            grade.rows = _grade_rows(kernel, nb, name, done, grade.problem)
        finally:
            kernel.close()
            left = sweeper.sweep()
        if left:
            note = f"{left} process(es) it started were still running at the end and were killed"
            grade.problem = f"{grade.problem}; {note}" if grade.problem else note
    grade.seconds = time.perf_counter() - start
    return grade


def grade_batch(paths, *, timeout: float = 900.0, profile: str = "ci", memory_gb: float = 8.0, log=print) -> list:
    """Grade each notebook in turn; a submission that cannot be graded at all (unreadable, not a
    course notebook, ...) becomes its own row with the problem, and the batch always finishes."""
    grades = []
    for path in paths:
        log(f"grading {path} ...")
        try:
            grades.append(grade_notebook(path, timeout=timeout, profile=profile, memory_gb=memory_gb))
        except Exception as error:  # noqa: BLE001 - one bad submission must not stop the class's grading
            grades.append(Grade(str(path), "unknown", problem=f"could not be graded: {type(error).__name__}: "
                                                              f"{str(error)[:200]}"))
    return grades


def format_grades(grades: list) -> str:
    """A plain-text table: notebook, exercise, status, feedback; then a score per notebook."""
    width = max([len(g.path) for g in grades] + [8])
    lines = [f"{'file':<{width}} {'exercise':<22} {'status':<14} feedback", "-" * (width + 80)]
    for g in grades:
        for exercise, status, message in g.rows:
            lines.append(f"{g.path:<{width}} {exercise:<22} {status:<14} {message[:160]}")
    lines.append("-" * (width + 80))
    for g in grades:
        extra = f" — {g.problem}" if g.problem else ""
        lines.append(f"{g.path}: {g.score}/{g.total} ({g.notebook}, {g.seconds:.0f} s){extra}")
    return "\n".join(lines)


def grades_json(grades: list) -> list:
    """The grades as plain data, for ``exercises grade --json``."""
    return [{"file": g.path, "notebook": g.notebook, "score": g.score, "total": g.total,
             "seconds": round(g.seconds, 1), "problem": g.problem,
             "exercises": [{"exercise": e, "status": s, "message": m} for e, s, m in g.rows]} for g in grades]
