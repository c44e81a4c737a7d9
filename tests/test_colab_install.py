"""The notebooks' install cell, as on a blank Colab runtime: an environment that has torch and the
notebook tools but not ddpm_course, an empty folder holding only the notebook, and the repository
URL pointed (DDPM_COURSE_REPO) at a clone of this one. The cell installs, can run twice, and says
what to do when the download fails."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def blank_runtime(tmp_path_factory):
    """A Python without ddpm_course: a fresh venv that sees this one's packages through a .pth line
    (lines of a .pth add folders without processing their own .pth files, so the editable install of
    ddpm_course stays invisible)."""
    base = tmp_path_factory.mktemp("colab")
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


def install_cell(notebook: str) -> str:
    nb = json.loads((ROOT / "notebooks" / notebook).read_text())
    return "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])


def run_cell(python, source: str, cwd: Path, repo) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["DDPM_COURSE_REPO"] = str(repo)
    return subprocess.run([str(python), "-c", source], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def test_install_cell_says_what_to_do_when_the_download_fails(blank_runtime, tmp_path):
    """(Runs first: the next test installs the package into the blank runtime.)"""
    python, _, _ = blank_runtime
    done = run_cell(python, install_cell("04_sampling.ipynb"), tmp_path, tmp_path / "no-such-repository")
    assert done.returncode != 0
    assert "Could not download the course from" in done.stderr and "set DDPM_COURSE_REPO" in done.stderr
    assert not (tmp_path / "ddpm-course").exists()


def test_install_cell_on_a_blank_runtime_installs_and_can_run_twice(blank_runtime):
    python, clone, base = blank_runtime
    work = base / "content"
    work.mkdir()
    source = install_cell("01_forward_diffusion.ipynb")
    (work / "01_forward_diffusion.ipynb").write_text((ROOT / "notebooks" / "01_forward_diffusion.ipynb").read_text())
    for attempt in (1, 2):   # "Run all" twice: the second run finds the install and does nothing
        done = run_cell(python, source, work, clone)
        assert done.returncode == 0, (attempt, done.stderr[-2000:])
    fresh = subprocess.run([str(python), "-c", "import ddpm_course, sys; print(ddpm_course.__file__)"],
                           capture_output=True, text=True, cwd=base)     # a new kernel sees the install
    assert fresh.returncode == 0 and str(work / "ddpm-course") in fresh.stdout, fresh.stderr
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
