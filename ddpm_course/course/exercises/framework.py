"""The exercise-checking framework: compare a student's function with the package's, say what is wrong.

The checkers themselves live in one module per notebook (``nb01_forward_diffusion`` ...
``nb05_conditioning``); each registers its exercises with :func:`exercise`. Each exercise of
notebooks 01-05 ends with

    alpha_bar = check("alpha_bar", alpha_bar)

which calls the student's function on several test cases, compares it with the reference built
from ``ddpm_course``, prints one line of feedback and returns the function the notebook should
carry on with: the student's when it is right, the package's otherwise (so "Run all" completes in
the student edition). Feedback names the mistake when it is a known one (square root forgotten,
alpha-bar off by one step, guidance sign flipped, ...), else the test case and index where the
values differ most and by how much.

Grading never trusts what the notebook prints or writes: ``check`` also records the function in
:data:`SUBMITTED`, and after the notebook has run, the grader (:mod:`ddpm_course.course.grading`)
calls that function through :func:`answer_call` on inputs it sends, and runs the same checker on
the answers in its own process.
"""

from __future__ import annotations

import base64
import io
import pickle
from dataclasses import dataclass
from typing import Callable

import torch

ANSWER_MARK = "@@ddpm_course_answer@@ "   # the line of a grader's call that carries the answer
STATUSES = ("passed", "failed", "not attempted")
_MARK = {"passed": "✔", "failed": "✘", "not attempted": "…"}


class Mismatch(Exception):
    """Raised inside a checker: the student's output is wrong, and the message says how."""


class GraderSignal(Exception):
    """Raised by the grader's stand-in for a student's function; checkers pass it on untouched."""


class NotSubmitted(GraderSignal):
    """The notebook never passed a function to ``check`` for this exercise."""


@dataclass(frozen=True)
class Feedback:
    """The outcome of one check: a status from :data:`STATUSES` and a message for the student."""

    exercise: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __str__(self) -> str:
        return f"{_MARK[self.status]} {self.exercise}: {self.message}"


@dataclass(frozen=True)
class Exercise:
    """One exercise: where it lives, the reference function and the checker that compares."""

    name: str
    notebook: str
    summary: str
    reference: Callable  # the package's function, called the way the exercise's function is called
    checker: Callable    # checker(student_fn) -> str (what was tested); raises Mismatch when wrong


EXERCISES: dict[str, Exercise] = {}
RESULTS: dict[str, Feedback] = {}   # the results of this process, by exercise name
SUBMITTED: dict[str, Callable] = {}  # the function last passed to check(), by exercise name


def exercise(name: str, notebook: str, summary: str, reference: Callable):
    """Register a checker function under ``name`` (decorator)."""
    def register(checker: Callable) -> Callable:
        EXERCISES[name] = Exercise(name, notebook, summary, reference, checker)
        return checker
    return register


def exercises_in(notebook: str) -> list:
    """The names of the exercises of one notebook (e.g. ``"01_forward_diffusion"``), in order."""
    return [e.name for e in EXERCISES.values() if e.notebook == notebook]


# ---------------------------------------------------------------------------------------------
# comparing tensors


def as_tensor(got, what: str) -> torch.Tensor:
    if not isinstance(got, torch.Tensor):
        raise Mismatch(f"{what} should be a torch.Tensor, but your function returned {type(got).__name__}")
    return got


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol))


def compare(got, expected: torch.Tensor, *, what: str, where: Callable, mistakes: dict | None = None,
            rtol: float = 1e-4, atol: float = 1e-5) -> float:
    """Check ``got`` against ``expected``; return the largest error, or raise :class:`Mismatch`.

    where(index) turns the index (a tuple) of the worst element into words ("at t=17").
    mistakes: {explanation: tensor that this mistake would produce}; the first one that ``got``
    matches is named in the message.
    """
    got = as_tensor(got, what)
    if got.shape != expected.shape:
        raise Mismatch(f"{what} has the wrong shape: expected {tuple(expected.shape)}, got {tuple(got.shape)}")
    got = got.detach().to("cpu")
    if not bool(torch.isfinite(got).all()):
        bad = tuple(int(i) for i in torch.nonzero(~torch.isfinite(got))[0])
        raise Mismatch(f"{what} contains NaN or inf, first {where(bad)}")
    for explanation, wrong in (mistakes or {}).items():
        if not _close(wrong, expected, rtol, atol) and _close(got, wrong, rtol, atol):
            raise Mismatch(f"{what}: {explanation}")
    err = (got.double() - expected.double()).abs()
    tolerance = atol + rtol * expected.double().abs()
    if bool((err <= tolerance).all()):
        return float(err.max()) if err.numel() else 0.0
    index = tuple(int(i) for i in torch.nonzero(err == err.max())[0])
    raise Mismatch(
        f"{what} has wrong values: the largest error is {float(err.max()):.3g} {where(index)} "
        f"(expected {float(expected[index]):.6g}, got {float(got[index]):.6g})"
    )


