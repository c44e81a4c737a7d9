"""Colab's "Run all", simulated: every notebook of both editions, each alone in an empty folder, run
by nbval with a kernel whose Python has torch and the notebook tools but not ddpm_course, its install
cell pointed (DDPM_COURSE_REPO) at a clone of this repository, under the fast ``ci`` profile.

The first notebook installs the package into that blank runtime (about 25 s: a clone and an editable
pip install); the others then run in the same runtime, each in its own empty folder, as a
notebook does on Colab once the course is installed. A student edition whose code cells are the
solution's (06, which has no exercises) is not run twice: the test checks that its code is identical.
The install cell also says what to do when the download fails (in a runtime of its own), and can
run twice. No test depends on another having run. (This is how CI
runs the notebooks: ``testpaths`` holds only ``tests``.)"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm_course.course.grading import COURSE_NOTEBOOKS

ROOT = Path(__file__).resolve().parents[1]


def make_blank_runtime(base: Path) -> tuple:
    """A Python without ddpm_course in ``base``: a fresh venv that sees this one's packages through a
    .pth line (lines of a .pth add folders without processing their own .pth files, so the editable
    install of ddpm_course stays invisible), and a clone of this repository to install from."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(base / "env")], check=True)
    env_site = next((base / "env" / "lib").glob("python*/site-packages"))
    (env_site / "host.pth").write_text("\n".join(p for p in site.getsitepackages() if "site-packages" in p) + "\n")
    python = base / "env" / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import torch, importlib.util as u; "
                            "print(u.find_spec('ddpm_course') is None)"], capture_output=True, text=True, cwd=base)
    assert probe.stdout.strip() == "True", probe.stderr
    clone = base / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    return python, clone, base


@pytest.fixture(scope="module")
def blank_runtime(tmp_path_factory):
    """One blank runtime shared by the notebooks of the Run-all test, as on Colab."""
    return make_blank_runtime(tmp_path_factory.mktemp("colab"))


def code_cells(path: Path) -> list:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def install_cell(notebook: str) -> str:
    nb = json.loads((ROOT / "notebooks" / notebook).read_text())
    return "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])


def run_cell(python, source: str, cwd: Path, repo) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["DDPM_COURSE_REPO"] = str(repo)
    return subprocess.run([str(python), "-c", source], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def test_install_cell_says_what_to_do_when_the_download_fails(tmp_path):
    """In a runtime of its own, whatever ran before: the package must not be installed there yet."""
    python, _, _ = make_blank_runtime(tmp_path / "runtime")
    done = run_cell(python, install_cell("04_sampling.ipynb"), tmp_path, tmp_path / "no-such-repository")
    assert done.returncode != 0
    assert "Could not download the course from" in done.stderr and "set DDPM_COURSE_REPO" in done.stderr
    assert not (tmp_path / "ddpm-course").exists()


def test_run_all_of_every_notebook_both_editions_on_a_blank_runtime(blank_runtime):
    python, clone, base = blank_runtime
    kernels = base / "jupyter" / "kernels" / "blank-colab"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "a blank Colab-like runtime", "language": "python"}))
    copies, same_code = [], []
    for edition in ("solutions", "exercises"):
        for name in COURSE_NOTEBOOKS:
            source = ROOT / "notebooks" / ("exercises" if edition == "exercises" else "") / f"{name}.ipynb"
            if edition == "exercises" and code_cells(source) == code_cells(ROOT / "notebooks" / source.name):
                same_code.append(name)   # a student edition without exercises runs exactly the solution's code
                continue
            folder = base / "content" / edition / name       # an empty folder holding only the notebook
            folder.mkdir(parents=True)
            copies.append(folder / source.name)
            copies[-1].write_bytes(source.read_bytes())
    assert same_code == ["06_evaluation"], same_code           # the notebook without exercises
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(DDPM_COURSE_REPO=str(clone), DDPM_COURSE_PROFILE="ci", MPLBACKEND="Agg",
               JUPYTER_PATH=str(base / "jupyter"))
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--nbval-lax",
                           "--nbval-kernel-name", "blank-colab", "--rootdir", str(base), "-o", "addopts=",
                           *map(str, copies)], capture_output=True, text=True, cwd=base, env=env, timeout=1800)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout
    installed = subprocess.run([str(python), "-c", "import ddpm_course; print(ddpm_course.__file__)"],
                               capture_output=True, text=True, cwd=base)
    assert str(copies[0].parent / "ddpm-course") in installed.stdout, installed.stderr  # notebook 01 installed it
    # "Run all" again in the same runtime: the install cell finds the install and does nothing
    work = base / "content" / "solutions" / "01_forward_diffusion"
    done = run_cell(python, install_cell("01_forward_diffusion.ipynb"), work, clone)
    assert done.returncode == 0, done.stderr[-2000:]
    fresh = subprocess.run([str(python), "-c", "import ddpm_course, sys; print(ddpm_course.__file__)"],
                           capture_output=True, text=True, cwd=base)     # a new kernel sees the install
    assert fresh.returncode == 0 and str(work / "ddpm-course") in fresh.stdout, fresh.stderr


def test_the_install_cell_is_the_same_in_every_notebook():
    source = install_cell("01_forward_diffusion.ipynb")
    for notebook in sorted((ROOT / "notebooks").glob("0*.ipynb")) + sorted((ROOT / "notebooks").glob("exercises/0*")):
        assert install_cell(str(notebook.relative_to(ROOT / "notebooks"))) == source, notebook   # one cell everywhere


def test_notebooks_04_to_06_find_the_model_notebook_03_saved_to_drive(tiny_config, tmp_path, monkeypatch, capsys):
    from ddpm_course import train
    from ddpm_course.course import course_model, drive_folder, settings_for

    drive = tmp_path / "MyDrive-ddpm-course"           # a stand-in for the mounted Drive folder
    monkeypatch.setenv("DDPM_COURSE_DRIVE", str(drive))
    monkeypatch.chdir(tmp_path)                        # a fresh runtime: nothing next to the notebook
    S = settings_for("cpu", device="cpu")
    assert drive_folder() == drive
    saved = train(tiny_config.replace(max_steps=2, out_dir=str(drive / S.run_dir("03_training"))),
                  progress=False, log=lambda *a: None)  # what notebook 03 writes with SAVE_TO_DRIVE = True
    ckpt = course_model(S, drive=True)
    assert ckpt.path == saved and ckpt.step == 2
    assert f"Using your model from notebook 03 on Google Drive: {saved}" in capsys.readouterr().out
    shipped = course_model(S)                          # USE_DRIVE = False: the shipped model, and why
    assert shipped.path.name == "pretrained-mnist-cond.pt"
    out = capsys.readouterr().out
    assert "Using the shipped pretrained model 'mnist-cond' (no runs/03_training-cpu/checkpoint.pt" in out
