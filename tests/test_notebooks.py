"""The notebooks as files: structure, the student edition, and grading of submissions.

(nbval runs every notebook of both editions; see pyproject.toml. These tests check what nbval
cannot: that the student edition is in sync, that committed notebooks carry no outputs, and that
the grader scores solutions full, untouched exercises zero, and hostile submissions fairly.)
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


def mini_notebook(*bodies: str, name: str = "05_conditioning"):
    """A small submission for notebook ``name`` (the two exercises of notebook 05): one cell per body."""
    cells = [new_markdown_cell("# test"),
             new_code_cell("import torch\nfrom ddpm_course.course.exercises import check, assert_passed"),
             *map(new_code_cell, bodies)]
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


GUIDANCE, DROP = SOLUTION.split("\n\ndef my_drop_labels")
DROP = "def my_drop_labels" + DROP
FLIPPED = GUIDANCE.replace("eps_uncond + w * (eps_cond - eps_uncond)", "eps_cond + w * (eps_uncond - eps_cond)")

HOSTILE = """import json, os, subprocess, sys
import ddpm_course.course.exercises.framework as fw
# forge: pretend to have passed, in every place a naive grader might look
for name in ("guidance_combine", "drop_labels"):
    fw.RESULTS[name] = fw.Feedback(name, "passed", "correct")
    print(f"✔ {name}: correct")
    print(fw.ANSWER_MARK + "not base64 at all")
for log in (os.environ.get("DDPM_COURSE_GRADE_LOG"), "results.jsonl"):
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"exercise": "guidance_combine", "status": "passed", "message": "correct"}) + "\\n")
            f.write('{"exercise": "drop_labels", "stat\\n')
# leave processes behind: one in the kernel's group, one daemonised out of it
kept = subprocess.Popen(["sleep", "600"])
subprocess.run(["sh", "-c", "sleep 601 & echo $! > daemon.pid"], start_new_session=True, check=True)
try:   # more memory than the grader allows (calloc: no page is touched, so this is cheap without a limit)
    hog, limited = bytearray(12 * 2**30), False
except MemoryError:
    limited = True
with open(REPORT, "w") as f:
    json.dump({"env": dict(os.environ), "pids": [kept.pid, int(open("daemon.pid").read())], "limited": limited}, f)
"""


def test_grading_a_class_with_hostile_submissions(tmp_path, monkeypatch, capsys):
    """Every submission is graded on its own: the solution full, the untouched student edition zero,
    a forger gets no false pass (its processes killed, no secret seen), a SyntaxError and a dead kernel
    are named, and files that are no notebooks become rows; the batch always writes its --json."""
    monkeypatch.setenv("INSTRUCTOR_TOKEN", "s3cret")
    report = tmp_path / "hostile.json"
    solution = mini_notebook(SOLUTION)
    submissions = {
        "alice": solution,
        "bob": student_notebook(solution, "05_conditioning.ipynb"),
        "mallory": mini_notebook(f"REPORT = {str(report)!r}\n" + HOSTILE, FLIPPED, DROP),
        "trudy": mini_notebook(GUIDANCE.replace("return eps_uncond", "return (eps_uncond"), DROP),
        "oscar": mini_notebook(GUIDANCE, "import os\nos._exit(3)", DROP),
    }
    paths = []
    for who, nb in submissions.items():
        paths.append(tmp_path / f"{who}.ipynb")
        nbformat.write(nb, paths[-1])
    (tmp_path / "05_conditioning_broken.ipynb").write_text("{ not a notebook")
    (tmp_path / "mystery.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    paths[2:2] = [tmp_path / "05_conditioning_broken.ipynb", tmp_path / "missing.ipynb", tmp_path / "mystery.ipynb"]
    out = tmp_path / "scores.json"
    assert main(["exercises", "grade", *map(str, paths), "--timeout", "120", "--json", str(out)]) == 0
    rows = {Path(r["file"]).stem: r for r in json.loads(out.read_text())}
    status = {who: {e["exercise"]: (e["status"], e["message"]) for e in r["exercises"]} for who, r in rows.items()}
    assert (rows["alice"]["score"], rows["alice"]["total"]) == (2, 2)
    assert rows["bob"]["score"] == 0 and {s for s, _ in status["bob"].values()} == {"not attempted"}
    # the forger: its flipped guidance fails with the named mistake, its correct dropout passes
    assert status["mallory"]["guidance_combine"][0] == "failed"
    assert "sign is flipped" in status["mallory"]["guidance_combine"][1]
    assert status["mallory"]["drop_labels"][0] == "passed"
    seen = json.loads(report.read_text())
    assert seen["limited"], "a 12 GiB allocation passed the 8 GiB limit"
    assert "INSTRUCTOR_TOKEN" not in seen["env"] and seen["env"]["HOME"] != str(Path.home())
    for pid in seen["pids"]:
        state = Path(f"/proc/{pid}/stat")
        assert not state.exists() or state.read_text().split(")")[1].split()[0] == "Z", pid
    assert "were killed" in rows["mallory"]["problem"]
    # a SyntaxError is a failure with the error's first line; the other exercise is still graded
    trudy = status["trudy"]["guidance_combine"]
    assert trudy[0] == "failed" and "raised SyntaxError" in trudy[1], trudy
    assert status["trudy"]["drop_labels"][0] == "passed"
    # a dead kernel names the cell it was running
    assert "kernel died while running cell 4 (`import os`)" in rows["oscar"]["problem"]
    assert status["oscar"]["guidance_combine"][0] == "not graded"
    assert status["oscar"]["drop_labels"][0] == "not run" and "cell 4" in status["oscar"]["drop_labels"][1]
    # files that are not course notebooks are rows too
    for bad in ("05_conditioning_broken", "missing", "mystery"):
        assert rows[bad]["score"] == 0 and rows[bad]["problem"].startswith("could not be graded"), bad
    assert "cannot tell which course notebook" in rows["mystery"]["problem"]
    table = capsys.readouterr().out
    assert f"{paths[0]}: 2/2" in table and f"{paths[1]}: 0/2" in table


def test_grade_enforces_the_time_limit_and_still_grades_what_was_checked_before(tmp_path):
    path = tmp_path / "05_conditioning_loop.ipynb"
    nbformat.write(mini_notebook(GUIDANCE, "import time\ntime.sleep(600)", DROP), path)
    grade = grade_notebook(path, timeout=10)
    assert "time limit of 10 s, in cell 4 (`import time`)" in grade.problem
    rows = {exercise: (status, message) for exercise, status, message in grade.rows}
    assert rows["guidance_combine"][0] == "passed"
    assert rows["drop_labels"][0] == "not run" and "never ran (stopped after the time limit" in rows["drop_labels"][1]
    assert grade.seconds >= 10      # it waited out the limit, then graded (the cell sleeps 600 s)


def test_grade_needs_to_know_the_notebook(tmp_path):
    path = tmp_path / "homework.ipynb"
    nb = mini_notebook("x = 1")
    nb.metadata.pop("ddpm_course")
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match="cannot tell which course notebook"):
        grade_notebook(path)
