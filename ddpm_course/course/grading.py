"""Grading submitted notebooks: run each in its own process, with a time limit, and score it.

``python -m ddpm_course exercises grade FILE.ipynb ...`` runs every notebook top to bottom in a
fresh worker process (``python -m ddpm_course.grading FILE LOG``) that executes it in a fresh
Jupyter kernel, with ``$DDPM_COURSE_GRADE_LOG`` pointing at a log file. Each exercise check in the
notebook appends its result there (see :mod:`ddpm_course.course.exercises`); the grader reads the log and
prints one row per exercise. No student code is ever imported into the grader's own process.

A check that never ran (the notebook stopped early, timed out, or the student deleted the cell)
scores zero and says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .._checks import check_choice, check_float
from ..config import PROFILES
from .exercises import GRADE_LOG_ENV, exercises_in

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


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # the worker and the kernel it started
    except (ProcessLookupError, PermissionError):
        proc.kill()


def grade_notebook(path, *, timeout: float = 900.0, profile: str = "ci") -> Grade:
    """Run the notebook at ``path`` in a separate process (at most ``timeout`` seconds) and score it."""
    check_float("timeout", timeout, minimum=1.0)
    check_choice("profile", profile, list(PROFILES))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    name = notebook_name(nbformat.read(path, as_version=4), path)
    grade = Grade(str(path), name)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "results.jsonl"
        env = {**os.environ, GRADE_LOG_ENV: str(log), "DDPM_COURSE_PROFILE": profile, "MPLBACKEND": "Agg"}
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "ddpm_course.course.grading", str(path.resolve()), tmp],
                                env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                last = output.strip().splitlines()[-1] if output.strip() else f"exit status {proc.returncode}"
                grade.problem = f"the notebook could not be run: {last}"
        except subprocess.TimeoutExpired:
            _kill(proc)
            proc.communicate()
            grade.problem = f"stopped after the time limit of {timeout:.0f} s"
        grade.seconds = time.perf_counter() - start
        results = read_results(log)
    for exercise in exercises_in(name):
        status, message = results.get(exercise, ("not run", "the check cell never ran"
                                                 + (f" ({grade.problem})" if grade.problem else "")))
        grade.rows.append((exercise, status, message))
    return grade


def read_results(log: Path) -> dict:
    """{exercise: (status, message)} from a grade log; a malformed or incomplete line is skipped
    (it can only cost its own notebook a result, never stop the batch)."""
    results = {}
    if not log.exists():
        return results
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            item = json.loads(line)
            results[str(item["exercise"])] = (str(item["status"]), str(item["message"]))
        except (ValueError, KeyError, TypeError):
            continue
    return results


def grade_batch(paths, *, timeout: float = 900.0, profile: str = "ci", log=print) -> list:
    """Grade each notebook in turn; a submission that cannot be graded at all (unreadable, not a
    course notebook, ...) becomes its own row with the problem, and the batch always finishes."""
    grades = []
    for path in paths:
        log(f"grading {path} ...")
        try:
            grades.append(grade_notebook(path, timeout=timeout, profile=profile))
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


def _execute(path: str, workdir: str) -> None:
    """Worker: execute one notebook in a fresh kernel; errors in cells do not stop the run."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=None, allow_errors=True, kernel_name="python3",
                            resources={"metadata": {"path": workdir}})
    client.execute()


if __name__ == "__main__":
    _execute(sys.argv[1], sys.argv[2])
