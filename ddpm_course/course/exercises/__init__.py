"""Exercise checks for notebooks 01-05: a small framework and one checker module per notebook.

    from ddpm_course.course.exercises import check, assert_passed
    my_alpha_bar = check("alpha_bar", my_alpha_bar)

Each checker calls the student's function on inputs it chooses and compares the result with the
package's own function (its ``reference``, called the same way), naming known mistakes. See
:mod:`.framework` for how a check works and what it returns.
"""

from . import (  # noqa: F401  (each module registers its notebook's exercises)
    nb01_forward_diffusion,
    nb02_unet,
    nb03_training,
    nb04_sampling,
    nb05_conditioning,
)
from .framework import (
    EXERCISES,
    RESULTS,
    STATUSES,
    SUBMITTED,
    Exercise,
    Feedback,
    Mismatch,
    assert_passed,
    check,
    compare,
    exercises_in,
    run_check,
)

__all__ = ["EXERCISES", "RESULTS", "STATUSES", "SUBMITTED", "Exercise", "Feedback", "Mismatch", "assert_passed",
           "check", "compare", "exercises_in", "run_check"]
