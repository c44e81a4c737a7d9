"""Course tooling, apart from the diffusion library: what the notebooks, students and instructors use.

    notebook         setup(), the profile's sizes, load_digits, the model a notebook samples from,
                     a live loss plot, U-Net shape tracing
    widgets          sliders over t and over the guidance scale (with static twins)
    exercises        the exercise checks: a framework and one checker module per notebook
    student_edition  builds notebooks/exercises/ from the solution notebooks
    grading          runs submitted notebooks and scores their exercises

The library a student reads to learn diffusion is the package itself (``ddpm_course.schedules``,
``unet``, ``losses``, ``sampling``, ``guidance``, ``training``, ...).
"""

from .notebook import (
    CourseSettings,
    LiveLossPlot,
    count_parameters,
    course_model,
    drive_folder,
    load_digits,
    settings_for,
    setup,
    trace_shapes,
)

__all__ = ["CourseSettings", "LiveLossPlot", "count_parameters", "course_model", "drive_folder", "load_digits",
           "settings_for", "setup", "trace_shapes"]
