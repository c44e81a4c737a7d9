"""The notebooks as files: structure, the student edition, and grading of submissions.

(nbval runs every notebook of both editions; see pyproject.toml. These tests check what nbval
cannot: that the student edition is in sync, that committed notebooks carry no outputs, and that
the grader scores solutions full and untouched exercises zero.)
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from ddpm_course import COLAB_REPO
from ddpm_course.cli import main
from ddpm_course.course.exercises import exercises_in
from ddpm_course.course.grading import grade_notebook
from ddpm_course.course.student_edition import build, strip_solutions, student_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["01_forward_diffusion", "02_unet", "03_training", "04_sampling", "05_conditioning", "06_evaluation"]


def read(path: Path):
    return nbformat.read(path, as_version=4)


def test_the_six_notebooks_exist_in_both_editions():
    for folder in (ROOT / "notebooks", ROOT / "notebooks" / "exercises"):
        assert sorted(p.stem for p in folder.glob("0*.ipynb")) == NOTEBOOKS


def test_student_edition_is_up_to_date():
    stale = build(ROOT / "notebooks", check=True)
    assert stale == [], f"run `python -m ddpm_course exercises build`; out of date: {stale}"


@pytest.mark.parametrize("folder", ["notebooks", "notebooks/exercises"])
def test_committed_notebooks_carry_no_outputs(folder):
    for path in sorted((ROOT / folder).glob("0*.ipynb")):
        for cell in read(path).cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_opens_with_goal_badge_install_and_setup(name):
    nb = read(ROOT / "notebooks" / f"{name}.ipynb")
    first = nb.cells[0].source
    assert first.startswith("# ") and "**Goal.**" in first
    assert f"colab.research.google.com/github/{COLAB_REPO}/blob/main/notebooks/{name}.ipynb" in first
    codes = [c.source for c in nb.cells if c.cell_type == "code"]
    assert 'find_spec("ddpm_course") is None' in codes[0] and COLAB_REPO in codes[0]
    assert "S = setup()" in codes[1]
    assert nb.metadata["ddpm_course"]["notebook"] == name
    markdown = sum(c.cell_type == "markdown" for c in nb.cells)
    assert markdown >= len(codes) // 2, f"{name}: too little explanation ({markdown} markdown cells)"
    student = read(ROOT / "notebooks" / "exercises" / f"{name}.ipynb")
    assert f"blob/main/notebooks/exercises/{name}.ipynb" in student.cells[0].source


@pytest.mark.parametrize("name", NOTEBOOKS[:5])
def test_exercises_are_checked_in_the_solutions_and_stubbed_for_students(name):
    exercises = exercises_in(name)
    assert len(exercises) >= 2
    solution = "\n".join(c.source for c in read(ROOT / "notebooks" / f"{name}.ipynb").cells)
    student = "\n".join(c.source for c in read(ROOT / "notebooks" / "exercises" / f"{name}.ipynb").cells)
    for exercise in exercises:
        assert f'check("{exercise}"' in solution and f'assert_passed("{exercise}")' in solution
        assert f'check("{exercise}"' in student and f'assert_passed("{exercise}")' not in student
    student_code = "\n".join(c.source for c in read(ROOT / "notebooks" / "exercises" / f"{name}.ipynb").cells
                              if c.cell_type == "code")
    assert student_code.count("raise NotImplementedError") == len(exercises)
    assert "### BEGIN" not in student and "### END" not in student


def test_strip_solutions_replaces_regions_at_their_indentation():
    source = ("def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n"
              "f = check('f', f)\n### BEGIN HIDDEN CHECKS\nassert_passed('f')\n### END HIDDEN CHECKS")
    out = strip_solutions(source)
    assert "return x + y" not in out and "assert_passed" not in out and "###" not in out
    assert "    # YOUR CODE HERE\n    raise NotImplementedError(" in out and "    y = 1" in out
    compile(out, "cell", "exec")


@pytest.mark.parametrize("source, message", [
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", "inside a function body"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1", "never closed"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n### END HIDDEN CHECKS", "does not close"),
])
def test_strip_solutions_rejects_broken_markers(source, message):
    with pytest.raises(ValueError, match=message):
        strip_solutions(source, "test cell")


def mini_notebook(body: str, name: str = "05_conditioning"):
    """A small submission for notebook ``name``: the two exercises of notebook 05."""
    cells = [new_markdown_cell("# test"),
             new_code_cell("import torch\nfrom ddpm_course.course.exercises import check, assert_passed"),
             new_code_cell(body)]
    nb = new_notebook(cells=cells)
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "ddpm_course": {"notebook": name}}
    return nb


SOLUTION = '''def my_guidance_combine(eps_uncond, eps_cond, w):
    ### BEGIN SOLUTION
    return eps_uncond + w * (eps_cond - eps_uncond)
    ### END SOLUTION

guidance_combine = check("guidance_combine", my_guidance_combine)

def my_drop_labels(labels, p_uncond, null_label, generator=None):
    ### BEGIN SOLUTION
    drop = torch.rand(labels.shape, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(labels, null_label), labels)
    ### END SOLUTION

drop_labels = check("drop_labels", my_drop_labels)'''


def test_grade_scores_solutions_full_and_the_untouched_student_edition_zero(tmp_path, capsys):
    solution = mini_notebook(SOLUTION)
    wrong = mini_notebook(SOLUTION.replace("eps_uncond + w * (eps_cond - eps_uncond)",
                                           "eps_cond + w * (eps_uncond - eps_cond)"))
    paths = {"solution": tmp_path / "alice.ipynb", "student": tmp_path / "bob.ipynb", "wrong": tmp_path / "eve.ipynb"}
    nbformat.write(solution, paths["solution"])
    nbformat.write(student_notebook(solution, "05_conditioning.ipynb"), paths["student"])
    nbformat.write(wrong, paths["wrong"])
    out = tmp_path / "scores.json"
    assert main(["exercises", "grade", *map(str, paths.values()), "--json", str(out)]) == 0
    scores = {Path(r["file"]).stem: r for r in json.loads(out.read_text())}
    assert (scores["alice"]["score"], scores["alice"]["total"]) == (2, 2)
    assert scores["bob"]["score"] == 0
    assert {e["status"] for e in scores["bob"]["exercises"]} == {"not attempted"}
    assert scores["eve"]["score"] == 1
    flipped = next(e for e in scores["eve"]["exercises"] if e["exercise"] == "guidance_combine")
    assert flipped["status"] == "failed" and "sign is flipped" in flipped["message"]
    table = capsys.readouterr().out
    assert f"{paths['solution']}: 2/2" in table and f"{paths['student']}: 0/2" in table


def test_grade_enforces_the_time_limit(tmp_path):
    path = tmp_path / "05_conditioning_loop.ipynb"
    nbformat.write(mini_notebook("import time\ntime.sleep(600)"), path)
    grade = grade_notebook(path, timeout=8)
    assert grade.score == 0 and "time limit" in grade.problem
    assert {status for _, status, _ in grade.rows} == {"not run"}
    assert grade.seconds < 30


def test_grade_needs_to_know_the_notebook(tmp_path):
    path = tmp_path / "homework.ipynb"
    nb = mini_notebook("x = 1")
    nb.metadata.pop("ddpm_course")
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match="cannot tell which course notebook"):
        grade_notebook(path)