# ---------------------------------------------------------------------------------------------
# running a check


def call(fn: Callable, args: tuple, what: str):
    """Call the student's function; NotImplementedError means "not attempted" and is passed on."""
    try:
        return fn(*args)
    except (NotImplementedError, Mismatch, GraderSignal):
        raise
    except Exception as err:  # noqa: BLE001 - any error of the student's code is feedback
        raise Mismatch(f"calling {what} raised {type(err).__name__}: {err}") from err


def run_check(name: str, fn: Callable) -> Feedback:
    """Check ``fn`` against exercise ``name``; return the :class:`Feedback` (prints nothing)."""
    if name not in EXERCISES:
        raise ValueError(f"name must be one of {list(EXERCISES)}, got {name!r}")
    if not callable(fn):
        raise TypeError(f"fn must be the function you wrote for {name!r}, got {type(fn).__name__}")
    try:
        tested = EXERCISES[name].checker(fn)
    except NotImplementedError:
        return Feedback(name, "not attempted", "not attempted yet: replace `raise NotImplementedError` "
                        "with your code. The notebook carries on with ddpm_course's version.")
    except Mismatch as err:
        return Feedback(name, "failed", f"{err}. The notebook carries on with ddpm_course's version; "
                        "fix your function and run both cells again.")
    return Feedback(name, "passed", f"correct ({tested}).")


def check(name: str, fn: Callable) -> Callable:
    """Check the student's ``fn`` for exercise ``name``, print the feedback, return what to use next.

    Returns ``fn`` when it passed, else the package's reference function.
    """
    feedback = run_check(name, fn)
    RESULTS[name] = feedback
    SUBMITTED[name] = fn
    print(feedback)
    return fn if feedback.passed else EXERCISES[name].reference


def assert_passed(*names: str) -> None:
    """Fail loudly unless each named exercise was checked in this process and passed.

    The solution edition of the notebooks calls this (the student edition does not), so that CI
    catches a solution that no longer matches the package.
    """
    for name in names:
        result = RESULTS.get(name)
        if result is None or not result.passed:
            raise AssertionError(f"exercise {name!r} did not pass: {result or 'not checked'}")


def answer_call(name: str, payload: str) -> None:
    """Kernel side of grading: call the function submitted for ``name`` on the grader's arguments.

    payload: base64 of a pickle of the argument tuple (from the grader, which is trusted).
    Prints one line, :data:`ANSWER_MARK` + base64 of ``torch.save`` of a dict: ``{"out": tensor,
    "args": [tensors after the call]}`` (the grader loads it with ``weights_only=True``), or
    ``{"error": ..., "message": ...}``, ``{"type": ...}`` for a non-tensor result, ``{"missing": True}``.
    """
    args = pickle.loads(base64.b64decode(payload))
    fn = SUBMITTED.get(name)
    if fn is None:
        answer = {"missing": True}
    else:
        try:
            out = fn(*args)
        except Exception as err:  # noqa: BLE001 - the student's error is the answer
            answer = {"error": type(err).__name__, "message": str(err)[:500]}
        else:
            answer = ({"out": out.detach().cpu().clone()} if isinstance(out, torch.Tensor)
                      else {"type": type(out).__name__})
            answer["args"] = [a.detach().cpu().clone() if isinstance(a, torch.Tensor) else None for a in args]
    buffer = io.BytesIO()
    torch.save(answer, buffer)
    print(ANSWER_MARK + base64.b64encode(buffer.getvalue()).decode("ascii"))


def gen(seed: int) -> torch.Generator:
    """A CPU generator for a check's inputs: checks never touch the student's global random state."""
    return torch.Generator().manual_seed(seed)


def pixel(i) -> str:
    """Where the worst element of an image batch is, in words."""
    return f"at image {i[0]}, pixel ({i[2]}, {i[3]})"
